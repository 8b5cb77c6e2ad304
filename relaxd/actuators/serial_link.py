"""The serial link to the microcontroller that drives the light and the vibration motors.

The wire format is specified in ``deploy/PROTOCOL.md``; in short, every line in either
direction is ``<SEQ> <WORD> [ARGS...] *<CRC8>`` in ASCII, the host's commands are answered
``<SEQ> ACK`` or ``<SEQ> NAK <reason>``, and the firmware turns everything off by itself when
no valid line arrived for ``deadman_ms``.

``SerialLink.open()`` opens the port and does the version handshake. A background thread then
reads the replies, resends unanswered commands (``retries`` times, after ``ack_timeout_s``),
sends a heartbeat when the line was quiet for ``heartbeat_s`` and declares the link *lost*
when nothing valid came back for ``link_timeout_s``, a command ran out of retries, the port
failed, or the microcontroller reported a restart or a dead-man stop. A lost link calls
``on_fault(reason)`` once; its outputs then count as off (the firmware's dead-man timer makes
that true) and every further command raises ``LinkLostError`` until ``open()`` is called again.
Lines that do not parse or fail the checksum are counted in ``garbage_count`` and ignored.
"""

from __future__ import annotations

import itertools
import logging
import string
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from relaxd.actuators.base import (RGB, Actuator, Light, LinkError, LinkLostError, NakError, OutputGate,
                                   OutputLatchedError, ProtocolVersionError)

log = logging.getLogger(__name__)

HOST_PROTOCOL = "relaxd/1"
MCU_PROTOCOL = "mcu/1"
MAX_LINE = 96        # bytes; a longer run without a newline is garbage
READ_TIMEOUT_S = 0.05  # how long the reader blocks for input before doing its timekeeping
SEQ_LIMIT = 65536    # sequence numbers run 1..65535; 0 marks the microcontroller's own reports
FIRMWARE_HINT = "flash deploy/firmware/relaxd_mcu/relaxd_mcu.ino"

# A newer command makes a pending older one pointless: resending it could even undo the newer.
# Heartbeats never replace each other, so an unanswered one runs out of retries and loses the link.
SUPERSEDES = {"LIGHT": {"LIGHT"}, "VIB": {"VIB"}, "OFF": {"LIGHT", "VIB", "OFF"}}
LEVEL_WORDS = frozenset({"LIGHT", "VIB"})


def is_energising(word: str, args: Tuple[Any, ...]) -> bool:
    """True for a command that turns an output on (a level above zero): the latch refuses these."""
    return word in LEVEL_WORDS and any(int(arg) != 0 for arg in args)


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS (polynomial 0x07, initial value 0): ``crc8(b"123456789") == 0xF4``."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class FrameError(ValueError):
    """A received line is not a valid frame (internal: such lines are counted, not raised)."""


@dataclass(frozen=True)
class Frame:
    seq: int
    word: str
    args: Tuple[str, ...] = ()


def encode(seq: int, word: str, *args: Any) -> bytes:
    """One protocol line: ``<seq> <word> <args...> *<CRC8 of everything before " *">\\n``."""
    body = " ".join([str(seq), word, *(str(arg) for arg in args)])
    return f"{body} *{crc8(body.encode('ascii')):02X}\n".encode("ascii")


def decode(line: bytes) -> Frame:
    """Parse one line (without or with its newline); raise ``FrameError`` saying what is wrong."""
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise FrameError("not ASCII") from None
    body, star, checksum = text.rpartition(" *")
    if not star or len(checksum) != 2 or not all(c in string.hexdigits for c in checksum):
        raise FrameError("no checksum")
    if int(checksum, 16) != crc8(body.encode("ascii")):
        raise FrameError("checksum mismatch")
    parts = body.split(" ")
    if len(parts) < 2 or not parts[0].isdigit() or int(parts[0]) >= SEQ_LIMIT or not parts[1].isalpha():
        raise FrameError("expected '<seq> <WORD> ...'")
    return Frame(int(parts[0]), parts[1], tuple(parts[2:]))


@dataclass
class _Pending:
    """A command sent and not yet answered."""

    word: str
    line: bytes
    sent_at: float
    energising: bool = False  # passes the output gate at every send, retries included
    waited: bool = True       # someone waits for the outcome; else a refusal is reported as a fault
    attempts: int = 1
    outcome: str = ""  # "ack", "superseded", "lost", "latched", or the NAK reason
    done: threading.Event = field(default_factory=threading.Event)


