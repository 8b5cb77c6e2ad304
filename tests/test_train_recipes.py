"""train-and-export's training recipes: weight averaging (SWA), bfloat16, the group loss.

The data is the drawn-shapes set of ``test_train_tool`` (tiny, made in tmp_path); the
models are real Keras relaxnets, trained for one or two epochs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import json
from pathlib import Path

import numpy as np
import pytest

from relaxd.vision.model_meta import FER2013_LABELS, load_metadata
from relaxd_train.averaging import WeightAverage, remeasure_batchnorm
from relaxd_train.cli import main
from test_train_tool import split_data  # noqa: F401  (the drawn-shapes data, a fixture)


def test_the_average_is_the_mean_of_what_was_added_and_survives_a_restart(tmp_path):
    rng = np.random.default_rng(0)
    epochs = [[rng.normal(size=(3, 4)), rng.normal(size=5)] for _ in range(4)]
    average = WeightAverage()
    for epoch, weights in enumerate(epochs[:2], start=1):
        average.add(weights, epoch)
    average.save(tmp_path / "average.npz")
    resumed = WeightAverage.load(tmp_path / "average.npz")  # as after an interrupted run
    resumed.add(epochs[3], 2)  # epoch 2 trained again after a kill between the average and state.json
    for epoch, weights in enumerate(epochs[2:], start=3):
        resumed.add(weights, epoch)
    assert resumed.count == 4 and resumed.last_epoch == 4
    for index, mean in enumerate(resumed.mean()):
        np.testing.assert_allclose(mean, np.mean([e[index] for e in epochs], axis=0), rtol=1e-6)
    assert WeightAverage.load(tmp_path / "missing.npz").count == 0
    with pytest.raises(ValueError, match="weight arrays"):
        resumed.add(epochs[0][:1], 5)


def test_batchnorm_is_set_to_the_statistics_of_its_input_without_dropout():
    import keras

    inputs = keras.Input((6, 6, 2))
    dropped = keras.layers.Dropout(0.5, name="drop")(inputs)  # as between relaxnet's blocks
    conv = keras.layers.Conv2D(3, 3, padding="same", name="c")
    bn = keras.layers.BatchNormalization(name="bn")(conv(dropped))
    model = keras.Model(inputs, bn)
    conv = conv(inputs)
    images = np.random.default_rng(1).normal(2.0, 3.0, size=(64, 6, 6, 2)).astype(np.float32)
    features = keras.Model(inputs, conv).predict(images, verbose=0)
    layer = model.get_layer("bn")
    remeasure_batchnorm(model, images, batch_size=16)  # four equal batches: the mean of means is the mean
    np.testing.assert_allclose(layer.moving_mean.numpy(), features.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)
    within = np.mean([features[i:i + 16].var(axis=(0, 1, 2)) for i in range(0, 64, 16)], axis=0)
    np.testing.assert_allclose(layer.moving_variance.numpy(), within, rtol=1e-3)
    assert layer.momentum == 0.99 and model.get_layer("drop").rate == 0.5  # restored for training


def test_the_calibration_sample_mixes_the_classes():
    """The data sets list faces class by class; BatchNorm measured on one-class batches misses the
    variance between classes, so the sample comes in random order."""
    from relaxd_train.data import Dataset
    from relaxd_train.train import calibration_sample

    labels = np.repeat(np.arange(7), 1000)  # sorted, as loaded from class folders
    images = labels.astype(np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), dtype=np.float32)
    sample = calibration_sample(Dataset(images, labels, FER2013_LABELS, "sorted"), seed=1)
    assert len(sample) == 4000
    first_batch = sample[:256, 0, 0, 0]
    assert len(np.unique(first_batch)) == 7
    np.testing.assert_array_equal(sample, calibration_sample(Dataset(images, labels, FER2013_LABELS, "s"), seed=1))


@pytest.mark.slow
def test_a_bfloat16_run_with_averaging_exports_a_float32_model_of_the_mean_weights(split_data, tmp_path):
    import keras

    run = tmp_path / "swa"
    assert main(["train", "--data", str(split_data), "--out", str(run), "--epochs", "2", "--batch-size", "8",
                 "--precision", "bfloat16", "--average-from-epoch", "1", "--aug-erasing-probability", "0"]) == 0
    assert keras.config.dtype_policy().name == "float32"  # the run's policy does not leak out
    state = json.loads((run / "state.json").read_text())
    assert state["settings"]["precision"] == "bfloat16"
    assert state["average"]["epochs"] == 2 and state["average"]["from_epoch"] == 1
    assert 0.0 <= state["average"]["val_accuracy"] <= 1.0
    assert keras.models.load_model(run / "last.keras").get_layer("b1c1_conv").dtype_policy.name == "mixed_bfloat16"

    averaged = keras.models.load_model(run / "average.keras")
    assert all(layer.dtype_policy.name == "float32" for layer in averaged.layers)
    with np.load(run / "average.npz") as saved:
        kernel = saved["w000"]
    np.testing.assert_allclose(averaged.get_layer("b1c1_conv").get_weights()[0], kernel, rtol=1e-6)
    last_kernel = keras.models.load_model(run / "last.keras").get_layer("b1c1_conv").get_weights()[0]
    assert not np.allclose(kernel, last_kernel), "the average is the last epoch's weights, not a mean"

    out = tmp_path / "averaged.tflite"
    assert main(["export", "--checkpoint", str(run / "average.keras"), "--data", str(split_data), "--out", str(out),
                 "--representative", "20", "--max-loss", "100", "--latency-runs", "3"]) == 0
    meta = load_metadata(out)
    assert meta.training["average"] == state["average"]


@pytest.mark.slow
def test_a_bfloat16_checkpoint_exports_as_float32(split_data, tmp_path):
    import keras

    from relaxd_train.architectures import load_checkpoint, precision

    run = tmp_path / "bf16"
    assert main(["train", "--data", str(split_data), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                 "--precision", "bfloat16", "--no-augment"]) == 0
    trained = keras.models.load_model(run / "best.keras")
    loaded = load_checkpoint(run / "best.keras")
    assert all(layer.dtype_policy.name == "float32" for layer in loaded.layers)
    for a, b in zip(trained.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    with precision("bfloat16"):  # a warm restart in bfloat16 gets the run's policy back
        assert load_checkpoint(run / "best.keras").get_layer("b1c1_conv").dtype_policy.name == "mixed_bfloat16"


def test_averaging_outside_the_run_is_refused_with_the_fix(split_data, tmp_path, capsys):
    assert main(["train", "--data", str(split_data), "--out", str(tmp_path / "r"), "--epochs", "2",
                 "--average-from-epoch", "3"]) == 2
    err = capsys.readouterr().err
    assert "--average-from-epoch" in err and "1..2" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_the_group_loss_adds_the_cross_entropy_of_the_summed_group_probabilities():
    from relaxd_train.losses import GroupedCrossentropy, group_matrix

    matrix = group_matrix(FER2013_LABELS)
    assert matrix.sum(axis=0).tolist() == [5.0, 1.0, 1.0]  # negative has five labels, surprise among them
    y_true = np.eye(7, dtype=np.float32)[[5, 4]]  # sad, neutral
    y_pred = np.array([[0.1, 0.0, 0.1, 0.1, 0.5, 0.2, 0.0],    # sad read as neutral: the chair's error
                       [0.0, 0.0, 0.0, 0.1, 0.8, 0.1, 0.0]], dtype=np.float32)
    labels_only = -np.log([0.2, 0.8])
    groups = -np.log([0.4, 0.8])  # P(negative) of the sad face is 0.1 + 0.1 + 0.2
    plain = GroupedCrossentropy(matrix, 0.0)(y_true, y_pred)
    grouped = GroupedCrossentropy(matrix, 2.0)(y_true, y_pred)
    np.testing.assert_allclose(float(plain), labels_only.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(grouped), (labels_only + 2.0 * groups).mean(), rtol=1e-5)
    again = GroupedCrossentropy.from_config(GroupedCrossentropy(matrix, 2.0, 0.05).get_config())
    assert again.group_weight == 2.0 and again.label_smoothing == 0.05 and again.matrix == matrix.tolist()


def test_a_label_outside_every_group_is_named():
    from relaxd.errors import RelaxdError
    from relaxd_train.losses import group_matrix

    with pytest.raises(RelaxdError, match="contempt"):
        group_matrix(("happy", "contempt"))


@pytest.mark.slow
def test_a_run_with_the_group_loss_resumes_and_exports(split_data, tmp_path):
    run = tmp_path / "grouped"
    assert main(["train", "--data", str(split_data), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                 "--group-loss-weight", "1.5", "--no-augment"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["settings"]["group_loss_weight"] == 1.5
    state["settings"]["epochs"] = 2  # as if interrupted: the resumed run rebuilds the saved loss
    (run / "state.json").write_text(json.dumps(state))
    assert main(["train", "--data", str(split_data), "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "state.json").read_text())["epochs_done"] == 2
    assert main(["export", "--checkpoint", str(run / "last.keras"), "--data", str(split_data),
                 "--out", str(tmp_path / "g.tflite"), "--representative", "20", "--max-loss", "100",
                 "--latency-runs", "3"]) == 0


@pytest.mark.parametrize("weight", ["-1", "nan"])
def test_a_negative_group_loss_weight_is_refused(split_data, tmp_path, capsys, weight):
    assert main(["train", "--data", str(split_data), "--out", str(tmp_path / "r"), "--group-loss-weight", weight]) == 2
    assert "--group-loss-weight" in capsys.readouterr().err


def test_averaging_with_frozen_batchnorm_is_refused(split_data, tmp_path, capsys):
    assert main(["train", "--data", str(split_data), "--out", str(tmp_path / "r"), "--epochs", "2",
                 "--average-from-epoch", "1", "--freeze-batchnorm"]) == 2
    assert "--freeze-batchnorm" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_the_model_card_says_when_the_weights_are_an_average():
    from relaxd_train.card import checkpoint_note

    assert checkpoint_note({"best_epoch": 5, "epochs_done": 6}) == "checkpoint selected by val accuracy (epoch 5 of 6)"
    note = checkpoint_note({"best_epoch": 2, "epochs_done": 14, "average": {"from_epoch": 3, "epochs": 12}})
    assert note.startswith("weights averaged over epochs 3-14 (14 epochs; ")
    stopped = checkpoint_note({"epochs": 12, "epochs_done": 7, "average": {"from_epoch": 1, "epochs": 7}})
    assert stopped.startswith("weights averaged over epochs 1-7 (the run stopped after 7 of 12 planned; ")
