"""finetune: adapt a trained model to a folder of the user's own (children's) photos.

Models trained on adults' faces lose much of their accuracy on children; the Technion
project got it back with transfer learning on children's photos. This does the same:

1. freeze the feature extractor (every layer up to the last spatial feature map) and
   train the classification head for ``epochs`` at ``learning_rate``;
2. optionally (``unfreeze_epochs`` > 0) unfreeze it and continue at the lower
   ``unfreeze_learning_rate``. BatchNorm layers stay frozen throughout: their
   statistics come from the big data set, and a few hundred photos would spoil them.

The data may be split folders (``train/``, ``val/``) or one set of class folders, of
which a seeded, stratified ``val_share`` is held out. With ``detect_faces`` the photos
are whole pictures: the daemon's detector finds the face and the contract crops it,
exactly as on the chair; photos without a face found are skipped and counted.

The output is a run directory in ``train``'s format (``last.keras``, ``best.keras``,
``state.json``, ``history.csv``), so ``export`` takes it as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from relaxd.vision.model_meta import FER2013_LABELS
from relaxd.vision.preprocess import PreprocessSpec, face_to_input
from relaxd_train.augment import AugmentSettings
from relaxd_train.data import DataError, Dataset, has_split, list_split, load_split, split_source, stratified_holdout


@dataclass
class FinetuneSettings:
    checkpoint: Path
    data: Path
    out: Path
    epochs: int = 10
    unfreeze_epochs: int = 0
    learning_rate: float = 1e-3
    unfreeze_learning_rate: float = 1e-4
    batch_size: int = 16
    val_share: float = 0.2
    seed: int = 1
    detect_faces: bool = False
    augment: bool = True


def detect_and_crop(data: Path, split: str, spec: PreprocessSpec, labels: tuple[str, ...]) -> tuple[Dataset, int]:
    """Whole photos to face inputs with the daemon's detector; also the number without a face."""
    from relaxd.settings import DetectorSettings
    from relaxd.vision.detector import FaceDetector

    detector = FaceDetector(DetectorSettings())
    faces, targets, paths, missed = [], [], [], 0
    for item in list_split(data, split, labels):
        photo = item.read(color=True)
        box = detector.find_best(photo)
        if box is None:
            missed += 1
            continue
        faces.append(face_to_input(photo, box, spec))
        targets.append(item.label)
        paths.append(item.source)
    source = split_source(data, split)
    if not faces:
        raise DataError(f"no face found in any photo of {source}: are these photos of faces, upright and lit?")
    return Dataset(np.stack(faces), np.asarray(targets, dtype=np.int64), labels, source, tuple(paths)), missed


def load_photos(data: Path, split: str, spec: PreprocessSpec, labels: tuple[str, ...],
                detect_faces: bool) -> tuple[Dataset, int]:
    if detect_faces:
        return detect_and_crop(data, split, spec, labels)
    return load_split(data, split, spec, labels), 0


