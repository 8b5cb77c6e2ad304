"""The reference firmware itself (compiled with g++ against tests/firmware), not a model of it.

Three layers: the sketch's protocol line by line; its dead-man timer against a clock the test
moves; and the daemon's own SerialLink and ActuatorBank driving it, including an e-stop in the
middle of a ramp. ``test_the_fake_answers_exactly_as_the_firmware_does`` keeps ``FakeMcu``
(which the fault tests use, because a real board cannot be told to misbehave) from drifting.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("serial")

from fakemcu import FakeMcu  # noqa: E402
from firmwarekit import PIN_BLUE, PIN_GREEN, PIN_RED, PIN_VIBRATION, FirmwareBuildError, FirmwareMcu, build  # noqa: E402
from relaxd.actuators import StimulusLevels, build_bank  # noqa: E402
from relaxd.actuators.serial_link import crc8, decode, encode  # noqa: E402
from relaxd.settings import ActuatorSettings  # noqa: E402

try:
    build()
except FirmwareBuildError as error:  # g++ missing: .ci/run installs it, so CI never skips
    pytest.skip(str(error), allow_module_level=True)

ALL_OFF = {PIN_RED: 0, PIN_GREEN: 0, PIN_BLUE: 0, PIN_VIBRATION: 0}


@pytest.fixture
def board():
    mcu = FirmwareMcu(manual_clock=True)
    yield mcu
    mcu.close()


def ask(board: FirmwareMcu, seq: int, word: str, *args) -> tuple:
    board.write(encode(seq, word, *args))
    frame = decode(board.read_line())
    return (frame.seq, frame.word, *frame.args)


def test_the_board_boots_with_every_output_off_and_says_so(board):
    frame = decode(board.read_line())
    assert (frame.seq, frame.word, frame.args) == (0, "BOOT", ("mcu/1", "1.0.0"))
    assert board.pins() == ALL_OFF


def test_hello_light_vibration_and_off_drive_the_pins(board):
    board.read_line()  # BOOT
    assert ask(board, 1, "HELLO", "relaxd/1", 1500) == (1, "ACK", "mcu/1", "1.0.0")
    assert ask(board, 2, "LIGHT", 1000, 500, 0) == (2, "ACK")
    assert ask(board, 3, "VIB", 400) == (3, "ACK")
    assert board.pins() == {PIN_RED: 255, PIN_GREEN: 128, PIN_BLUE: 0, PIN_VIBRATION: 102}  # permille -> 0..255
    assert ask(board, 4, "OFF") == (4, "ACK")
    assert board.pins() == ALL_OFF


@pytest.mark.parametrize(("line", "reply"), [
    (encode(5, "VIB", 1001), (5, "NAK", "RANGE")),
    (encode(6, "LIGHT", 10, 20), (6, "NAK", "SYNTAX")),
    (encode(7, "DANCE"), (7, "NAK", "UNKNOWN")),
    (encode(8, "HELLO", "relaxd/9"), (8, "NAK", "VERSION", "mcu/1")),
    (encode(9, "HELLO", "relaxd/1", 50), (9, "NAK", "RANGE")),
    (b"10 VIB 500 *00\n", (10, "NAK", "CRC")),
    (b"11 VIB 500\n", (11, "NAK", "CRC")),
])
def test_bad_lines_are_refused_and_change_nothing(board, line, reply):
    board.read_line()  # BOOT
    ask(board, 1, "VIB", 200)
    board.write(line)
    frame = decode(board.read_line())
    assert (frame.seq, frame.word, *frame.args) == reply
    assert board.pins()[PIN_VIBRATION] == 51  # still the 200 permille of before


def test_an_overlong_line_is_dropped_unanswered_and_the_next_one_works(board):
    board.read_line()  # BOOT
    board.write(b"1 VIB 999 " + b"x" * 200 + b"\n")
    assert ask(board, 2, "HB") == (2, "ACK")  # the first line the board answers is this one
    assert board.pins() == ALL_OFF


def test_the_dead_man_turns_everything_off_after_silence_and_only_then(board):
    board.read_line()  # BOOT
    ask(board, 1, "HELLO", "relaxd/1", 500)
    ask(board, 2, "LIGHT", 300, 300, 300)
    ask(board, 3, "VIB", 800)
    board.advance(450)  # under the 500 ms dead-man: still on
    assert board.pins()[PIN_VIBRATION] == 204
    assert ask(board, 4, "HB") == (4, "ACK")  # a valid line restarts the timer
    board.advance(450)
    assert board.pins()[PIN_VIBRATION] == 204
    board.advance(100)  # 550 ms since the heartbeat
    frame = decode(board.read_line())
    assert (frame.seq, frame.word) == (0, "DEADMAN")
    assert board.pins() == ALL_OFF
    board.advance(5000)  # disarmed: no second report, and nothing comes back on by itself
    assert board.pins() == ALL_OFF
    assert ask(board, 5, "VIB", 100) == (5, "ACK")  # only a new command turns an output on
    assert board.pins()[PIN_VIBRATION] == 26


def test_a_line_with_a_bad_checksum_does_not_feed_the_dead_man(board):
    board.read_line()  # BOOT
    ask(board, 1, "HELLO", "relaxd/1", 500)
    ask(board, 2, "VIB", 800)
    board.advance(300)
    board.write(b"3 HB *00\n")
    assert decode(board.read_line()).word == "NAK"
    board.advance(300)  # 600 ms since the last *valid* line
    assert decode(board.read_line()).word == "DEADMAN"
    assert board.pins() == ALL_OFF


SCRIPT = [
    encode(1, "HELLO", "relaxd/1", 1500),
    encode(2, "LIGHT", 100, 200, 300),
    encode(3, "VIB", 450),
    encode(4, "HB"),
    encode(5, "VIB", 1001),
    encode(6, "LIGHT", 1, 2),
    encode(7, "VIB", "abc"),
    encode(8, "FLY"),
    encode(9, "HELLO", "relaxd/2"),
    b"10 VIB 5 *ZZ\n",
    encode(11, "OFF"),
]


def replies_of(read_line, write) -> list[tuple]:
    out = []
    for line in SCRIPT:
        write(line)
        frame = decode(read_line())
        while frame.word == "BOOT":  # the fake announces itself on HELLO, the board at power-up
            frame = decode(read_line())
        out.append((frame.seq, frame.word, *frame.args))
    return out


def test_the_fake_answers_exactly_as_the_firmware_does(board):
    """FakeMcu stands in for the board in the fault tests: it must give the board's answers."""
    import os
    import select

    board.read_line()  # BOOT
    from_board = replies_of(board.read_line, board.write)

    fake = FakeMcu(firmware="1.0.0")
    try:
        import tty
        slave = os.open(fake.port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(slave)

        def read_line():
            line = b""
            while not line.endswith(b"\n"):
                ready, _, _ = select.select([slave], [], [], 2.0)
                assert ready, f"the fake sent no complete line (got {line!r})"
                line += os.read(slave, 1)
            return line

        from_fake = replies_of(read_line, lambda data: os.write(slave, data))
        os.close(slave)
    finally:
        fake.close()
    assert from_fake == from_board


@pytest.fixture
def live_board():
    mcu = FirmwareMcu(manual_clock=False)  # real time: the link's heartbeats keep the dead-man fed
    yield mcu
    mcu.close()


def serial_bank(port: str):
    settings = ActuatorSettings(light_backend="serial", vibration_backend="serial", serial_port=port,
                                serial_ack_timeout_s=0.2, serial_retries=2, serial_heartbeat_s=0.2,
                                serial_link_timeout_s=3.0, serial_deadman_ms=1500,
                                light_ramp_up_per_s=5.0, vibration_ramp_up_per_s=5.0)
    faults: list[str] = []
    return build_bank(settings, on_fault=faults.append), faults


def eventually(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_the_daemons_bank_drives_the_real_firmware_and_its_estop_holds(live_board):
    """SerialLink's handshake and levels against the sketch, then e-stops in the middle of a ramp."""
    bank, faults = serial_bank(live_board.port)
    stop = threading.Event()
    lock = threading.Lock()

    def control_loop():
        now = 0.0
        while not stop.is_set():
            now += 0.05
            with lock:
                bank.apply(StimulusLevels(light_rgb=(1.0, 0.5, 0.2), light_brightness=1.0, vibration=1.0), now)
            time.sleep(0.01)

    loop = threading.Thread(target=control_loop)
    loop.start()
    try:
        assert eventually(lambda: live_board.pins()[PIN_VIBRATION] > 0), "the bank never reached the board"
        for trip in range(5):
            time.sleep(0.15 + 0.02 * trip)
            assert bank.all_off(f"e-stop {trip}")
            time.sleep(0.3)  # in-flight lines, their answers, any retry
            for _ in range(5):  # and it stays off while the loop keeps asking for full output
                assert live_board.pins() == ALL_OFF, f"trip {trip}: the board is on after the e-stop"
                time.sleep(0.05)
            with lock:
                bank.reset_latch()
            assert eventually(lambda: live_board.pins()[PIN_VIBRATION] > 0)
    finally:
        stop.set()
        loop.join()
        bank.close()
    assert live_board.pins() == ALL_OFF  # closing the bank leaves the board off
    assert faults == []


def test_crc8_is_the_boards(board):
    """The host and the sketch share CRC-8/SMBUS: the board accepts what the host computes."""
    board.read_line()  # BOOT
    body = b"42 HB"
    board.write(body + b" *%02X\n" % crc8(body))
    assert decode(board.read_line()).seq == 42
