"""Training: seeded, checkpointed every epoch, resumable, with progress and ETA.

A run directory holds everything a run makes::

    RUN/last.keras      model + optimizer state after the latest finished epoch (resume point)
    RUN/best.keras      the epoch with the best validation accuracy (what ``export`` ships)
    RUN/state.json      settings, finished epochs, best epoch and its accuracy
    RUN/history.csv     loss and accuracy per epoch

Selection uses the validation split only; the test split is never read here.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from relaxd.vision.model_meta import FER2013_LABELS
from relaxd.vision.preprocess import PreprocessSpec
from relaxd_train.augment import AugmentSettings, build_augmenter
from relaxd_train.data import DataError, Dataset

CLASS_WEIGHTINGS = ("none", "sqrt", "balanced")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainSettings:
    arch: str = "relaxnet"
    epochs: int = 45
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    group_loss_weight: float = 0.0  # adds this x the cross-entropy of the chair's three groups (losses.py)
    class_weighting: str = "sqrt"
    mixup_alpha: float = 0.0  # e.g. 0.2: blend pairs of faces and their labels (Zhang et al.)
    # Warm restarts: AdamW's first, normalised steps move every weight of a trained network and cost
    # about 2 points of FER val in the first epoch; SGD with momentum and frozen BatchNorm keep it.
    optimizer: str = "adamw"
    freeze_batchnorm: bool = False  # BatchNorm layers keep their statistics and scale (inference mode)
    # Stochastic weight averaging: from this epoch on (0: off) each epoch's weights join a running
    # mean (RUN/average.keras), and the learning rate stays constant after the warm-up.
    average_from_epoch: int = 0
    precision: str = "float32"  # or "bfloat16": mixed precision, ~1.9x faster here (bench_train_precision)
    seed: int = 1
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        data = dict(data)
        data["preprocess"] = PreprocessSpec.from_dict(data["preprocess"])
        data["augment"] = AugmentSettings(**data["augment"])
        return cls(**data)


def class_weights(labels: np.ndarray, classes: int, method: str) -> np.ndarray:
    """Per-class loss weights against imbalance (disgust: 436 images, happy: 7,215).

    ``balanced`` is inverse frequency, ``sqrt`` its square root (a milder correction that
    costs less overall accuracy), both normalised to a mean weight of 1 over the samples.
    """
    if method not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting must be one of {CLASS_WEIGHTINGS}, got {method!r}")
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    if method == "none":
        return np.ones(classes)
    inverse = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / classes, 0.0)
    weights = np.sqrt(inverse) if method == "sqrt" else inverse
    return weights / (weights[labels].mean())


def make_dataset(data: Dataset, settings: TrainSettings, training: bool, weights: np.ndarray | None = None):
    import tensorflow as tf

    from relaxd_train.architectures import precision

    classes = len(data.label_names)
    onehot = np.eye(classes, dtype=np.float32)[data.labels]
    if training:
        sample_weights = (weights if weights is not None else np.ones(classes))[data.labels].astype(np.float32)
        ds = tf.data.Dataset.from_tensor_slices((data.images, onehot, sample_weights))
        ds = ds.shuffle(len(data), seed=settings.seed, reshuffle_each_iteration=True)
        ds = ds.batch(settings.batch_size, drop_remainder=True)
        value_range = (0.0, 1.0) if settings.preprocess.normalisation == "unit" else (-1.0, 1.0)
        with precision("float32"):  # images stay float32 in the pipeline; the model casts them
            augment = build_augmenter(settings.augment, value_range)
        ds = ds.map(lambda x, y, w: (augment(x), y, w), num_parallel_calls=tf.data.AUTOTUNE)
        if settings.mixup_alpha:
            ds = ds.map(lambda x, y, w: mixup(x, y, w, settings.mixup_alpha), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = tf.data.Dataset.from_tensor_slices((data.images, onehot)).batch(256)
    return ds.prefetch(tf.data.AUTOTUNE)


def mixup(images, onehot, weights, alpha: float):
    """Blend each face with another of the batch: ``lam`` ~ Beta(alpha, alpha) per pair."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    a = tf.random.gamma([n], alpha)
    b = tf.random.gamma([n], alpha)
    lam = tf.maximum(a / (a + b), 1.0 - a / (a + b))  # the first face dominates: its weight is kept
    order = tf.random.shuffle(tf.range(n))
    images = lam[:, None, None, None] * images + (1.0 - lam[:, None, None, None]) * tf.gather(images, order)
    onehot = lam[:, None] * onehot + (1.0 - lam[:, None]) * tf.gather(onehot, order)
    weights = lam * weights + (1.0 - lam) * tf.gather(weights, order)
    return images, onehot, weights


