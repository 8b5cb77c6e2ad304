"""The model card: a Markdown page rendered from a model's metadata JSON.

Everything on the card comes from what ``export`` measured and recorded (the exact
commands, architecture, size, val accuracy 7- and 3-class, per-class recall, the
confusion matrix, int8 against float, latency), so the card cannot disagree with the
model it describes. An optional ``evaluate --detect-faces --json`` report adds the
whole-pipeline figures (face detector included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from relaxd.vision.model_meta import ModelMetadata


def pct(value: float | None) -> str:
    """The one format the card uses for accuracies: ``67.3%`` (the shipped-model test reads it)."""
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def train_command(training: Mapping[str, Any]) -> str:
    """The training command recorded by ``train``, else rebuilt from the run's settings."""
    if training.get("train_command"):
        return str(training["train_command"])
    run_dir = str(Path(str(training.get("checkpoint", "RUN/best.keras"))).parent)
    parts = ["train-and-export train", f"--data {training.get('data', 'DATA')}",
             f"--arch {training.get('arch', 'relaxnet')}", f"--epochs {training.get('epochs', '?')}",
             f"--out {run_dir}"]
    if training.get("seed", 1) != 1:
        parts.append(f"--seed {training['seed']}")
    return " ".join(parts)


def confusion_table(labels: list[str], matrix: list[list[int]]) -> list[str]:
    head = "| true \\ predicted | " + " | ".join(labels) + " | recall |"
    rows = [head, "|" + "---|" * (len(labels) + 2)]
    for label, row in zip(labels, matrix):
        total = sum(row)
        recall = row[labels.index(label)] / total if total else None
        rows.append(f"| **{label}** | " + " | ".join(str(v) for v in row) + f" | {pct(recall)} |")
    return rows


def per_class_table(per_class: Mapping[str, Mapping[str, float]]) -> list[str]:
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, stats in per_class.items():
        rows.append(f"| {label} | {pct(stats.get('precision'))} | {pct(stats.get('recall'))} | "
                    f"{pct(stats.get('f1'))} | {stats.get('support', '')} |")
    return rows


def weakest_class_note(labels: list[str], matrix: list[list[int]] | None) -> list[str]:
    """One line on the class with the lowest val recall and where its errors go."""
    if not matrix:
        return []
    recalls = [row[i] / sum(row) if sum(row) else 1.0 for i, row in enumerate(matrix)]
    worst = min(range(len(labels)), key=recalls.__getitem__)
    errors = [(count, labels[j]) for j, count in enumerate(matrix[worst]) if j != worst]
    count, target = max(errors)
    return [f"- The weakest class on val is {labels[worst]} (recall {pct(recalls[worst])}); "
            f"most of its errors ({count} of {sum(matrix[worst]) - matrix[worst][worst]}) are read as {target}."]


def decision_section(meta: ModelMetadata, model_file: str) -> list[str]:
    """The chair's per-frame decision: the weight, the rule that chose it, the trade-off at a glance."""
    d = meta.decision
    if not d.get("sweep"):
        return []
    chosen = float(d["negative_weight"])
    shown = [p for p in d["sweep"] if p["weight"] in (1.0, 2.0, 3.0, 4.0, 5.0) or p["weight"] == chosen]
    png = f"{Path(model_file).stem}-tradeoff.png"
    lines = [
        "## The chair's decision per frame",
        "",
        "The chair does not take the argmax of the seven labels: it sums the probabilities per group and decides "
        f"negative when {chosen:g} x P(negative) beats P(neutral) and P(positive) (`relaxd/vision/decision.py`; "
        "the daemon, `relaxd replay` and `train-and-export evaluate` all call it). A missed negative costs more "
        f"than a false one. The weight {chosen:g} was chosen on FER2013 val by the rule: {d.get('rule')}. "
        "`affect.negative_weight` and `affect.*_labels` change it per chair.",
        "",
        "| negative weight | 3-class | negative recall | positive recall | neutral recall | neutral read as negative |",
        "|---|---|---|---|---|---|",
    ]
    for p in shown:
        mark = " (shipped)" if p["weight"] == chosen else ""
        lines.append(f"| {p['weight']:g}{mark} | {pct(p['accuracy_3'])} | {pct(p['negative_recall'])} | "
                     f"{pct(p['positive_recall'])} | {pct(p['neutral_recall'])} | {pct(p['calm_read_negative'])} |")
    lines += ["", f"![negative recall against positive recall and against calm faces read as negative]({png})",
              "", f"Reproduce: `train-and-export decision --model models/{model_file} --data ../shared/data/fer2013`.",
              ""]
    return lines


