"""Affect aggregation: per-frame class probabilities in, one ``AffectReading`` out.

A single frame's label flickers; the chair should react to what the child shows over a
short window. The aggregator keeps the last ``window_frames`` frames, with and without a
face, and reduces them by one of three rules (``AffectSettings.method``):

Each face frame is first decided by ``relaxd.vision.decision.GroupDecision``: negative,
neutral or positive from the group probabilities, with the negative group weighted (a
missed negative costs more than a false one). The rules below vote on those decisions.

``threshold`` (the default) follows Yang, Lee & Park (Yonsei): a per-frame image model plus a
threshold rule over the frames of a clip. If the more frequent *non-neutral* group holds at
least ``threshold`` of the face frames, it wins; otherwise neutral wins if it occurs, else
the most frequent group. On children's video this beat "most frequent label" by 4.6 to 24.7
points (3 classes), best thresholds 0.05 to 0.20. It suits children because their negative
expressions are subtle and brief: a few seconds of a sad or fearful face among many neutral
frames would be outvoted by a majority rule, and those are exactly the moments the chair
must notice to calm down or stop.

``majority`` is the most frequent group over the face frames (the baseline of the paper).
``ema`` is an exponential moving average of the face frames' probability vectors, decided
like one frame.

The reading's ``label`` names the most frequent fine label among the frames of the winning
group (what the panel shows, "sad"); its ``confidence`` is the winning group's share of the
face frames (ema: the group's smoothed probability), which the controller's halt rule reads.

Decisions made here:

* Frames without a face are counted (``frames`` vs ``face_frames``) but never guessed: they
  carry no label. The threshold rule's denominator is therefore the number of *face* frames.
  The paper's clips are frames the image model classified; counting face-less frames too
  would make a real burst of distress lose just because the detector missed the face
  for a while, which is the unsafe direction. Too few face frames is handled separately:
  ``face_present`` is False below ``min_face_share`` of the window's frames.
* Shares are compared with a tolerance of 1e-9, so a count exactly at ``share * n`` passes even
  when binary floating point rounds the product up (0.07 * 100 == 7.000000000000001); mean
  probabilities in a tie-break likewise.
* Ties are broken deterministically: the higher mean weighted group probability over the
  window's face frames, then the earlier group (negative, neutral, positive): a tie never
  resolves away from negative. A label tie within a group goes to the earlier label.
* Until the window has filled, shares are over the frames seen so far; ``frames`` tells
  the consumer how full the window is.
* The threshold rule needs the model's neutral group to hold at least one label; the
  other methods do not.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional

import numpy as np

from relaxd.errors import ConfigError, ModelError
from relaxd.settings import AffectSettings
from relaxd.vision.decision import NEGATIVE, NEUTRAL, GroupDecision
from relaxd.vision.model_meta import GROUPS, ModelMetadata

METHODS = ("threshold", "majority", "ema")
NO_FACE = "none"
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class AffectReading:
    """What the child's face showed over the window ending at ``time``."""

    time: float  # monotonic time of the newest frame in the window
    face_present: bool  # face_frames >= min_face_share of the frames (and at least one)
    group: str  # "negative" | "neutral" | "positive", or "none" when no face
    label: Optional[str]  # the winning fine label (e.g. "sad"), None when no face
    confidence: float  # threshold/majority: winner's share of face frames; ema: its smoothed probability
    group_scores: Mapping[str, float]  # per group, sums to 1; empty when no face
    frames: int  # frames in the window
    face_frames: int  # of which with a face

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly values (for the event log, the socket and the panel)."""
        return {
            "time": self.time,
            "face_present": self.face_present,
            "group": self.group,
            "label": self.label,
            "confidence": self.confidence,
            "group_scores": dict(self.group_scores),
            "frames": self.frames,
            "face_frames": self.face_frames,
        }


def _reaches(count: int, share: float, total: int) -> bool:
    """``count >= share * total``, robust to the product rounding up."""
    return count >= share * total - _TOLERANCE


class AffectAggregator:
    """Sliding-window reduction of per-frame probabilities to an ``AffectReading``.

    Pure: no I/O, no threads, no clock of its own (the caller passes each frame's time).
    ``metadata`` carries the grouping and the shipped weight; ``decision`` overrides them
    (the daemon builds it from the config).
    """

    def __init__(self, settings: AffectSettings, metadata: ModelMetadata,
                 decision: GroupDecision | None = None) -> None:
        if settings.method not in METHODS:
            raise ConfigError(f"affect.method must be one of {METHODS}, got {settings.method!r}")
        if settings.window_frames < 1:
            raise ConfigError(f"affect.window_frames must be at least 1, got {settings.window_frames}")
        self._settings = settings
        self._labels = tuple(metadata.labels)
        self.decision = decision or GroupDecision.for_model(metadata)
        if settings.method == "threshold" and not self.decision.groups["neutral"]:
            raise ModelError(
                f"model {metadata.name!r} has no label in its 'neutral' group, which the threshold "
                "rule needs: add the neutral label to the model metadata's groups, or set "
                "affect.method to 'majority' or 'ema'"
            )
        # Each entry is (probabilities, group, label) of a face frame, or None for a face-less frame.
        self._window: deque[Optional[tuple[np.ndarray, int, int]]] = deque(maxlen=settings.window_frames)
        self._votes: Counter[int] = Counter()  # group index -> face frames in the window
        self._label_votes: Counter[int] = Counter()  # label index (within its frame's group) -> frames
        self._face_frames = 0
        self._ema: Optional[np.ndarray] = None

    def reset(self) -> None:
        """Forget every frame (e.g. at the start of a session)."""
        self._window.clear()
        self._votes.clear()
        self._label_votes.clear()
        self._face_frames = 0
        self._ema = None

    def update(self, time: float, probabilities: Optional[np.ndarray]) -> AffectReading:
        """Add one frame (``probabilities`` None = no face in it) and read the window."""
        self.add(probabilities)
        return self.read(float(time))

    def add(self, probabilities: Optional[np.ndarray]) -> None:
        """Add one frame without reading the window (a whole clip is read once, at its end)."""
        frame = None
        if probabilities is not None:
            values = self._validated(probabilities)
            group = self.decision.decide_one(values)
            frame = (values, group, self.decision.label_within(values, group))
        if len(self._window) == self._window.maxlen:
            self._forget(self._window[0])  # append() below drops it from the deque
        self._window.append(frame)
        if frame is not None:
            self._face_frames += 1
            self._votes[frame[1]] += 1
            self._label_votes[frame[2]] += 1
        if self._settings.method == "ema":
            self._update_ema(None if frame is None else frame[0])

    def _validated(self, probabilities: np.ndarray) -> np.ndarray:
        """A 1-D, finite, non-negative vector per label, scaled to sum to 1.

        int8 models' dequantised outputs sum only approximately to 1, hence the scaling.
        """
        values = np.asarray(probabilities, dtype=np.float64)
        if values.ndim != 1 or values.size != len(self._labels):
            raise ValueError(
                f"probabilities have shape {values.shape} ({values.size} values) but the model has "
                f"{len(self._labels)} labels {self._labels}: pass one probability per label, in "
                "the metadata's label order"
            )
        if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
            raise ValueError(
                f"probabilities must be finite, non-negative and not all zero, got {values.tolist()}"
            )
        return values / values.sum()

    def _forget(self, frame: Optional[tuple[np.ndarray, int, int]]) -> None:
        """Undo the counts of a frame leaving the window."""
        if frame is None:
            return
        self._face_frames -= 1
        for counter, key in ((self._votes, frame[1]), (self._label_votes, frame[2])):
            counter[key] -= 1
            if counter[key] == 0:
                del counter[key]

    def _update_ema(self, values: Optional[np.ndarray]) -> None:
        if values is not None:
            alpha = self._settings.ema_alpha
            self._ema = values.copy() if self._ema is None else alpha * values + (1.0 - alpha) * self._ema
        elif self._face_frames == 0:
            self._ema = None  # no face left in the window: start afresh at the next face

    def read(self, time: float) -> AffectReading:
        """The reading of the frames now in the window; ``time`` is the newest frame's."""
        frames, face_frames = len(self._window), self._face_frames
        if face_frames == 0 or not _reaches(face_frames, self._settings.min_face_share, frames):
            return AffectReading(time, False, NO_FACE, None, 0.0, MappingProxyType({}), frames, face_frames)
        if self._settings.method == "ema":
            assert self._ema is not None  # set by every face frame, cleared only when none is left
            winner = self.decision.decide_one(self._ema)
            group_probabilities = self.decision.group_probabilities(self._ema)
            confidence = float(group_probabilities[winner])
            label = self.decision.label_within(self._ema, winner)
            scores = MappingProxyType({group: float(p) for group, p in zip(GROUPS, group_probabilities)})
        else:
            winner = self._threshold_winner() if self._settings.method == "threshold" else self._most_frequent(self._votes)
            confidence = self._votes[winner] / face_frames
            label = self._most_frequent_label(winner)
            scores = MappingProxyType({group: self._votes.get(g, 0) / face_frames for g, group in enumerate(GROUPS)})
        return AffectReading(
            time=time,
            face_present=True,
            group=GROUPS[winner],
            label=self._labels[label],
            confidence=confidence,
            group_scores=scores,
            frames=frames,
            face_frames=face_frames,
        )

    def _threshold_winner(self) -> int:
        """Yang, Lee & Park's rule over the face frames' group decisions."""
        non_neutral = {g: n for g, n in self._votes.items() if g != NEUTRAL}
        if non_neutral:
            best = self._most_frequent(non_neutral)
            # Without any neutral frame, the best non-neutral group is also the most frequent overall.
            if _reaches(non_neutral[best], self._settings.threshold, self._face_frames) or NEUTRAL not in self._votes:
                return best
        return NEUTRAL

    def _most_frequent(self, counts: Mapping[int, int]) -> int:
        """The group with the highest count; ties by mean weighted group probability, then group order."""
        top = max(counts.values())
        tied = sorted(g for g, n in counts.items() if n == top)
        if len(tied) == 1:
            return tied[0]
        frames = np.stack([frame[0] for frame in self._window if frame is not None])
        means = self.decision.group_probabilities(frames).mean(axis=0)
        means[NEGATIVE] *= self.decision.negative_weight
        best = max(means[g] for g in tied)
        # Means within the tolerance are equal: summation order must not decide a tie.
        return min(g for g in tied if means[g] >= best - _TOLERANCE)

    def _most_frequent_label(self, group: int) -> int:
        """The fine label most often named among the frames decided as ``group`` (earlier label on ties)."""
        counts = Counter(frame[2] for frame in self._window if frame is not None and frame[1] == group)
        top = max(counts.values())
        return min(label for label, n in counts.items() if n == top)