class SerialLink:
    """A checked, heartbeated line protocol to the microcontroller over pyserial."""

    def __init__(self, port: str, baud: int = 115200, *, ack_timeout_s: float = 0.3, retries: int = 2,
                 heartbeat_s: float = 0.5, link_timeout_s: float = 1.5, handshake_timeout_s: float = 3.0,
                 deadman_ms: int = 1500, on_fault: Optional[Callable[[str], None]] = None,
                 config_key: str = "actuators.serial_port") -> None:
        if not heartbeat_s < link_timeout_s:
            raise ValueError(f"heartbeat_s ({heartbeat_s}) must be shorter than link_timeout_s ({link_timeout_s})")
        if not heartbeat_s < deadman_ms / 1000.0:
            raise ValueError(f"heartbeat_s ({heartbeat_s}) must be shorter than deadman_ms ({deadman_ms} ms), "
                             "or the firmware turns the outputs off between heartbeats")
        self.port, self.baud, self.config_key = port, baud, config_key
        self.ack_timeout_s, self.retries = ack_timeout_s, retries
        self.heartbeat_s, self.link_timeout_s = heartbeat_s, link_timeout_s
        self.handshake_timeout_s, self.deadman_ms = handshake_timeout_s, deadman_ms
        self.on_fault = on_fault
        self.gate: Optional[OutputGate] = None  # the bank's latch; energising lines pass it one by one
        self.firmware: Optional[str] = None
        self.fault_reason: Optional[str] = None
        self.garbage_count = 0
        self.session = 0  # counts successful open()s, so actuators can tell a fresh link from the old one
        self._status = "closed"
        self._serial: Optional[Any] = None
        self._lock = threading.Lock()        # status and the pending table
        self._write_lock = threading.Lock()  # one line at a time on the wire
        self._pending: Dict[int, _Pending] = {}
        self._counter = itertools.count()  # next() on it is atomic, so any thread may take a number
        self._rx = bytearray()
        self._last_rx = self._last_tx = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # Commands wait here for the writer thread: no caller (the control loop least of all) ever
        # blocks on a port that does not take bytes; the write has its own deadline (write_timeout).
        self._outbox: Deque[_Pending] = deque()
        self._outbox_ready = threading.Condition()
        self._writer: Optional[threading.Thread] = None

    def __enter__(self) -> "SerialLink":
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def status(self) -> str:
        """``closed`` (never opened, or closed), ``ok``, or ``lost`` (see ``fault_reason``)."""
        return self._status

    # -- opening and closing -------------------------------------------------------------------

    def open(self) -> str:
        """Open the port and shake hands; return the firmware version. Also reconnects a lost link."""
        if self._status == "ok":
            raise LinkError(f"serial link to {self.port} is already open")
        if self._thread is threading.current_thread():
            raise LinkError("open() cannot be called from on_fault: reconnect from another thread")
        for thread in (self._thread, self._writer):
            if thread is not None:
                thread.join()
        try:
            import serial
        except ImportError:
            raise LinkError("pyserial is not installed: pip install pyserial") from None
        try:
            self._serial = serial.Serial(self.port, self.baud, timeout=READ_TIMEOUT_S,
                                         write_timeout=self.ack_timeout_s, exclusive=True)
        except (serial.SerialException, ValueError, OSError) as error:
            raise LinkError(f"cannot open serial port {self.port} ({self.config_key}): {error}. Check the "
                            "cable and the port name, and that no other program is using the port") from error
        try:
            self.firmware = self._handshake()
        except BaseException:
            self._close_port()
            raise
        now = time.monotonic()
        with self._lock:
            self._status, self.fault_reason = "ok", None
            self._last_rx = self._last_tx = now
            self.session += 1
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"serial-link {self.port}", daemon=True)
        self._thread.start()
        self._writer = threading.Thread(target=self._run_writer, name=f"serial-writer {self.port}", daemon=True)
        self._writer.start()
        log.info("serial link to %s open, firmware %s", self.port, self.firmware)
        return self.firmware

    def close(self) -> None:
        """Turn the outputs off (best effort), stop the reader and close the port."""
        with self._lock:
            was_ok, self._status = self._status == "ok", "closed"
            self._fail_pending("lost")
        if was_ok:
            self._write_quietly(encode(self._next_seq(), "OFF"))
        self._stop.set()
        with self._outbox_ready:
            self._outbox_ready.notify_all()
        for thread in (self._thread, self._writer):
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        self._close_port()

    def _handshake(self) -> str:
        """Send ``HELLO relaxd/1 <deadman_ms>`` until the microcontroller answers or time runs out."""
        self._serial.reset_input_buffer()
        self._rx.clear()
        deadline = time.monotonic() + self.handshake_timeout_s
        try:
            while time.monotonic() < deadline:
                seq = self._next_seq()
                self._write(encode(seq, "HELLO", HOST_PROTOCOL, self.deadman_ms))
                reply_by = min(deadline, time.monotonic() + self.ack_timeout_s)
                while time.monotonic() < reply_by:
                    for frame in self._read_frames():
                        if frame.seq == seq and frame.word in ("ACK", "NAK"):
                            return self._check_hello(frame)
        except OSError as error:  # pyserial's SerialException is an OSError
            raise LinkLostError(f"serial port {self.port} failed during the handshake: {error}") from error
        raise LinkLostError(f"no answer to HELLO from the microcontroller on {self.port} within "
                            f"{self.handshake_timeout_s} s: check that its firmware is running "
                            f"({FIRMWARE_HINT}) and that actuators.serial_baud ({self.baud}) matches it")

    def _check_hello(self, frame: Frame) -> str:
        if frame.word == "NAK":
            if frame.args[:1] == ("VERSION",):
                theirs = " ".join(frame.args[1:]) or "another version"
                raise ProtocolVersionError(f"the microcontroller on {self.port} refused {HOST_PROTOCOL}: it speaks "
                                           f"{theirs}; {FIRMWARE_HINT} to match this relaxd")
            raise LinkError(f"the microcontroller on {self.port} refused HELLO: {' '.join(frame.args)}")
        protocol = frame.args[0] if frame.args else "nothing"
        firmware = frame.args[1] if len(frame.args) > 1 else "unknown"
        if protocol != MCU_PROTOCOL:
            raise ProtocolVersionError(f"the microcontroller on {self.port} speaks {protocol} (firmware "
                                       f"{firmware}) but relaxd needs {MCU_PROTOCOL}: {FIRMWARE_HINT}")
        return firmware

    # -- sending -------------------------------------------------------------------------------

    def send(self, word: str, *args: int, wait: bool = True) -> None:
        """Send one command. With ``wait``, return once it is acknowledged.

        Raises ``LinkLostError`` when the link is not up or is lost meanwhile, ``NakError`` when
        the microcontroller refuses the command, ``OutputLatchedError`` when it would turn an
        output on while the gate is closed. Without ``wait`` it never waits for the reply (the
        control loop and the safety path): retries happen in the background, and a refusal or
        a lost link reaches ``on_fault``.
        """
        seq = self._next_seq()
        pending = _Pending(word, encode(seq, word, *args), time.monotonic(),
                           energising=is_energising(word, args), waited=wait)
        if pending.energising and self.gate is not None and self.gate.closed:  # checked again at the wire
            raise OutputLatchedError(f"serial {word} refused: the outputs are latched off ({self.gate.reason})")
        with self._lock:
            self._check_ok()
            for old_seq, old in list(self._pending.items()):
                if old.word in SUPERSEDES.get(word, ()):
                    del self._pending[old_seq]
                    old.outcome = "superseded"
                    old.done.set()
            self._pending[seq] = pending
        self._queue(pending)
        if not wait:
            return
        # The reader resolves every command within ack_timeout_s * (retries + 1) of sending it;
        # waiting much longer than that means the reader itself is stuck.
        if not pending.done.wait(self.ack_timeout_s * (self.retries + 1) + self.link_timeout_s):
            self._fault(f"no answer to {word} and the link's reader thread is stalled")
        if pending.outcome in ("ack", "superseded"):
            return
        if pending.outcome == "latched":
            raise OutputLatchedError(f"{word} was dropped: the outputs were latched off while it was on its way")
        if pending.outcome in ("lost", ""):
            with self._lock:
                self._check_ok()
            raise LinkLostError(f"no answer to {word} from the microcontroller on {self.port}")
        command = " ".join([word, *map(str, args)])
        raise NakError(f"the microcontroller on {self.port} refused {command}: {pending.outcome}")

    def drop_energising(self) -> None:
        """Forget every queued or retried command that would turn an output on (the latch tripped)."""
        with self._outbox_ready:
            kept = [pending for pending in self._outbox if not pending.energising]
            self._outbox.clear()
            self._outbox.extend(kept)
        with self._lock:
            for seq, pending in list(self._pending.items()):
                if pending.energising:
                    del self._pending[seq]
                    pending.outcome = "latched"
                    pending.done.set()

    def _write_command(self, pending: _Pending) -> None:
        """Put one command line on the wire; an energising one only through the open gate."""
        if pending.energising and self.gate is not None:
            with self.gate.energising(f"serial {pending.word}"):
                self._write(pending.line)
        else:
            self._write(pending.line)

    def _resend(self, pending: _Pending) -> None:
        self._queue(pending)

    def _queue(self, pending: _Pending) -> None:
        """Hand a command (or its retry) to the writer thread."""
        with self._outbox_ready:
            self._outbox.append(pending)
            self._outbox_ready.notify()

    def _run_writer(self) -> None:
        """Write queued lines in order; the gate is checked for each, right before its bytes."""
        while True:
            with self._outbox_ready:
                while not self._outbox and not self._stop.is_set():
                    self._outbox_ready.wait(0.1)
                if self._stop.is_set():
                    return
                pending = self._outbox.popleft()
            if pending.done.is_set():  # superseded, dropped by the latch or failed while it waited
                continue
            try:
                self._write_command(pending)
                pending.sent_at = time.monotonic()  # the ack timeout runs from the wire, not the queue
            except OutputLatchedError:
                self.drop_energising()
            except (OSError, LinkError) as error:  # a write past its deadline (write_timeout) too
                self._fault(f"writing to serial port {self.port} failed: {error}")

    def _check_ok(self) -> None:
        if self._status != "ok":
            reason = f" ({self.fault_reason})" if self.fault_reason else ""
            raise LinkLostError(f"serial link to {self.port} is {self._status}{reason}")

    def _next_seq(self) -> int:
        return next(self._counter) % (SEQ_LIMIT - 1) + 1

    def _write(self, line: bytes) -> None:
        with self._write_lock:
            if self._serial is None:
                raise LinkLostError(f"serial port {self.port} is closed")
            self._serial.write(line)
            self._last_tx = time.monotonic()

    def _write_quietly(self, line: bytes) -> None:
        try:
            self._write(line)
        except (OSError, LinkError) as error:
            log.debug("serial %s: best-effort write failed: %s", self.port, error)

    # -- the background thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self._status == "ok":
                try:
                    frames = self._read_frames()
                except OSError as error:
                    self._fault(f"serial port {self.port} failed or was disconnected: {error}")
                    break
                for frame in frames:
                    self._handle(frame)
                self._keep_time(time.monotonic())
        finally:
            if self._status != "closed":
                self._close_port()

    def _read_frames(self) -> List[Frame]:
        """Read what has arrived (waiting up to READ_TIMEOUT_S) and return the valid frames."""
        self._rx += self._serial.read(max(1, self._serial.in_waiting))
        frames = []
        while True:
            end = self._rx.find(b"\n")
            if end < 0:
                if len(self._rx) > MAX_LINE:
                    self._count_garbage(bytes(self._rx), "line too long")
                    self._rx.clear()
                return frames
            line = bytes(self._rx[:end])
            del self._rx[:end + 1]
            if not line.strip():
                continue
            try:
                frames.append(decode(line))
                self._last_rx = time.monotonic()
            except FrameError as error:
                self._count_garbage(line, str(error))

    def _count_garbage(self, line: bytes, why: str) -> None:
        self.garbage_count += 1
        log.debug("serial %s: ignored %s: %r", self.port, why, line[:MAX_LINE])

    def _handle(self, frame: Frame) -> None:
        if frame.word in ("ACK", "NAK"):
            with self._lock:
                pending = self._pending.pop(frame.seq, None)
                retry = (pending is not None and frame.word == "NAK" and frame.args[:1] == ("CRC",)
                         and pending.attempts <= self.retries)
                if retry:  # the line was damaged on the way there: send it again now
                    pending.attempts += 1
                    self._pending[frame.seq] = pending
            if pending is None:
                log.debug("serial %s: late or duplicate %s %d", self.port, frame.word, frame.seq)
            elif retry:
                self._resend(pending)
            else:
                pending.outcome = "ack" if frame.word == "ACK" else " ".join(frame.args) or "no reason given"
                pending.done.set()
                if frame.word == "NAK" and not pending.waited:  # nobody to raise NakError to
                    self._fault(f"the microcontroller refused {pending.word}: {pending.outcome}")
        elif frame.word == "DEADMAN":
            self._fault("the microcontroller's dead-man timer turned the outputs off")
        elif frame.word == "BOOT":
            self._fault("the microcontroller restarted (its outputs are off)")
        else:
            self._count_garbage(f"{frame.seq} {frame.word}".encode(), "unknown word")

    def _keep_time(self, now: float) -> None:
        """Resend unanswered commands, declare the link lost when it fell silent, send heartbeats."""
        resend: List[_Pending] = []
        expired = None
        with self._lock:
            for pending in self._pending.values():
                if now - pending.sent_at < self.ack_timeout_s:
                    continue
                if pending.attempts > self.retries:
                    expired = pending
                    break
                pending.attempts += 1
                pending.sent_at = now
                resend.append(pending)
        if expired is not None:
            self._fault(f"no answer to {expired.word} after {expired.attempts} tries")
            return
        if now - self._last_rx > self.link_timeout_s:
            self._fault(f"no valid line from the microcontroller for {self.link_timeout_s} s")
            return
        for pending in resend:
            self._resend(pending)
        if now - self._last_tx >= self.heartbeat_s:
            try:
                self.send("HB", wait=False)
            except LinkLostError:
                pass  # a fault was recorded while we were here

    def _fault(self, reason: str) -> None:
        """Mark the link lost (once), tell the firmware OFF if it still listens, and call ``on_fault``."""
        with self._lock:
            if self._status != "ok":
                return
            self._status, self.fault_reason = "lost", reason
            self._fail_pending("lost")
        log.error("serial link to %s lost: %s", self.port, reason)
        self._stop.set()
        with self._outbox_ready:
            self._outbox.clear()
            self._outbox_ready.notify_all()
        self._write_quietly(encode(self._next_seq(), "OFF"))
        if self.on_fault is not None:
            try:
                self.on_fault(reason)
            except Exception:  # a broken callback must not kill the reader
                log.exception("on_fault callback failed")

    def _fail_pending(self, outcome: str) -> None:
        for pending in self._pending.values():
            pending.outcome = outcome
            pending.done.set()
        self._pending.clear()

    def _close_port(self) -> None:
        with self._write_lock:
            if self._serial is not None:
                try:
                    self._serial.close()
                except OSError:
                    pass
                self._serial = None


