"""Vision speed on clips made from real photos: relaxd's path against full detection and the peer.

For every clip of ``benchmarks/clips.py`` (the astronaut photo and CK+ faces moving, turning,
tilting, changing size and light, leaving and coming back; and the demo clip), in one process,
pinned to one core (OpenCV and TFLite on one thread), the same frames go through:

- full detection on every frame (the reference): full-resolution ``detectMultiScale(1.1, 5,
  minSize 50)``, largest face, the same crop and int8 classifier and the same decision;
- relaxd: ``relaxd.replay.replay``, the daemon's own vision path (a small grey frame, the face
  confirmed by its picture between cascade runs, the cascade around it every few frames, the
  whole frame every ``full_scan_interval`` frames, scans skipped while an empty view stays
  unchanged);
- the peer, when the ``fer`` package is importable (``make peer`` builds ``.venv-peer``, then
  run this script with ``.venv-peer/bin/python``): ``fer.FER().detect_emotions`` on every frame,
  its default Haar detector and TFLite model.

Reported per clip and over all frames: frames/s of each path (decode included), relaxd's ms per
frame by stage, how each frame's face was found (picture, cascade, skipped), and the fast path
against the reference: mean IoU of the face boxes, the share of the reference's face frames in
which relaxd found the face, and the share in which it reached the same 3-class decision.
Targets (issue 16): >= 10x the peer's frames/s, mean IoU >= 0.8, face found >= 98%, same
decision >= 97%. Run: ``.venv/bin/python benchmarks/bench_replay.py [--clip NAME ...] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clips  # noqa: E402  (the benchmarks folder is not a package)

from relaxd.replay import replay  # noqa: E402
from relaxd.settings import ClassifierSettings, Settings  # noqa: E402
from relaxd.vision.detector import load_cascade  # noqa: E402
from relaxd.vision.pipeline import FrameResult, VisionPipeline  # noqa: E402
from relaxd.vision.preprocess import Box, face_to_input  # noqa: E402

TARGETS = {"speedup_vs_peer": 10.0, "mean_iou": 0.8, "face_found": 0.98, "same_decision": 0.97}


class RecordingPipeline(VisionPipeline):
    """The daemon's pipeline, keeping each frame's result for the comparison."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[FrameResult] = []

    def process(self, frame: np.ndarray, now: float, index: int = 0) -> FrameResult:
        result = super().process(frame, now, index)
        self.results.append(result)
        return result


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / float(aw * ah + bw * bh - inter)


def full_detection(video: Path, pipeline: VisionPipeline) -> tuple[float, list[Optional[Box]], list[Optional[int]]]:
    """The reference: full-frame Viola-Jones on every frame + crop + classify + decide."""
    cascade = load_cascade(pipeline.detector.settings.cascade)
    classifier, decision = pipeline.classifier, pipeline.aggregator.decision
    capture = cv2.VideoCapture(str(video))
    boxes: list[Optional[Box]] = []
    decisions: list[Optional[int]] = []
    started = time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(50, 50))
        box = decided = None
        if len(faces):
            box = tuple(int(v) for v in max(faces, key=lambda f: f[2] * f[3]))
            probabilities = classifier.predict(face_to_input(frame, box, classifier.spec)[np.newaxis])[0]
            decided = decision.decide_one(probabilities)
        boxes.append(box)
        decisions.append(decided)
    seconds = time.perf_counter() - started
    capture.release()
    return len(boxes) / seconds, boxes, decisions


def peer_fps(video: Path) -> Optional[float]:
    """The fer package's pipeline on every frame, or None where it is not installed."""
    try:
        from fer.fer import FER  # fer 25.x; its package root no longer exports FER
    except ImportError:
        return None
    detector = FER()
    capture = cv2.VideoCapture(str(video))
    frames = 0
    started = time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        detector.detect_emotions(frame)
        frames += 1
    seconds = time.perf_counter() - started
    capture.release()
    return frames / seconds


def compare(reference: list[Optional[Box]], ref_decisions: list[Optional[int]],
            results: list[FrameResult], decision: Any) -> dict[str, Any]:
    """The fast path against the reference, over the frames in which the reference found a face."""
    overlaps, found, same = [], 0, 0
    for ref_box, ref_decision, result in zip(reference, ref_decisions, results):
        if ref_box is None:
            continue
        if result.box is not None:
            found += 1
            overlaps.append(iou(ref_box, result.box))
            same += int(decision.decide_one(result.probabilities) == ref_decision)
    face_frames = sum(box is not None for box in reference)
    return {"reference_face_frames": face_frames, "found": found, "same_decision_frames": same,
            "iou_sum": float(np.sum(overlaps)), "iou_count": len(overlaps)}


