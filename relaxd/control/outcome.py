"""What one scenario did for a child: the affect trajectory of a stretch of a session, scored.

A *segment* is the time one scenario played in a session: the whole session, or the part
before or after a switch. ``SegmentTracker`` follows the readings of a segment (pure: time is
passed in) and ``finish`` turns them into a ``ScenarioOutcome``, whose ``reward`` (0..1) is
what the learner (``relaxd.control.learner``) learns from:

* **time to calm**: seconds from the segment's start to the first run of non-negative face
  readings lasting ``calm_hold_s``; a segment that never calmed gets no credit for it;
* **share of negative time**: negative readings among the face readings;
* a **halt** (adverse reaction) scores 0, whatever came before;
* an **early end by the operator** (stopped before the child calmed) halves the score.

    reward = 0.5 * (1 - min(1, time_to_calm / CALM_HORIZON_S)) + 0.5 * (1 - negative_share)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Optional

CALM_HORIZON_S = 300.0  # calming after five minutes or more earns nothing for speed


class ChosenBy(str, Enum):
    """Who chose the scenario of a segment (the report and the panel say so)."""

    OPERATOR = "operator"  # picked at the start or by hand: the learner never overrides it
    PROFILE = "profile"  # the child's preferred scenario, set by a therapist
    LEARNER = "learner"  # chosen by the learner, at the start or on a switch
    DEFAULT = "default"  # control.default_scenario, with learning off

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ScenarioOutcome:
    """One segment's result, as recorded in the store and shown in the report."""

    scenario: str
    chosen_by: ChosenBy
    seconds: float  # stimulating time the scenario played
    time_to_calm_s: Optional[float]  # None: never calmed in this segment
    negative_share: float  # of the face readings
    halted: bool
    ended_early: bool  # the operator stopped before the child calmed

    @property
    def reward(self) -> float:
        """0..1, higher is better (see the module docstring)."""
        if self.halted:
            return 0.0
        calm = 0.0 if self.time_to_calm_s is None else 1.0 - min(1.0, self.time_to_calm_s / CALM_HORIZON_S)
        score = 0.5 * calm + 0.5 * (1.0 - self.negative_share)
        return round(score * (0.5 if self.ended_early else 1.0), 6)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "chosen_by": self.chosen_by.value, "seconds": round(self.seconds, 3),
                "time_to_calm_s": None if self.time_to_calm_s is None else round(self.time_to_calm_s, 3),
                "negative_share": round(self.negative_share, 4), "halted": self.halted,
                "ended_early": self.ended_early, "reward": self.reward}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ScenarioOutcome":
        ttc = data.get("time_to_calm_s")
        return cls(str(data["scenario"]), ChosenBy(data["chosen_by"]), float(data["seconds"]),
                   None if ttc is None else float(ttc), float(data["negative_share"]), bool(data["halted"]),
                   bool(data["ended_early"]))


class SegmentTracker:
    """Follows one scenario's stretch of a session, reading by reading."""

    def __init__(self, scenario: str, chosen_by: ChosenBy, start: float, calm_hold_s: float) -> None:
        self.scenario = scenario
        self.chosen_by = chosen_by
        self.start = start
        self._calm_hold_s = calm_hold_s
        self._face = self._negative = 0
        self._window_face = self._window_negative = 0
        self._calm_since: Optional[float] = None
        self.time_to_calm_s: Optional[float] = None
        self.halted = False  # set by the controller on an adverse reaction

    def add(self, now: float, group: Optional[str]) -> None:
        """A reading while stimulating: ``group`` negative/neutral/positive, None without a face."""
        if group is None:
            self._calm_since = None  # a calm face not seen is not a calm face
            return
        negative = group == "negative"
        self._face += 1
        self._window_face += 1
        self._negative += negative
        self._window_negative += negative
        if negative:
            self._calm_since = None
        elif self.time_to_calm_s is None:
            self._calm_since = now if self._calm_since is None else self._calm_since
            if now - self._calm_since >= self._calm_hold_s:
                self.time_to_calm_s = self._calm_since - self.start

    def take_window(self) -> tuple[float, int]:
        """(negative share, face readings) since the last call: one reassessment interval."""
        share = self._window_negative / self._window_face if self._window_face else 0.0
        faces = self._window_face
        self._window_face = self._window_negative = 0
        return share, faces

    def finish(self, seconds: float, *, stopped_by_operator: bool = False) -> ScenarioOutcome:
        share = self._negative / self._face if self._face else 0.0
        return ScenarioOutcome(self.scenario, self.chosen_by, seconds, self.time_to_calm_s, share, self.halted,
                               ended_early=stopped_by_operator and self.time_to_calm_s is None)
