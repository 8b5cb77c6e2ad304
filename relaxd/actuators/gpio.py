"""Outputs on the Raspberry Pi's own GPIO pins, through gpiozero.

* ``GpioLight``: an RGB LED strip behind three logic-level MOSFETs, one PWM pin per colour.
* ``GpioVibration``: a vibration motor driver on one PWM pin.
* ``GpioSwitch``: an on/off output (alert relay, buzzer).

The light is three ``PWMOutputDevice`` rather than gpiozero's ``RGBLED`` for two reasons: an
error then names the exact pin and config key at fault, and the PWM frequency can be set
(``RGBLED`` fixes 100 Hz, which shows as dark bands in the camera image of the child's face).

``pin_factory`` is gpiozero's seam: pass ``MockFactory(pin_class=MockPWMPin)`` in tests, leave
it ``None`` on the Pi. gpiozero is imported only when a GPIO output is made, so the rest of
relaxd runs where it is not installed.
"""

from __future__ import annotations

from typing import Any, Optional

from relaxd.actuators.base import RGB, Actuator, ActuatorError, Light, PinError


def _gpiozero() -> Any:
    try:
        import gpiozero
    except ImportError:
        raise ActuatorError(
            "gpiozero is not installed: pip install 'relaxd[pi]' on the Raspberry Pi, "
            "or choose the simulated or serial backend in the actuators settings"
        ) from None
    return gpiozero


def _open(device_class: str, pin: Any, config_key: str, **kwargs: Any) -> Any:
    """Open one gpiozero output device, turning any pin problem into a ``PinError`` naming ``config_key``."""
    gpiozero = _gpiozero()
    try:
        return getattr(gpiozero, device_class)(pin, **kwargs)
    except (gpiozero.GPIOZeroError, ValueError, OSError, RuntimeError) as error:
        raise PinError(
            f"cannot use GPIO pin {pin!r} ({config_key}) as a {device_class}: {error}. "
            f"Set {config_key} to a free GPIO (BCM) number that is wired to this output"
        ) from error


class GpioLight(Light):
    """An RGB light on three PWM pins (BCM numbers); colour x brightness sets each duty cycle."""

    def __init__(self, red_pin: Any, green_pin: Any, blue_pin: Any, *, frequency: float = 1000.0,
                 active_high: bool = True, pin_factory: Optional[Any] = None, name: str = "light",
                 color: RGB = (1.0, 1.0, 1.0), config_prefix: str = "actuators.light") -> None:
        super().__init__(name, color)
        self._channels: list = []
        try:
            for colour, pin in (("red", red_pin), ("green", green_pin), ("blue", blue_pin)):
                self._channels.append(_open("PWMOutputDevice", pin, f"{config_prefix}_{colour}_pin",
                                            active_high=active_high, frequency=frequency,
                                            pin_factory=pin_factory))
        except ActuatorError:
            self._release()
            raise

    def _apply_rgb(self, rgb: RGB) -> None:
        for device, duty in zip(self._channels, rgb):
            device.value = duty

    def _release(self) -> None:
        for device in self._channels:
            device.close()
        self._channels = []


class GpioVibration(Actuator):
    """A vibration motor (through a driver transistor) on one PWM pin."""

    def __init__(self, pin: Any, *, frequency: float = 200.0, active_high: bool = True,
                 pin_factory: Optional[Any] = None, name: str = "vibration",
                 config_key: str = "actuators.vibration_pin") -> None:
        super().__init__(name)
        self._device = _open("PWMOutputDevice", pin, config_key, active_high=active_high,
                             frequency=frequency, pin_factory=pin_factory)

    def _apply(self, value: float) -> None:
        self._device.value = value

    def _release(self) -> None:
        self._device.close()


class GpioSwitch(Actuator):
    """An on/off output (alert relay, buzzer): any value above 0 switches it on; ``value`` reads 0 or 1."""

    def __init__(self, pin: Any, *, active_high: bool = True, pin_factory: Optional[Any] = None,
                 name: str = "alert", config_key: str = "alerts.relay_pin") -> None:
        super().__init__(name)
        self._device = _open("DigitalOutputDevice", pin, config_key, active_high=active_high,
                             pin_factory=pin_factory)

    def on(self) -> None:
        self.value = 1.0

    def _apply(self, value: float) -> None:
        self._device.value = value > 0.0

    def _current(self) -> float:
        return 1.0 if self._value > 0.0 else 0.0

    def _release(self) -> None:
        self._device.close()
