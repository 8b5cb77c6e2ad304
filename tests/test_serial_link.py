"""The serial link against a fake microcontroller on a pty pair (real pyserial, real termios).

A test thread plays the MCU on the pty's master side; SerialLink opens the slave path with
pyserial exactly as it opens /dev/ttyACM0 on the chair. Waits are bounded polls for an
outcome (never assertions about how long something took).
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("serial")

from fakemcu import FakeMcu  # noqa: E402
from relaxd.actuators import (LinkError, LinkLostError, NakError, ProtocolVersionError, SerialLight,  # noqa: E402
                              SerialLink, SerialVibration, StimulusLevels, build_bank)
from relaxd.actuators.serial_link import FrameError, crc8, decode, encode  # noqa: E402
from relaxd.errors import ConfigError  # noqa: E402
from relaxd.settings import ActuatorSettings  # noqa: E402

# Generous where the link must stay up (a loaded CI machine), short where it must fail.
STEADY = dict(ack_timeout_s=0.25, retries=3, heartbeat_s=0.1, link_timeout_s=3.0, handshake_timeout_s=3.0,
              deadman_ms=1000)
NO_RETRIES_LEFT = dict(STEADY, retries=1)        # an unanswered heartbeat fails long before link_timeout_s
SILENCE_TIMEOUT = dict(STEADY, retries=10, link_timeout_s=0.6)  # link_timeout_s fails long before the retries


def eventually(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def mcu():
    fake = FakeMcu()
    yield fake
    fake.close()


class Faults:
    """An on_fault callback that remembers its reasons."""

    def __init__(self) -> None:
        self.reasons = []
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.event.set()


@pytest.fixture
def link_to(request):
    links = []

    def make(fake: FakeMcu, timing=STEADY, **kwargs) -> SerialLink:
        link = SerialLink(fake.port, **timing, **kwargs)
        links.append(link)
        return link

    yield make
    for link in links:
        link.close()


# -- framing -------------------------------------------------------------------------------------


def test_crc8_is_crc8_smbus():
    assert crc8(b"123456789") == 0xF4


def test_frames_round_trip_and_damage_is_detected():
    line = encode(42, "LIGHT", 1000, 500, 0)
    assert decode(line) == decode(line.rstrip(b"\n"))
    frame = decode(line)
    assert (frame.seq, frame.word, frame.args) == (42, "LIGHT", ("1000", "500", "0"))
    damaged = line.replace(b"500", b"600")
    for bad in (damaged, b"42 LIGHT 1 2 3", b"\xff\xfe *00", b"x ACK *00", b"ACK *3F"):
        with pytest.raises(FrameError):
            decode(bad)


# -- the link ------------------------------------------------------------------------------------


def test_handshake_reports_the_firmware_and_sets_the_deadman(mcu, link_to):
    link = link_to(mcu)
    assert link.open() == "9.9.9"
    assert link.status == "ok" and link.firmware == "9.9.9"
    hello = mcu.words("HELLO")[0]
    assert hello.args == ("relaxd/1", "1000")


def test_set_commands_are_acknowledged(mcu, link_to):
    link = link_to(mcu)
    link.open()
    light, vibration = SerialLight(link), SerialVibration(link)
    light.set((1.0, 0.5, 0.0), 0.5)
    vibration.value = 0.35
    assert mcu.light == (500, 250, 0) and mcu.vibration == 350  # the ACK came after the MCU acted
    assert light.value == 0.5 and vibration.value == 0.35
    light.off()
    vibration.off()
    assert eventually(lambda: mcu.light == (0, 0, 0) and mcu.vibration == 0)


def test_heartbeats_keep_the_link_up(mcu, link_to):
    faults = Faults()
    link = link_to(mcu, on_fault=faults)
    link.open()
    assert eventually(lambda: len(mcu.words("HB")) >= 5)
    assert link.status == "ok" and not faults.reasons


def test_a_reply_with_a_bad_checksum_is_ignored_and_the_command_resent(mcu, link_to):
    link = link_to(mcu)
    link.open()
    mcu.corrupt_acks = 1
    SerialVibration(link).value = 0.5
    assert link.garbage_count >= 1
    sent = [frame.seq for frame in mcu.words("VIB")]
    assert len(sent) >= 2 and len(set(sent)) == 1  # the same command, resent under the same SEQ
    assert mcu.vibration == 500 and link.status == "ok"


def test_nak_crc_makes_the_host_resend_at_once(mcu, link_to):
    link = link_to(mcu)
    link.open()
    mcu.nak_once["LIGHT"] = "CRC"
    SerialLight(link).set((1.0, 1.0, 1.0), 0.2)
    assert len(mcu.words("LIGHT")) >= 2 and mcu.light == (200, 200, 200)


def test_a_refused_command_raises_nak_error(mcu, link_to):
    link = link_to(mcu)
    link.open()
    mcu.nak_once["VIB"] = "RANGE"
    with pytest.raises(NakError, match="RANGE"):
        SerialVibration(link).value = 0.5
    assert link.status == "ok"


def test_garbage_is_counted_and_tolerated(mcu, link_to):
    link = link_to(mcu)
    link.open()
    mcu.send_raw(b"\x00\x01\x02 line noise\n")
    mcu.send_raw(b"12 ACK *ZZ\n")
    mcu.send_raw(bytes(range(128, 256)) + b"\n")
    mcu.send_raw(b"x" * 500)  # no newline at all
    mcu.send_raw(b"\n" + encode(0, "WEATHER", "sunny"))
    SerialVibration(link).value = 0.25
    assert mcu.vibration == 250 and link.status == "ok"
    assert eventually(lambda: link.garbage_count >= 5)


def test_a_newer_command_replaces_an_unanswered_older_one(mcu, link_to):
    link = link_to(mcu)
    link.open()
    mcu.ignore_once.add("LIGHT")
    link.send("LIGHT", 900, 900, 900, wait=False)
    assert eventually(lambda: mcu.words("LIGHT"))  # on the wire, its reply lost
    link.send("LIGHT", 100, 200, 300)
    time.sleep(STEADY["ack_timeout_s"] * 3)  # long enough for a retry of the stale one to have gone out
    stale = [frame for frame in mcu.words("LIGHT") if frame.args == ("900", "900", "900")]
    assert len(stale) == 1 and mcu.light == (100, 200, 300)


def test_a_command_still_queued_when_a_newer_one_comes_never_reaches_the_wire(mcu, link_to):
    """The writer skips what was superseded while it waited: a stale level is never sent late."""
    link = link_to(mcu)
    link.open()
    with link._write_lock:  # the port takes no bytes for a moment: both commands wait in the outbox
        link.send("VIB", 900, wait=False)
        link.send("VIB", 100, wait=False)
    assert eventually(lambda: mcu.vibration == 100)
    assert [frame.args for frame in mcu.words("VIB")] == [("100",)]


def test_a_port_that_takes_no_bytes_never_blocks_the_caller(mcu, link_to):
    """A stuck write is the writer thread's problem: send(wait=False) returns at once, the lines go out later."""
    link = link_to(mcu)
    link.open()
    started = time.monotonic()
    with link._write_lock:  # as if the USB buffer were full: the writer's write cannot start
        for level in range(10):
            link.send("VIB", level * 10, wait=False)
        returned = time.monotonic() - started
        assert returned < 0.1, f"sending took {returned:.3f} s with the port stuck"
    assert eventually(lambda: mcu.vibration == 90)