def freeze_batchnorm(model) -> None:
    """Every BatchNorm layer in inference mode: its moving statistics, scale and shift stay as trained."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def compile_model(model, settings: TrainSettings, steps_per_epoch: int,
                  labels: Sequence[str] = FER2013_LABELS) -> None:
    import keras

    from relaxd_train.losses import GroupedCrossentropy, group_matrix

    total = settings.epochs * steps_per_epoch
    warmup = min(settings.warmup_epochs * steps_per_epoch, total // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=settings.learning_rate * 0.1,
        decay_steps=max(1, total - warmup),
        alpha=1.0 if settings.average_from_epoch else 0.01,  # alpha 1: no decay, constant after warm-up
        warmup_target=settings.learning_rate,
        warmup_steps=warmup,
    )
    if settings.optimizer not in OPTIMIZERS:
        raise DataError(f"optimizer must be one of {OPTIMIZERS}, got {settings.optimizer!r}")
    if settings.freeze_batchnorm:
        freeze_batchnorm(model)
    optimizer = (keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=settings.weight_decay)
                 if settings.optimizer == "sgd"
                 else keras.optimizers.AdamW(schedule, weight_decay=settings.weight_decay))
    model.compile(
        optimizer=optimizer,
        loss=GroupedCrossentropy(group_matrix(labels), settings.group_loss_weight, settings.label_smoothing),
        metrics=["accuracy"],
    )


def update_average(run_dir: Path, settings: TrainSettings, average: Any, model: Any, epoch: int,
                   calibration: np.ndarray, val_data: Dataset) -> dict[str, Any]:
    """Add ``model``'s weights to the run's ``average``; save it and ``average.keras``; its val figures."""
    from relaxd_train.averaging import averaged_model

    average.add(model.get_weights(), epoch)
    average.save(run_dir / "average.npz")
    mean_model = averaged_model(settings.arch, settings.preprocess.input_size, len(val_data.label_names),
                                average, calibration)
    predictions = mean_model.predict(val_data.images, batch_size=256, verbose=0).argmax(axis=1)
    mean_model.save(run_dir / "average.keras")
    return {"from_epoch": settings.average_from_epoch, "epochs": average.count,
            "val_accuracy": float((predictions == val_data.labels).mean())}


def progress_callback(run_dir: Path, settings: TrainSettings, state: dict[str, Any],
                      calibration: np.ndarray | None = None, val_data: Dataset | None = None):
    """A Keras callback that saves last/best each epoch (and the weight average when it is on),
    writes state + history, prints ETA."""
    import keras

    class ProgressAndCheckpoint(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            from relaxd_train.averaging import WeightAverage

            self.started = time.monotonic()
            self.first_epoch = state["epochs_done"]
            self.average = WeightAverage.load(run_dir / "average.npz")  # read once; kept in memory

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            done = epoch + 1
            val_acc = float(logs.get("val_accuracy", 0.0))
            self.model.save(run_dir / "last.keras")
            if val_acc > state["best_val_accuracy"] or not (run_dir / "best.keras").exists():
                state["best_val_accuracy"] = val_acc
                state["best_epoch"] = done
                self.model.save(run_dir / "best.keras")
            average_note = ""
            if settings.average_from_epoch and done >= settings.average_from_epoch and calibration is not None:
                average = state["average"] = update_average(run_dir, settings, self.average, self.model, done,
                                                            calibration, val_data)
                average_note = f"  average of {average['epochs']}: val_acc {average['val_accuracy']:.4f}"
            state["epochs_done"] = done
            (run_dir / "state.json").write_text(json.dumps(state, indent=2))
            history = run_dir / "history.csv"
            new = not history.exists()
            with history.open("a", newline="") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(["epoch", "loss", "accuracy", "val_loss", "val_accuracy"])
                writer.writerow([done] + [f"{float(logs.get(k, float('nan'))):.5f}"
                                          for k in ("loss", "accuracy", "val_loss", "val_accuracy")])
            elapsed = time.monotonic() - self.started
            per_epoch = elapsed / max(1, done - self.first_epoch)
            eta = per_epoch * (settings.epochs - done)
            print(
                f"epoch {done}/{settings.epochs}  loss {logs.get('loss', 0):.4f}  acc {logs.get('accuracy', 0):.4f}"
                f"  val_loss {logs.get('val_loss', 0):.4f}  val_acc {val_acc:.4f}"
                f"  best {state['best_val_accuracy']:.4f}@{state['best_epoch']}{average_note}"
                f"  {per_epoch:.0f}s/epoch  ETA {eta / 60:.1f} min",
                flush=True,
            )

    return ProgressAndCheckpoint()


def chained_command(base_state: dict[str, Any], command: str, checkpoint: Path | None = None) -> str:
    """The commands that made a model, one per line: the base run's steps, then this one.

    The model card quotes them, so a warm-started or fine-tuned model shows every step; the
    base run's line says which epoch ``checkpoint`` holds (a run stopped early, or its best).
    """
    base = base_state.get("command", "")
    note = checkpoint_epoch(base_state, checkpoint) if base and checkpoint is not None else ""
    return "\n".join(c for c in (base + (f"  # {note}" if note else ""), command) if c)


def checkpoint_epoch(state: dict[str, Any], checkpoint: Path) -> str:
    """"best.keras = epoch 132 of 200", or "" for a file this tool did not name."""
    planned = state.get("settings", {}).get("epochs", "?")
    done = state.get("epochs_done", 0)
    if checkpoint.name == "best.keras":
        return f"best.keras = epoch {state.get('best_epoch', '?')} of {planned}"
    if checkpoint.name == "average.keras" and "average" in state:
        average = state["average"]
        last = average["from_epoch"] + average["epochs"] - 1
        return f"average.keras = mean of epochs {average['from_epoch']}-{last} of {planned}"
    if checkpoint.name == "last.keras":
        stopped = " (stopped there)" if isinstance(planned, int) and done < planned else ""
        return f"last.keras = epoch {done} of {planned}{stopped}"
    return ""


def new_run_state(settings: TrainSettings, train_data: Dataset, val_data: Dataset, model: Any,
                  command: str = "") -> dict[str, Any]:
    """The ``state.json`` of a new run: settings, data, model size, and no epoch done yet."""
    from relaxd_train.architectures import multiply_adds

    return {
        "command": command,  # the exact command line, quoted by the model card
        "settings": settings.to_dict(),
        "labels": list(train_data.label_names),
        "train_source": train_data.source,
        "val_source": val_data.source,
        "train_counts": train_data.class_counts(),
        "params": int(model.count_params()),
        "multiply_adds": multiply_adds(model),
        "epochs_done": 0,
        "best_epoch": 0,
        "best_val_accuracy": 0.0,
    }


def warm_start(checkpoint: Path, settings: TrainSettings, train_data: Dataset) -> tuple[Any, dict[str, Any]]:
    """The model of ``checkpoint`` to train on with a new schedule, and its run's state.

    A warm restart: a run that under-fit (or was cut short) goes on from its weights with
    other settings (lighter regularisation, a new learning-rate cycle) instead of from zero.
    ``checkpoint`` may be a shipped ``.tflite``: its int8 weights are rebuilt into Keras.
    """
    from relaxd_train.architectures import load_checkpoint
    from relaxd_train.export import read_run_state

    if checkpoint.suffix == ".tflite":
        from relaxd_train.from_tflite import keras_from_tflite

        return keras_from_tflite(checkpoint, calibration_sample(train_data, settings.seed))
    model = load_checkpoint(checkpoint)
    if model.name != settings.arch:
        raise DataError(f"--init-from {checkpoint} is a {model.name!r} model, not {settings.arch!r}: "
                        f"pass --arch {model.name}")
    if int(model.input_shape[1]) != settings.preprocess.input_size:
        raise DataError(f"--init-from {checkpoint} takes {model.input_shape[1]}x{model.input_shape[1]} faces: "
                        f"pass --input-size {model.input_shape[1]}")
    return model, read_run_state(checkpoint)


def calibration_sample(data: Dataset, seed: int, count: int = 4000) -> np.ndarray:
    """A seeded sample of un-augmented training faces in random order, for BatchNorm statistics.

    Random order matters: the data sets list their faces class by class, and BatchNorm
    statistics measured batch by batch on one-class batches miss the variance between classes.
    """
    rng = np.random.default_rng(seed)
    return data.images[rng.choice(len(data), size=min(count, len(data)), replace=False)]


def train(train_data: Dataset, val_data: Dataset, settings: TrainSettings, run_dir: Path,
          resume: bool = False, command: str = "", init_from: Path | None = None) -> dict[str, Any]:
    """Train (or resume) a model, from scratch or from ``init_from``'s weights; return the final state."""
    from relaxd_train.architectures import precision

    state_file = run_dir / "state.json"
    resuming = resume and state_file.exists() and (run_dir / "last.keras").exists()
    if resuming:  # a resumed run keeps its own settings, precision included
        settings = TrainSettings.from_dict(json.loads(state_file.read_text())["settings"])
    with precision(settings.precision):
        return train_under_policy(train_data, val_data, settings, run_dir, resume, resuming, command,
                                  init_from)


