"""export: a trained checkpoint to the chair's ``.tflite`` and its metadata, checked.

One run of ``export`` does, in order:

1. load the Keras checkpoint and its run's ``state.json`` (labels, preprocessing,
   architecture, epochs, seed), and the data set's validation split;
2. optionally wrap the model for flip test-time augmentation (``tta_flip``): the
   output is the mean of the predictions on the face and its mirror image. It
   doubles the work per face, so it doubles the latency on the chair;
3. convert: full-integer int8 (int8 input *and* output; calibrated on a seeded
   sample of the *training* split, never on the validation images it is judged on),
   or float32 with ``float32=True`` for comparison;
4. evaluate the Keras float model and the exported file on the validation split,
   the file through the daemon's ``EmotionClassifier``; measure the file's median
   single-thread latency per face;
5. refuse the model (``ExportError``) if the file loses more than ``max_drop_points``
   of 7-class accuracy against the float model.

Everything is written into a temporary folder beside ``out`` and renamed into place
only when every check has passed, so a failed export leaves no file behind that
could pass for a valid one.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from relaxd.errors import RelaxdError
from relaxd.vision.model_meta import (
    FER2013_GROUPS,
    FER2013_LABELS,
    GROUPS,
    ModelMetadata,
    file_sha256,
    load_metadata,
    metadata_path,
    save_metadata,
)
from relaxd.vision.preprocess import PreprocessSpec
from relaxd_train.data import load_split, sample_split, split_source
from relaxd_train.evaluate import compute_metrics

if TYPE_CHECKING:
    import keras


class ExportError(RelaxdError):
    """The checkpoint cannot be exported, or the exported file fails its checks."""


@dataclass
class ExportSettings:
    """What ``export`` needs; empty/None fields fall back to the run's own records."""

    checkpoint: Path
    data: Path
    out: Path
    name: str = ""  # default: the file name of ``out`` without .tflite
    version: str = ""  # default: today's date
    crop_margin: float | None = None  # default: the run's preprocess spec
    representative: int = 500
    seed: int = 1
    tta_flip: bool = False
    float32: bool = False
    max_drop_points: float = 1.0
    latency_runs: int = 200
    warmup_runs: int = 20


def read_run_state(checkpoint: Path) -> dict[str, Any]:
    """The ``state.json`` of the checkpoint's run directory, or {} when there is none."""
    path = Path(checkpoint).parent / "state.json"
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{path} is not valid JSON ({error}): repair it or move it away") from None
    if not isinstance(state, dict):
        raise ExportError(f"{path} must hold a JSON object")
    return state


def export_spec(model: keras.Model, state: dict[str, Any], crop_margin: float | None) -> PreprocessSpec:
    """The preprocessing contract to ship: size from the model, the rest from the run."""
    size = int(model.input_shape[1])
    if tuple(model.input_shape[1:]) != (size, size, 1):
        raise ExportError(f"model input is {model.input_shape[1:]}, expected a square grayscale (S, S, 1) face")
    if "settings" in state:
        trained = PreprocessSpec.from_dict(state["settings"]["preprocess"])
    else:
        trained = PreprocessSpec(input_size=size)
    if size != trained.input_size:
        raise ExportError(f"the model takes {size}x{size} faces but its run says {trained.input_size}: "
                          "is state.json from another run?")
    margin = trained.crop_margin if crop_margin is None else crop_margin
    return replace(trained, crop_margin=margin)


