"""Stochastic weight averaging (Izmailov et al., 2018): the mean of a run's epoch weights.

A network trained further at a constant, moderate learning rate wanders around a wide
minimum; each epoch's weights sit on its walls, their mean nearer its centre, where the
network generalises better than at any single epoch. It costs no extra training, only a
pass over some training faces at the end, because the BatchNorm statistics of the mean
weights are not the mean of the epochs' statistics and must be measured again.

The running mean is kept as ``RUN/average.npz`` (with how many epochs it holds and the
last of them), so an interrupted run resumes its average too, and an epoch that was
averaged just before the run was killed is not averaged twice when it is trained again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


class WeightAverage:
    """The running mean of a model's weights over the epochs added so far."""

    def __init__(self, weights: Sequence[np.ndarray] | None = None, count: int = 0, last_epoch: int = 0) -> None:
        self.weights = [np.array(w, dtype=np.float64) for w in weights] if weights is not None else None
        self.count = count
        self.last_epoch = last_epoch

    def add(self, weights: Sequence[np.ndarray], epoch: int) -> None:
        """Add one epoch's weights; an epoch already in the average (a resumed run) is skipped."""
        if epoch <= self.last_epoch:
            return
        if self.weights is not None and len(weights) != len(self.weights):
            raise ValueError(f"the model has {len(weights)} weight arrays, the average {len(self.weights)}")
        self.last_epoch = epoch
        self.count += 1
        if self.weights is None:
            self.weights = [np.array(w, dtype=np.float64) for w in weights]
            return
        for mean, new in zip(self.weights, weights):
            mean += (np.asarray(new, dtype=np.float64) - mean) / self.count

    def mean(self) -> list[np.ndarray]:
        if self.weights is None:
            raise ValueError("no epoch has been added to the average yet")
        return [w.astype(np.float32) for w in self.weights]

    def save(self, path: Path) -> None:
        """Write atomically: a run killed mid-write keeps the previous average."""
        assert self.weights is not None
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, count=self.count, last_epoch=self.last_epoch,
                 **{f"w{i:03d}": w for i, w in enumerate(self.weights)})
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> "WeightAverage":
        if not path.is_file():
            return cls()
        with np.load(path) as data:
            names = sorted(k for k in data.files if k.startswith("w"))
            return cls([data[k] for k in names], int(data["count"]), int(data["last_epoch"]))


def remeasure_batchnorm(model: Any, images: np.ndarray, batch_size: int = 256) -> None:
    """Set every BatchNorm's moving statistics to the mean of its batch statistics over ``images``.

    The network runs in training mode (each BatchNorm normalises with its batch's
    statistics, as while training) with each layer's momentum set so that the moving
    values become the plain mean over the batches, and Dropout switched off (it would
    inflate the variance that reaches the BatchNorm layers after it); nothing else changes.
    ``images`` must be in random order: one-class batches miss the variance between classes.
    """
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    saved_rates = [layer.rate for layer in dropouts]
    saved_momentum = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, dtype=np.float32))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, dtype=np.float32))
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for index, start in enumerate(range(0, len(images), batch_size)):
            for layer in layers:  # moving = moving * momentum + batch * (1 - momentum): a running mean
                layer.momentum = index / (index + 1.0)
            model(images[start:start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, saved_momentum):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, saved_rates):
            layer.rate = rate


def averaged_model(arch: str, input_size: int, classes: int, average: WeightAverage,
                   calibration: np.ndarray) -> Any:
    """A float32 model holding the mean weights, its BatchNorm measured on ``calibration``."""
    from relaxd_train.architectures import build, precision

    with precision("float32"):
        model = build(arch, input_size, classes)
        model.set_weights(average.mean())
        remeasure_batchnorm(model, calibration)
    return model
