"""The training loss: cross-entropy over the seven labels, plus one over the chair's three groups.

The chair decides on group probabilities (the sum of each group's label probabilities,
``relaxd.vision.decision``), not on the seven labels. A face read as fear instead of sad
is an error of the labels but not of the chair; a sad face read as neutral is both.
``group_weight`` adds the cross-entropy of the summed group probabilities, so training
spends more on the errors the chair makes.

Importing this module imports Keras and registers the loss, which a saved checkpoint
names; ``load_checkpoint`` and ``--resume`` import it first.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from relaxd.vision.decision import GroupDecision
from relaxd_train.export import groups_for


def group_matrix(labels: Sequence[str]) -> np.ndarray:
    """(labels, 3): the chair's grouping of ``labels`` as the decision itself builds it."""
    labels = tuple(labels)
    return GroupDecision(labels, groups_for(labels)).membership.astype(np.float32)


@keras.saving.register_keras_serializable(package="relaxd")
class GroupedCrossentropy(keras.losses.Loss):
    """Cross-entropy of the labels + ``group_weight`` x cross-entropy of the groups."""

    def __init__(self, matrix: Sequence[Sequence[float]], group_weight: float = 0.0,
                 label_smoothing: float = 0.0, name: str = "grouped_crossentropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.matrix = [list(map(float, row)) for row in matrix]
        self.group_weight = float(group_weight)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        loss = keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.label_smoothing)
        if self.group_weight:
            matrix = keras.ops.convert_to_tensor(self.matrix, dtype=y_pred.dtype)
            group_true = keras.ops.matmul(keras.ops.cast(y_true, y_pred.dtype), matrix)
            group_pred = keras.ops.matmul(y_pred, matrix)
            loss = loss + self.group_weight * keras.losses.categorical_crossentropy(group_true, group_pred)
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "matrix": self.matrix, "group_weight": self.group_weight,
                "label_smoothing": self.label_smoothing}