def train_under_policy(train_data: Dataset, val_data: Dataset, settings: TrainSettings, run_dir: Path,
                       resume_requested: bool, resuming: bool, command: str,
                       init_from: Path | None) -> dict[str, Any]:
    import keras

    from relaxd_train.architectures import build

    run_dir.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / "state.json"
    keras.utils.set_random_seed(settings.seed)
    if resuming:
        import relaxd_train.losses  # noqa: F401  (registers the loss the checkpoint names)

        state = json.loads(state_file.read_text())
        model = keras.models.load_model(run_dir / "last.keras")
        print(f"resuming {run_dir} after epoch {state['epochs_done']}", flush=True)
    else:
        if state_file.exists() and not resume_requested:
            raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it or pick a new --out")
        if len(train_data) < settings.batch_size:
            raise DataError(f"the training split {train_data.source} has {len(train_data)} images, "
                            f"fewer than one batch ({settings.batch_size}): lower --batch-size")
        for stale in ("average.npz", "average.keras"):  # left by a run killed before its first state.json
            (run_dir / stale).unlink(missing_ok=True)
        base_state: dict[str, Any] = {}
        if init_from is not None:
            model, base_state = warm_start(init_from, settings, train_data)
        else:
            model = build(settings.arch, settings.preprocess.input_size, len(train_data.label_names))
        compile_model(model, settings, len(train_data) // settings.batch_size, train_data.label_names)
        state = new_run_state(settings, train_data, val_data, model,
                              chained_command(base_state, command, init_from))
        if init_from is not None:
            state["init_from"] = {"checkpoint": str(init_from),
                                  "val_accuracy": base_state.get("best_val_accuracy")}
            if "source_model" in base_state:
                state["init_from"]["model"] = base_state["source_model"]
    print(f"{settings.arch}: {state['params']:,} parameters, {state['multiply_adds']:,} multiply-adds; "
          f"train {len(train_data)} images, val {len(val_data)} images", flush=True)
    weights = class_weights(train_data.labels, len(train_data.label_names), settings.class_weighting)
    if state["epochs_done"] >= settings.epochs:
        return state
    model.fit(
        make_dataset(train_data, settings, training=True, weights=weights),
        validation_data=make_dataset(val_data, settings, training=False),
        epochs=settings.epochs,
        initial_epoch=state["epochs_done"],
        callbacks=[progress_callback(run_dir, settings, state, calibration_sample(train_data, settings.seed),
                                     val_data)],
        verbose=0,
    )
    return state