def report_row(report: Mapping[str, Any]) -> str:
    """One table row of an ``evaluate --json`` report: the chair's decision under both groupings."""
    groupings = report.get("groupings", {})
    neg = groupings.get("surprise_negative", {})
    pos = groupings.get("surprise_positive", {})
    return (f"| {report.get('data')}{' (held-out subjects)' if report.get('held_out_share') else ''} | "
            f"{report.get('n')} | {pct(report.get('accuracy_7'))} | {pct(neg.get('accuracy_3'))} | "
            f"{pct(neg.get('negative_recall'))} | {pct(pos.get('accuracy_3'))} | {pct(pos.get('negative_recall'))} |")


def checkpoint_note(training: Mapping[str, Any]) -> str:
    """Which weights were exported: one epoch chosen on val, or the mean of several (SWA)."""
    average = training.get("average")
    if average:
        last = average["from_epoch"] + average["epochs"] - 1
        planned = training.get("epochs")
        done = training.get("epochs_done")
        run = f"the run stopped after {done} of {planned} planned" if planned and planned != done else f"{done} epochs"
        return (f"weights averaged over epochs {average['from_epoch']}-{last} ({run}; stochastic weight "
                f"averaging, BatchNorm re-measured on training faces)")
    return f"checkpoint selected by val accuracy (epoch {training.get('best_epoch')} of {training.get('epochs_done')})"


