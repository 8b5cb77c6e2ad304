"""saliency: where the model looks, as a PNG grid of heat maps over validation faces.

Two methods, both on the Keras checkpoint:

- Grad-CAM (Selvaraju et al.): the last convolutional feature map, weighted by the
  gradient of the class score; coarse, but says *which part of the face* decides;
- vanilla gradient saliency (Simonyan et al.): |d score / d pixel|; fine-grained, noisy.

The score is the log-probability of the image's *true* class, so a row shows what
speaks for that class. The grid has one row per class and one column per example
(two with ``method="both"``). ``band_shares`` sums the Grad-CAM heat in the eye and
mouth bands of the face, a number to back up what the picture shows.

The grid shows faces from the data set, so it is never written into the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from relaxd.errors import RelaxdError
from relaxd.vision.model_meta import FER2013_LABELS
from relaxd.vision.preprocess import PreprocessSpec
from relaxd_train.data import Dataset, load_split

if TYPE_CHECKING:
    import keras

METHODS = ("gradcam", "gradient", "both")
EYE_BAND = (0.2, 0.5)
MOUTH_BAND = (0.6, 0.9)
"""Rows of a face crop, as fractions of its height, where eyes and mouth sit in FER-style crops."""

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SaliencyError(RelaxdError):
    """The saliency grid cannot be made or written where asked."""


@dataclass
class SaliencySettings:
    checkpoint: Path
    data: Path
    out: Path
    per_class: int = 4
    method: str = "both"
    split: str = "val"
    seed: int = 1


def refuse_inside_project(out: Path) -> None:
    """Face images never go into the repository: refuse an output path inside it."""
    if (PROJECT_ROOT / "pyproject.toml").is_file() and Path(out).resolve().is_relative_to(PROJECT_ROOT):
        raise SaliencyError(
            f"{out} is inside the project ({PROJECT_ROOT}); the grid shows faces from the data set, "
            "so write it elsewhere, e.g. /tmp/saliency.png"
        )


def pick_examples(data: Dataset, per_class: int, seed: int) -> list[np.ndarray]:
    """Per class, up to ``per_class`` seeded random indices of its images."""
    rng = np.random.default_rng(seed)
    picks = []
    for label in range(len(data.label_names)):
        members = np.flatnonzero(data.labels == label)
        picks.append(np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)))
    return picks


def saliency_maps(model: keras.Model, images: np.ndarray, targets: np.ndarray,
                  layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Grad-CAM maps, gradient maps, probabilities): maps (N, S, S) scaled to 0..1."""
    import keras
    import tensorflow as tf

    probe = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    inputs = tf.convert_to_tensor(images, dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(inputs)
        features, probabilities = probe(inputs, training=False)
        # Samples do not interact at inference, so the gradient of the sum is per sample.
        scores = tf.math.log(tf.gather(probabilities, targets, batch_dims=1) + 1e-7)
    feature_grads = tape.gradient(scores, features)
    input_grads = tape.gradient(scores, inputs)
    del tape

    weights = tf.reduce_mean(feature_grads, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
    size = images.shape[1]
    cams = np.stack([cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR) for cam in cams])
    gradients = np.abs(input_grads.numpy()[..., 0])
    gradients = np.stack([cv2.GaussianBlur(g, (3, 3), 0) for g in gradients])
    return scale_each(cams), scale_each(gradients, percentile=99.0), probabilities.numpy()


def scale_each(maps: np.ndarray, percentile: float = 100.0) -> np.ndarray:
    """Scale every map to 0..1 by its own maximum (or percentile: one hot pixel must not blank the rest)."""
    tops = np.percentile(maps.reshape(len(maps), -1), percentile, axis=1)[:, None, None]
    return np.clip(maps / np.maximum(tops, 1e-12), 0.0, 1.0).astype(np.float32)


def band_shares(cams: np.ndarray) -> dict[str, float]:
    """Mean share of Grad-CAM heat in the eye and mouth bands, next to their share of the area."""
    height = cams.shape[1]
    total = cams.sum(axis=(1, 2)) + 1e-12
    shares = {}
    for name, (top, bottom) in (("eyes", EYE_BAND), ("mouth", MOUTH_BAND)):
        rows = slice(int(top * height), int(bottom * height))
        shares[name] = float(np.mean(cams[:, rows].sum(axis=(1, 2)) / total))
        shares[f"{name}_area"] = (rows.stop - rows.start) / height
    return shares


def draw_grid(faces: np.ndarray, maps: dict[str, np.ndarray], rows: list[np.ndarray], labels: tuple[str, ...],
              probabilities: np.ndarray, out: Path) -> None:
    """One row per class, one column per example and method; heat (jet) over the gray face."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(maps)
    columns = max((len(r) for r in rows), default=0) * len(methods)
    figure = Figure(figsize=(1.3 * max(columns, 1) + 0.6, 1.45 * len(labels) + 0.4))
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(labels), max(columns, 1), squeeze=False)
    for axes in grid.flat:
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_frame_on(False)
    for row, (label, members) in enumerate(zip(labels, rows)):
        grid[row, 0].set_ylabel(label, fontsize=10)
        for slot, index in enumerate(members):
            predicted = int(probabilities[index].argmax())
            for m, method in enumerate(methods):
                axes = grid[row, slot * len(methods) + m]
                axes.imshow(faces[index, :, :, 0], cmap="gray", vmin=faces.min(), vmax=faces.max())
                axes.imshow(maps[method][index], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
                colour = "green" if predicted == row else "red"
                axes.set_title(f"{method}\n{labels[predicted]} {probabilities[index, predicted]:.2f}",
                               fontsize=7, color=colour)
    figure.suptitle("rows: true class; titles: predicted class and probability (green = right)", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def make_saliency_grid(settings: SaliencySettings) -> dict[str, Any]:
    """Write the grid PNG; return the Grad-CAM band shares and what was drawn."""
    from relaxd_train.architectures import gradcam_layer, load_checkpoint
    from relaxd_train.export import read_run_state

    out = Path(settings.out)
    if out.suffix.lower() != ".png":
        raise SaliencyError(f"--out {out} must be a .png file")
    if settings.method not in METHODS:
        raise SaliencyError(f"method must be one of {METHODS}, got {settings.method!r}")
    if settings.per_class < 1:
        raise SaliencyError(f"--per-class must be at least 1, got {settings.per_class}")
    refuse_inside_project(out)
    state = read_run_state(settings.checkpoint)
    model = load_checkpoint(settings.checkpoint)
    labels = tuple(state.get("labels", FER2013_LABELS))
    spec = PreprocessSpec(input_size=int(model.input_shape[1]))
    if "settings" in state:
        spec = PreprocessSpec.from_dict(state["settings"]["preprocess"])
    data = load_split(settings.data, settings.split, spec, labels)
    rows = pick_examples(data, settings.per_class, settings.seed)
    chosen = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    layer = gradcam_layer(model)
    cams, gradients, probabilities = saliency_maps(model, data.images[chosen], data.labels[chosen], layer)
    maps = {"gradcam": cams, "gradient": gradients}
    if settings.method != "both":
        maps = {settings.method: maps[settings.method]}
    # Re-index rows into positions within ``chosen``.
    positions, start = [], 0
    for members in rows:
        positions.append(np.arange(start, start + len(members)))
        start += len(members)
    draw_grid(data.images[chosen], maps, positions, labels, probabilities, out)
    return {"out": str(out), "layer": layer, "images": int(len(chosen)), "bands": band_shares(cams)}
