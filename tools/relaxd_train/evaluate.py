"""evaluate: any ``.tflite`` on any labelled data, through the daemon's own code path.

Images go through ``relaxd.vision.preprocess`` and ``relaxd.vision.classifier``
exactly as on the chair, so the numbers are the chair's numbers:

- face crops (FER2013, or any folder of cropped faces): ``image_to_input``;
- ``detect_faces=True`` (whole photos of any size): the daemon's ``FaceDetector``
  finds the face, ``face_to_input`` crops it with the model's margin. A photo with no
  face found counts as wrong (its prediction is ``NO_FACE``).

The metrics come from one pure function, ``compute_metrics(y_true, y_pred, ...)``.
No TensorFlow is needed here: only the TFLite runtime, OpenCV and numpy
(matplotlib for the optional confusion-matrix PNG).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from relaxd.vision.model_meta import GROUPS
from relaxd.vision.preprocess import face_to_input
from relaxd_train.data import list_split, load_split, split_source

NO_FACE = -1
"""The prediction recorded for a photo in which no face was found."""

BATCH = 512


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None (JSON null) where it is undefined."""
    return float(numerator) / float(denominator) if denominator else None


def compute_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                    labels: Sequence[str], groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Accuracy, per-class and 3-group figures from true and predicted label indices.

    ``y_pred`` may hold ``NO_FACE``: such an image is wrong in every accuracy and
    recall, appears in no confusion cell, and is counted in ``no_face`` (per true
    class), so ``sum(confusion) + sum(no_face) == n``. Undefined ratios (a class
    never predicted, or absent from the data) are ``None``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    classes = len(labels)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be equal-length non-empty vectors, got {y_true.shape}, {y_pred.shape}")
    if y_true.min() < 0 or y_true.max() >= classes or y_pred.max() >= classes or y_pred.min() < NO_FACE:
        raise ValueError(f"label indices must lie in 0..{classes - 1} (predictions may also be NO_FACE)")
    found = y_pred != NO_FACE
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (y_true[found], y_pred[found]), 1)
    no_face = np.bincount(y_true[~found], minlength=classes)

    group_of = np.array([GROUPS.index(next(g for g in GROUPS if label in groups[g])) for label in labels])
    true_group = group_of[y_true]
    pred_group = np.where(found, group_of[np.where(found, y_pred, 0)], NO_FACE)
    confusion_3 = np.zeros((len(GROUPS), len(GROUPS)), dtype=np.int64)
    np.add.at(confusion_3, (true_group[found], pred_group[found]), 1)

    per_class: dict[str, dict[str, Any]] = {}
    for index, label in enumerate(labels):
        hits = confusion[index, index]
        support = int(confusion[index].sum() + no_face[index])
        precision = ratio(hits, confusion[:, index].sum())
        recall = ratio(hits, support)
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    f1s = [scores["f1"] for scores in per_class.values() if scores["support"] and scores["f1"] is not None]

    recall_3 = {group: ratio(np.sum((true_group == g) & (pred_group == g)), np.sum(true_group == g))
                for g, group in enumerate(GROUPS)}
    n = len(y_true)
    return {
        "n": n,
        "accuracy_7": float(np.trace(confusion)) / n,
        "accuracy_3": float(np.sum(true_group == pred_group)) / n,
        "negative_recall": recall_3["negative"],
        "recall_3": recall_3,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "face_found": float(found.mean()),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "confusion_3": confusion_3.tolist(),
        "no_face": no_face.tolist(),
        "labels": list(labels),
        "groups": list(GROUPS),
    }


def predict_labels(classifier: Any, inputs: np.ndarray) -> np.ndarray:
    """Arg-max label indices of ``classifier.predict`` over (N, S, S, 1) inputs, in batches."""
    if len(inputs) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([classifier.predict(inputs[start:start + BATCH]).argmax(axis=1)
                           for start in range(0, len(inputs), BATCH)]).astype(np.int64)


