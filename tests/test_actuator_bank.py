"""The actuator bank: caps, ramps (with a fake clock), the safety latch, and thread safety."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("gpiozero")
from gpiozero.pins.mock import MockFactory, MockPWMPin  # noqa: E402

from relaxd.actuators import (ActuatorBank, ActuatorClosedError, GpioLight, GpioVibration, PinError,  # noqa: E402
                              SimulatedActuator, SimulatedLight, StimulusLevels, build_bank)
from relaxd.settings import ActuatorSettings  # noqa: E402

SETTINGS = ActuatorSettings(light_ramp_up_per_s=0.5, sound_ramp_up_per_s=0.2, vibration_ramp_up_per_s=0.1,
                            ramp_down_per_s=2.0, color_ramp_per_s=1.0, max_step_s=0.25,
                            max_light=1.0, max_sound=0.8, max_vibration=0.6)
FULL = StimulusLevels(light_rgb=(1.0, 0.5, 0.0), light_brightness=1.0, sound_volume=1.0, vibration=1.0)
DARK = StimulusLevels(light_rgb=(1.0, 0.5, 0.0))
PINS = (17, 27, 22, 12)  # red, green, blue, vibration


def simulated_bank(settings=SETTINGS) -> ActuatorBank:
    return ActuatorBank(SimulatedLight(), SimulatedActuator("sound"), SimulatedActuator("vibration"), settings)


def run(bank, targets, start, stop, step=0.1):
    """Call apply() at start, start + step, ... up to stop; return the levels of each call."""
    levels, now = [], start
    while now <= stop + 1e-9:
        levels.append(bank.apply(targets, now))
        now = round(now + step, 9)
    return levels


def test_stimulus_levels_are_checked():
    with pytest.raises(ValueError, match="vibration"):
        StimulusLevels(vibration=1.2)
    with pytest.raises(ValueError, match="light_rgb"):
        StimulusLevels(light_rgb=(1.0, 0.0))


def test_levels_ramp_up_no_faster_than_their_rates():
    bank = simulated_bank()
    levels = run(bank, FULL, 0.0, 1.0)
    assert levels[0].light_brightness == 0.0  # the first call has no time step: nothing moves
    assert levels[-1].light_brightness == pytest.approx(0.5)
    assert levels[-1].sound_volume == pytest.approx(0.2)
    assert levels[-1].vibration == pytest.approx(0.1)
    rises = [b.light_brightness - a.light_brightness for a, b in zip(levels, levels[1:])]
    assert max(rises) == pytest.approx(0.05)
    assert bank.light.value == pytest.approx(0.5) and bank.vibration.value == pytest.approx(0.1)


def test_a_late_update_never_jumps():
    bank = simulated_bank()
    bank.apply(FULL, 0.0)
    after_a_stall = bank.apply(FULL, 60.0)
    assert after_a_stall.light_brightness == pytest.approx(0.5 * SETTINGS.max_step_s)


def test_a_clock_going_backwards_moves_nothing():
    bank = simulated_bank()
    run(bank, FULL, 0.0, 1.0)
    before = bank.levels
    assert bank.apply(FULL, 0.5) == before


def test_levels_fall_faster_than_they_rise_but_still_smoothly():
    bank = simulated_bank()
    run(bank, FULL, 0.0, 4.0)
    assert bank.levels.light_brightness == pytest.approx(1.0)
    levels = run(bank, DARK, 4.1, 5.0)
    falls = [a.light_brightness - b.light_brightness for a, b in zip([bank.levels] + levels, levels)]
    assert levels[0].light_brightness == pytest.approx(0.8)  # one step at ramp_down_per_s, not zero
    assert max(falls) <= 0.2 + 1e-9
    assert levels[-1].light_brightness == 0.0


def test_caps_limit_each_channel_and_lowering_a_cap_ramps_down():
    bank = simulated_bank()
    bank.set_caps(light=0.3)
    run(bank, FULL, 0.0, 12.0)
    assert bank.levels.light_brightness == pytest.approx(0.3)
    assert bank.levels.sound_volume == pytest.approx(0.8)  # the settings' ceiling
    assert bank.levels.vibration == pytest.approx(0.6)
    bank.set_caps(vibration=0.2, sound=0.9)
    assert bank.caps == {"light": 0.3, "sound": 0.8, "vibration": 0.2}
    step = bank.apply(FULL, 12.1)
    assert step.vibration == pytest.approx(0.4)  # on its way down at ramp_down_per_s
    run(bank, FULL, 12.2, 13.0)
    assert bank.levels.vibration == pytest.approx(0.2) and bank.vibration.value == pytest.approx(0.2)
    with pytest.raises(ValueError, match="light cap"):
        bank.set_caps(light=1.5)


def test_colour_is_taken_at_once_while_dark_and_ramped_while_lit():
    bank = simulated_bank()
    bank.apply(FULL, 0.0)
    assert bank.levels.light_rgb == (1.0, 0.5, 0.0)
    run(bank, FULL, 0.1, 1.0)
    blue = StimulusLevels(light_rgb=(0.0, 0.0, 1.0), light_brightness=0.5)
    step = bank.apply(blue, 1.1)
    assert step.light_rgb == pytest.approx((0.9, 0.4, 0.1))
    red, green, blue_duty = bank.light.output
    assert red == pytest.approx(0.9 * 0.5)


def test_all_off_is_immediate_and_latches():
    bank = simulated_bank()
    run(bank, FULL, 0.0, 2.0)
    bank.all_off("e-stop pressed")
    assert bank.light.output == (0.0, 0.0, 0.0)
    assert bank.sound.value == 0.0 and bank.vibration.value == 0.0
    assert bank.latched and bank.latch_reason == "e-stop pressed"
    writes = len(bank.vibration.history)
    assert bank.apply(FULL, 2.1).vibration == 0.0
    assert len(bank.vibration.history) == writes  # latched: apply() wrote nothing
    bank.all_off("again")
    assert bank.latch_reason == "e-stop pressed"  # the first reason is kept


def test_reset_latch_does_not_restart_stimulation_by_itself():
    bank = simulated_bank()
    run(bank, FULL, 0.0, 2.0)
    bank.all_off()
    bank.reset_latch()
    assert not bank.latched and bank.levels.light_brightness == 0.0
    assert bank.apply(FULL, 2.1).light_brightness == 0.0  # first call after the reset: no time step
    assert bank.apply(FULL, 2.2).light_brightness == pytest.approx(0.05)  # then up from zero, by the ramp


def test_a_failing_output_turns_everything_off_latches_and_is_reported_not_raised():
    bank = simulated_bank()
    faults = []
    bank.on_fault = faults.append
    run(bank, FULL, 0.0, 1.0)
    bank.vibration.close()
    assert bank.apply(FULL, 1.1) == bank.levels.dark()  # the control loop is not thrown out of its cycle
    assert bank.latched and "writing the outputs failed" in bank.latch_reason
    assert len(faults) == 1 and "vibration" in faults[0] and "closed" in faults[0]
    bank.apply(FULL, 1.2)
    assert len(faults) == 1  # latched: no more writes, no repeated report
    assert bank.light.output == (0.0, 0.0, 0.0) and bank.sound.value == 0.0


def test_close_turns_off_and_closes_everything():
    bank = simulated_bank()
    run(bank, FULL, 0.0, 1.0)
    light = bank.light
    bank.close()
    assert light.output == (0.0, 0.0, 0.0)
    assert light.closed and bank.sound.closed and bank.vibration.closed
    bank.close()


# -- thread safety on gpiozero mock pins ---------------------------------------------------------


@pytest.fixture
def factory():
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.reset()


def gpio_bank(factory, sound=None, **overrides) -> ActuatorBank:
    settings = ActuatorSettings(light_ramp_up_per_s=10.0, sound_ramp_up_per_s=10.0, vibration_ramp_up_per_s=10.0,
                                **overrides)
    light = GpioLight(*PINS[:3], pin_factory=factory)
    vibration = GpioVibration(PINS[3], pin_factory=factory)
    return ActuatorBank(light, sound or SimulatedActuator("sound"), vibration, settings)


def recorded(factory, pin):
    return [float(s.state) for s in factory.pin(pin).states]


def test_all_off_from_another_thread_leaves_every_pin_at_zero(factory):
    bank = gpio_bank(factory, all_off_lock_wait_s=1.0)
    running, stop = threading.Event(), threading.Event()
    calls = []

    def control_loop():
        now = 0.0
        while not stop.is_set():
            now += 0.1
            target = FULL if int(now * 10) % 7 else StimulusLevels(light_rgb=(0.2, 1.0, 0.4), light_brightness=0.7,
                                                                   vibration=0.9)
            bank.apply(target, now)
            calls.append(now)
            if len(calls) == 50:
                running.set()

    thread = threading.Thread(target=control_loop)
    thread.start()
    try:
        assert running.wait(10.0)
        bank.all_off("e-stop")
        marks = {pin: len(factory.pin(pin).states) for pin in PINS}
        calls_at_stop = len(calls)
        while len(calls) < calls_at_stop + 50 and thread.is_alive():
            time.sleep(0.001)  # let the loop keep calling apply() while latched
    finally:
        stop.set()
        thread.join()
    for pin in PINS:
        states = recorded(factory, pin)
        assert any(state > 0 for state in states[:marks[pin]]), f"pin {pin} was never driven"
        assert all(state == 0.0 for state in states[marks[pin] - 1:]), f"pin {pin} on after all_off: {states[-5:]}"


class BlockingSound(SimulatedActuator):
    """A sound output whose non-zero writes hang until released: a stuck apply() holding the lock."""

    def __init__(self) -> None:
        super().__init__("sound")
        self.entered, self.release = threading.Event(), threading.Event()

    def _apply(self, value: float) -> None:
        if value > 0.0:
            self.entered.set()
            self.release.wait(10.0)
        super()._apply(value)


def test_all_off_does_not_wait_for_a_stuck_apply(factory):
    sound = BlockingSound()
    bank = gpio_bank(factory, sound=sound, all_off_lock_wait_s=0.01)
    bank.apply(FULL, 0.0)
    stuck = threading.Thread(target=bank.apply, args=(FULL, 0.1))
    stuck.start()
    try:
        assert sound.entered.wait(10.0)  # apply() holds the lock, light already written, sound hangs
        assert factory.pin(PINS[0]).state > 0
        bank.all_off("e-stop")
        assert not sound.release.is_set() and stuck.is_alive()  # all_off returned while apply was stuck
        assert [factory.pin(pin).state for pin in PINS] == [0, 0, 0, 0]
    finally:
        sound.release.set()
        stuck.join()
    # apply() then wrote the vibration, saw the latch and wrote zeros again
    assert [factory.pin(pin).state for pin in PINS] == [0, 0, 0, 0]
    assert recorded(factory, PINS[3])[-1] == 0.0 and sound.value == 0.0


def test_build_bank_opens_the_chosen_backends(factory):
    bank = build_bank(ActuatorSettings(light_backend="gpio", vibration_backend="gpio",
                                       light_red_pin=5, light_green_pin=6, light_blue_pin=13, vibration_pin=19),
                      pin_factory=factory)
    assert isinstance(bank.light, GpioLight) and isinstance(bank.vibration, GpioVibration)
    assert isinstance(bank.sound, SimulatedActuator)
    bank.close()
    assert factory.pin(5).state == 0 and bank.light.closed


def test_build_bank_closes_what_it_opened_when_a_later_output_fails(factory):
    settings = ActuatorSettings(light_backend="gpio", vibration_backend="gpio", vibration_pin=17)  # red's pin
    with pytest.raises(PinError, match="actuators.vibration_pin"):
        build_bank(settings, pin_factory=factory)
    GpioLight(17, 27, 22, pin_factory=factory).close()  # the light's pins were given back