class _SerialOutput:
    """What the two serial actuators share: levels in permille, and 'off' when the link is not up.

    ``wait_for_ack`` False (how the bank builds them) never blocks the caller on the reply: the
    control loop must not wait on a serial retry. The link checks the output gate at each line.
    """

    gates_at_the_wire = True
    _link: SerialLink
    _session: int
    wait_for_ack: bool

    def _send(self, word: str, *levels: float) -> None:
        self._link.send(word, *(int(round(level * 1000)) for level in levels), wait=self.wait_for_ack)
        self._session = self._link.session

    def _send_off(self, word: str, count: int) -> None:
        if self._link.status != "ok":
            return  # the firmware's dead-man timer has turned it off
        try:
            self._link.send(word, *([0] * count), wait=False)
        except LinkError:
            pass

    def _link_is_current(self) -> bool:
        return self._link.status == "ok" and self._session == self._link.session


class SerialLight(_SerialOutput, Light):
    """The RGB light driven by the microcontroller (``LIGHT r g b``, permille of full duty)."""

    def __init__(self, link: SerialLink, *, name: str = "light", color: RGB = (1.0, 1.0, 1.0),
                 wait_for_ack: bool = True) -> None:
        super().__init__(name, color)
        self._link, self._session, self.wait_for_ack = link, -1, wait_for_ack

    def _apply_rgb(self, rgb: RGB) -> None:
        self._send("LIGHT", *rgb)

    def _off(self) -> None:
        self._send_off("LIGHT", 3)

    def _current(self) -> float:
        return self._value if self._link_is_current() else 0.0


class SerialVibration(_SerialOutput, Actuator):
    """The vibration motors driven by the microcontroller (``VIB level``, permille)."""

    def __init__(self, link: SerialLink, *, name: str = "vibration", wait_for_ack: bool = True) -> None:
        super().__init__(name)
        self._link, self._session, self.wait_for_ack = link, -1, wait_for_ack

    def _apply(self, value: float) -> None:
        self._send("VIB", value)

    def _off(self) -> None:
        self._send_off("VIB", 1)

    def _current(self) -> float:
        return self._value if self._link_is_current() else 0.0
