"""train-and-export: data loaders, augmentation, metrics, and the CLI end to end.

The data is synthetic and tiny (7 classes of drawn shapes, 48x48, made with OpenCV
in tmp_path), so a model learns something in one epoch and the whole file runs in
a few minutes on a CPU. The one test that uses FER2013 (the shipped model against
its model card) skips where ../shared/data is absent.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")  # keep CPU use small beside a training job
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from relaxd.vision.model_meta import (FER2013_GROUPS, FER2013_LABELS, SURPRISE_POSITIVE_GROUPS, file_sha256,
                                      load_metadata)
from relaxd.vision.preprocess import PreprocessSpec
from relaxd_train.cli import main
from relaxd_train.data import (
    DataError,
    has_split,
    list_split,
    load_split,
    sample_split,
    stratified_holdout,
)
from relaxd_train.evaluate import NO_FACE, compute_metrics

SPEC = PreprocessSpec()
ALIASES = ("anger", "disgusted", "fearful", "joy", "natural", "sadness", "surprised")
"""One alias per FER2013 label, in FER order."""

REPO = Path(__file__).resolve().parents[1]
SHARED_VAL = Path(__file__).resolve().parents[2] / "shared/data/fer2013/val"


# -- synthetic data ------------------------------------------------------------------

def draw_shape(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A grayscale image whose shape says its class: circle, square, triangle, stripes..."""
    image = np.full((size, size), 90, dtype=np.uint8)
    c = size // 2 + rng.integers(-4, 5, size=2)
    r = int(size * 0.28) + int(rng.integers(-3, 4))
    white = 230
    if label == 0:
        cv2.circle(image, (int(c[0]), int(c[1])), r, white, -1)
    elif label == 1:
        cv2.rectangle(image, (int(c[0] - r), int(c[1] - r)), (int(c[0] + r), int(c[1] + r)), white, -1)
    elif label == 2:
        points = np.array([[c[0], c[1] - r], [c[0] - r, c[1] + r], [c[0] + r, c[1] + r]], dtype=np.int32)
        cv2.fillPoly(image, [points], white)
    elif label == 3:
        image[::8] = white
        image[1::8] = white
    elif label == 4:
        image[:, ::8] = white
        image[:, 1::8] = white
    elif label == 5:
        cv2.line(image, (int(c[0] - r), int(c[1] - r)), (int(c[0] + r), int(c[1] + r)), white, 4)
        cv2.line(image, (int(c[0] - r), int(c[1] + r)), (int(c[0] + r), int(c[1] - r)), white, 4)
    else:
        cv2.circle(image, (int(c[0]), int(c[1])), r, white, 3)
    noise = rng.normal(0.0, 8.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def write_class_folders(root: Path, names: tuple[str, ...], per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / f"{i}.png"), draw_shape(label, rng))
    return root


