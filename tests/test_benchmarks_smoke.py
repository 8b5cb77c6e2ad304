"""The issue-4 benchmarks run end to end with tiny parameters and report what they promise.

No timing is asserted (that is what the benchmarks are for); what is asserted are the
correctness properties: every e-stop press drove every output to 0 and kept it there, and
a sustained negative face made the controller lower the intensity.

Both benchmarks need a TFLite model, never the shipped one. The e-stop benchmark takes
conftest's ``tiny_model`` (any model will do: it only has to cost inference time). The onset
benchmark needs a model that reads some real faces as negative and others as calm, so a
tiny model is converted here whose reading depends only on a face's mean brightness:
darker than ``MIDPOINT`` reads "sad", brighter reads "neutral". That is meaningless as an
emotion model, but it splits real FER2013 faces into both groups with high confidence, so
the benchmark's face selection has something to choose from.
"""

from __future__ import annotations

import importlib.util
import os
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from relaxd.demo import make_demo_clip
from relaxd.vision.model_meta import FER2013_LABELS

pytest.importorskip("gpiozero")
import modelkit  # noqa: E402  (tests/ is on sys.path under pytest)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MIDPOINT = 0.5  # mean brightness (unit normalisation) where the tiny model changes its mind
SLOPE = 40.0  # logit change per unit of brightness: 0.05 from the midpoint is ~98% sure


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def brightness_model(tmp_path_factory) -> Path:
    """An int8 .tflite (with metadata) reading dark faces as sad and bright ones as neutral."""
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(len(FER2013_LABELS)), keras.layers.Softmax()])
    kernel = np.zeros((1, len(FER2013_LABELS)), np.float32)
    bias = np.full(len(FER2013_LABELS), -10.0, np.float32)  # every other label: never
    for label, sign in (("sad", -1.0), ("neutral", 1.0)):
        i = FER2013_LABELS.index(label)
        kernel[0, i], bias[i] = sign * SLOPE, -sign * SLOPE * MIDPOINT
    model.layers[1].set_weights([kernel, bias])
    calibration = np.stack([np.full((48, 48, 1), level, np.float32) for level in np.linspace(0.0, 1.0, 32)])
    content = modelkit.convert(model, calibration, int8=True)
    return modelkit.write_model(tmp_path_factory.mktemp("model"), content, "int8", name="brightness")