def test_silent_mcu_loses_the_link_and_outputs_count_as_off(mcu, link_to):
    faults = Faults()
    link = link_to(mcu, NO_RETRIES_LEFT, on_fault=faults)
    link.open()
    light, vibration = SerialLight(link), SerialVibration(link)
    light.set((1.0, 1.0, 1.0), 0.8)
    vibration.value = 0.5
    mcu.silent = True
    assert faults.event.wait(5.0)
    assert link.status == "lost" and faults.reasons == ["no answer to HB after 2 tries"]
    assert len({frame.seq for frame in mcu.words("HB")}) < len(mcu.words("HB"))  # it was resent
    assert light.value == 0.0 and vibration.value == 0.0
    with pytest.raises(LinkLostError, match="lost"):
        vibration.value = 0.2
    light.off()  # the safety path never raises: the firmware's dead-man has it covered


def test_garbage_only_loses_the_link(mcu, link_to):
    faults = Faults()
    link = link_to(mcu, SILENCE_TIMEOUT, on_fault=faults)
    link.open()
    mcu.garbage_only = True
    assert faults.event.wait(5.0)
    assert link.status == "lost" and link.garbage_count > 0
    assert "no valid line" in faults.reasons[0]


def test_unplugged_mcu_loses_the_link(mcu, link_to):
    faults = Faults()
    link = link_to(mcu, on_fault=faults)
    link.open()
    mcu.disconnect()
    assert faults.event.wait(5.0)
    assert link.status == "lost" and mcu.port in faults.reasons[0]