def write_fer_csv(path: Path, usage_counts: dict[str, int], seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage"]
    for usage, count in usage_counts.items():
        for label in range(7):
            for _ in range(count):
                lines.append(f"{label},{' '.join(map(str, draw_shape(label, rng).ravel()))},{usage}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def split_data(tmp_path_factory) -> Path:
    """train/ with alias folder names, val/ with canonical ones."""
    root = tmp_path_factory.mktemp("split")
    write_class_folders(root / "train", ALIASES, per_class=6, seed=1)
    write_class_folders(root / "val", FER2013_LABELS, per_class=2, seed=2)
    return root


@pytest.fixture(scope="module")
def class_data(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("classes"), FER2013_LABELS, per_class=6, seed=4)


# -- loaders ---------------------------------------------------------------------------

def test_split_folders_with_aliases_load_in_fer_order(split_data):
    train = load_split(split_data, "train", SPEC)
    val = load_split(split_data, "val", SPEC)
    assert train.images.shape == (42, 48, 48, 1) and train.images.dtype == np.float32
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.class_counts() == {label: 6 for label in FER2013_LABELS}
    assert val.class_counts() == {label: 2 for label in FER2013_LABELS}
    # "joy" is happy, "natural" is neutral: index 3 and 4 in FER order.
    assert all(("joy" in p) == (y == 3) for p, y in zip(train.paths, train.labels))
    assert all(("natural" in p) == (y == 4) for p, y in zip(train.paths, train.labels))
    assert train.source.endswith("train") and val.source.endswith("val")


def test_class_folders_are_any_split(class_data):
    assert not has_split(class_data, "train")
    assert len(load_split(class_data, "val", SPEC)) == len(load_split(class_data, "train", SPEC)) == 42


def test_fer_csv_splits_by_usage(tmp_path):
    csv_path = write_fer_csv(tmp_path / "fer.csv", {"Training": 3, "PublicTest": 2, "PrivateTest": 1})
    train = load_split(csv_path, "train", SPEC)
    val = load_split(csv_path, "val", SPEC)
    test = load_split(csv_path, "test", SPEC)
    assert (len(train), len(val), len(test)) == (21, 14, 7)
    assert train.class_counts() == {label: 3 for label in FER2013_LABELS}
    assert has_split(csv_path, "val")


def test_raw_listing_reads_images_as_stored(split_data):
    items = list_split(split_data, "val")
    assert len(items) == 14
    assert items[0].read(color=True).shape == (48, 48, 3)
    assert items[0].read().shape == (48, 48)


def test_sample_split_is_seeded_and_small(split_data):
    a = sample_split(split_data, "train", SPEC, 10, seed=5)
    b = sample_split(split_data, "train", SPEC, 10, seed=5)
    assert len(a) == 10 and a.paths == b.paths
    assert sample_split(split_data, "train", SPEC, 10, seed=6).paths != a.paths


def test_stratified_holdout_keeps_every_class_on_both_sides():
    labels = np.repeat(np.arange(7), [5, 2, 5, 10, 5, 5, 5])
    train, held = stratified_holdout(labels, 0.2, seed=1)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(labels)
    assert set(labels[held]) == set(labels[train]) == set(range(7))
    again = stratified_holdout(labels, 0.2, seed=1)
    assert np.array_equal(again[1], held)


def test_unknown_class_folder_is_named(tmp_path):
    write_class_folders(tmp_path, ("happy", "grumpy"), per_class=1, seed=0)
    with pytest.raises(DataError, match="unknown class folder 'grumpy'"):
        load_split(tmp_path, "train", SPEC)


def test_empty_class_folder_is_named(tmp_path):
    write_class_folders(tmp_path, ("happy",), per_class=1, seed=0)
    (tmp_path / "sad").mkdir()
    with pytest.raises(DataError, match=r"class folder .*sad holds no images"):
        load_split(tmp_path, "train", SPEC)


def test_folder_without_class_folders_is_explained(tmp_path):
    with pytest.raises(DataError, match="no class folders"):
        load_split(tmp_path, "train", SPEC)
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "missing", "train", SPEC)


def test_hidden_files_and_archive_clutter_are_skipped(tmp_path):
    """A photo folder zipped on a Mac and opened in a notebook: only the photos count."""
    write_class_folders(tmp_path, ("happy", "sad"), per_class=2, seed=0)
    (tmp_path / "__MACOSX" / "happy").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "happy" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "happy" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    data = load_split(tmp_path, "val", SPEC)
    assert data.class_counts()["happy"] == data.class_counts()["sad"] == 2 and len(data) == 4


def test_two_aliases_of_one_class_are_refused(tmp_path):
    write_class_folders(tmp_path, ("happy", "joy"), per_class=1, seed=0)
    with pytest.raises(DataError, match="both class 'happy'"):
        load_split(tmp_path, "train", SPEC)


def test_unreadable_image_is_named(tmp_path):
    write_class_folders(tmp_path, ("happy",), per_class=1, seed=0)
    (tmp_path / "happy" / "broken.png").write_bytes(b"this is not a PNG")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_split(tmp_path, "train", SPEC)


def test_missing_split_is_named(split_data):
    with pytest.raises(DataError, match="no 'test' split"):
        load_split(split_data, "test", SPEC)


@pytest.mark.parametrize("content, message", [
    ("emotion,pixels\n3,1 2 3 4\n", r"lacks the column\(s\) \['Usage'\]"),
    ("emotion,pixels,Usage\n3,1 2 3,Training\n", r"line 2: 3 pixels do not make a square"),
    ("emotion,pixels,Usage\n3,1 2 3 4,Training\n9,1 2 3 4,Training\n", r"line 3: emotion 9 is not 0\.\.6"),
    ("emotion,pixels,Usage\nhappy,1 2 3 4,Training\n", r"line 2: emotion must be an integer"),
    ("emotion,pixels,Usage\n3,1 2 3 999,Training\n", r"line 2: pixel values must be 0\.\.255"),
    ("emotion,pixels,Usage\n3,1 2 3 4,PublicTest\n", r"no rows with Usage=Training"),
])
def test_bad_csv_is_named_with_its_line(tmp_path, content, message):
    path = tmp_path / "fer.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_split(path, "train", SPEC)


def test_csv_with_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "fer.csv"
    path.write_text("emotion,pixels,Usage\n3,1 2 3 4,Training\n", encoding="utf-8-sig")
    assert load_split(path, "train", SPEC).labels.tolist() == [3]


# -- class weights and augmentation ------------------------------------------------------

def test_class_weights():
    from relaxd_train.train import class_weights

    labels = np.array([0] * 8 + [1] * 2)
    balanced = class_weights(labels, 2, "balanced")
    assert balanced[1] / balanced[0] == pytest.approx(4.0)
    assert balanced[labels].mean() == pytest.approx(1.0)
    sqrt = class_weights(labels, 2, "sqrt")
    assert sqrt[1] / sqrt[0] == pytest.approx(2.0)
    assert sqrt[labels].mean() == pytest.approx(1.0)
    assert class_weights(labels, 2, "none").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="class weighting"):
        class_weights(labels, 2, "median")