def predict_whole_photos(classifier: Any, data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) for whole photos: the daemon's detector, then its crop contract."""
    from relaxd.settings import DetectorSettings
    from relaxd.vision.detector import FaceDetector

    detector = FaceDetector(DetectorSettings())
    items = list_split(data, split, classifier.labels)
    y_pred = np.full(len(items), NO_FACE, dtype=np.int64)
    for index, item in enumerate(items):
        photo = item.read(color=True)
        box = detector.find_best(photo)
        if box is not None:
            face = face_to_input(photo, box, classifier.spec)
            y_pred[index] = int(classifier.predict(face[np.newaxis])[0].argmax())
    return np.asarray([item.label for item in items], dtype=np.int64), y_pred


def evaluate_model(model: Path, data: Path, split: str = "val", detect_faces: bool = False) -> dict[str, Any]:
    """The metrics of ``model`` on ``data`` (a CSV, split folders or class folders)."""
    from relaxd.vision.classifier import EmotionClassifier

    classifier = EmotionClassifier(Path(model))
    if detect_faces:
        y_true, y_pred = predict_whole_photos(classifier, Path(data), split)
    else:
        dataset = load_split(data, split, classifier.spec, classifier.labels)
        y_true, y_pred = dataset.labels, predict_labels(classifier, dataset.images)
    report = compute_metrics(y_true, y_pred, classifier.labels, classifier.metadata.groups)
    report.update({
        "model": str(model),
        "model_name": classifier.metadata.name,
        "model_version": classifier.metadata.version,
        "data": split_source(data, split),
        "split": split,
        "detect_faces": detect_faces,
    })
    return report


def percent(value: float | None) -> str:
    return "  -  " if value is None else f"{100 * value:5.1f}%"


def format_report(report: Mapping[str, Any]) -> str:
    """A human-readable summary: headline figures, per-class table, confusion matrix."""
    labels = report["labels"]
    lines = [
        f"model {report['model']} on {report['data']} ({report['n']} images)",
        f"7-class accuracy {percent(report['accuracy_7'])}   3-class accuracy {percent(report['accuracy_3'])}"
        f"   negative recall {percent(report['negative_recall'])}   face found {percent(report['face_found'])}",
        "",
        f"{'class':<10} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>8}",
    ]
    for label in labels:
        s = report["per_class"][label]
        lines.append(f"{label:<10} {percent(s['precision']):>9} {percent(s['recall']):>7} "
                     f"{percent(s['f1']):>7} {s['support']:>8}")
    width = max(len(label) for label in labels) + 1
    lines += ["", "confusion (rows: true, columns: predicted" + (", last: no face)" if report["detect_faces"] else ")"),
              " " * width + "".join(f"{label[:7]:>8}" for label in labels)]
    for label, row, missed in zip(labels, report["confusion"], report["no_face"]):
        cells = "".join(f"{count:>8}" for count in row) + (f"{missed:>8}" if report["detect_faces"] else "")
        lines.append(f"{label:<{width}}{cells}")
    return "\n".join(lines)


def save_confusion_png(report: Mapping[str, Any], path: Path) -> Path:
    """The confusion matrix as a PNG: counts in the cells, colour = share of the true class."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(report["labels"])
    counts = np.asarray(report["confusion"], dtype=np.float64)
    columns = labels
    if report.get("detect_faces"):
        counts = np.column_stack([counts, report["no_face"]])
        columns = labels + ["no face"]
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(1.0 + 0.8 * len(columns), 1.2 + 0.7 * len(labels)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            axes.text(column, row, f"{int(counts[row, column])}", ha="center", va="center",
                      color="white" if shares[row, column] > 0.5 else "black", fontsize=8)
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{Path(report['model']).name}: 7-class {100 * report['accuracy_7']:.1f}% (n={report['n']})")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def write_outputs(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """``confusion.png`` and ``report.json`` in ``out_dir`` (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return [save_confusion_png(report, out_dir / "confusion.png"), report_path]
