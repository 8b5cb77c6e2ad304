"""Affect aggregation: per-frame class probabilities in, one ``AffectReading`` out.

A single frame's label flickers; the chair should react to what the child shows over a
short window. The aggregator keeps the last ``window_frames`` frames, with and without a
face, and reduces them by one of three rules (``AffectSettings.method``):

``threshold`` (the default) follows Yang, Lee & Park (Yonsei): a per-frame image model plus a
threshold rule over the frames of a clip. Take each face frame's argmax label. If the most
frequent *non-neutral* label holds at least ``threshold`` of the face frames, it wins;
otherwise neutral wins if it occurs, else the most frequent label. On children's video this
beat "most frequent label" by 4.6 to 24.7 points (3 classes), best thresholds 0.05 to 0.20.
It suits children because their negative expressions are subtle and brief: a few seconds of
a sad or fearful face among many neutral frames would be outvoted by a majority rule, and
those are exactly the moments the chair must notice to calm down or stop.

``majority`` is the most frequent argmax label over the face frames (the baseline of the
paper). ``ema`` is an exponential moving average of the face frames' probability vectors;
its argmax wins.

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
* Ties are broken deterministically: the higher mean probability of the label over the
  window's face frames, then the earlier label in the model's label order. A single
  frame's argmax ties go to the earlier label (``numpy.argmax``).
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
    """

    def __init__(self, settings: AffectSettings, metadata: ModelMetadata) -> None:
        if settings.method not in METHODS:
            raise ConfigError(f"affect.method must be one of {METHODS}, got {settings.method!r}")
        if settings.window_frames < 1:
            raise ConfigError(f"affect.window_frames must be at least 1, got {settings.window_frames}")
        self._settings = settings
        self._labels = tuple(metadata.labels)
        self._group_of = tuple(metadata.group_of(label) for label in self._labels)
        self._neutral = frozenset(i for i, group in enumerate(self._group_of) if group == "neutral")
        if settings.method == "threshold" and not self._neutral:
            raise ModelError(
                f"model {metadata.name!r} has no label in its 'neutral' group, which the threshold "
                "rule needs: add the neutral label to the model metadata's groups, or set "
                "affect.method to 'majority' or 'ema'"
            )
        # Each entry is a face frame's normalised probabilities, or None for a face-less frame.
        self._window: deque[Optional[np.ndarray]] = deque(maxlen=settings.window_frames)
        self._votes: Counter[int] = Counter()  # argmax label index -> face frames in the window
        self._face_frames = 0
        self._ema: Optional[np.ndarray] = None

    def reset(self) -> None:
        """Forget every frame (e.g. at the start of a session)."""
        self._window.clear()
        self._votes.clear()
        self._face_frames = 0
        self._ema = None

    def update(self, time: float, probabilities: Optional[np.ndarray]) -> AffectReading:
        """Add one frame (``probabilities`` None = no face in it) and read the window."""
        self.add(probabilities)
        return self.read(float(time))

    def add(self, probabilities: Optional[np.ndarray]) -> None:
        """Add one frame without reading the window (a whole clip is read once, at its end)."""
        frame = None if probabilities is None else self._validated(probabilities)
        if len(self._window) == self._window.maxlen:
            self._forget(self._window[0])  # append() below drops it from the deque
        self._window.append(frame)
        if frame is not None:
            self._face_frames += 1
            self._votes[int(np.argmax(frame))] += 1
        if self._settings.method == "ema":
            self._update_ema(frame)

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

    def _forget(self, frame: Optional[np.ndarray]) -> None:
        """Undo the counts of a frame leaving the window."""
        if frame is None:
            return
        self._face_frames -= 1
        label = int(np.argmax(frame))
        self._votes[label] -= 1
        if self._votes[label] == 0:
            del self._votes[label]

    def _update_ema(self, frame: Optional[np.ndarray]) -> None:
        if frame is not None:
            alpha = self._settings.ema_alpha
            self._ema = frame.copy() if self._ema is None else alpha * frame + (1.0 - alpha) * self._ema
        elif self._face_frames == 0:
            self._ema = None  # no face left in the window: start afresh at the next face

    def read(self, time: float) -> AffectReading:
        """The reading of the frames now in the window; ``time`` is the newest frame's."""
        frames, face_frames = len(self._window), self._face_frames
        if face_frames == 0 or not _reaches(face_frames, self._settings.min_face_share, frames):
            return AffectReading(time, False, NO_FACE, None, 0.0, MappingProxyType({}), frames, face_frames)
        if self._settings.method == "ema":
            assert self._ema is not None  # set by every face frame, cleared only when none is left
            winner = int(np.argmax(self._ema))
            confidence = float(self._ema[winner])
            scores = self._group_scores(dict(enumerate(self._ema)), float(self._ema.sum()))
        else:
            if self._settings.method == "threshold":
                winner = self._threshold_winner()
            else:
                winner = self._most_frequent(self._votes)
            confidence = self._votes[winner] / face_frames
            scores = self._group_scores(self._votes, face_frames)
        return AffectReading(
            time=time,
            face_present=True,
            group=self._group_of[winner],
            label=self._labels[winner],
            confidence=confidence,
            group_scores=scores,
            frames=frames,
            face_frames=face_frames,
        )

    def _threshold_winner(self) -> int:
        """Yang, Lee & Park's rule over the face frames' argmax labels."""
        non_neutral = {i: n for i, n in self._votes.items() if i not in self._neutral}
        neutral = {i: n for i, n in self._votes.items() if i in self._neutral}
        if non_neutral:
            best = self._most_frequent(non_neutral)
            # Without any neutral frame, the best non-neutral label is also the most frequent overall.
            if _reaches(non_neutral[best], self._settings.threshold, self._face_frames) or not neutral:
                return best
        return self._most_frequent(neutral)

    def _most_frequent(self, counts: Mapping[int, int]) -> int:
        """The label index with the highest count; ties by mean probability, then label order."""
        top = max(counts.values())
        tied = [i for i, n in counts.items() if n == top]
        if len(tied) == 1:
            return tied[0]
        means = np.mean([frame for frame in self._window if frame is not None], axis=0)
        best = max(means[i] for i in tied)
        # Means within the tolerance are equal: summation order must not decide a tie.
        return min(i for i in tied if means[i] >= best - _TOLERANCE)

    def _group_scores(self, weights: Mapping[int, float], total: float) -> Mapping[str, float]:
        """Per group, the share of ``total`` its labels' weights hold (every group listed)."""
        scores = dict.fromkeys(GROUPS, 0.0)
        for i, weight in weights.items():
            scores[self._group_of[i]] += float(weight) / total
        return MappingProxyType(scores)
