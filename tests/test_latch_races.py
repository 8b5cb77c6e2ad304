"""The latch against writes already on their way: a slow board, lost replies, retries in flight.

The fault injector's finding: with a board that acknowledges 150 ms late, an e-stop's zeros
were followed ~50 ms later by ``VIB 42`` from the rest of an update in flight, or by a retry of
it. Here the fake microcontroller records every line in wire order; after the first zero that
an ``all_off`` sent, no line with a non-zero level may follow.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("serial")

from fakemcu import FakeMcu  # noqa: E402
from relaxd.actuators import StimulusLevels, build_bank  # noqa: E402
from relaxd.actuators.base import OutputGate, OutputLatchedError  # noqa: E402
from relaxd.actuators.serial_link import is_energising  # noqa: E402
from relaxd.settings import ActuatorSettings  # noqa: E402

FULL = StimulusLevels(light_rgb=(1.0, 0.4, 0.1), light_brightness=1.0, vibration=1.0)


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


def serial_bank(mcu, **overrides):
    settings = ActuatorSettings(**{**dict(
        light_backend="serial", vibration_backend="serial", serial_port=mcu.port,
        serial_ack_timeout_s=0.1, serial_retries=3, serial_heartbeat_s=0.2, serial_link_timeout_s=3.0,
        serial_deadman_ms=1500, light_ramp_up_per_s=5.0, vibration_ramp_up_per_s=5.0), **overrides})
    faults = []
    return build_bank(settings, on_fault=faults.append), faults


def energising_after_zeros(frames, zeros_from: int) -> list:
    """Energising frames received after the first all-off frame at or after index ``zeros_from``."""
    tail = frames[zeros_from:]
    for index, frame in enumerate(tail):
        if frame.word in ("LIGHT", "VIB", "OFF") and not is_energising(frame.word, frame.args):
            return [f for f in tail[index:] if is_energising(f.word, f.args)]
    return []


@pytest.mark.parametrize("wait_for_ack", [False, True], ids=["fire-and-forget", "waiting-for-acks"])
def test_an_estop_during_updates_to_a_slow_board_is_never_undone(mcu, wait_for_ack):
    """12 e-stops at different points of a ramp while the board answers 150 ms late.

    Waiting for each acknowledgement (as the bank did before) leaves an update in flight for
    150 ms per line: the gate in front of each line is what refuses the rest of it.
    """
    bank, faults = serial_bank(mcu, serial_ack_timeout_s=0.3)
    bank.light.wait_for_ack = bank.vibration.wait_for_ack = wait_for_ack
    mcu.ack_delay_s = 0.15
    stop = threading.Event()
    lock = threading.Lock()  # the test's own: reset and the loop take turns, as in the daemon

    def control_loop():
        now = 0.0
        while not stop.is_set():
            now += 0.05
            with lock:
                bank.apply(FULL, now)
            time.sleep(0.005)

    loop = threading.Thread(target=control_loop)
    loop.start()
    try:
        for trip in range(12):
            time.sleep(0.1 + 0.013 * trip)  # a different point of the update each time
            mark = len(mcu.received)
            assert bank.all_off(f"e-stop {trip}")
            time.sleep(0.45)  # long enough for the in-flight lines, their late answers and retries
            late = energising_after_zeros(list(mcu.received), mark)
            assert late == [], f"trip {trip}: {late} after the zeros"
            assert mcu.vibration == 0 and mcu.light == (0, 0, 0)
            with lock:
                bank.reset_latch()
    finally:
        stop.set()
        loop.join()
        bank.close()
    assert faults == []  # a slow board is not a fault


def test_a_retry_in_flight_is_dropped_when_the_latch_trips(mcu):
    """The board loses the reply to VIB 300; its retry is due after the e-stop: it must not go out."""
    bank, _ = serial_bank(mcu, serial_ack_timeout_s=0.3, vibration_ramp_up_per_s=100.0)
    try:
        mcu.ignore_once.add("VIB")
        bank.apply(StimulusLevels(vibration=0.3), 0.0)
        bank.apply(StimulusLevels(vibration=0.3), 1.0)  # VIB 300 out, its reply lost
        assert eventually(lambda: len(mcu.words("VIB")) >= 1)
        mark = len(mcu.received)
        bank.all_off("e-stop")
        time.sleep(1.0)  # several ack timeouts: a retry would have been sent by now
        assert energising_after_zeros(list(mcu.received), mark) == []
        assert mcu.vibration == 0
        assert [f.args for f in mcu.words("VIB")].count(("300",)) == 1
    finally:
        bank.close()


def test_the_gate_drops_a_queued_energising_command_before_its_retry(mcu):
    """Without the bank's zeros to supersede it, the gate alone keeps a retry of VIB 300 off the wire."""
    bank, _ = serial_bank(mcu, serial_ack_timeout_s=0.2)
    link = bank.vibration._link
    try:
        mcu.ignore_once.add("VIB")
        link.send("VIB", 300, wait=False)
        assert eventually(lambda: len(mcu.words("VIB")) == 1)
        bank.gate.close("e-stop")  # the gate only: no zeros are written here
        time.sleep(0.8)  # four ack timeouts
        assert [f.args for f in mcu.words("VIB")] == [("300",)]
        with pytest.raises(OutputLatchedError):
            link.send("VIB", 100, wait=False)
        link.send("VIB", 0, wait=True)  # zeros always pass
    finally:
        bank.close()


def test_gate_refuses_energising_writes_once_closed_and_waits_for_one_in_flight():
    gate = OutputGate(lock_wait_s=2.0)
    inside, release, order = threading.Event(), threading.Event(), []

    def writer():
        with gate.energising("test write"):
            inside.set()
            release.wait(5.0)
            order.append("energising write done")

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(5.0)
    threading.Timer(0.2, release.set).start()
    assert gate.close("e-stop")
    order.append("close returned")
    thread.join()
    assert order == ["energising write done", "close returned"]
    with pytest.raises(OutputLatchedError, match="e-stop"):
        with gate.energising("late write"):
            pass
    assert not gate.close("again")  # already closed: the first reason stays
    assert gate.reason == "e-stop"
    gate.open()
    with gate.energising("after reset"):
        pass


def test_a_refused_command_from_the_loop_faults_instead_of_raising(mcu):
    """One NAK RANGE used to end the daemon (exit 2); now the bank latches and reports it."""
    bank, faults = serial_bank(mcu, vibration_ramp_up_per_s=100.0)
    try:
        mcu.nak_always["VIB"] = "RANGE"
        bank.apply(StimulusLevels(vibration=0.5), 0.0)
        bank.apply(StimulusLevels(vibration=0.5), 1.0)  # refused by the board, reported, not raised
        assert eventually(lambda: faults != [])
        assert "refused VIB: RANGE" in faults[0]
        assert bank.latched
        assert bank.apply(StimulusLevels(vibration=0.5), 2.0).vibration == 0.0
    finally:
        bank.close()


def test_a_silent_board_faults_the_bank_without_raising_into_the_loop(mcu):
    bank, faults = serial_bank(mcu, serial_retries=1, vibration_ramp_up_per_s=100.0)
    try:
        bank.apply(StimulusLevels(vibration=0.5), 0.0)
        mcu.silent = True
        now = 1.0
        deadline = time.monotonic() + 5.0
        while not faults and time.monotonic() < deadline:
            bank.apply(StimulusLevels(vibration=0.5), now)  # never raises, whatever the link does
            now += 0.05
            time.sleep(0.05)
        assert faults and bank.latched
        bank.apply(StimulusLevels(vibration=0.5), now + 1.0)
    finally:
        bank.close()
