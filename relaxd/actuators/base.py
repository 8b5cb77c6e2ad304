"""The one small interface every output of the chair speaks, gpiozero-style.

An actuator has a ``value`` in 0..1 (brightness, volume, vibration level), ``off()`` and
``close()``. A ``Light`` also has a ``color`` (red, green, blue, each 0..1); what the LEDs
show is colour x brightness. Subclasses implement only the hardware write (``_apply`` or
``_apply_rgb``); this class does the checking, so every backend rejects the same bad input
with the same error.

``off()`` is always safe to call: on a closed actuator it does nothing (closing already
turned it off), so the safety path never trips over an already closed device.
"""

from __future__ import annotations

import abc
import math
from typing import Tuple

from relaxd.errors import RelaxdError

RGB = Tuple[float, float, float]


class ActuatorError(RelaxdError):
    """An output cannot be opened or driven (wrong pin, missing device, failed write)."""


class ActuatorClosedError(ActuatorError):
    """The actuator was used after ``close()``."""


class PinError(ActuatorError):
    """A GPIO pin is invalid, already in use, or cannot do what is asked of it."""


class AudioError(ActuatorError):
    """The sound output or the audio file cannot be opened."""


class LinkError(ActuatorError):
    """The serial link to the microcontroller cannot be opened or has failed."""


class LinkLostError(LinkError):
    """The microcontroller stopped answering, sent only garbage, or was disconnected."""


class ProtocolVersionError(LinkError):
    """The microcontroller's firmware speaks another protocol version than relaxd."""


class NakError(LinkError):
    """The microcontroller refused a command (``NAK <seq> <reason>``)."""


def check_level(value: float, what: str) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` unless it is a number in 0..1."""
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    if math.isnan(level) or not 0.0 <= level <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1, got {value!r}")
    return level


def check_rgb(color: RGB, what: str) -> RGB:
    """Return ``color`` as three floats in 0..1, or raise ``ValueError`` naming ``what``."""
    try:
        red, green, blue = color
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be three numbers (red, green, blue) in 0..1, got {color!r}") from None
    return (check_level(red, f"{what} red"), check_level(green, f"{what} green"), check_level(blue, f"{what} blue"))


class Actuator(abc.ABC):
    """One output with a level in 0..1. Subclasses implement ``_apply``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._value = 0.0
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"value={self._value:.3f}"
        return f"<{type(self).__name__} {self.name!r} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def value(self) -> float:
        """The level last set, 0..1 (0 when the output is known to be off)."""
        self._check_open()
        return self._current()

    @value.setter
    def value(self, value: float) -> None:
        self._check_open()
        level = check_level(value, f"{self.name} value")
        self._apply(level)
        self._value = level

    def off(self) -> None:
        """Turn the output off now. Does nothing on a closed actuator."""
        if self._closed:
            return
        self._off()
        self._value = 0.0

    def close(self) -> None:
        """Turn the output off and release the hardware. Safe to call twice."""
        if self._closed:
            return
        try:
            self.off()
        finally:
            self._closed = True
            self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise ActuatorClosedError(f"actuator {self.name!r} is closed; create a new one to use it again")

    def _current(self) -> float:
        return self._value

    def _off(self) -> None:
        self._apply(0.0)

    def _release(self) -> None:
        """Free the hardware; called once, after the output was turned off."""

    @abc.abstractmethod
    def _apply(self, value: float) -> None:
        """Drive the hardware to ``value`` (already checked to lie in 0..1)."""


class Light(Actuator):
    """An RGB light: ``value`` is the brightness, ``color`` the hue; the LEDs show their product."""

    def __init__(self, name: str, color: RGB = (1.0, 1.0, 1.0)) -> None:
        super().__init__(name)
        self._color = check_rgb(color, f"{name} color")

    @property
    def color(self) -> RGB:
        self._check_open()
        return self._color

    @color.setter
    def color(self, color: RGB) -> None:
        self.set(color, self._value)

    def set(self, color: RGB, brightness: float) -> None:
        """Change colour and brightness in one write (no flash of the old colour)."""
        self._check_open()
        checked = check_rgb(color, f"{self.name} color")
        level = check_level(brightness, f"{self.name} brightness")
        self._apply_rgb(tuple(c * level for c in checked))  # type: ignore[arg-type]
        self._color, self._value = checked, level

    def _apply(self, value: float) -> None:
        self._apply_rgb(tuple(c * value for c in self._color))  # type: ignore[arg-type]

    @abc.abstractmethod
    def _apply_rgb(self, rgb: RGB) -> None:
        """Drive the three channels to these duty cycles (colour x brightness, each 0..1)."""
