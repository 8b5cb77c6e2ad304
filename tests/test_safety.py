"""Safety: e-stop latch and button (gpiozero MockFactory), watchdog, systemd notify, signals, safe state."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from mockpins import NCContactPin
from gpiozero import DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from relaxd.safety import (
    EStopButton,
    HealthGate,
    ResetRefusedError,
    SafetyError,
    SafetyLatch,
    SystemdNotifier,
    Watchdog,
    configured_output_pins,
    install_crash_hooks,
    install_signal_handlers,
    safe_state,
)
from relaxd.settings import ActuatorSettings, AlertSettings, SafetySettings

ESTOP_PIN = 5
OUTPUT_PIN = 18


def wait_for(predicate, what, timeout=10.0):
    """Poll until ``predicate()`` holds; a generous limit, only so a bug cannot hang the suite."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


def states(factory, pin):
    return [s.state for s in factory.pin(pin).states]


# -- the latch -----------------------------------------------------------------------------


def test_trip_turns_outputs_off_before_telling_listeners():
    order = []
    latch = SafetyLatch()
    latch.add_kill(lambda: order.append("lights off"))
    latch.add_kill(lambda: order.append("motors off"))
    latch.add_listener(lambda event: order.append(f"told {event.kind} by {event.who}"))
    assert latch.trip("panel", "operator pressed STOP") is True
    assert order == ["lights off", "motors off", "told tripped by panel"]
    assert latch.latched and latch.tripped_by == "panel" and latch.tripped_at


def test_a_failing_listener_or_kill_does_not_skip_the_others_or_fail_the_trip():
    """The fault injector's finding: a raising listener made the log call itself raise (structlog's
    ``event`` passed twice), so the listeners after it were skipped and the e-stop reported no answer."""
    told, kills = [], []
    latch = SafetyLatch()
    latch.add_kill(lambda: 1 / 0)
    latch.add_kill(lambda: kills.append("motors off"))

    def broken(event):
        raise RuntimeError("listener bug")

    latch.add_listener(broken)
    latch.add_listener(lambda event: told.append(event.kind))
    assert latch.trip("panel") is True
    assert kills == ["motors off"] and told == ["tripped"]
    latch.reset("operator")
    assert told == ["tripped", "reset"]


def test_tripping_again_turns_outputs_off_again_but_keeps_the_first_source():
    kills, events = [], []
    latch = SafetyLatch()
    latch.add_kill(lambda: kills.append(1))
    latch.add_listener(events.append)
    latch.trip("estop_button")
    assert latch.trip("panel") is False
    assert latch.tripped_by == "estop_button"
    assert len(kills) == 2 and latch.trips == 2
    assert [e.kind for e in events] == ["tripped"]


def test_a_failing_kill_does_not_stop_the_others():
    done = []
    latch = SafetyLatch()

    def broken():
        raise OSError("serial port gone")

    latch.add_kill(broken, "mcu")
    latch.add_kill(lambda: done.append("gpio off"), "gpio")
    latch.add_listener(lambda event: done.append("listener"))
    latch.trip("socket")
    assert done == ["gpio off", "listener"]
    assert latch.latched


