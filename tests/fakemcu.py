"""A fake microcontroller that speaks mcu/1 on the master side of a pty pair.

``SerialLink`` opens the slave path with pyserial exactly as it opens /dev/ttyACM0 on the chair.
"""

from __future__ import annotations

import os
import select
import threading
import time

from relaxd.actuators.serial_link import FrameError, decode, encode


class FakeMcu:
    """Speaks mcu/1 on the master fd of a pty, with switches to misbehave."""

    def __init__(self, protocol: str = "mcu/1", firmware: str = "9.9.9", speaks: str = "relaxd/1") -> None:
        self.master, self._slave = os.openpty()
        self.port = os.ttyname(self._slave)
        self.protocol, self.firmware, self.speaks = protocol, firmware, speaks
        self.received = []  # valid frames from the host, in order
        self.light, self.vibration = (0, 0, 0), 0
        self.silent = False         # read but never answer
        self.garbage_only = False   # answer every line with noise instead of a reply
        self.corrupt_acks = 0       # this many ACKs go out with a wrong checksum
        self.nak_once = {}          # WORD -> NAK reason for its next occurrence
        self.ignore_once = set()    # WORDs whose next occurrence gets no answer
        self.ack_delay_s = 0.0      # a slow board: each line takes effect at once, its reply comes this late
        self.nak_always = {}        # WORD -> NAK reason for every occurrence
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def words(self, word):
        return [frame for frame in self.received if frame.word == word]

    def send_raw(self, data: bytes) -> None:
        if self.master >= 0:
            os.write(self.master, data)

    def disconnect(self) -> None:
        """Unplug the cable: stop reading, then close the master side."""
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        if self.master >= 0:
            self.disconnect()
        os.close(self._slave)

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                buffer += os.read(self.master, 4096)
            except OSError:
                return
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._handle(line)

    def _reply(self, seq: int, *words) -> None:
        if self.ack_delay_s:
            timer = threading.Timer(self.ack_delay_s, self._send_reply, (seq, *words))
            timer.daemon = True
            timer.start()
        else:
            self._send_reply(seq, *words)

    def _send_reply(self, seq: int, *words) -> None:
        line = encode(seq, *words)
        if words[0] == "ACK" and self.corrupt_acks > 0:
            self.corrupt_acks -= 1
            line = line[:-3] + (b"00" if not line.endswith(b"00\n") else b"01") + b"\n"
        self.send_raw(line)

    def _handle(self, line: bytes) -> None:
        try:
            frame = decode(line)
        except FrameError:
            self.send_raw(encode(_seq_guess(line), "NAK", "CRC"))  # as the sketch: atol() of the line
            return
        self.received.append(frame)
        if self.silent:
            return
        if self.garbage_only:
            self.send_raw(b"\x00\xff~~ noise ~~\n")
            return
        if frame.word in self.ignore_once:
            self.ignore_once.discard(frame.word)
            return
        if frame.word in self.nak_always:
            self._reply(frame.seq, "NAK", self.nak_always[frame.word])
            return
        if frame.word in self.nak_once:
            self._reply(frame.seq, "NAK", self.nak_once.pop(frame.word))
            return
        refusal = _refusal(frame)  # the sketch's own checks, in its order
        if refusal:
            self._reply(frame.seq, "NAK", *refusal)
            return
        if frame.word == "HELLO":
            if frame.args[:1] != (self.speaks,):
                self._reply(frame.seq, "NAK", "VERSION", self.protocol)
                return
            if len(frame.args) > 1 and not _number_in(frame.args[1], 100, 10000):
                self._reply(frame.seq, "NAK", "RANGE")
                return
            self.send_raw(encode(0, "BOOT", self.protocol, self.firmware))  # noise the host must skip
            self._reply(frame.seq, "ACK", self.protocol, self.firmware)
            return
        if frame.word == "LIGHT":
            self.light = tuple(int(a) for a in frame.args)
        elif frame.word == "VIB":
            self.vibration = int(frame.args[0])
        elif frame.word == "OFF":
            self.light, self.vibration = (0, 0, 0), 0
        self._reply(frame.seq, "ACK")


LEVEL_WORDS = {"LIGHT": 3, "VIB": 1}  # word -> number of permille levels it carries
WORDS = ("HELLO", "LIGHT", "VIB", "OFF", "HB")


def _number_in(text: str, low: int, high: int) -> bool:
    """The sketch's parseNumber: at most 6 decimal digits, within [low, high]."""
    return 0 < len(text) <= 6 and text.isdigit() and low <= int(text) <= high


def _refusal(frame) -> tuple:
    """The NAK the sketch gives a well-framed line (SYNTAX, RANGE, UNKNOWN), or () to go on."""
    if frame.word not in WORDS:
        return ("UNKNOWN",)
    if frame.word in LEVEL_WORDS:
        if len(frame.args) != LEVEL_WORDS[frame.word]:
            return ("SYNTAX",)
        if not all(_number_in(arg, 0, 1000) for arg in frame.args):
            return ("RANGE",)
    return ()


def _seq_guess(line: bytes) -> int:
    """C's atol() of the line: its leading digits, else 0."""
    digits = b""
    for byte in line.lstrip(b" "):
        if not chr(byte).isdigit():
            break
        digits += bytes([byte])
    return int(digits) % 65536 if digits else 0
