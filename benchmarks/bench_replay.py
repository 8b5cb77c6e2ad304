"""Replay-path speed and face recall against the plain full-frame baseline.

Single thread (OpenCV and TFLite), one clip with one face at 640x480: by default the
project's generated demo clip (astronaut photo moving, scaling, leaving the frame);
``--video`` accepts any clip. Both paths decode the same frames and run the same
int8 classifier; they differ in how faces are found:

- baseline: full-frame ``detectMultiScale(scaleFactor=1.1, minNeighbors=5,
  minSize=(50, 50))`` on every frame, largest face, crop, classify;
- relaxd: ``relaxd.replay.replay`` (downscaled detection, search around the last face,
  periodic full rescans, padded retry), the daemon's own vision path.

Reports frames/s of each, their ratio (target >= 5x), the per-stage split, and the
share of the baseline's face frames in which relaxd also found a face (target >= 98%).
Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_replay.py [--video CLIP] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from relaxd.demo import ensure_demo_clip
from relaxd.replay import replay
from relaxd.settings import ClassifierSettings, Settings
from relaxd.vision.detector import load_cascade
from relaxd.vision.pipeline import VisionPipeline
from relaxd.vision.preprocess import face_to_input


def baseline(video: Path, pipeline: VisionPipeline) -> tuple[float, list[bool]]:
    """Full-frame Viola-Jones on every frame + crop + classify; returns frames/s and per-frame face flags."""
    cascade = load_cascade(pipeline.detector.settings.cascade)
    classifier = pipeline.classifier
    capture = cv2.VideoCapture(str(video))
    found: list[bool] = []
    started = time.perf_counter()
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(50, 50))
        if len(faces):
            x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
            classifier.predict(face_to_input(frame, (int(x), int(y), int(w), int(h)), classifier.spec)[np.newaxis])
        found.append(len(faces) > 0)
    seconds = time.perf_counter() - started
    capture.release()
    return len(found) / seconds, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help="clip to use (default: the generated demo clip)")
    parser.add_argument("--model", type=Path, help="model (default: the shipped one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    settings = Settings(classifier=ClassifierSettings(model=str(args.model or ""), threads=1))
    video = args.video or ensure_demo_clip(Path(tempfile.gettempdir()) / "relaxd-bench")
    pipeline = VisionPipeline.from_settings(settings)

    base_fps, base_found = baseline(video, pipeline)
    summary = replay(video, settings, pipeline=pipeline)
    ours_found = [entry["face_in_frame"] for entry in summary.timeline]
    both = sum(1 for b, o in zip(base_found, ours_found) if b and o)
    recall = both / max(1, sum(base_found))
    result = {
        "video": str(video),
        "frames": summary.frames,
        "baseline_fps": round(base_fps, 1),
        "relaxd_fps": round(summary.fps, 1),
        "speedup": round(summary.fps / base_fps, 2),
        "baseline_face_frames": sum(base_found),
        "relaxd_face_frames": summary.frames_with_face,
        "recall_vs_baseline": round(recall, 4),
        "stage_ms": summary.stage_ms,
        "targets": {"speedup": ">= 5", "recall_vs_baseline": ">= 0.98"},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"clip {video}: {summary.frames} frames at 640x480, one thread")
        print(f"baseline (full-frame 1.1/5/min 50): {base_fps:7.1f} frames/s, face in {sum(base_found)} frames")
        print(f"relaxd replay path:                 {summary.fps:7.1f} frames/s, face in {summary.frames_with_face} frames")
        print(f"speed-up {result['speedup']:.2f}x (target >= 5x); recall vs baseline {100 * recall:.1f}% (target >= 98%)")
        print("relaxd stage ms/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.stage_ms.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