def render_card(meta: ModelMetadata, model_file: str, detect_report: Mapping[str, Any] | None = None,
                other_reports: list[tuple[str, Mapping[str, Any]]] = (), default: bool = True) -> str:
    m, t = meta.metrics, meta.training
    groups = "; ".join(f"{g}: {', '.join(meta.groups[g])}" for g in ("negative", "neutral", "positive"))
    lines = [
        f"# Model card: {meta.name} {meta.version}",
        "",
        (f"The emotion model the chair runs by default (`models/{model_file}`, metadata in "
         if default else
         f"A candidate emotion model, not the chair's default (`models/DEFAULT` names that one); set "
         f"`classifier.model` to run it (`models/{model_file}`, metadata in ")
        + f"`models/{Path(model_file).with_suffix('.json').name}`). It classifies one grayscale face crop into "
        f"{len(meta.labels)} FER2013 classes; the daemon groups them as {groups}.",
        "",
        "## How it was made",
        "",
        "```sh",
        train_command(t),
        str(t.get("command", "")),
        "```",
        "",
        f"Trained on `{t.get('train_source') or t.get('data')}` (train split only: "
        + ", ".join(f"{k} {v}" for k, v in (t.get("train_counts") or {}).items())
        + f"), {checkpoint_note(t)}, "
        f"seed {t.get('seed')}, TensorFlow {t.get('tensorflow')}. The int8 ranges were calibrated on "
        f"{(t.get('representative') or {}).get('images', '?')} training images. Nothing was tuned on any "
        "split but val; the FER2013 PrivateTest split and the children's set were never seen.",
        "",
        "## Architecture and size",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{t.get('arch')}` (see `tools/relaxd_train/architectures.py`) |",
        f"| parameters | {t.get('params', 0):,} |",
        f"| multiply-adds per face | {t.get('multiply_adds', 0):,} |",
        f"| input | {meta.preprocess.input_size}x{meta.preprocess.input_size} grayscale, "
        f"{meta.preprocess.normalisation} normalisation, face box + {meta.preprocess.crop_margin:.0%} margin |",
        f"| file | {m.get('file_bytes', 0) / 1024:.0f} KiB, {meta.quantization} (int8 input and output) |",
        f"| mirror averaging (TTA) | {'yes' if t.get('tta_flip') else 'no'} |",
        f"| latency | {m.get('latency_ms_median_1thread', float('nan')):.3f} ms per face, median of "
        f"{m.get('latency_runs', '?')} invokes, one thread, x86 workstation |",
        "",
        f"## Accuracy on FER2013 val (PublicTest, {m.get('val_images')} images)",
        "",
        "| | Keras float | exported int8 |",
        "|---|---|---|",
        f"| 7-class accuracy | {pct(m.get('val_accuracy_7_keras'))} | {pct(m.get('val_accuracy_7_int8'))} |",
        f"| 3-class accuracy (negative/neutral/positive) | {pct(m.get('val_accuracy_3_keras'))} | "
        f"{pct(m.get('val_accuracy_3_int8'))} |",
        f"| negative recall (3-class) | | {pct(m.get('val_negative_recall_int8'))} |",
        f"| macro F1 | | {pct(m.get('val_macro_f1_int8'))} |",
        "",
        f"int8 against float: {m.get('accuracy_drop_points', 0):+.2f} points lost (export refuses more than 1).",
        "",
    ]
    if m.get("val_per_class_int8"):
        lines += ["### Per class (int8)", "", *per_class_table(m["val_per_class_int8"]), ""]
    if m.get("val_confusion_int8"):
        lines += ["### Confusion matrix (int8, rows = true class)", "",
                  *confusion_table(list(meta.labels), m["val_confusion_int8"]), ""]
    lines += decision_section(meta, model_file)
    if other_reports:
        lines += [
            "## Other data (cross-dataset checks, never used to select)",
            "",
            "`train-and-export evaluate --json`; 3-class figures are the chair's decision under each grouping.",
            "",
            "| data | images | 7-class | 3-class, surprise negative | negative recall | 3-class, surprise positive "
            "| negative recall |",
            "|---|---|---|---|---|---|---|",
            *[report_row(report) for _, report in other_reports],
            "",
            *[f"- `{command}`" for command, _ in other_reports],
            "",
        ]
    if detect_report:
        lines += [
            "## Whole pipeline: face detector + model on val photos",
            "",
            "`train-and-export evaluate --model models/" + model_file + " --data " + str(detect_report.get("data"))
            + " --detect-faces`: the daemon's Viola-Jones detector runs on each 48x48 val image "
            "(upscaled; OpenCV's alt2 cascade where the default finds no face), "
            "the face is cropped by the preprocessing contract, and a photo with no face found counts as wrong.",
            "",
            "| face found | 7-class | 3-class | negative recall |",
            "|---|---|---|---|",
            f"| {pct(detect_report.get('face_found'))} | {pct(detect_report.get('accuracy_7'))} | "
            f"{pct(detect_report.get('accuracy_3'))} | {pct(detect_report.get('negative_recall'))} |",
            "",
        ]
    lines += [
        "## Limits",
        "",
        "- Trained on adults' faces from the web (FER2013). Children's negative expressions are subtle and often "
        "read as neutral; the affect aggregator's threshold rule is there to catch them, but evaluate on "
        "children's photos (`train-and-export evaluate --detect-faces`) and fine-tune "
        "(`train-and-export finetune`) before relying on it.",
        *weakest_class_note(list(meta.labels), m.get("val_confusion_int8")),
        "- One face, frontal, grayscale. No identity, no image is ever stored.",
        "",
    ]
    return "\n".join(lines)
