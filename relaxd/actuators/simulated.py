"""Actuators without hardware: they remember what they were told.

``relaxd run`` uses these on a workstation, and tests read their ``history`` to see what
the chair would have done. Only changes are recorded (a steady level adds nothing), in a
bounded list so a long session cannot grow memory; each change is logged at debug level.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable, Deque, List, Tuple

from relaxd.actuators.base import RGB, Actuator, Light

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class SimulatedActuator(Actuator):
    """A level output (sound volume, vibration, a relay) that records ``(time, value)`` changes."""

    def __init__(self, name: str, *, history_len: int = 1000, clock: Clock = time.monotonic) -> None:
        super().__init__(name)
        self._clock = clock
        self._history: Deque[Tuple[float, float]] = collections.deque(maxlen=history_len)
        self._output = 0.0

    @property
    def history(self) -> List[Tuple[float, float]]:
        """The recorded changes, oldest first, as ``(monotonic time, value)``."""
        return list(self._history)

    def _apply(self, value: float) -> None:
        if value != self._output:
            log.debug("%s: %.3f -> %.3f", self.name, self._output, value)
            self._output = value
            self._history.append((self._clock(), value))


class SimulatedSound(SimulatedActuator):
    """A simulated sound output that also records which sound it was told to play."""

    def __init__(self, name: str = "sound", *, history_len: int = 1000, clock: Clock = time.monotonic) -> None:
        super().__init__(name, history_len=history_len, clock=clock)
        self.sources: Deque[Tuple[float, str]] = collections.deque(maxlen=history_len)

    def set_source(self, source: object) -> None:
        label = str(source) if not hasattr(source, "shape") else f"generated {getattr(source, 'shape')}"
        self.sources.append((self._clock(), label))


class SimulatedLight(Light):
    """An RGB light that records ``(time, (red, green, blue))`` changes of its output duty."""

    def __init__(self, name: str = "light", color: RGB = (1.0, 1.0, 1.0), *,
                 history_len: int = 1000, clock: Clock = time.monotonic) -> None:
        super().__init__(name, color)
        self._clock = clock
        self._history: Deque[Tuple[float, RGB]] = collections.deque(maxlen=history_len)
        self._output: RGB = (0.0, 0.0, 0.0)

    @property
    def history(self) -> List[Tuple[float, RGB]]:
        """The recorded output changes, oldest first, as ``(monotonic time, (r, g, b))``."""
        return list(self._history)

    @property
    def output(self) -> RGB:
        """What the LEDs would show now: colour x brightness."""
        return self._output

    def _apply_rgb(self, rgb: RGB) -> None:
        if rgb != self._output:
            log.debug("%s: rgb %s -> %s", self.name, _fmt(self._output), _fmt(rgb))
            self._output = rgb
            self._history.append((self._clock(), rgb))


def _fmt(rgb: RGB) -> str:
    return "(" + ", ".join(f"{c:.3f}" for c in rgb) + ")"
