"""The TFLite runtime and the emotion classifier, on tiny models converted here.

Two small Keras models (48x48x1 in, 7-way softmax out) are converted once per module
with the real TFLiteConverter, to float32 and to full-integer int8, and run with the
real interpreter; bad models and metadata must be refused with a helpful ModelError.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import modelkit
import pytest
import structlog

from relaxd.errors import ConfigError, ModelError
from relaxd.settings import AffectSettings
from relaxd.vision import classifier as classifier_module
from relaxd.vision.classifier import (
    EmotionClassifier,
    default_model_path,
    dequantize,
    quantize,
    renormalise,
)
from relaxd.vision.decision import GroupDecision, configured_decision
from relaxd.vision.model_meta import FER2013_LABELS, GROUPS, load_metadata, metadata_path
from relaxd.vision.preprocess import PreprocessSpec, face_to_input
from relaxd.vision.runtime import RUNTIME_NAME, load_interpreter

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "relaxnet-fer2013.tflite"

SIZE = modelkit.SIZE
_inputs = modelkit.smooth_inputs
write_model = modelkit.write_model


@pytest.fixture(scope="module")
def converted():
    """A tiny Keras model, its float32 and int8 .tflite bytes, and inputs to test with."""
    pytest.importorskip("tensorflow")
    calibration = _inputs(64, seed=1)
    model = modelkit.tiny_keras_model(calibration)
    test_inputs = _inputs(24, seed=2)
    return {
        "float32": modelkit.convert(model, calibration, int8=False),
        "int8": modelkit.convert(model, calibration, int8=True),
        "inputs": test_inputs,
        "keras": np.asarray(model.predict(test_inputs, verbose=0), dtype=np.float32),
    }


# -- runtime -------------------------------------------------------------------------


def test_runtime_is_chosen_in_documented_order():
    assert RUNTIME_NAME == "ai-edge-litert"  # installed here; it comes first


def test_no_runtime_installed_says_what_to_install():
    # A fresh interpreter where none of the three packages can be imported.
    script = (
        "import sys\n"
        "for name in ('ai_edge_litert', 'tflite_runtime', 'tensorflow'): sys.modules[name] = None\n"
        "from relaxd.vision import runtime\n"
        "assert runtime.RUNTIME_NAME == '', runtime.RUNTIME_NAME\n"
        "try:\n"
        "    runtime.load_interpreter(b'x')\n"
        "except runtime.RuntimeMissingError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install ai-edge-litert" in result.stdout
    assert "tflite-runtime" in result.stdout


def test_garbage_bytes_are_not_a_model():
    with pytest.raises(ModelError, match="not a valid TFLite model"):
        load_interpreter(b"this is not a flatbuffer" * 4)


@pytest.mark.slow
def test_runtime_loads_from_bytes_and_path(converted, tmp_path):
    from_bytes = load_interpreter(converted["float32"], threads=2)
    path = tmp_path / "m.tflite"
    path.write_bytes(converted["float32"])
    from_path = load_interpreter(path)
    for interpreter in (from_bytes, from_path):
        assert tuple(interpreter.get_input_details()[0]["shape"]) == (1, SIZE, SIZE, 1)


# -- quantization arithmetic ---------------------------------------------------------------


def test_quantize_round_trip_uses_scale_and_zero_point():
    scale, zero_point = 1.0 / 256.0, -128  # how an int8 model sees 0..1 inputs
    values = np.array([0.0, 0.5, 0.99, 1.5, -0.2], dtype=np.float32)
    quantized = quantize(values, scale, zero_point, np.int8)
    assert quantized.dtype == np.int8
    # 0 maps to the zero point; out-of-range values clip to the int8 limits.
    assert quantized.tolist() == [-128, 0, 125, 127, -128]
    restored = dequantize(quantized, scale, zero_point)
    assert np.allclose(restored[:3], values[:3], atol=scale / 2)
    assert restored[3] == pytest.approx(127 * scale + 0.5) and restored[4] == pytest.approx(0.0)


def test_quantize_with_other_scale_and_zero_point():
    values = np.array([-1.0, -0.25, 0.0, 0.3], dtype=np.float32)
    quantized = quantize(values, 0.01, 5, np.int8)
    assert quantized.tolist() == [-95, -20, 5, 35]
    assert np.allclose(dequantize(quantized, 0.01, 5), values, atol=0.005)


def test_renormalise_makes_rows_distributions():
    rows = np.array([[0.5, 0.5, 0.0078125], [0.0, 0.0, 0.0], [-0.01, 0.3, 0.6]], dtype=np.float32)
    result = renormalise(rows)
    assert np.allclose(result.sum(axis=1), 1.0)
    assert np.allclose(result[1], 1.0 / 3)
    assert result.min() >= 0.0


# -- running models ------------------------------------------------------------------------


@pytest.mark.slow
def test_float32_model_matches_keras(converted, tmp_path):
    classifier = EmotionClassifier(write_model(tmp_path, converted["float32"], "float32"))
    probabilities = classifier.predict(converted["inputs"])
    assert probabilities.shape == (len(converted["inputs"]), len(FER2013_LABELS))
    assert probabilities.dtype == np.float32
    assert np.allclose(probabilities, converted["keras"], atol=1e-4)
    assert classifier.labels == FER2013_LABELS
    assert classifier.spec == PreprocessSpec(input_size=SIZE)


@pytest.mark.slow
def test_int8_model_matches_keras_within_quantization_error(converted, tmp_path):
    classifier = EmotionClassifier(write_model(tmp_path, converted["int8"], "int8"))
    expected = converted["keras"]
    # Confident and varied predictions, not near-uniform ones, or the check would be vacuous.
    assert expected.max(axis=1).mean() > 0.5
    assert len(set(expected.argmax(axis=1).tolist())) >= 3
    probabilities = classifier.predict(converted["inputs"])
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(probabilities - expected).max() < 0.08
    agreement = (probabilities.argmax(axis=1) == expected.argmax(axis=1)).mean()
    assert agreement >= 0.9


@pytest.mark.slow
def test_int8_input_is_quantized_with_the_tensor_parameters(converted, tmp_path):
    """Feeding raw 0..1 floats cast to int8 (no scaling) would give garbage; check the scaling."""
    classifier = EmotionClassifier(write_model(tmp_path, converted["int8"], "int8"))
    interpreter = load_interpreter(converted["int8"])
    details = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    scale, zero_point = details["quantization"]
    assert details["dtype"] == np.int8 and scale > 0
    sample = converted["inputs"][:1]
    interpreter.set_tensor(details["index"], quantize(sample, scale, zero_point, np.int8))
    interpreter.invoke()
    by_hand = dequantize(interpreter.get_tensor(output["index"]), *output["quantization"])
    assert np.allclose(classifier.predict(sample), renormalise(by_hand), atol=1e-6)


@pytest.mark.slow
def test_batch_equals_one_by_one(converted, tmp_path):
    classifier = EmotionClassifier(write_model(tmp_path, converted["int8"], "int8"))
    inputs = converted["inputs"][:5]
    batch = classifier.predict(inputs)
    singles = np.concatenate([classifier.predict(inputs[i : i + 1]) for i in range(5)])
    assert np.array_equal(batch, singles)


@pytest.mark.slow
def test_predict_rejects_wrong_input_shape(converted, tmp_path):
    classifier = EmotionClassifier(write_model(tmp_path, converted["float32"], "float32"))
    with pytest.raises(ValueError, match=r"\(N, 48, 48, 1\)"):
        classifier.predict(np.zeros((2, 64, 64, 1), np.float32))


@pytest.mark.slow
def test_classify_face_uses_the_preprocessing_contract(converted, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    frame = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    box = (177, 66, 95, 95)  # her face, as OpenCV's frontal cascade finds it
    classifier = EmotionClassifier(write_model(tmp_path, converted["float32"], "float32"))
    probabilities = classifier.classify_face(frame, box)
    assert probabilities.shape == (len(FER2013_LABELS),)
    expected = classifier.predict(face_to_input(frame, box, classifier.spec)[np.newaxis])[0]
    assert np.array_equal(probabilities, expected)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


# -- refusing bad models -------------------------------------------------------------------


def test_missing_model_names_the_file(tmp_path):
    missing = tmp_path / "nowhere.tflite"
    with pytest.raises(ModelError, match="nowhere.tflite not found.*classifier.model"):
        EmotionClassifier(missing)


@pytest.mark.slow
def test_missing_metadata_names_the_json(converted, tmp_path):
    path = write_model(tmp_path, converted["float32"], "float32")
    metadata_path(path).unlink()
    with pytest.raises(ModelError, match=r"tiny\.json not found"):
        EmotionClassifier(path)


@pytest.mark.slow
def test_corrupt_metadata_json(converted, tmp_path):
    path = write_model(tmp_path, converted["float32"], "float32")
    metadata_path(path).write_text('{"format": "relaxd-model/1", "labels": [', encoding="utf-8")
    with pytest.raises(ModelError, match="not valid JSON"):
        EmotionClassifier(path)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_broken_tflite_is_refused(converted, tmp_path, damage):
    content = converted["float32"]
    broken = content[: len(content) // 3] if damage == "truncated" else os.urandom(len(content))
    # Metadata written for the broken bytes (sha256 matches), so the interpreter must notice.
    path = write_model(tmp_path, broken, "float32")
    with pytest.raises(ModelError, match=r"tiny\.tflite is not a valid TFLite model.*re-export"):
        EmotionClassifier(path)


@pytest.mark.slow
def test_sha256_mismatch_is_refused(converted, tmp_path):
    path = write_model(tmp_path, converted["float32"], "float32")
    path.write_bytes(converted["int8"])  # replaced after export
    with pytest.raises(ModelError, match="sha256 differs"):
        EmotionClassifier(path)


@pytest.mark.slow
def test_wrong_input_size_is_refused(converted, tmp_path):
    path = write_model(tmp_path, converted["float32"], "float32", preprocess=PreprocessSpec(input_size=64))
    with pytest.raises(ModelError, match=r"input shape is \(1, 48, 48, 1\), metadata says \(1, 64, 64, 1\)"):
        EmotionClassifier(path)


@pytest.mark.slow
def test_wrong_number_of_labels_is_refused(converted, tmp_path):
    three = {"negative": ("negative",), "neutral": ("neutral",), "positive": ("positive",)}
    path = write_model(
        tmp_path, converted["float32"], "float32", labels=("negative", "neutral", "positive"), groups=three
    )
    with pytest.raises(ModelError, match="7 outputs but the metadata lists 3 labels"):
        EmotionClassifier(path)


@pytest.mark.slow
@pytest.mark.parametrize("actual, claimed", [("float32", "int8"), ("int8", "float32")])
def test_quantization_disagreeing_with_the_input_tensor(converted, tmp_path, actual, claimed):
    path = write_model(tmp_path, converted[actual], claimed)
    expected = f"metadata quantization is {claimed} but the input tensor is {actual}"
    with pytest.raises(ModelError, match=expected):
        EmotionClassifier(path)


@pytest.mark.slow
def test_placeholder_model_warns_at_load(converted, tmp_path):
    path = write_model(tmp_path, converted["int8"], "int8", placeholder=True)
    with structlog.testing.capture_logs() as logs:
        EmotionClassifier(path)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "placeholder model: predictions are not meaningful" in warnings[0]["event"]
    assert warnings[0]["model"] == str(path)


@pytest.mark.slow
def test_real_model_does_not_warn(converted, tmp_path):
    with structlog.testing.capture_logs() as logs:
        EmotionClassifier(write_model(tmp_path, converted["int8"], "int8"))
    assert not [entry for entry in logs if entry["log_level"] == "warning"]


# -- the shipped default ---------------------------------------------------------------------


def test_default_model_path_reads_models_default(tmp_path, monkeypatch):
    """models/DEFAULT names the shipped model; without it the error says to set classifier.model."""
    package = tmp_path / "relaxd"
    package.mkdir()
    monkeypatch.setattr(classifier_module.relaxd, "__file__", str(package / "__init__.py"))
    with pytest.raises(ModelError, match="DEFAULT not found; set classifier.model"):
        default_model_path()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "DEFAULT").write_text("relaxnet-int8.tflite\n", encoding="utf-8")
    assert default_model_path() == (tmp_path / "models" / "relaxnet-int8.tflite").resolve()


def shipped_copy(tmp_path: Path) -> Path:
    for suffix in (".tflite", ".json"):
        shutil.copy(SHIPPED_MODEL.with_suffix(suffix), tmp_path / f"copy{suffix}")
    return tmp_path / "copy.tflite"


def edit_metadata(model: Path, edit) -> None:
    path = metadata_path(model)
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_metadata_with_reordered_labels_is_refused(tmp_path):
    """The fault injector swapped angry and happy: the chair ran and halted on a happy face."""
    model = shipped_copy(tmp_path)
    labels = json.loads(metadata_path(model).read_text())["labels"]
    swapped = [{"angry": "happy", "happy": "angry"}.get(label, label) for label in labels]
    edit_metadata(model, lambda data: data.update(labels=swapped))
    with pytest.raises(ModelError, match="edited after export.*contract_sha256"):
        EmotionClassifier(model)


@pytest.mark.parametrize("edit", [
    lambda data: data["preprocess"].update(crop_margin=0.3),
    lambda data: data.update(quantization="float32"),
    lambda data: data.update(sha256="0" * 64, contract_sha256=data["contract_sha256"]),
], ids=["preprocess", "quantization", "file-digest"])
def test_metadata_edits_to_the_sealed_contract_are_refused(tmp_path, edit):
    model = shipped_copy(tmp_path)
    edit_metadata(model, edit)
    with pytest.raises(ModelError, match="sha256 differs|contract_sha256"):
        EmotionClassifier(model)


def test_metadata_without_a_contract_digest_is_refused_with_the_fix(tmp_path):
    model = shipped_copy(tmp_path)
    edit_metadata(model, lambda data: data.pop("contract_sha256"))
    with pytest.raises(ModelError, match="no contract_sha256.*re-export"):
        EmotionClassifier(model)


def test_regrouping_in_the_metadata_is_refused_and_the_config_regroups(tmp_path):
    """Groups and the negative weight are sealed; a chair regroups in its config (affect.*_labels)."""
    model = shipped_copy(tmp_path)

    def surprise_positive(data):
        data["groups"]["negative"].remove("surprise")
        data["groups"]["positive"].append("surprise")

    edit_metadata(model, surprise_positive)
    with pytest.raises(ModelError, match="groups.*config"):
        load_metadata(model)
    (tmp_path / "fresh").mkdir()
    meta = load_metadata(shipped_copy(tmp_path / "fresh"))
    assert meta.group_of("surprise") == "negative"  # the shipped grouping (issue 14)
    configured = configured_decision(replace(AffectSettings(), negative_labels=("angry", "disgust", "fear", "sad"),
                                             neutral_labels=("neutral",), positive_labels=("happy", "surprise")), meta)
    surprised = np.array([0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.9])
    assert GROUPS[configured.decide_one(surprised)] == "positive"
    assert GROUPS[GroupDecision.for_model(meta).decide_one(surprised)] == "negative"


def test_a_config_grouping_that_misses_or_invents_a_label_names_the_keys(tmp_path):
    meta = load_metadata(shipped_copy(tmp_path))
    for negative in (("angry", "disgust", "fear"), ("angry", "disgust", "fear", "sad", "scared")):
        affect = replace(AffectSettings(), negative_labels=negative, neutral_labels=("neutral",),
                         positive_labels=("happy", "surprise"))
        with pytest.raises(ConfigError, match="affect.negative_labels.*(in no group: sad|not labels of the model: scared)"):
            configured_decision(affect, meta)


def test_loading_a_model_prints_no_delegate_banner_and_keeps_other_native_lines(capfd):
    """TFLite's 'Created TensorFlow Lite XNNPACK delegate' line reads as trouble; nothing else is swallowed."""
    from relaxd.vision import runtime

    shipped = Path(__file__).resolve().parents[1] / "models" / "relaxnet-fer2013.tflite"
    done = subprocess.run([sys.executable, "-c", "import sys; from relaxd.vision.runtime import load_interpreter; "
                           "load_interpreter(sys.argv[1]); print('loaded')", str(shipped)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr
    assert "XNNPACK" not in done.stderr, done.stderr
    with runtime.without_native_lines(runtime.DELEGATE_BANNER):
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nERROR: a real native error\n")
    assert capfd.readouterr().err == "ERROR: a real native error\n"