def load_finetune_data(settings: FinetuneSettings, spec: PreprocessSpec,
                       labels: tuple[str, ...]) -> tuple[Dataset, Dataset, int]:
    """(train, val, photos without a face): the data's own split, or a stratified hold-out."""
    if has_split(settings.data, "train"):
        train, missed_train = load_photos(settings.data, "train", spec, labels, settings.detect_faces)
        val, missed_val = load_photos(settings.data, "val", spec, labels, settings.detect_faces)
        return train, val, missed_train + missed_val
    everything, missed = load_photos(settings.data, "train", spec, labels, settings.detect_faces)
    train_idx, val_idx = stratified_holdout(everything.labels, settings.val_share, settings.seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(f"{settings.data} is too small to hold out a validation share: "
                        "add photos (at least two per class) or give train/ and val/ folders")
    source = everything.source
    return (everything.subset(train_idx, f"{source} (train part)"),
            everything.subset(val_idx, f"{source} (held-out {settings.val_share:.0%})"), missed)


def set_trainable(model: Any, frozen_layers: int) -> None:
    """Freeze the first ``frozen_layers`` layers and every BatchNorm; the rest trains."""
    import keras

    for index, layer in enumerate(model.layers):
        layer.trainable = index >= frozen_layers and not isinstance(layer, keras.layers.BatchNormalization)


def finetune(settings: FinetuneSettings, command: str = "") -> dict[str, Any]:
    """Fine-tune ``settings.checkpoint`` into a new run directory; return its final state."""
    import keras

    from relaxd_train.architectures import feature_layer_count, load_checkpoint
    from relaxd_train.export import read_run_state
    from relaxd_train.train import (TrainSettings, chained_command, class_weights, make_dataset, new_run_state,
                                    progress_callback)

    if settings.epochs < 0 or settings.unfreeze_epochs < 0 or settings.epochs + settings.unfreeze_epochs == 0:
        raise DataError("finetune needs --epochs and/or --unfreeze-epochs above 0")
    run_dir = Path(settings.out)
    if (run_dir / "state.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run: pick a new --out")
    base_state = read_run_state(settings.checkpoint)
    model = load_checkpoint(settings.checkpoint)
    labels = tuple(base_state.get("labels", FER2013_LABELS))
    if "settings" in base_state:
        base = TrainSettings.from_dict(base_state["settings"])
    else:
        base = TrainSettings(arch=model.name, preprocess=PreprocessSpec(input_size=int(model.input_shape[1])))
    train_data, val_data, missed = load_finetune_data(settings, base.preprocess, labels)
    batch = max(1, min(settings.batch_size, len(train_data)))
    run = replace(base, epochs=settings.epochs + settings.unfreeze_epochs, batch_size=batch,
                  learning_rate=settings.learning_rate, warmup_epochs=0, seed=settings.seed,
                  augment=base.augment if settings.augment else AugmentSettings.none())
    keras.utils.set_random_seed(settings.seed)
    weights = class_weights(train_data.labels, len(labels), run.class_weighting)
    train_ds = make_dataset(train_data, run, training=True, weights=weights)
    val_ds = make_dataset(val_data, run, training=False)

    frozen = feature_layer_count(model)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=run.label_smoothing)
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=loss, metrics=["accuracy"])
    before = float(model.evaluate(val_ds, verbose=0)[1])
    run_dir.mkdir(parents=True, exist_ok=True)
    state = new_run_state(run, train_data, val_data, model,
                          chained_command(base_state, command, Path(settings.checkpoint)))
    state["finetune"] = {
        "from": str(settings.checkpoint),
        "base_epochs": base_state.get("epochs_done"),
        "frozen_layers": frozen,
        "head_epochs": settings.epochs,
        "unfreeze_epochs": settings.unfreeze_epochs,
        "unfreeze_learning_rate": settings.unfreeze_learning_rate,
        "detect_faces": settings.detect_faces,
        "photos_without_face": missed,
        "val_accuracy_before": before,
    }
    (run_dir / "state.json").write_text(json.dumps(state, indent=2))
    print(f"fine-tuning {settings.checkpoint}: train {len(train_data)} faces, val {len(val_data)} faces"
          f"{f', {missed} photos without a face skipped' if settings.detect_faces else ''}; "
          f"val accuracy before {before:.4f}", flush=True)

    callback = progress_callback(run_dir, run, state)
    if settings.epochs:
        set_trainable(model, frozen)
        model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=loss, metrics=["accuracy"])
        model.fit(train_ds, validation_data=val_ds, epochs=settings.epochs, callbacks=[callback], verbose=0)
    if settings.unfreeze_epochs:
        set_trainable(model, 0)
        model.compile(optimizer=keras.optimizers.Adam(settings.unfreeze_learning_rate), loss=loss,
                      metrics=["accuracy"])
        model.fit(train_ds, validation_data=val_ds, initial_epoch=settings.epochs, epochs=run.epochs,
                  callbacks=[callback], verbose=0)
    return state