@pytest.fixture(autouse=True)
def restore_logging():
    """The benchmarks restore logging themselves; undo anything left over, to be sure."""
    import logging

    import structlog

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.slow
def test_estop_benchmark_turns_every_output_off_in_every_press(tiny_model, tmp_path, capsys):
    bench = load_benchmark("bench_estop")
    clip = make_demo_clip(tmp_path / "demo.avi", seconds=2)
    code = bench.main(["--presses", "20", "--model", str(tiny_model), "--video", str(clip), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {"presses", "measured", "latency_ms", "target", "meets_target", "outputs_off_every_press",
            "stayed_off_every_press", "vision_fps", "control_hz", "model"} <= set(result)
    assert set(result["latency_ms"]) >= {"p50", "p90", "p99", "max"}
    assert result["presses"] == result["measured"] == 20
    assert result["outputs_off_every_press"] is True  # every output pin read 0 after every press
    assert result["stayed_off_every_press"] is True  # and the 50 Hz control loop did not turn one back on
    assert result["kill_in_driving_thread"] + result["kill_in_other_thread"] == 20
    assert len(result["outputs"]) == 5
    assert result["vision_fps"] > 0 and result["control_hz"] > 0  # the load threads really ran


def test_estop_benchmark_without_a_model_says_what_to_do(tmp_path, capsys):
    bench = load_benchmark("bench_estop")
    assert bench.main(["--presses", "1", "--model", str(tmp_path / "missing.tflite")]) == 2
    err = capsys.readouterr().err
    assert "missing.tflite" in err and "--model" in err


def test_onset_benchmark_skips_without_the_data(tmp_path, capsys):
    bench = load_benchmark("bench_negative_onset")
    assert bench.main(["--data", str(tmp_path / "nowhere"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"] is True and "--data" in result["reason"]
    assert bench.main(["--data", str(tmp_path / "nowhere")]) == 0
    assert capsys.readouterr().out.startswith("skipped:")


@pytest.mark.slow
def test_onset_benchmark_lowers_after_negative_faces(brightness_model, capsys):
    bench = load_benchmark("bench_negative_onset")
    data = bench.default_data_dir()
    if not data.is_dir():
        pytest.skip(f"FER2013 validation faces not found in {data}")
    code = bench.main(["--data", str(data), "--model", str(brightness_model), "--trials", "1",
                       "--calm-s", "16", "--negative-s", "3", "--screen", "12", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert {"trials", "valid_trials", "reacted_trials", "latency_s", "target_s", "meets_target", "reactions",
            "per_trial", "face_selection", "processing_ms_per_frame", "note"} <= set(result)
    assert set(result["latency_s"]) == {"median", "max", "min"}
    trial = result["per_trial"][0]
    assert trial["state_at_onset"] == "running"  # calibration was over before the first negative face
    assert not trial["lowered_before_onset"]
    assert trial["reaction"] in ("intensity_lowered", "adverse_reaction")
    assert trial["reaction_s"] >= trial["onset_s"]


@pytest.fixture
def restore_affinity():
    """bench_replay pins its process to one core; give the test process its cores back."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    yield
    if cores is not None:
        os.sched_setaffinity(0, cores)


@pytest.mark.slow
def test_replay_benchmark_compares_the_fast_path_with_full_detection(restore_affinity, capsys):
    bench = load_benchmark("bench_replay")
    assert bench.main(["--clip", "demo", "--no-peer", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (clip,) = result["clips"]
    everything = result["all"]
    assert clip["clip"] == "demo" and everything["frames"] == clip["frames"] > 0
    assert everything["peer_fps"] is None and everything["speedup_vs_peer"] is None  # --no-peer
    assert everything["relaxd_fps"] > 0 and everything["reference_fps"] > 0
    assert set(everything["stage_ms"]) >= {"decode", "detect", "preprocess", "infer", "aggregate"}
    # The demo face is in view most of the clip: where full detection finds it, so must the fast path.
    assert everything["reference_face_frames"] > 0.5 * everything["frames"]
    assert everything["face_found"] >= 0.9 and everything["mean_iou"] >= 0.6
    assert everything["face_found_by"]["confirmed"] > 0, "the tracked face was never confirmed by its picture"
    assert 0.0 <= everything["same_decision"] <= 1.0
    assert set(result["targets"]) == {"speedup_vs_peer", "mean_iou", "face_found", "same_decision"}


@pytest.mark.slow
def test_cpu_benchmark_measures_the_running_daemon(capsys):
    if not Path("/proc/self/stat").is_file():
        pytest.skip("bench_cpu reads /proc")
    bench = load_benchmark("bench_cpu")
    assert bench.main(["--seconds", "2", "--warmup", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fps"] == 15.0 and result["seconds"] >= 2.0
    assert result["cpu_seconds"] > 0, "the daemon did no work at all: was it running?"
    assert 0.0 < result["cpu_share_of_one_core"] <= result["cores_here"]


def test_cpu_benchmark_refuses_nonsense_arguments(capsys):
    bench = load_benchmark("bench_cpu")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--seconds", "0"])
    assert exit_info.value.code == 2
    assert "--seconds" in capsys.readouterr().err


@pytest.mark.slow
def test_fleet_benchmark_delivers_every_alert_once_and_measures_the_added_cpu(capsys):
    pytest.importorskip("paho.mqtt.client")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from brokerkit import mosquitto_binary

    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    bench = load_benchmark("bench_fleet")
    assert bench.main(["--chairs", "2", "--seconds", "3", "--alert-interval", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chairs"] == 2 and result["alerts_raised"] >= 4
    assert result["alerts_received"] == result["alerts_raised"] and result["duplicates"] == 0
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert set(result["added_cpu_share_of_one_core"]) == {"mean", "max"}


@pytest.mark.slow
def test_training_precision_benchmark_times_both_precisions(capsys):
    bench = load_benchmark("bench_train_precision")
    assert bench.main(["--batch-size", "4", "--batches", "1", "--rounds", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["float32_ms_per_image"] > 0 and result["bfloat16_ms_per_image"] > 0
    assert result["images_per_round"] == 4 and result["bfloat16_speedup"] > 0
    import keras
    assert keras.config.dtype_policy().name == "float32"  # the benchmark leaves the policy as it found it


def test_model_latency_benchmark_times_every_model_given(tiny_model, capsys):
    bench = load_benchmark("bench_model_latency")
    assert bench.main([str(tiny_model), "--invokes", "5", "--rounds", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == [str(tiny_model)]
    assert len(result[str(tiny_model)]["rounds_ms"]) == 2 and result[str(tiny_model)]["median_ms"] > 0


def test_model_latency_benchmark_names_a_missing_model(tmp_path, capsys):
    bench = load_benchmark("bench_model_latency")
    assert bench.main([str(tmp_path / "gone.tflite")]) == 2
    assert "gone.tflite" in capsys.readouterr().err