def groups_for(labels: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The FER2013 negative/neutral/positive grouping of ``labels``."""
    unknown = [label for label in labels if label not in FER2013_LABELS]
    if unknown:
        raise ExportError(f"labels {unknown} have no negative/neutral/positive group (known: {FER2013_LABELS})")
    return {group: tuple(label for label in FER2013_GROUPS[group] if label in labels) for group in GROUPS}


def with_flip_tta(model: keras.Model) -> keras.Model:
    """A model whose output is the mean of ``model`` on the face and on its mirror image."""
    import keras

    inputs = keras.Input(model.input_shape[1:], name="face")
    mirrored = keras.ops.flip(inputs, axis=2)
    outputs = keras.layers.Average(name="tta_mean")([model(inputs), model(mirrored)])
    return keras.Model(inputs, outputs, name=f"{model.name}_tta_flip")


def convert(model: keras.Model, representative: np.ndarray | None) -> bytes:
    """The TFLite flatbuffer: full-integer int8 when calibration images are given, else float32."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the whole traced signature
        return converter.convert()


def predict_keras(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return model.predict(images, batch_size=256, verbose=0).argmax(axis=1).astype(np.int64)


def predict_tflite(model_path: Path, images: np.ndarray) -> np.ndarray:
    """Label indices from the exported file, through the daemon's own classifier."""
    from relaxd.vision.classifier import EmotionClassifier
    from relaxd_train.evaluate import predict_labels

    return predict_labels(EmotionClassifier(model_path), images)


def measure_latency_ms(model_path: Path, face: np.ndarray, runs: int, warmup: int) -> float:
    """Median milliseconds of one ``invoke`` on one face, single thread, after warm-up."""
    from relaxd.vision.classifier import quantize
    from relaxd.vision.runtime import load_interpreter

    interpreter = load_interpreter(model_path, threads=1)
    details = interpreter.get_input_details()[0]
    tensor = face[np.newaxis].astype(np.float32)
    if details["dtype"] != np.float32:
        scale, zero_point = details["quantization"]
        tensor = quantize(tensor, scale, zero_point, details["dtype"])
    interpreter.set_tensor(details["index"], tensor)
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def training_record(settings: ExportSettings, state: dict[str, Any], model: keras.Model,
                    command: str, calibration_images: int) -> dict[str, Any]:
    """The metadata's ``training`` section: where the model came from, reproducibly."""
    import tensorflow as tf

    from relaxd_train.architectures import multiply_adds

    run = state.get("settings", {})
    record: dict[str, Any] = {
        "data": str(settings.data),
        "command": command,
        "checkpoint": str(settings.checkpoint),
        "arch": run.get("arch", model.name),
        "params": int(model.count_params()),
        "multiply_adds": multiply_adds(model),
        "tta_flip": settings.tta_flip,
        "tensorflow": tf.__version__,
    }
    for key in ("epochs", "seed"):
        if key in run:
            record[key] = run[key]
    for key in ("epochs_done", "best_epoch", "train_counts", "train_source", "finetune", "init_from"):
        if key in state:
            record[key] = state[key]
    if Path(settings.checkpoint).name == "average.keras" and "average" in state:
        record["average"] = state["average"]  # the weights are a mean of epochs, not one epoch
    if state.get("command"):
        record["train_command"] = state["command"]
    if calibration_images:
        record["representative"] = {"split": "train", "images": calibration_images, "seed": settings.seed}
    return record


def export(settings: ExportSettings, command: str = "") -> ModelMetadata:
    """Convert, check and write ``settings.out`` and its metadata JSON; return the metadata."""
    from relaxd_train.architectures import load_checkpoint

    out = Path(settings.out)
    if out.suffix != ".tflite":
        raise ExportError(f"--out {out} must end in .tflite (its metadata goes beside it as {out.stem}.json)")
    if settings.representative < 1 or settings.latency_runs < 1:
        raise ExportError("--representative and --latency-runs must be at least 1")
    state = read_run_state(settings.checkpoint)
    model = load_checkpoint(settings.checkpoint)
    spec = export_spec(model, state, settings.crop_margin)
    labels = tuple(state.get("labels", FER2013_LABELS))
    if model.output_shape[-1] != len(labels):
        raise ExportError(f"the model has {model.output_shape[-1]} outputs but its run lists {len(labels)} labels")
    groups = groups_for(labels)
    quantization = "float32" if settings.float32 else "int8"

    val = load_split(settings.data, "val", spec, labels)
    graph = with_flip_tta(model) if settings.tta_flip else model
    keras_pred = predict_keras(graph, val.images)
    calibration = None
    if not settings.float32:
        calibration = sample_split(settings.data, "train", spec, settings.representative, settings.seed, labels).images
    flatbuffer = convert(graph, calibration)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.export-") as work:
        candidate = Path(work) / out.name
        candidate.write_bytes(flatbuffer)
        meta = ModelMetadata(
            name=settings.name or out.stem,
            version=settings.version or datetime.date.today().isoformat(),
            labels=labels,
            groups=groups,
            preprocess=spec,
            quantization=quantization,
            sha256=file_sha256(candidate),
            training=training_record(settings, state, model, command,
                                     0 if calibration is None else len(calibration)),
        )
        save_metadata(candidate, meta)

        keras_metrics = compute_metrics(val.labels, keras_pred, labels, groups)
        file_metrics = compute_metrics(val.labels, predict_tflite(candidate, val.images), labels, groups)
        drop = 100.0 * (keras_metrics["accuracy_7"] - file_metrics["accuracy_7"])
        metrics: dict[str, Any] = {
            "split": "val",
            "val_data": split_source(settings.data, "val"),
            "val_images": len(val),
            "val_accuracy_7_keras": keras_metrics["accuracy_7"],
            "val_accuracy_3_keras": keras_metrics["accuracy_3"],
            f"val_accuracy_7_{quantization}": file_metrics["accuracy_7"],
            f"val_accuracy_3_{quantization}": file_metrics["accuracy_3"],
            f"val_negative_recall_{quantization}": file_metrics["negative_recall"],
            f"val_macro_f1_{quantization}": file_metrics["macro_f1"],
            f"val_per_class_{quantization}": file_metrics["per_class"],
            f"val_confusion_{quantization}": file_metrics["confusion"],
            "accuracy_drop_points": drop,
            "latency_ms_median_1thread": measure_latency_ms(candidate, val.images[0], settings.latency_runs,
                                                            settings.warmup_runs),
            "latency_runs": settings.latency_runs,
            "file_bytes": len(flatbuffer),
        }
        if settings.tta_flip:
            metrics["val_accuracy_7_keras_without_tta"] = float(np.mean(predict_keras(model, val.images) == val.labels))
        save_metadata(candidate, replace(meta, metrics=metrics))
        if drop > settings.max_drop_points:
            raise ExportError(
                f"the {quantization} model loses {drop:.2f} points of 7-class accuracy on val "
                f"({100 * keras_metrics['accuracy_7']:.2f}% float -> {100 * file_metrics['accuracy_7']:.2f}% "
                f"{quantization}), more than the allowed {settings.max_drop_points:.2f}; nothing was written. "
                "Try more --representative images, or export --float to compare"
            )
        os.replace(candidate, out)
        os.replace(metadata_path(candidate), metadata_path(out))
    meta, _ = choose_negative_weight(out, settings.data)
    return meta


def tradeoff_png_path(model_path: Path) -> Path:
    """``models/x.tflite`` -> ``models/x-tradeoff.png`` (the model card shows it)."""
    return Path(model_path).with_name(f"{Path(model_path).stem}-tradeoff.png")


def choose_negative_weight(model_path: Path, data: Path, png: Path | None = None) -> tuple[ModelMetadata, Path]:
    """Sweep the negative weight on val through the exported file, keep the card's choice, reseal.

    Rewrites the model's metadata (``decision`` section, resealed) and draws the trade-off.
    """
    from relaxd_train.decision_weight import choose, decision_record, save_tradeoff_png, sweep

    model_path = Path(model_path)
    meta = load_metadata(model_path)
    val = load_split(data, "val", meta.preprocess, meta.labels)
    from relaxd.vision.classifier import EmotionClassifier
    from relaxd_train.evaluate import predict_probabilities

    probabilities = predict_probabilities(EmotionClassifier(model_path), val.images)
    points = sweep(val.labels, probabilities, meta.labels, meta.groups)
    chosen = choose(points)
    meta = replace(meta, decision=decision_record(points, chosen))
    save_metadata(model_path, meta)
    png = save_tradeoff_png(points, chosen, png or tradeoff_png_path(model_path),
                            f"{meta.name} {meta.version} on FER2013 val ({len(val)} faces): the negative weight "
                            f"trades calm faces read as negative for negatives found")
    return meta, png


def format_summary(meta: ModelMetadata, out: Path) -> str:
    m = meta.metrics
    q = meta.quantization
    return "\n".join([
        f"exported {out} ({q}, {m['file_bytes'] / 1024:.0f} KiB) and {metadata_path(out)}",
        f"val ({m['val_images']} images): Keras float 7-class {100 * m['val_accuracy_7_keras']:.2f}%, "
        f"{q} {100 * m[f'val_accuracy_7_{q}']:.2f}% (loss {m['accuracy_drop_points']:.2f} points); "
        f"{q} 3-class {100 * m[f'val_accuracy_3_{q}']:.2f}%, negative recall "
        f"{100 * (m[f'val_negative_recall_{q}'] or 0):.1f}%",
        f"latency {m['latency_ms_median_1thread']:.3f} ms per face (median of {m['latency_runs']} invokes, "
        f"1 thread{', flip TTA: two passes' if meta.training.get('tta_flip') else ''})",
    ])
