"""The reference firmware sketch, compiled for this machine and run on a pty.

``deploy/firmware/relaxd_mcu/relaxd_mcu.ino`` is built with g++ against the small Arduino
core in ``tests/firmware`` (Serial = the master side of a pty, a clock the test moves,
PWM levels the test reads back), so the serial tests can run against the real sketch and
not only against ``FakeMcu``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKETCH = REPO / "deploy" / "firmware" / "relaxd_mcu" / "relaxd_mcu.ino"
SHIM = Path(__file__).resolve().parent / "firmware"
#: The sketch's pins (relaxd_mcu.ino): red, green, blue, vibration.
PIN_RED, PIN_GREEN, PIN_BLUE, PIN_VIBRATION = 9, 10, 11, 6


class FirmwareBuildError(RuntimeError):
    """g++ is missing or refused the sketch."""


def build() -> Path:
    """The host binary of the sketch, compiled once per source version (cached in the temp dir)."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise FirmwareBuildError("g++ is not installed: apt-get install g++ (the firmware tests compile the sketch)")
    sources = [SKETCH, SHIM / "Arduino.h", SHIM / "shim.cpp"]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]
    binary = Path(tempfile.gettempdir()) / f"relaxd_mcu_host-{digest}"
    if binary.is_file():
        return binary
    partial = binary.with_suffix(f".{os.getpid()}.partial")
    command = [compiler, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1", "-I", str(SHIM),
               "-x", "c++", str(SKETCH), "-x", "none", str(SHIM / "shim.cpp"), "-o", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FirmwareBuildError(f"the sketch did not compile:\n{result.stderr}")
    os.replace(partial, binary)
    return binary


class FirmwareMcu:
    """The compiled sketch on a pty: ``port`` is what ``SerialLink`` opens."""

    def __init__(self, manual_clock: bool = True) -> None:
        binary = build()
        self.master, self._slave = os.openpty()
        self.port = os.ttyname(self._slave)
        # The slave stays open here as well, so the board never sees a hang-up between host sessions.
        import tty
        tty.setraw(self._slave)
        self._control, theirs = socket.socketpair()
        args = [str(binary), str(self.master), str(theirs.fileno())] + (["manual"] if manual_clock else [])
        self._process = subprocess.Popen(args, pass_fds=(self.master, theirs.fileno()))
        theirs.close()
        self._replies = self._control.makefile("r", encoding="ascii")

    def _ask(self, line: str) -> str:
        self._control.sendall(line.encode("ascii") + b"\n")
        reply = self._replies.readline().strip()
        if not reply or reply.startswith("ERROR"):
            raise RuntimeError(f"firmware host answered {reply!r} to {line!r}")
        return reply

    def advance(self, ms: int) -> int:
        """Move the board's clock forward by ``ms`` and run its loop once; the new millis()."""
        return int(self._ask(f"ADVANCE {int(ms)}").split()[1])

    def pins(self) -> dict[int, int]:
        """The last PWM value (0..255) written to each output pin."""
        return {int(pin): int(level) for pin, level in
                (item.split("=") for item in self._ask("PINS").split()[1:])}

    def read_line(self, timeout_s: float = 1.0) -> bytes:
        """One line the board sent, read straight off the pty (for tests that speak without SerialLink)."""
        import select

        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self._slave], [], [], timeout_s)
            if not ready:
                raise TimeoutError(f"the board sent no complete line within {timeout_s} s (got {line!r})")
            line += os.read(self._slave, 1)
        return line

    def write(self, data: bytes) -> None:
        os.write(self._slave, data)

    def close(self) -> None:
        self._control.shutdown(socket.SHUT_RDWR)  # the host sees end-of-file and exits
        self._replies.close()
        self._control.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
