"""The chair's per-frame decision: which group (negative, neutral, positive) a face shows.

The model gives a probability per fine label (angry, ..., surprise). The chair does not
take the argmax of those: it sums them per group and weighs the negative group, because a
missed negative (a distressed child whose stimulation goes on, or up) costs more than a
false one (a calm child whose stimulation eases for a while). A frame is negative when

    negative_weight * P(negative) >= P(neutral) and >= P(positive)

and otherwise the larger of neutral and positive (ties go to negative, then neutral).
With weight 1 this is the argmax over groups; 2 reads a face as negative once
P(negative) reaches half of the best other group.

This one function decides for the daemon, for ``relaxd replay`` and for
``train-and-export evaluate``, so the figures the tool reports are the chair's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from relaxd.errors import ConfigError
from relaxd.settings import AffectSettings
from relaxd.vision.model_meta import GROUPS, ModelMetadata

NEGATIVE = GROUPS.index("negative")
NEUTRAL = GROUPS.index("neutral")
POSITIVE = GROUPS.index("positive")
MAX_NEGATIVE_WEIGHT = 10.0


@dataclass(frozen=True)
class GroupDecision:
    """Probabilities per label in, a group index (into ``GROUPS``) per frame out."""

    labels: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]]
    negative_weight: float = 1.0
    _membership: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.negative_weight <= MAX_NEGATIVE_WEIGHT:
            raise ConfigError(f"the negative weight must be above 0 and at most {MAX_NEGATIVE_WEIGHT:g}, "
                              f"got {self.negative_weight:g}")
        membership = np.zeros((len(self.labels), len(GROUPS)))
        for g, group in enumerate(GROUPS):
            for label in self.groups[group]:
                membership[self.labels.index(label), g] = 1.0
        object.__setattr__(self, "_membership", membership)

    @property
    def membership(self) -> np.ndarray:
        """(labels, groups): 1 where a label belongs to a group (``GROUPS`` order), else 0."""
        return self._membership

    @classmethod
    def for_model(cls, metadata: ModelMetadata, negative_weight: float | None = None) -> "GroupDecision":
        """The model's grouping, with its shipped weight unless ``negative_weight`` is given."""
        weight = metadata.negative_weight if negative_weight is None else negative_weight
        return cls(tuple(metadata.labels), dict(metadata.groups), float(weight))

    def group_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """P(group) for one frame (L,) -> (3,) or a batch (N, L) -> (N, 3), in ``GROUPS`` order."""
        return np.asarray(probabilities, dtype=np.float64) @ self._membership

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """The group index of each frame: (L,) -> a 0-d array, (N, L) -> (N,)."""
        scores = self.group_probabilities(probabilities).copy()
        scores[..., NEGATIVE] *= self.negative_weight
        return np.argmax(scores, axis=-1)  # ties: the earlier group, negative before neutral before positive

    def decide_one(self, probabilities: np.ndarray) -> int:
        return int(self.decide(probabilities))

    def label_within(self, probabilities: np.ndarray, group: int) -> int:
        """The most probable fine label of ``group`` in one frame (what the panel names)."""
        members = self._membership[:, group] > 0
        return int(np.argmax(np.where(members, probabilities, -1.0)))


def configured_decision(affect: AffectSettings, metadata: ModelMetadata) -> GroupDecision:
    """The decision a chair runs: the model's grouping and weight unless ``affect`` overrides them."""
    groups = affect.groups()
    if groups is not None:
        listed = [label for members in groups.values() for label in members]
        unknown = sorted(set(listed) - set(metadata.labels))
        missing = [label for label in metadata.labels if label not in listed]
        if unknown or missing:
            problems = ([f"not labels of the model: {', '.join(unknown)}"] if unknown else []) + (
                [f"in no group: {', '.join(missing)}"] if missing else [])
            raise ConfigError(
                f"affect.negative_labels / neutral_labels / positive_labels: {'; '.join(problems)}. Model "
                f"{metadata.name!r} has the labels {', '.join(metadata.labels)}: put each in exactly one group, "
                "or remove the three keys to keep the model's grouping")
        metadata = metadata.regrouped(groups)
    return GroupDecision.for_model(metadata, affect.negative_weight or None)