@pytest.mark.parametrize("report, words", [(("DEADMAN",), "dead-man"), (("BOOT", "mcu/1", "9.9.9"), "restarted")])
def test_mcu_reports_of_deadman_or_reboot_lose_the_link(mcu, link_to, report, words):
    faults = Faults()
    link = link_to(mcu, on_fault=faults)
    link.open()
    mcu.send_raw(encode(0, *report))
    assert faults.event.wait(5.0)
    assert words in faults.reasons[0]


def test_a_lost_link_can_be_opened_again_and_starts_from_off(mcu, link_to):
    link = link_to(mcu)
    link.open()
    vibration = SerialVibration(link)
    vibration.value = 0.4
    mcu.send_raw(encode(0, "DEADMAN"))
    assert eventually(lambda: link.status == "lost")
    assert link.open() == "9.9.9" and link.status == "ok"
    assert vibration.value == 0.0  # nothing is driven until someone asks again
    vibration.value = 0.3
    assert mcu.vibration == 300


def test_wrong_firmware_version_is_a_clear_error(link_to):
    fake = FakeMcu(protocol="mcu/2", firmware="2.0.0")
    try:
        with pytest.raises(ProtocolVersionError, match=r"mcu/2.*2\.0\.0.*mcu/1.*relaxd_mcu\.ino"):
            link_to(fake).open()
    finally:
        fake.close()


def test_firmware_refusing_our_version_is_a_clear_error(link_to):
    fake = FakeMcu(protocol="mcu/2", speaks="relaxd/2")
    try:
        with pytest.raises(ProtocolVersionError, match=r"refused relaxd/1.*mcu/2"):
            link_to(fake).open()
    finally:
        fake.close()


def test_no_answer_to_hello_is_link_lost(mcu, link_to):
    mcu.silent = True
    link = link_to(mcu, dict(STEADY, handshake_timeout_s=0.5))
    with pytest.raises(LinkLostError, match="no answer to HELLO"):
        link.open()
    assert link.status == "closed"


def test_missing_port_names_the_port_and_the_setting():
    link = SerialLink("/dev/relaxd-no-such-port", **STEADY)
    with pytest.raises(LinkError, match=r"/dev/relaxd-no-such-port.*actuators\.serial_port"):
        link.open()


def test_a_port_in_use_is_refused(mcu, link_to):
    link_to(mcu).open()
    with pytest.raises(LinkError, match="cannot open serial port"):
        link_to(mcu).open()


def test_heartbeat_must_be_shorter_than_the_timeouts():
    with pytest.raises(ValueError, match="link_timeout_s"):
        SerialLink("/dev/null", heartbeat_s=2.0, link_timeout_s=1.0)
    settings = ActuatorSettings(light_backend="serial", serial_heartbeat_s=2.0, serial_deadman_ms=1500,
                                serial_link_timeout_s=3.0)
    with pytest.raises(ConfigError, match="actuators.serial_heartbeat_s.*actuators.serial_deadman_ms"):
        build_bank(settings)


def test_bank_over_serial_latches_off_when_the_link_is_lost(mcu):
    settings = ActuatorSettings(light_backend="serial", vibration_backend="serial", serial_port=mcu.port,
                                serial_ack_timeout_s=0.25, serial_retries=3, serial_heartbeat_s=0.1,
                                serial_link_timeout_s=3.0, serial_deadman_ms=1000,
                                light_ramp_up_per_s=10.0, vibration_ramp_up_per_s=10.0)
    faults = Faults()
    bank = build_bank(settings, on_fault=faults)
    try:
        target = StimulusLevels(light_rgb=(1.0, 0.0, 0.0), light_brightness=0.5, vibration=0.4)
        bank.apply(target, now=0.0)
        bank.apply(target, now=1.0)  # the bank does not wait for the acknowledgements
        assert eventually(lambda: mcu.light == (500, 0, 0) and mcu.vibration == 400)
        mcu.send_raw(encode(0, "DEADMAN"))
        assert faults.event.wait(5.0)
        assert bank.latched and "serial link lost" in bank.latch_reason
        assert bank.apply(target, now=2.0).light_brightness == 0.0
    finally:
        bank.close()
    assert bank.light.closed and bank.vibration.closed