def test_augmentation_keeps_shape_dtype_and_range(split_data):
    import tensorflow as tf

    from relaxd_train.augment import AugmentSettings, build_augmenter

    everything = AugmentSettings(blur_probability=0.5, jpeg_quality_min=40, noise_std=0.05)
    images = load_split(split_data, "val", SPEC).images
    out = build_augmenter(everything, (0.0, 1.0))(tf.constant(images)).numpy()
    assert out.shape == images.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not np.allclose(out, images)
    symmetric = build_augmenter(everything, (-1.0, 1.0))(tf.constant(images * 2 - 1)).numpy()
    assert -1.0 <= symmetric.min() and symmetric.max() <= 1.0


def test_training_pipeline_keeps_each_label_with_its_image(split_data):
    from relaxd_train.augment import AugmentSettings
    from relaxd_train.train import TrainSettings, class_weights, make_dataset

    data = load_split(split_data, "train", SPEC)
    weights = class_weights(data.labels, 7, "balanced") * np.arange(1, 8)  # a distinct weight per class
    plain = TrainSettings(batch_size=6, augment=AugmentSettings.none())
    for x, y, w in make_dataset(data, plain, training=True, weights=weights):
        for image, onehot, weight in zip(x.numpy(), y.numpy(), w.numpy()):
            match = np.flatnonzero((data.images == image).all(axis=(1, 2, 3)))
            assert data.labels[match[0]] == onehot.argmax()
            assert weight == pytest.approx(weights[onehot.argmax()])
    augmented = TrainSettings(batch_size=6)
    seen = []
    for x, y, w in make_dataset(data, augmented, training=True, weights=weights):
        assert x.shape == (6, 48, 48, 1)
        assert np.allclose(w.numpy(), weights[y.numpy().argmax(axis=1)])
        seen.extend(y.numpy().argmax(axis=1))
    assert sorted(seen) == sorted(data.labels.tolist())


# -- metrics ---------------------------------------------------------------------------

def test_metrics_match_a_hand_computed_confusion_matrix():
    labels = FER2013_LABELS  # angry disgust fear happy neutral sad surprise
    y_true = [0, 0, 0, 3, 3, 3, 3, 4, 4, 5, 6, 6]
    y_pred = [0, 5, 4, 3, 3, 6, NO_FACE, 4, 3, 0, 6, 3]
    m = compute_metrics(y_true, y_pred, labels, SURPRISE_POSITIVE_GROUPS)
    expected = np.zeros((7, 7), dtype=int)
    for t, p in [(0, 0), (0, 5), (0, 4), (3, 3), (3, 3), (3, 6), (4, 4), (4, 3), (5, 0), (6, 6), (6, 3)]:
        expected[t, p] += 1
    assert m["confusion"] == expected.tolist()
    assert m["no_face"] == [0, 0, 0, 1, 0, 0, 0]
    assert m["n"] == 12 and sum(map(sum, m["confusion"])) + sum(m["no_face"]) == 12
    assert m["accuracy_7"] == pytest.approx(5 / 12)  # 0->0, 3->3 twice, 4->4, 6->6
    assert m["face_found"] == pytest.approx(11 / 12)
    # Groups: negative {0,1,2,5}, neutral {4}, positive {3,6}.
    # true neg: 0,0,0,5 -> pred 0(neg),5(neg),4(neu),0(neg): 3 of 4 right
    # true pos: 3,3,3,3,6,6 -> pos,pos,pos,no face,pos,pos: 5 of 6 right
    # true neu: 4,4 -> neu,pos: 1 of 2 right
    assert m["negative_recall"] == pytest.approx(3 / 4)
    assert m["recall_3"] == pytest.approx({"negative": 3 / 4, "neutral": 1 / 2, "positive": 5 / 6})
    assert m["accuracy_3"] == pytest.approx(9 / 12)
    assert m["confusion_3"] == [[3, 1, 0], [0, 1, 1], [0, 0, 5]]
    happy = m["per_class"]["happy"]  # predicted happy 4 times (2 right); 4 true happy (one without a face)
    assert happy["precision"] == pytest.approx(2 / 4) and happy["recall"] == pytest.approx(2 / 4)
    assert happy["f1"] == pytest.approx(1 / 2) and happy["support"] == 4
    angry = m["per_class"]["angry"]  # predicted angry twice (1 right), 3 true angry
    assert angry["precision"] == pytest.approx(1 / 2) and angry["recall"] == pytest.approx(1 / 3)
    assert angry["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    disgust = m["per_class"]["disgust"]  # never true, never predicted
    assert disgust == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["per_class"]["sad"]["precision"] == 0.0  # predicted once, wrongly


def test_metrics_refuse_bad_input():
    with pytest.raises(ValueError):
        compute_metrics([], [], FER2013_LABELS, FER2013_GROUPS)
    with pytest.raises(ValueError):
        compute_metrics([0, 7], [0, 0], FER2013_LABELS, FER2013_GROUPS)


# -- CLI basics ---------------------------------------------------------------------------

def test_cli_import_does_not_load_tensorflow():
    code = "import sys, relaxd_train.cli; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cli_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "export", "evaluate", "saliency", "finetune", "info"):
        assert command in out


def test_cli_data_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train-and-export: error: data set") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_cli_missing_model_is_one_line_and_exit_2(tmp_path, split_data, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none.tflite"), "--data", str(split_data)]) == 2
    err = capsys.readouterr().err
    assert "none.tflite not found" in err and err.count("\n") == 1


