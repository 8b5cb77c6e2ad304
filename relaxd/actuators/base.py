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
import logging
import math
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Tuple

from relaxd.errors import RelaxdError

RGB = Tuple[float, float, float]

log = logging.getLogger(__name__)


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


class OutputLatchedError(ActuatorError):
    """A write with a non-zero level was refused because the outputs are latched off."""


class OutputGate:
    """The safety latch at the wire: a write with a non-zero level passes only while it is open.

    The bank closes the gate *before* it writes zeros. Every energising write runs inside
    ``energising()``, which holds the gate's lock only for the write itself (a PWM duty cycle,
    one serial line into the OS buffer), so ``close()`` waits for at most one write already
    on its way, and after ``close()`` returns no energising write can start, whatever was
    queued, in flight or due for a retry. ``on_close`` callbacks (the serial link dropping its
    queued commands) run on the closing thread and must be quick.
    """

    def __init__(self, lock_wait_s: float = 0.05) -> None:
        self._closed = False
        self._lock = threading.Lock()
        self._lock_wait_s = lock_wait_s
        self._on_close: List[Callable[[], None]] = []
        self.reason: Optional[str] = None

    @property
    def closed(self) -> bool:
        return self._closed

    def add_on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close(self, reason: str) -> bool:
        """Refuse energising writes from now on; True if this call closed it."""
        was_open, self._closed = not self._closed, True  # first, without waiting for anyone
        if was_open:
            self.reason = reason
        if self._lock.acquire(timeout=self._lock_wait_s):  # let a write already past its check finish
            self._lock.release()
        for callback in list(self._on_close):
            try:
                callback()
            except Exception:  # one broken listener must not keep the rest from dropping their queue
                log.exception("output gate on_close callback failed")
        return was_open

    def open(self) -> None:
        with self._lock:
            self._closed, self.reason = False, None

    @contextmanager
    def energising(self, what: str) -> Iterator[None]:
        """Run one energising write, or raise ``OutputLatchedError`` if the gate is closed."""
        with self._lock:
            if self._closed:
                raise OutputLatchedError(f"{what} refused: outputs latched off ({self.reason})")
            yield


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

    gates_at_the_wire = False
    """True where the backend checks the gate itself, at each line it sends (the serial outputs)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._value = 0.0
        self._closed = False
        self.gate: Optional[OutputGate] = None  # set by the ActuatorBank that owns this output

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
        with self._guard(level > 0.0):
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

    @contextmanager
    def _guard(self, energising: bool) -> Iterator[None]:
        if energising and self.gate is not None and not self.gates_at_the_wire:
            with self.gate.energising(f"{self.name} write"):
                yield
        else:
            yield

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
        rgb = tuple(c * level for c in checked)
        with self._guard(any(c > 0.0 for c in rgb)):
            self._apply_rgb(rgb)  # type: ignore[arg-type]
        self._color, self._value = checked, level

    def _apply(self, value: float) -> None:
        self._apply_rgb(tuple(c * value for c in self._color))  # type: ignore[arg-type]

    @abc.abstractmethod
    def _apply_rgb(self, rgb: RGB) -> None:
        """Drive the three channels to these duty cycles (colour x brightness, each 0..1)."""
