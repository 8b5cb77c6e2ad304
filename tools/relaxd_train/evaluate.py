"""evaluate: any ``.tflite`` on any labelled data, through the daemon's own code path.

Images go through ``relaxd.vision.preprocess`` and ``relaxd.vision.classifier``
exactly as on the chair, so the numbers are the chair's numbers:

- face crops (FER2013, or any folder of cropped faces): ``image_to_input``;
- ``detect_faces=True`` (whole photos of any size): the daemon's ``FaceDetector``
  finds the face, ``face_to_input`` crops it with the model's margin. A photo with no
  face found counts as wrong (its prediction is ``NO_FACE``).

The 3-class figures are the chair's decisions: each image's probabilities go through
``relaxd.vision.decision.GroupDecision`` with the model's grouping and negative weight,
the same function the daemon runs per frame. The report adds the same decision under
both groupings (surprise negative, as shipped; surprise positive, as before 1.5) and
the recall of each group.

The metrics come from one pure function, ``compute_metrics(y_true, y_pred, ...)``.
No TensorFlow is needed here: only the TFLite runtime, OpenCV and numpy
(matplotlib for the optional confusion-matrix PNG).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from relaxd.vision.decision import GroupDecision
from relaxd.vision.model_meta import FER2013_GROUPS, FER2013_LABELS, GROUPS, SURPRISE_POSITIVE_GROUPS
from relaxd.vision.preprocess import face_to_input
from relaxd_train.data import DataError, list_split, split_by_subject, split_source, to_dataset

NO_FACE = -1
"""The prediction recorded for a photo in which no face was found."""

BATCH = 512


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None (JSON null) where it is undefined."""
    return float(numerator) / float(denominator) if denominator else None


def compute_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                    labels: Sequence[str], groups: Mapping[str, Sequence[str]],
                    decided: Sequence[int] | np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, per-class and 3-group figures from true and predicted label indices.

    ``decided``: the group index (into ``GROUPS``) the chair decided per image, NO_FACE
    where no face was found; without it the group of the predicted label is used.

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
    if decided is not None:
        pred_group = np.asarray(decided, dtype=np.int64)
        if pred_group.shape != y_true.shape:
            raise ValueError(f"decided must have one group per image, got {pred_group.shape} for {y_true.shape}")
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


def predict_probabilities(classifier: Any, inputs: np.ndarray) -> np.ndarray:
    """``classifier.predict`` over (N, S, S, 1) inputs, in batches: (N, labels)."""
    if len(inputs) == 0:
        return np.zeros((0, len(classifier.labels)))
    return np.concatenate([classifier.predict(inputs[start:start + BATCH])
                           for start in range(0, len(inputs), BATCH)]).astype(np.float64)


def predict_labels(classifier: Any, inputs: np.ndarray) -> np.ndarray:
    """Arg-max label indices of ``classifier.predict`` over (N, S, S, 1) inputs, in batches."""
    return predict_probabilities(classifier, inputs).argmax(axis=1).astype(np.int64)


def predict_whole_photos(classifier: Any, data: Path, split: str,
                         held_out_share: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, probabilities) for whole photos: the daemon's detector, then its crop contract.

    A photo without a face found has a row of NaN.
    """
    from relaxd.settings import DetectorSettings
    from relaxd.vision.detector import FaceDetector

    detector = FaceDetector(DetectorSettings())
    items = select_subjects(list_split(data, split, classifier.labels), held_out_share)
    probabilities = np.full((len(items), len(classifier.labels)), np.nan)
    for index, item in enumerate(items):
        photo = item.read(color=True)
        box = detector.find_best(photo)
        if box is not None:
            face = face_to_input(photo, box, classifier.spec)
            probabilities[index] = classifier.predict(face[np.newaxis])[0]
    return np.asarray([item.label for item in items], dtype=np.int64), probabilities


def select_subjects(items: list, held_out_share: float | None) -> list:
    """All items, or only those of the subjects ``train --extra-held-out-share`` kept out."""
    if held_out_share is None:
        return items
    _, held = split_by_subject(items, held_out_share)
    if not held:
        raise DataError(f"no subject is held out at share {held_out_share:g}: use the share the model was trained with")
    return held


def decided_groups(decision: GroupDecision, probabilities: np.ndarray) -> np.ndarray:
    """The chair's group per image, NO_FACE where the row is NaN (no face found)."""
    found = ~np.isnan(probabilities).any(axis=1)
    decided = np.full(len(probabilities), NO_FACE, dtype=np.int64)
    if found.any():
        decided[found] = decision.decide(probabilities[found])
    return decided


def group_figures(y_true: np.ndarray, decided: np.ndarray, labels: Sequence[str],
                  groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """3-class accuracy, recall per group and the 3x3 confusion of one grouping's decisions."""
    metrics = compute_metrics(y_true, np.where(decided == NO_FACE, NO_FACE, 0), labels, groups, decided)
    return {key: metrics[key] for key in ("accuracy_3", "negative_recall", "recall_3", "confusion_3")} | {
        "groups": {group: list(groups[group]) for group in GROUPS}}


def evaluate_model(model: Path, data: Path, split: str = "val", detect_faces: bool = False,
                   negative_weight: float | None = None, held_out_share: float | None = None,
                   command: str = "") -> dict[str, Any]:
    """The metrics of ``model`` on ``data`` (a CSV, split folders or class folders).

    ``negative_weight`` replaces the model's shipped weight (as ``affect.negative_weight``
    does on the chair); ``held_out_share`` keeps only the subjects training did not see.
    """
    from relaxd.vision.classifier import EmotionClassifier

    classifier = EmotionClassifier(Path(model))
    meta = classifier.metadata
    if detect_faces:
        y_true, probabilities = predict_whole_photos(classifier, Path(data), split, held_out_share)
    else:
        items = select_subjects(list_split(data, split, classifier.labels), held_out_share)
        dataset = to_dataset(items, classifier.spec, classifier.labels, split_source(data, split))
        y_true, probabilities = dataset.labels, predict_probabilities(classifier, dataset.images)
    decision = GroupDecision.for_model(meta, negative_weight)
    decided = decided_groups(decision, probabilities)
    y_pred = np.where(np.isnan(probabilities).any(axis=1), NO_FACE, np.nan_to_num(probabilities).argmax(axis=1))
    report = compute_metrics(y_true, y_pred, classifier.labels, meta.groups, decided)
    report.update({
        "model": str(model),
        "model_name": meta.name,
        "model_version": meta.version,
        "data": split_source(data, split),
        "split": split,
        "detect_faces": detect_faces,
        "held_out_share": held_out_share,
        "command": command,
        "decision": {"negative_weight": decision.negative_weight,
                     "groups": {group: list(meta.groups[group]) for group in GROUPS}},
        "groupings": {
            name: group_figures(y_true, decided_groups(
                GroupDecision(tuple(classifier.labels), grouping, decision.negative_weight), probabilities),
                classifier.labels, grouping)
            for name, grouping in (("surprise_negative", FER2013_GROUPS), ("surprise_positive", SURPRISE_POSITIVE_GROUPS))
            if set(classifier.labels) == set(FER2013_LABELS)
        },
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
        f"the chair's decision: negative weight {report['decision']['negative_weight']:g}, "
        f"negative = {', '.join(report['decision']['groups']['negative'])}",
    ]
    for name, figures in report.get("groupings", {}).items():
        recall = figures["recall_3"]
        lines.append(f"  {name.replace('_', ' '):<18} 3-class {percent(figures['accuracy_3'])}   recall: "
                     + "   ".join(f"{group} {percent(recall[group])}" for group in GROUPS))
    lines += [
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
