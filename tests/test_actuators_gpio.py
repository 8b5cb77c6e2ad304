"""GPIO actuators on gpiozero's mock pins (real gpiozero, no Raspberry Pi needed)."""

from __future__ import annotations

import math
import sys

import pytest

pytest.importorskip("gpiozero")
from gpiozero.pins.mock import MockFactory, MockPWMPin  # noqa: E402

from relaxd.actuators import ActuatorClosedError, ActuatorError, GpioLight, GpioSwitch, GpioVibration, PinError  # noqa: E402


@pytest.fixture
def factory():
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.reset()


def states(factory, pin):
    return [round(float(s.state), 6) for s in factory.pin(pin).states]


def test_light_shows_colour_times_brightness(factory):
    light = GpioLight(17, 27, 22, pin_factory=factory, frequency=800)
    light.set((1.0, 0.5, 0.0), 0.4)
    assert (factory.pin(17).state, factory.pin(27).state, factory.pin(22).state) == pytest.approx((0.4, 0.2, 0.0))
    assert factory.pin(17).frequency == 800
    light.value = 1.0
    assert factory.pin(27).state == pytest.approx(0.5)
    light.color = (0.0, 0.0, 1.0)
    assert (factory.pin(17).state, factory.pin(22).state) == pytest.approx((0.0, 1.0))
    assert light.value == 1.0 and light.color == (0.0, 0.0, 1.0)
    light.off()
    assert light.value == 0.0
    assert [factory.pin(p).state for p in (17, 27, 22)] == [0, 0, 0]
    light.close()


@pytest.mark.parametrize("bad", [-0.1, 1.01, math.nan, "loud", None])
def test_values_outside_0_to_1_are_refused(factory, bad):
    vibration = GpioVibration(12, pin_factory=factory)
    with pytest.raises(ValueError, match="vibration value"):
        vibration.value = bad
    assert states(factory, 12)[-1] == 0.0  # nothing was written


def test_bad_colour_is_refused(factory):
    light = GpioLight(17, 27, 22, pin_factory=factory)
    with pytest.raises(ValueError, match="color"):
        light.color = (1.0, 0.5)
    with pytest.raises(ValueError, match="green"):
        light.color = (1.0, 2.0, 0.0)


def test_vibration_follows_value_and_records_every_write(factory):
    vibration = GpioVibration(12, pin_factory=factory, frequency=300)
    for level in (0.25, 0.5, 0.0):
        vibration.value = level
    assert states(factory, 12) == [0.0, 0.25, 0.5, 0.0]
    assert factory.pin(12).frequency == 300


def test_switch_is_on_for_any_level_above_zero(factory):
    relay = GpioSwitch(23, pin_factory=factory)
    relay.value = 0.3
    assert relay.value == 1.0 and factory.pin(23).state == 1
    relay.off()
    assert relay.value == 0.0 and factory.pin(23).state == 0
    relay.on()
    assert factory.pin(23).state == 1
    relay.close()
    assert factory.pin(23).state == 0


def test_close_turns_off_releases_pins_and_refuses_further_use(factory):
    vibration = GpioVibration(12, pin_factory=factory)
    vibration.value = 0.7
    vibration.close()
    assert vibration.closed
    assert states(factory, 12)[-1] == 0.0
    with pytest.raises(ActuatorClosedError):
        vibration.value = 0.5
    with pytest.raises(ActuatorClosedError):
        vibration.value
    vibration.off()  # a closed output is already off: no error on the safety path
    vibration.close()
    GpioVibration(12, pin_factory=factory).close()  # the pin was released


def test_taken_pin_names_the_pin_and_the_config_key(factory):
    holder = GpioVibration(27, pin_factory=factory)  # keep a reference: gpiozero frees pins on garbage collection
    with pytest.raises(PinError) as caught:
        GpioLight(17, 27, 22, pin_factory=factory)
    message = str(caught.value)
    assert "27" in message and "actuators.light_green_pin" in message
    # the red pin opened before the failure was given back
    GpioVibration(17, pin_factory=factory).close()
    holder.close()


def test_invalid_pin_names_the_pin_and_the_config_key(factory):
    with pytest.raises(PinError, match=r"99.*actuators\.vibration_pin"):
        GpioVibration(99, pin_factory=factory)


def test_missing_gpiozero_is_a_clear_error(factory, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # as if it were not installed
    with pytest.raises(ActuatorError, match="gpiozero is not installed"):
        GpioVibration(12, pin_factory=factory)