def test_cli_rejects_a_misspelt_switch():
    with pytest.raises(SystemExit):
        main(["train", "--data", "x", "--out", "y", "--aug-flip", "of"])


@pytest.mark.slow
def test_info_prints_params_and_multiply_adds(capsys):
    assert main(["info", "--arch", "relaxnet"]) == 0
    out = capsys.readouterr().out
    assert "881,551 parameters" in out and "105,543,552 multiply-adds" in out


@pytest.mark.slow
def test_cbam_checkpoint_loads_again(tmp_path):
    from relaxd_train.architectures import build, load_checkpoint

    model = build("cbam", 32, 7)
    model.save(tmp_path / "cbam.keras")
    again = load_checkpoint(tmp_path / "cbam.keras")
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    assert np.allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


# -- train, resume, export, evaluate (slow: a real model) ----------------------------------

@pytest.fixture(scope="module")
def trained_run(split_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["train", "--data", str(split_data), "--out", str(run), "--epochs", "1",
                 "--batch-size", "8", "--aug-erasing-probability", "0"])
    assert code == 0
    return run


@pytest.fixture(scope="module")
def exported(trained_run, split_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny.tflite"
    # 14 val images: one flipped prediction is 7 points, so the 1-point guard is tested separately.
    code = main(["export", "--checkpoint", str(trained_run / "best.keras"), "--data", str(split_data),
                 "--out", str(out), "--version", "0.0.1-test", "--crop-margin", "0.2",
                 "--representative", "20", "--max-loss", "100"])
    assert code == 0
    return out


@pytest.mark.slow
def test_train_writes_a_run_directory(trained_run):
    for name in ("last.keras", "best.keras", "state.json", "history.csv"):
        assert (trained_run / name).is_file(), name
    state = json.loads((trained_run / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["best_epoch"] == 1
    assert state["labels"] == list(FER2013_LABELS)
    assert state["settings"]["arch"] == "relaxnet" and state["settings"]["seed"] == 1
    assert state["params"] == 881_551
    assert len((trained_run / "history.csv").read_text().splitlines()) == 2


@pytest.mark.slow
def test_train_from_a_fer_csv(tmp_path):
    csv_path = write_fer_csv(tmp_path / "fer.csv", {"Training": 2, "PublicTest": 1})
    run = tmp_path / "run"
    assert main(["train", "--data", str(csv_path), "--out", str(run), "--epochs", "1", "--batch-size", "7",
                 "--arch", "model1", "--no-augment"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["train_source"] == state["val_source"] == str(csv_path)
    assert sum(state["train_counts"].values()) == 14 and (run / "best.keras").is_file()


@pytest.mark.slow
def test_train_refuses_to_overwrite_a_run(trained_run, split_data, capsys):
    assert main(["train", "--data", str(split_data), "--out", str(trained_run), "--batch-size", "8"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(trained_run, split_data, tmp_path):
    import keras

    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    state = json.loads((run / "state.json").read_text())
    state["settings"]["epochs"] = 2  # as if a 2-epoch run had been interrupted after epoch 1
    (run / "state.json").write_text(json.dumps(state))
    steps_before = int(keras.models.load_model(run / "last.keras").optimizer.iterations.numpy())
    assert main(["train", "--data", str(split_data), "--out", str(run), "--resume"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["epochs_done"] == 2
    assert len((run / "history.csv").read_text().splitlines()) == 3
    steps_after = int(keras.models.load_model(run / "last.keras").optimizer.iterations.numpy())
    assert steps_after == 2 * steps_before  # continued, not restarted


def test_a_chained_command_says_which_epoch_its_base_checkpoint_holds():
    from relaxd_train.train import chained_command

    base = {"command": "train-and-export train --epochs 200 --out runs/a", "settings": {"epochs": 200},
            "epochs_done": 139, "best_epoch": 132}
    step = "train-and-export train --init-from runs/a/last.keras --epochs 26 --out runs/b"
    assert chained_command(base, step, Path("runs/a/last.keras")).splitlines() == [
        "train-and-export train --epochs 200 --out runs/a  # last.keras = epoch 139 of 200 (stopped there)", step]
    assert chained_command(base, step, Path("runs/a/best.keras")).splitlines()[0].endswith(
        "# best.keras = epoch 132 of 200")
    assert chained_command(base, step, Path("elsewhere/model.keras")).splitlines()[0] == base["command"]
    assert chained_command({}, step, Path("runs/a/best.keras")) == step


@pytest.mark.slow
def test_warm_restart_starts_from_the_checkpoint_weights(trained_run, split_data, tmp_path):
    import keras

    run = tmp_path / "warm"
    base = keras.models.load_model(trained_run / "best.keras")
    assert main(["train", "--data", str(split_data), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                 "--init-from", str(trained_run / "best.keras"), "--learning-rate", "0",
                 "--weight-decay", "0", "--no-augment"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["init_from"]["checkpoint"] == str(trained_run / "best.keras")
    base_state = json.loads((trained_run / "state.json").read_text())
    lines = state["command"].splitlines()
    assert lines[0] == (f"{base_state['command']}  # best.keras = epoch {base_state['best_epoch']} "
                        f"of {base_state['settings']['epochs']}")
    assert "--init-from" in lines[1]  # the card quotes both steps, and which epoch the first one gave
    # At learning rate 0 the weights cannot move, so the run holds the base's weights exactly
    # (BatchNorm's running statistics still update: they are not trained by the optimizer).
    warm = keras.models.load_model(run / "last.keras")
    for before, after in zip(base.layers, warm.layers):
        if not isinstance(before, keras.layers.BatchNormalization):
            for a, b in zip(before.get_weights(), after.get_weights()):
                np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_warm_restart_with_sgd_and_frozen_batchnorm_keeps_the_batchnorm_as_trained(trained_run, split_data,
                                                                                    tmp_path):
    """The recipe that keeps FER val on a warm restart: SGD moves the weights, BatchNorm stays as it was."""
    import keras

    run = tmp_path / "sgd"
    base = keras.models.load_model(trained_run / "best.keras")
    assert main(["train", "--data", str(split_data), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                 "--init-from", str(trained_run / "best.keras"), "--optimizer", "sgd", "--freeze-batchnorm",
                 "--learning-rate", "0.01", "--no-augment"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["settings"]["optimizer"] == "sgd" and state["settings"]["freeze_batchnorm"] is True
    warm = keras.models.load_model(run / "last.keras")
    assert type(warm.optimizer).__name__ == "SGD"
    moved = False
    for before, after in zip(base.layers, warm.layers):
        for a, b in zip(before.get_weights(), after.get_weights()):
            if isinstance(before, keras.layers.BatchNormalization):
                np.testing.assert_array_equal(a, b)  # statistics, scale and shift: untouched
            else:
                moved = moved or not np.array_equal(a, b)
    assert moved, "SGD at 0.01 moved no weight at all"


@pytest.mark.slow
def test_warm_restart_refuses_another_architecture(trained_run, split_data, tmp_path, capsys):
    assert main(["train", "--data", str(split_data), "--out", str(tmp_path / "w"), "--arch", "model1",
                 "--init-from", str(trained_run / "best.keras"), "--batch-size", "8"]) == 2
    assert "pass --arch relaxnet" in capsys.readouterr().err


@pytest.mark.slow
def test_export_writes_int8_model_and_metadata(exported, trained_run, split_data):
    meta = load_metadata(exported)
    assert sorted(p.name for p in exported.parent.iterdir()) == ["tiny-tradeoff.png", "tiny.json", "tiny.tflite"]
    assert meta.name == "tiny" and meta.version == "0.0.1-test"
    # The negative weight was chosen on val by the card's rule, through the exported file.
    decision = meta.decision
    assert decision["chosen_on"] == "val" and len(decision["sweep"]) == 17
    baseline = decision["sweep"][0]
    assert baseline["weight"] == 1.0
    chosen = next(p for p in decision["sweep"] if p["weight"] == meta.negative_weight)
    assert chosen["accuracy_3"] >= baseline["accuracy_3"] - 0.005
    assert all(p["accuracy_3"] < baseline["accuracy_3"] - 0.005
               for p in decision["sweep"] if p["weight"] > meta.negative_weight)
    assert meta.quantization == "int8" and meta.sha256 == file_sha256(exported)
    assert meta.labels == FER2013_LABELS
    assert {g: tuple(v) for g, v in meta.groups.items()} == FER2013_GROUPS
    assert meta.preprocess == PreprocessSpec(input_size=48, crop_margin=0.2, normalisation="unit")
    training = meta.training
    assert training["data"] == str(split_data)
    assert training["command"].startswith("train-and-export export --checkpoint ")
    assert training["arch"] == "relaxnet" and training["params"] == 881_551
    assert training["multiply_adds"] == 105_543_552
    assert training["epochs"] == training["epochs_done"] == training["best_epoch"] == 1 and training["seed"] == 1
    assert training["representative"] == {"split": "train", "images": 20, "seed": 1}
    metrics = meta.metrics
    assert metrics["val_images"] == 14
    for key in ("val_accuracy_7_keras", "val_accuracy_7_int8", "val_accuracy_3_int8"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["accuracy_drop_points"] == pytest.approx(
        100 * (metrics["val_accuracy_7_keras"] - metrics["val_accuracy_7_int8"]))
    assert metrics["latency_ms_median_1thread"] > 0 and metrics["latency_runs"] == 200
    assert metrics["file_bytes"] == exported.stat().st_size


@pytest.mark.slow
def test_exported_model_runs_in_the_daemon_classifier(exported, split_data):
    from relaxd.vision.classifier import EmotionClassifier
    from relaxd.vision.runtime import load_interpreter

    interpreter = load_interpreter(exported)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    classifier = EmotionClassifier(exported)
    assert classifier.labels == FER2013_LABELS and classifier.spec.crop_margin == 0.2
    val = load_split(split_data, "val", classifier.spec)
    probabilities = classifier.predict(val.images)
    assert probabilities.shape == (14, 7)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    frame = np.full((120, 160, 3), 90, dtype=np.uint8)
    assert classifier.classify_face(frame, (50, 30, 48, 48)).shape == (7,)


@pytest.mark.slow
def test_evaluate_json(exported, split_data, tmp_path, capsys):
    out_dir = tmp_path / "report"
    assert main(["evaluate", "--model", str(exported), "--data", str(split_data), "--json",
                 "--out-dir", str(out_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("n", "accuracy_7", "accuracy_3", "negative_recall", "face_found", "per_class", "confusion",
                "confusion_3", "labels", "model", "data"):
        assert key in report, key
    assert report["n"] == 14 and report["face_found"] == 1.0
    assert sum(map(sum, report["confusion"])) == 14 and sum(map(sum, report["confusion_3"])) == 14
    assert len(report["confusion"]) == 7 and all(len(row) == 7 for row in report["confusion"])
    for key in ("accuracy_7", "accuracy_3", "negative_recall"):
        assert 0.0 <= report[key] <= 1.0
    assert report["accuracy_3"] >= report["accuracy_7"]
    assert set(report["per_class"]) == set(FER2013_LABELS) and report["labels"] == list(FER2013_LABELS)
    meta = load_metadata(exported)
    assert report["accuracy_7"] == pytest.approx(meta.metrics["val_accuracy_7_int8"])  # same path as export
    assert cv2.imread(str(out_dir / "confusion.png")) is not None
    assert json.loads((out_dir / "report.json").read_text())["n"] == 14


@pytest.mark.slow
def test_evaluate_human_readable(exported, split_data, capsys):
    assert main(["evaluate", "--model", str(exported), "--data", str(split_data / "val")]) == 0
    out = capsys.readouterr().out
    assert "7-class accuracy" in out and "confusion (rows: true" in out


@pytest.mark.slow
def test_evaluate_detects_faces_in_whole_photos(exported, tmp_path):
    from skimage import data as skimage_data

    photos = tmp_path / "photos"
    (photos / "happy").mkdir(parents=True)
    (photos / "calm").mkdir()
    cv2.imwrite(str(photos / "happy" / "astronaut.png"), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(photos / "calm" / "wall.png"), np.full((300, 400, 3), 128, dtype=np.uint8))
    from relaxd_train.evaluate import evaluate_model

    report = evaluate_model(exported, photos, "val", detect_faces=True)
    assert report["n"] == 2 and report["face_found"] == 0.5
    assert report["no_face"][FER2013_LABELS.index("neutral")] == 1
    assert sum(map(sum, report["confusion"])) + sum(report["no_face"]) == 2
    assert report["per_class"]["neutral"]["recall"] == 0.0  # no face: wrong


@pytest.mark.slow
def test_export_guard_refuses_a_lossy_model_and_leaves_nothing(trained_run, split_data, tmp_path, monkeypatch,
                                                                capsys):
    import relaxd_train.export as export_module

    def always_wrong(model_path, images):
        return (load_split(split_data, "val", SPEC).labels + 1) % 7

    monkeypatch.setattr(export_module, "predict_tflite", always_wrong)
    out = tmp_path / "models" / "lossy.tflite"
    code = main(["export", "--checkpoint", str(trained_run / "best.keras"), "--data", str(split_data),
                 "--out", str(out), "--representative", "10", "--latency-runs", "5"])
    assert code == 2
    assert "loses" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []  # no model, no metadata, no temporary folder


@pytest.mark.slow
def test_float_export_with_flip_tta(trained_run, split_data, tmp_path):
    from relaxd.vision.classifier import EmotionClassifier

    out = tmp_path / "float.tflite"
    assert main(["export", "--checkpoint", str(trained_run / "best.keras"), "--data", str(split_data),
                 "--out", str(out), "--float", "--tta-flip", "--latency-runs", "20"]) == 0
    meta = load_metadata(out)
    assert meta.quantization == "float32" and meta.training["tta_flip"] is True
    assert "representative" not in meta.training
    assert abs(meta.metrics["accuracy_drop_points"]) < 1e-6  # float file = Keras float model
    assert "val_accuracy_7_keras_without_tta" in meta.metrics
    classifier = EmotionClassifier(out)
    image = load_split(split_data, "val", classifier.spec).images[:1]
    mirrored = image[:, :, ::-1]
    assert np.allclose(classifier.predict(image), classifier.predict(mirrored), atol=1e-5)  # symmetric by design


@pytest.mark.slow
def test_saliency_grid(trained_run, split_data, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["saliency", "--checkpoint", str(trained_run / "best.keras"), "--data", str(split_data),
                 "--out", str(out), "--per-class", "2"]) == 0
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[0] > 200
    assert "eye band" in capsys.readouterr().out


def test_saliency_refuses_to_write_into_the_project(tmp_path, capsys):
    out = REPO / "saliency-test.png"
    assert main(["saliency", "--checkpoint", str(tmp_path / "x.keras"), "--data", str(tmp_path),
                 "--out", str(out)]) == 2
    assert "inside the project" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_finetune_on_class_folders_makes_an_exportable_run(trained_run, class_data, tmp_path):
    run = tmp_path / "children"
    assert main(["finetune", "--checkpoint", str(trained_run / "best.keras"), "--data", str(class_data),
                 "--out", str(run), "--epochs", "1", "--unfreeze-epochs", "1", "--batch-size", "8"]) == 0
    state = json.loads((run / "state.json").read_text())
    for name in ("last.keras", "best.keras", "history.csv"):
        assert (run / name).is_file(), name
    assert state["epochs_done"] == 2 and state["labels"] == list(FER2013_LABELS)
    assert state["finetune"]["frozen_layers"] > 0 and state["finetune"]["head_epochs"] == 1
    assert state["settings"]["preprocess"] == SPEC.to_dict()
    # 6 per class, 20% held out per class: 1 each.
    assert sum(state["train_counts"].values()) == 35 and "held-out" in state["val_source"]
    out = tmp_path / "children.tflite"
    assert main(["export", "--checkpoint", str(run / "best.keras"), "--data", str(class_data), "--out", str(out),
                 "--representative", "10", "--latency-runs", "5", "--max-loss", "100"]) == 0
    assert load_metadata(out).training["finetune"]["from"] == str(trained_run / "best.keras")


@pytest.mark.slow
def test_finetune_with_face_detection_reports_photos_without_faces(trained_run, tmp_path, capsys):
    # Stripes: nothing face-like. (A filled white disk is: the detector's lenient last scan
    # for photos can take one for a face that fills the picture.)
    rng = np.random.default_rng(6)
    for name in FER2013_LABELS:
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(tmp_path / "photos" / name / f"{i}.png"), draw_shape(3 + i % 2, rng))
    assert main(["finetune", "--checkpoint", str(trained_run / "best.keras"), "--data", str(tmp_path / "photos"),
                 "--out", str(tmp_path / "run"), "--epochs", "1", "--detect-faces"]) == 2
    assert "no face found" in capsys.readouterr().err


# -- the shipped model against its model card ------------------------------------------------

SHIPPED_MODELS = sorted(path.name for path in (REPO / "models").glob("*.tflite"))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_VAL.is_dir(), reason=f"FER2013 val not present at {SHARED_VAL}")
@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_model_matches_its_model_card(name):
    """Every model in models/ (the default and any candidate) scores on val what its card states:
    7-class, and the chair's own decision (3-class and negative recall at the shipped weight)."""
    from relaxd_train.evaluate import evaluate_model

    model = REPO / "models" / name
    meta = load_metadata(model)
    claimed = meta.metrics["val_accuracy_7_int8"]
    chosen = next(p for p in meta.decision["sweep"] if p["weight"] == meta.negative_weight)
    card = (model.parent / f"{model.stem}.md").read_text(encoding="utf-8")
    assert f"{100 * claimed:.1f}%" in card, f"the model card {model.stem}.md does not state {100 * claimed:.1f}%"
    assert f"| {100 * chosen['accuracy_3']:.1f}% | {100 * chosen['negative_recall']:.1f}% |" in card
    report = evaluate_model(model, SHARED_VAL, "val")
    assert report["n"] == 3589
    assert abs(report["accuracy_7"] - claimed) <= 0.005
    assert abs(report["accuracy_3"] - chosen["accuracy_3"]) <= 0.005
    assert abs(report["negative_recall"] - chosen["negative_recall"]) <= 0.005


def test_models_default_names_a_shipped_model():
    assert (REPO / "models" / "DEFAULT").read_text().strip() in SHIPPED_MODELS


def test_model_card_renders_every_measured_figure():
    from relaxd.vision.model_meta import FER2013_GROUPS, FER2013_LABELS, ModelMetadata
    from relaxd.vision.preprocess import PreprocessSpec
    from relaxd_train.card import render_card

    confusion = [[8 if i == j else (2 if (i, j) == (1, 0) else 0) for j in range(7)] for i in range(7)]
    meta = ModelMetadata(
        name="relaxnet", version="9", labels=FER2013_LABELS, groups=FER2013_GROUPS,
        preprocess=PreprocessSpec(), quantization="int8",
        training={"arch": "relaxnet", "params": 1234, "multiply_adds": 5678, "data": "DATA", "epochs": 3,
                  "train_command": "train-and-export train --data DATA --out RUN", "command": "train-and-export export"},
        metrics={"val_images": 58, "val_accuracy_7_keras": 0.6789, "val_accuracy_7_int8": 0.67345,
                 "val_accuracy_3_int8": 0.8, "accuracy_drop_points": 0.54, "file_bytes": 2048,
                 "latency_ms_median_1thread": 0.25, "val_confusion_int8": confusion,
                 "val_per_class_int8": {"angry": {"precision": 0.8, "recall": 1.0, "f1": 0.89, "support": 8}}},
    )
    card = render_card(meta, "relaxnet.tflite", {"data": "VAL", "face_found": 0.9, "accuracy_7": 0.5,
                                                 "accuracy_3": 0.7, "negative_recall": 0.6})
    assert "train-and-export train --data DATA --out RUN" in card and "train-and-export export" in card
    assert "| 7-class accuracy | 67.9% | 67.3% |" in card
    assert "1,234" in card and "5,678" in card and "0.250 ms" in card
    assert "| **disgust** | 2 | 8 | 0 | 0 | 0 | 0 | 0 | 80.0% |" in card
    assert "weakest class on val is disgust (recall 80.0%); most of its errors (2 of 2) are read as angry" in card
    assert "| 90.0% | 50.0% | 70.0% | 60.0% |" in card


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="with an NVIDIA driver a CUDA error is real and shown")
def test_no_cuda_error_line_on_a_machine_without_a_gpu():
    """TensorFlow's 'failed call to cuInit' error is the expected answer on a CPU machine: not shown."""
    done = subprocess.run([sys.executable, "-c", "from relaxd_train.cli import quiet_cuda_probe; quiet_cuda_probe(); "
                           "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
    assert "cuInit" not in done.stderr and "CUDA" not in done.stderr, done.stderr