def test_trips_from_many_threads_latch_once():
    events, kills = [], []
    latch = SafetyLatch()
    latch.add_kill(lambda: kills.append(1))
    latch.add_listener(events.append)
    barrier = threading.Barrier(8)

    def press(i):
        barrier.wait()
        latch.trip(f"thread{i}")

    threads = [threading.Thread(target=press, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(events) == 1 and len(kills) == 8
    assert latch.tripped_by == events[0].who


def test_reset_is_refused_while_an_interlock_is_open_and_starts_nothing():
    button_pressed = [True]
    kills, events = [], []
    latch = SafetyLatch()
    latch.add_kill(lambda: kills.append(1))
    latch.add_listener(events.append)
    latch.add_reset_interlock("the e-stop circuit", lambda: not button_pressed[0])
    assert latch.reset("operator") is False  # not latched: nothing to do
    latch.trip("estop_button")
    with pytest.raises(ResetRefusedError, match="release the e-stop"):
        latch.reset("operator")
    assert latch.latched
    button_pressed[0] = False
    assert latch.reset("operator") is True
    assert not latch.latched and latch.tripped_by is None
    assert [(e.kind, e.who) for e in events] == [("tripped", "estop_button"), ("reset", "operator")]
    assert len(kills) == 1  # reset ran no output code at all


def test_an_interlock_that_fails_blocks_reset():
    latch = SafetyLatch()

    def unknown():
        raise RuntimeError("pin closed")

    latch.add_reset_interlock("the e-stop circuit", unknown)
    latch.trip("panel")
    with pytest.raises(ResetRefusedError):
        latch.reset("operator")


# -- the e-stop button ---------------------------------------------------------------------


def test_button_uses_the_internal_pull_up_and_a_closed_circuit_does_not_trip():
    factory = MockFactory(pin_class=NCContactPin)
    latch = SafetyLatch()
    button = EStopButton(latch, ESTOP_PIN, pin_factory=factory)
    assert factory.pin(ESTOP_PIN).pull == "up"
    assert not button.circuit_open and not latch.latched
    button.close()


def test_pressing_turns_outputs_off_inside_the_edge_callback():
    factory = MockFactory(pin_class=NCContactPin)
    output = DigitalOutputDevice(OUTPUT_PIN, pin_factory=factory)
    latch = SafetyLatch()
    latch.add_kill(output.off)
    events = []
    latch.add_listener(events.append)
    button = EStopButton(latch, ESTOP_PIN, pin_factory=factory)
    output.on()

    factory.pin(ESTOP_PIN).drive_high()  # contact opens: the callback runs in this call
    assert states(factory, OUTPUT_PIN) == [False, True, False]
    assert latch.latched and latch.tripped_by == EStopButton.SOURCE
    assert [e.kind for e in events] == ["tripped"]

    with pytest.raises(ResetRefusedError, match=f"GPIO {ESTOP_PIN}"):
        latch.reset("operator")
    factory.pin(ESTOP_PIN).drive_low()  # button released: still latched
    assert latch.latched
    assert latch.reset("operator") is True
    assert states(factory, OUTPUT_PIN) == [False, True, False]  # reset turned nothing on
    button.close()
    output.close()


def test_an_open_circuit_at_start_trips_at_once():
    factory = MockFactory()  # plain mock pin: the pull-up lifts it, like a cut or unplugged wire
    latch = SafetyLatch()
    button = EStopButton(latch, ESTOP_PIN, pin_factory=factory)
    assert button.circuit_open
    assert latch.latched and latch.tripped_by == EStopButton.SOURCE
    with pytest.raises(ResetRefusedError):
        latch.reset("operator")
    button.close()


def test_button_on_a_pin_in_use_names_the_setting():
    factory = MockFactory()
    other = DigitalOutputDevice(ESTOP_PIN, pin_factory=factory)
    with pytest.raises(SafetyError, match="safety.estop_pin"):
        EStopButton(SafetyLatch(), ESTOP_PIN, pin_factory=factory)
    other.close()


# -- the watchdog --------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_watchdog_expires_once_per_miss_and_recovers():
    clock, expired = FakeClock(), []
    dog = Watchdog(0.5, expired.append, clock=clock)
    clock.now += 0.4
    assert dog.check() and expired == []
    dog.kick()
    clock.now += 0.6
    assert dog.check() is False
    clock.now += 1.0
    assert dog.check() is False  # the same miss: no second call
    assert expired == [pytest.approx(0.6)] and dog.misses == 1
    dog.kick()
    assert dog.check() and dog.healthy
    clock.now += 0.7
    assert dog.check() is False
    assert dog.misses == 2 and len(expired) == 2


def test_watchdog_survives_a_failing_callback():
    clock = FakeClock()

    def broken(late):
        raise RuntimeError("bank gone")

    dog = Watchdog(0.5, broken, clock=clock)
    clock.now += 1.0
    assert dog.check() is False and dog.misses == 1


def test_watchdog_thread_turns_outputs_off_when_the_loop_stops_kicking():
    factory = MockFactory()
    output = DigitalOutputDevice(OUTPUT_PIN, pin_factory=factory)
    output.on()
    fired = threading.Event()
    dog = Watchdog(0.05, lambda late: (output.off(), fired.set()))
    dog.start()
    try:
        assert fired.wait(10.0)
    finally:
        dog.stop()
    assert states(factory, OUTPUT_PIN) == [False, True, False]
    assert not dog.healthy
    output.close()


def test_watchdog_needs_a_positive_deadline():
    with pytest.raises(SafetyError, match="watchdog_deadline_s"):
        Watchdog(0.0, lambda late: None)


# -- systemd notify ------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5.0)
    yield sock, path
    sock.close()


def test_notifier_does_nothing_without_notify_socket():
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_notifier_sends_datagrams_to_a_path_socket(notify_socket):
    sock, path = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("up and\nrunning")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up and running"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.status("camera lost")
    assert sock.recv(4096) == b"STATUS=camera lost"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_notifier_handles_the_abstract_namespace():
    name = f"relaxd-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_notifier_failure_is_not_fatal(tmp_path):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert notifier.watchdog() is False
    notifier.close()


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "20000000"}, 20.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 20.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_from_the_environment(env, expected):
    assert SystemdNotifier(env).watchdog_interval() == expected


def test_health_gate_pings_only_while_everything_is_healthy(notify_socket):
    sock, path = notify_socket
    camera_ok, link_broken = [True], [False]

    def link_check():
        if link_broken[0]:
            raise RuntimeError("link object gone")
        return True

    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    gate = HealthGate(notifier, {"control loop": lambda: True})
    gate.add("camera", lambda: camera_ok[0])
    gate.add("microcontroller link", link_check)
    assert gate.tick() is True
    assert sock.recv(4096) == b"WATCHDOG=1"

    camera_ok[0] = False
    assert gate.tick() is False
    assert sock.recv(4096) == b"STATUS=unhealthy: camera"
    link_broken[0] = True  # a check that raises counts as unhealthy
    assert gate.failing() == ["camera", "microcontroller link"]

    camera_ok[0], link_broken[0] = True, False
    assert gate.tick() is True
    assert sock.recv(4096) == b"STATUS=healthy"
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_health_gate_thread(notify_socket):
    sock, path = notify_socket
    assert HealthGate(SystemdNotifier({"NOTIFY_SOCKET": path})).start() is False  # no WatchdogSec: no thread
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    gate = HealthGate(notifier, {"loop": lambda: True})
    assert gate.start() is True
    try:
        assert [sock.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3
    finally:
        gate.stop()
        notifier.close()


# -- signals and crashes -------------------------------------------------------------------


def test_sigterm_runs_the_handler_instead_of_killing():
    received = []
    before = signal.getsignal(signal.SIGTERM)
    restore = install_signal_handlers(received.append)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(lambda: received, "the SIGTERM handler")
        signal.raise_signal(signal.SIGINT)
        wait_for(lambda: len(received) == 2, "the SIGINT handler")
    finally:
        restore()
    assert received == ["SIGTERM", "SIGINT"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_signal_handlers_need_the_main_thread():
    errors = []

    def install():
        try:
            install_signal_handlers(lambda name: None)
        except SafetyError as exc:
            errors.append(exc)

    t = threading.Thread(target=install)
    t.start()
    t.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


def test_crash_hooks_turn_outputs_off_on_an_unhandled_exception(monkeypatch):
    seen_by_old = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen_by_old.append(args.exc_type))
    monkeypatch.setattr(sys, "excepthook", lambda *args: seen_by_old.append(args[0]))
    crashes = []
    restore = install_crash_hooks(crashes.append)
    try:
        def boom():
            raise ValueError("bad frame")

        t = threading.Thread(target=boom, name="capture")
        t.start()
        t.join()
        sys.excepthook(KeyError, KeyError("x"), None)
    finally:
        restore()
    assert crashes[0].startswith("unhandled ValueError in thread capture")
    assert crashes[1].startswith("unhandled KeyError in the main thread")
    assert seen_by_old == [ValueError, KeyError]  # the previous hooks still ran


# -- relaxd safe-state ---------------------------------------------------------------------


def chair_settings(**actuators):
    """Settings with GPIO outputs (light, motor, active-low relay) and the e-stop input."""
    options = dict(light_backend="gpio", vibration_backend="gpio", light_red_pin=12, light_green_pin=13,
                   light_blue_pin=19, vibration_pin=OUTPUT_PIN)
    options.update(actuators)
    return SimpleNamespace(
        actuators=ActuatorSettings(**options),
        alerts=AlertSettings(relay_pin=21, relay_active_high=False),
        safety=SafetySettings(estop_pin=ESTOP_PIN),
    )


def test_configured_output_pins():
    pins = [(p.name, p.pin, p.active_high) for p in configured_output_pins(chair_settings())]
    assert pins == [
        ("actuators.light_red_pin", 12, True), ("actuators.light_green_pin", 13, True),
        ("actuators.light_blue_pin", 19, True), ("actuators.vibration_pin", OUTPUT_PIN, True),
        ("alerts.relay_pin", 21, False),
    ]
    simulated = chair_settings(light_backend="simulated", vibration_backend="serial")
    assert [p.name for p in configured_output_pins(simulated)] == ["alerts.relay_pin"]


def test_safe_state_drives_every_output_off():
    factory = MockFactory()
    left_on = DigitalOutputDevice(OUTPUT_PIN, pin_factory=factory, initial_value=True)
    left_on.close()  # the daemon died with the motor pin still high
    report = safe_state(chair_settings(), pin_factory=factory)
    assert states(factory, OUTPUT_PIN) == [False, True, False]
    for pin in (12, 13, 19):
        assert factory.pin(pin).state is False
    assert factory.pin(21).state is True  # the active-low relay's off level
    assert ESTOP_PIN not in factory.pins  # an input: never driven
    assert f"GPIO {OUTPUT_PIN} (actuators.vibration_pin): off" in report
    assert len(report) == 5


def test_safe_state_commands_the_microcontroller_when_it_drives_an_output():
    factory = MockFactory()
    settings = chair_settings(vibration_backend="serial")
    report = safe_state(settings, pin_factory=factory, mcu_off=lambda: "OFF acknowledged")
    assert report[-1] == "microcontroller: OFF acknowledged"
    assert OUTPUT_PIN not in factory.pins  # the motor is on the microcontroller now


def test_safe_state_reports_what_failed_and_still_does_the_rest(tmp_path):
    factory = MockFactory()
    holder = DigitalOutputDevice(13, pin_factory=factory)  # another process still holds a pin
    settings = chair_settings(vibration_backend="serial", serial_port=str(tmp_path / "no-such-tty"))
    with pytest.raises(SafetyError) as info:
        safe_state(settings, pin_factory=factory)  # the real serial link, to a port that is not there
    message = str(info.value)
    assert "GPIO 13 (actuators.light_green_pin): FAILED" in message
    assert "microcontroller: FAILED" in message and "no-such-tty" in message
    assert factory.pin(12).state is False and factory.pin(21).state is True
    holder.close()


def test_safe_state_in_simulation_has_nothing_to_do():
    settings = SimpleNamespace(actuators=ActuatorSettings(), alerts=AlertSettings())
    assert safe_state(settings) == ["no GPIO output or microcontroller configured (simulation): nothing to turn off"]