def measure_clip(name: str, settings: Settings, with_peer: bool) -> dict[str, Any]:
    video = clips.ensure_clip(name)
    pipeline = RecordingPipeline.from_settings(settings)
    reference_fps, reference, ref_decisions = full_detection(video, pipeline)  # not through pipeline.process
    summary = replay(video, settings, pipeline=pipeline)
    row = {
        "clip": name,
        "frames": summary.frames,
        "reference_fps": round(reference_fps, 1),
        "relaxd_fps": round(summary.fps, 1),
        "peer_fps": None,
        "stage_ms": summary.stage_ms,
        "face_found_by": pipeline.detector.counts.to_dict(),
        **compare(reference, ref_decisions, pipeline.results, pipeline.aggregator.decision),
    }
    if with_peer:
        fps = peer_fps(video)
        row["peer_fps"] = round(fps, 1) if fps is not None else None
    return row


def ratios(row: dict[str, Any]) -> dict[str, Optional[float]]:
    face_frames = max(1, row["reference_face_frames"])
    peer = row.get("peer_fps")
    return {
        "speedup_vs_reference": round(row["relaxd_fps"] / row["reference_fps"], 2),
        "speedup_vs_peer": round(row["relaxd_fps"] / peer, 2) if peer else None,
        "mean_iou": round(row["iou_sum"] / max(1, row["iou_count"]), 4),
        "face_found": round(row["found"] / face_frames, 4),
        "same_decision": round(row["same_decision_frames"] / face_frames, 4),
    }


def overall(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """All clips together: frames/s as total frames over total time, shares over all frames."""
    frames = sum(r["frames"] for r in rows)
    total = {"clip": "all", "frames": frames}
    for path in ("reference", "relaxd", "peer"):
        if any(r.get(f"{path}_fps") is None for r in rows):
            total[f"{path}_fps"] = None
            continue
        seconds = sum(r["frames"] / r[f"{path}_fps"] for r in rows)
        total[f"{path}_fps"] = round(frames / seconds, 1)
    for key in ("reference_face_frames", "found", "same_decision_frames", "iou_sum", "iou_count"):
        total[key] = sum(r[key] for r in rows)
    stages = rows[0]["stage_ms"].keys()
    total["stage_ms"] = {s: round(sum(r["stage_ms"][s] * r["frames"] for r in rows) / frames, 3) for s in stages}
    total["face_found_by"] = {k: sum(r["face_found_by"][k] for r in rows) for k in rows[0]["face_found_by"]}
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", action="append", choices=clips.available(), metavar="NAME",
                        help=f"only this clip (repeatable; default all of: {', '.join(clips.available())})")
    parser.add_argument("--model", type=Path, help="model (default: the shipped one)")
    parser.add_argument("--no-peer", action="store_true", help="skip the fer package even if it is installed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")

    if hasattr(os, "sched_setaffinity"):  # one core for every path, whatever threads a library starts
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    settings = Settings(classifier=ClassifierSettings(model=str(args.model or ""), threads=1))
    with contextlib.redirect_stdout(sys.stderr):  # library and log lines stay off the JSON on stdout
        rows = [measure_clip(name, settings, not args.no_peer) for name in args.clip or clips.available()]
    everything = overall(rows)
    result = {
        "clips": [{**row, **ratios(row)} for row in rows],
        "all": {**everything, **ratios(everything)},
        "targets": {key: f">= {value:g}" for key, value in TARGETS.items()},
    }
    if args.json:
        print(json.dumps(result))
        return 0
    header = f"{'clip':8} {'frames':>6} {'ref f/s':>8} {'relaxd f/s':>10} {'peer f/s':>8} {'x ref':>6} " \
             f"{'x peer':>6} {'IoU':>6} {'found':>6} {'same':>6}  picture/cascade/skipped"
    print("one thread; reference = full-resolution detection on every frame")
    print(header)
    for row in result["clips"] + [result["all"]]:
        peer = f"{row['peer_fps']:8.1f}" if row["peer_fps"] else f"{'-':>8}"
        x_peer = f"{row['speedup_vs_peer']:6.2f}" if row["speedup_vs_peer"] else f"{'-':>6}"
        by = row["face_found_by"]
        print(f"{row['clip']:8} {row['frames']:6d} {row['reference_fps']:8.1f} {row['relaxd_fps']:10.1f} {peer} "
              f"{row['speedup_vs_reference']:6.2f} {x_peer} {row['mean_iou']:6.3f} {row['face_found']:6.1%} "
              f"{row['same_decision']:6.1%}  {by['confirmed']}/{by['cascade']}/{by['skipped']}")
    print("relaxd ms/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in result["all"]["stage_ms"].items()))
    print("targets: " + ", ".join(f"{k} {v}" for k, v in result["targets"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
