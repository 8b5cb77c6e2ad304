"""``relaxd replay``: the daemon's vision path over a clip, through the real CLI.

Runs on the generated demo clip (real OpenCV decoding and Haar detection, a real int8
TFLite model), and checks the JSON summary, the annotated copy, the CSV, and that bad
input exits non-zero with a message that names the file.
"""

from __future__ import annotations

import csv
import json
import re

import cv2
import numpy as np
import pytest
from chairkit import faceless_clip

from relaxd import cli
from relaxd.demo import ensure_demo_clip, expected_faces

STAGES = {"decode", "detect", "preprocess", "infer", "aggregate"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return ensure_demo_clip(tmp_path_factory.mktemp("clip"))


def replay_json(capsys, *args: str) -> dict:
    assert cli.main(["replay", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_summary_has_every_documented_key(clip, tiny_model, capsys):
    summary = replay_json(capsys, str(clip), "--model", str(tiny_model))
    frames = cv2.VideoCapture(str(clip)).get(cv2.CAP_PROP_FRAME_COUNT)
    assert summary["frames"] == int(frames)
    assert 0 < summary["frames_with_face"] < summary["frames"]  # the person leaves for about a second
    assert summary["fps"] > 0
    assert set(summary["stage_ms"]) == STAGES and all(v >= 0 for v in summary["stage_ms"].values())
    assert sum(summary["labels"].values()) == summary["frames_with_face"]
    assert len(summary["timeline"]) == summary["frames"]
    first = summary["timeline"][0]
    assert {"frame", "face_in_frame", "group", "label", "confidence", "face_present"} <= set(first)


def test_faces_are_found_where_the_clip_has_them(clip, tiny_model, capsys):
    summary = replay_json(capsys, str(clip), "--model", str(tiny_model))
    truth = [box is not None for box in expected_faces()]
    found = [entry["face_in_frame"] for entry in summary["timeline"]]
    assert len(truth) == len(found)
    present = [f for f, t in zip(found, truth) if t]
    assert sum(present) >= 0.95 * len(present)
    assert not any(f for f, t in zip(found, truth) if not t), "a face was reported while nobody was there"


def test_annotate_and_csv_write_one_entry_per_frame(clip, tiny_model, tmp_path, capsys):
    annotated, rows = tmp_path / "out.mp4", tmp_path / "frames.csv"
    summary = replay_json(capsys, str(clip), "--model", str(tiny_model), "--annotate", str(annotated),
                          "--csv", str(rows))
    video = cv2.VideoCapture(str(annotated))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames"]
    ok, frame = video.read()
    assert ok and frame.shape == (480, 640, 3)
    with rows.open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == summary["frames"]
    assert sum(int(row["face"]) for row in table) == summary["frames_with_face"]
    assert {"p_happy", "p_sad", "group", "label"} <= set(table[0])


def test_human_summary(clip, tiny_model, capsys):
    assert cli.main(["replay", str(clip), "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "frames/s" in out and "stage ms/frame" in out
    assert re.search(r"^whole clip: (negative|neutral|positive) \(\w+, \d+% of \d+ face frames\)$", out, re.M), out


def test_the_whole_clip_gets_one_verdict_by_the_threshold_rule(clip, tiny_model, capsys):
    summary = replay_json(capsys, str(clip), "--model", str(tiny_model))
    verdict, decisions, faces = summary["clip"], summary["decisions"], summary["frames_with_face"]
    assert verdict["face_present"] and verdict["face_frames"] == faces and verdict["frames"] == summary["frames"]
    assert sum(decisions.values()) == faces
    # By hand, over the per-frame group decisions: the more frequent non-neutral group wins with
    # at least 15% of the face frames (affect.threshold's default), else neutral does.
    non_neutral = {group: n for group, n in decisions.items() if group != "neutral"}
    best = max(non_neutral.values(), default=0)
    if best >= 0.15 * faces or "neutral" not in decisions:
        assert decisions[verdict["group"]] == best
    else:
        assert verdict["group"] == "neutral"
    assert verdict["confidence"] == pytest.approx(decisions[verdict["group"]] / faces)


def test_a_clip_without_a_face_has_no_verdict(tmp_path, tiny_model, capsys):
    summary = replay_json(capsys, str(faceless_clip(tmp_path / "empty-room.avi")), "--model", str(tiny_model))
    assert summary["frames_with_face"] == 0
    assert summary["clip"]["face_present"] is False and summary["clip"]["label"] is None


@pytest.mark.parametrize("make_bad", ["missing", "text", "empty"])
def test_bad_video_exits_non_zero_naming_the_file(make_bad, tiny_model, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    if make_bad == "text":
        video.write_text("this is not a video\n")
    elif make_bad == "empty":
        video.write_bytes(b"")
    assert cli.main(["replay", str(video), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert "relaxd: error:" in err and str(video) in err and "Traceback" not in err


def test_missing_model_exits_non_zero(clip, tmp_path, capsys):
    assert cli.main(["replay", str(clip), "--model", str(tmp_path / "none.tflite")]) == 2
    assert "none.tflite" in capsys.readouterr().err


def test_annotations_name_what_each_number_is():
    """'happy 0.33' on a face read 99% happy was the window's share, unlabelled: both are named now."""
    from relaxd.affect import AffectReading
    from relaxd.replay import annotation_lines
    from relaxd.vision.pipeline import FrameResult

    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    probabilities = np.array([0.0, 0.0, 0.0, 0.99, 0.0, 0.0, 0.01])
    reading = AffectReading(time=1.0, face_present=True, group="positive", label="happy", confidence=0.33,
                            group_scores={"negative": 0.0, "neutral": 0.01, "positive": 0.99}, frames=15,
                            face_frames=15)
    result = FrameResult(index=3, time=1.0, box=(1, 2, 30, 30), probabilities=probabilities, reading=reading)
    assert annotation_lines(result, labels) == ["this frame: happy 99%",
                                                "chair: positive (happy in 33% of recent face frames)"]
    assert annotation_lines(result, labels, "ema")[1] == "chair: positive (happy, smoothed 33%)"
    faceless = FrameResult(index=4, time=1.1, box=None, probabilities=None, reading=reading)
    assert annotation_lines(faceless, labels)[0] == "this frame: no face"
