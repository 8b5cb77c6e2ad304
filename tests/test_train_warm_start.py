"""Training from the shipped model: the int8 weights rebuilt into Keras, the new augmentations,
mixup, and extra posed data split by subject (so a cross-dataset check stays honest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from relaxd.vision.model_meta import load_metadata  # noqa: E402
from relaxd_train.augment import AugmentSettings, build_augmenter  # noqa: E402
from relaxd_train.data import LabelledImage, is_held_out_subject, split_by_subject, subject_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / (REPO / "models" / "DEFAULT").read_text().strip()
SHARED_VAL = Path(__file__).resolve().parents[2] / "shared/data/fer2013/val"


def test_the_shipped_int8_model_rebuilt_in_keras_decides_as_the_file_does():
    from relaxd.vision.classifier import EmotionClassifier
    from relaxd_train.from_tflite import keras_from_tflite

    meta = load_metadata(SHIPPED)
    rng = np.random.default_rng(0)
    # Real faces where the shared data is beside the project, else noise (the function still must match).
    if SHARED_VAL.is_dir():
        from relaxd_train.data import sample_split
        faces = sample_split(SHARED_VAL.parent, "val", meta.preprocess, 400, seed=2).images
    else:
        faces = rng.uniform(0, 1, size=(400, 48, 48, 1)).astype(np.float32)
    model, state = keras_from_tflite(SHIPPED, faces[:200])
    assert state["source_model"]["sha256"] == meta.sha256
    keras_probabilities = (model.predict(faces, verbose=0) + model.predict(faces[:, :, ::-1], verbose=0)) / 2
    file_probabilities = EmotionClassifier(SHIPPED).predict(faces)
    agreement = np.mean(keras_probabilities.argmax(axis=1) == file_probabilities.argmax(axis=1))
    assert agreement >= 0.95, f"the rebuilt model agrees with the int8 file on only {agreement:.1%} of faces"
    assert np.abs(keras_probabilities - file_probabilities).max() < 0.2  # int8 rounding, not another function


def test_the_shipped_model_rebuilt_for_bfloat16_training_computes_what_the_float32_one_does():
    """In training mode BatchNorm uses the batch's statistics, so the rebuilt scale and shift must be
    the float32 statistics even when the network computes in bfloat16 (a bfloat16 mean of a million
    values is noise: the first bfloat16 run fell to chance in its first epoch; 16% agreement here).
    bfloat16 rounding and the two passes' own random Dropout leave about 83%."""
    from relaxd_train.architectures import precision
    from relaxd_train.from_tflite import keras_from_tflite

    faces = np.random.default_rng(3).uniform(0, 1, size=(256, 48, 48, 1)).astype(np.float32)
    if SHARED_VAL.is_dir():
        from relaxd_train.data import sample_split
        faces = sample_split(SHARED_VAL.parent, "val", load_metadata(SHIPPED).preprocess, 256, seed=4).images
    decided = {}
    for name in ("float32", "bfloat16"):
        with precision(name):
            model, _ = keras_from_tflite(SHIPPED, faces)
            decided[name] = np.asarray(model(faces, training=True), dtype=np.float32).argmax(axis=1)
    agreement = np.mean(decided["float32"] == decided["bfloat16"])
    assert agreement >= 0.7, f"bfloat16 training mode agrees with float32 on only {agreement:.1%} of faces"


def test_a_non_relaxnet_tflite_is_refused_with_the_fix(tmp_path, tiny_model):
    from relaxd_train.data import DataError
    from relaxd_train.from_tflite import keras_from_tflite

    with pytest.raises(DataError, match="relaxnet|Keras checkpoint"):
        keras_from_tflite(tiny_model, np.zeros((4, 48, 48, 1), np.float32))


def test_subjects_never_straddle_the_split_and_the_split_is_fixed():
    items = [LabelledImage(f"/ck/{label}/S{subject:03d}_{seq:03d}_{frame:08d}.png", 0)
             for subject in range(120) for seq in (1, 2) for frame in (10, 11, 12) for label in ("happy",)]
    trained, held = split_by_subject(items, 0.3)
    trained_subjects = {subject_of(item.source) for item in trained}
    held_subjects = {subject_of(item.source) for item in held}
    assert not trained_subjects & held_subjects
    assert 0.2 < len(held_subjects) / 120 < 0.4
    assert split_by_subject(list(reversed(items)), 0.3)[1] == list(reversed(held))  # order-free, no seed
    assert subject_of("/ck/sad/S052_004_00000021.png") == "S052"
    assert all(is_held_out_subject(s, 0.3) for s in held_subjects)


def test_aspect_stretches_the_height_only():
    import tensorflow as tf

    augment = build_augmenter(AugmentSettings(**{**vars(AugmentSettings.none()), "aspect": 0.3}))
    columns = np.tile(np.linspace(0.0, 1.0, 48, dtype=np.float32), (48, 1))  # varies across, constant down
    rows = columns.T.copy()
    batch = tf.constant(np.stack([columns, rows] * 8)[..., None])
    out = augment(batch).numpy()[..., 0]
    np.testing.assert_allclose(out[0::2], np.stack([columns] * 8), atol=1e-5)  # a height zoom cannot change these
    assert np.abs(out[1::2] - rows).max() > 0.02  # ... but moves the horizontal bands


def test_side_lighting_is_a_ramp_that_keeps_the_mean():
    import tensorflow as tf

    augment = build_augmenter(AugmentSettings(**{**vars(AugmentSettings.none()), "lighting": 0.4}))
    grey = tf.constant(np.full((64, 48, 48, 1), 0.5, np.float32))
    out = augment(grey).numpy()[..., 0]
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.5, atol=0.01)
    spread = out.max(axis=(1, 2)) - out.min(axis=(1, 2))
    assert spread.max() > 0.1 and spread.max() <= 0.4 * 0.5 * np.sqrt(2) + 1e-5  # diagonal light: corner to corner


def test_mixup_blends_faces_labels_and_weights_alike():
    import tensorflow as tf

    from relaxd_train.train import mixup

    images = tf.constant(np.stack([np.full((4, 4, 1), float(i), np.float32) for i in range(32)]))
    onehot = tf.constant(np.eye(32, dtype=np.float32))
    weights = tf.constant(np.arange(32, dtype=np.float32))
    mixed_images, mixed_labels, mixed_weights = (t.numpy() for t in mixup(images, onehot, weights, 0.4))
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, atol=1e-6)
    assert (mixed_labels.max(axis=1) >= 0.5 - 1e-6).all()  # each face keeps the larger share
    # A face's pixel value is the label-weighted mean of the source values; so is its loss weight.
    expected = mixed_labels @ np.arange(32, dtype=np.float32)
    np.testing.assert_allclose(mixed_images[:, 0, 0, 0], expected, atol=1e-4)
    np.testing.assert_allclose(mixed_weights, expected, atol=1e-4)
