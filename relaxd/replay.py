"""``relaxd replay VIDEO``: the daemon's vision path over a recorded clip, as fast as it can.

Every frame is decoded and processed in order (no frame is dropped, unlike the live
camera path), and the affect window advances on video time, so a replay gives the same
readings on a slow laptop and on a fast workstation. Optional outputs: an annotated
copy of the clip (face box and label, the relaxation-chair paper's auxiliary
application) and one CSV row per frame. Replay reads a file the user already has; the
live daemon never writes frames anywhere.

The summary ends with one verdict for the whole clip: the configured affect rule (by default
Yang, Lee & Park's threshold rule, which was designed for clips) over every face frame.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from relaxd.affect import AffectAggregator, AffectReading
from relaxd.capture import FrameSource, open_source
from relaxd.errors import CaptureError
from relaxd.settings import Settings
from relaxd.vision.model_meta import GROUPS
from relaxd.vision.pipeline import FrameResult, VisionPipeline

CLIP_WINDOW_FRAMES = 10 ** 7  # longer than any clip: about four days at 30 frames/s

GROUP_COLOURS = {"negative": (60, 60, 230), "neutral": (200, 200, 200), "positive": (80, 200, 80), "none": (128, 128, 128)}


@dataclass
class ReplaySummary:
    video: str
    model: str
    frames: int = 0
    frames_with_face: int = 0
    seconds: float = 0.0
    labels: Counter = field(default_factory=Counter)
    groups: Counter = field(default_factory=Counter)
    decisions: Counter = field(default_factory=Counter)  # per face frame: the chair's group decision
    stage_ms: dict[str, float] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    clip: AffectReading | None = None  # the affect rule over every frame of the clip

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "model": self.model,
            "frames": self.frames,
            "frames_with_face": self.frames_with_face,
            "face_share": round(self.frames_with_face / max(1, self.frames), 4),
            "fps": round(self.fps, 2),
            "ms_per_frame": round(1000.0 * self.seconds / max(1, self.frames), 3),
            "stage_ms": self.stage_ms,
            "labels": dict(self.labels),
            "groups": dict(self.groups),
            "decisions": dict(self.decisions),
            "clip": self.clip.to_dict() if self.clip is not None else None,
            "timeline": self.timeline,
        }

    def describe(self) -> str:
        lines = [
            f"{self.video}: {self.frames} frames, face in {self.frames_with_face} "
            f"({100.0 * self.frames_with_face / max(1, self.frames):.1f}%), {self.fps:.1f} frames/s",
            "stage ms/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in self.stage_ms.items()),
            "per-frame labels: " + ", ".join(f"{k} {v}" for k, v in self.labels.most_common()),
            "per-frame decisions: " + ", ".join(f"{k} {v}" for k, v in self.decisions.most_common()),
            "affect readings: " + ", ".join(f"{k} {v}" for k, v in self.groups.most_common()),
            "whole clip: " + describe_verdict(self.clip),
        ]
        return "\n".join(lines)


def describe_verdict(reading: AffectReading | None) -> str:
    if reading is None or not reading.face_present:
        return "no face"
    return (f"{reading.group} ({reading.label}, {100.0 * reading.confidence:.0f}% of "
            f"{reading.face_frames} face frames)")


def read_frames(source: FrameSource, pipeline: VisionPipeline) -> Iterator[tuple[int, np.ndarray]]:
    """Decode every frame of an opened clip in order, timing the decode stage."""
    index = 0
    while True:
        started = time.perf_counter()
        image = source.read()
        pipeline.timer.add("decode", time.perf_counter() - started)
        if image is None:
            return
        yield index, image
        index += 1


def annotation_lines(result: FrameResult, labels: tuple[str, ...], method: str = "threshold") -> list[str]:
    """What a replay frame is labelled with, each number named: the model's reading of this frame,
    then what the chair decides over its window (for threshold and majority a share of frames, not
    a probability; for ema the smoothed probability)."""
    lines = []
    if result.probabilities is not None:
        top = int(np.argmax(result.probabilities))
        lines.append(f"this frame: {labels[top]} {result.probabilities[top]:.0%}")
    else:
        lines.append("this frame: no face")
    reading = result.reading
    if reading.label and method == "ema":
        lines.append(f"chair: {reading.group} ({reading.label}, smoothed {reading.confidence:.0%})")
    elif reading.label:
        lines.append(f"chair: {reading.group} ({reading.label} in {reading.confidence:.0%} of recent face frames)")
    else:
        lines.append(f"chair: {reading.group}")
    return lines


def annotate(image: np.ndarray, result: FrameResult, labels: tuple[str, ...], method: str) -> np.ndarray:
    out = image.copy()
    colour = GROUP_COLOURS.get(result.reading.group, (255, 255, 255))
    if result.box is not None:
        x, y, w, h = result.box
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, 2)
    scale = max(0.4, min(0.8, out.shape[1] / 800))  # the second line fits a 480-pixel-wide clip
    for row, text in enumerate(annotation_lines(result, labels, method)):
        origin = (10, round(28 * scale / 0.8) + row * round(30 * scale / 0.8))
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 2, cv2.LINE_AA)
    return out


def csv_row(result: FrameResult, labels: tuple[str, ...]) -> list[Any]:
    box = result.box or ("", "", "", "")
    probs = [f"{p:.4f}" for p in result.probabilities] if result.probabilities is not None else [""] * len(labels)
    frame_label = labels[int(np.argmax(result.probabilities))] if result.probabilities is not None else ""
    reading = result.reading
    return [result.index, f"{result.time:.3f}", int(result.box is not None), *box, frame_label, *probs,
            reading.group, reading.label or "", f"{reading.confidence:.3f}"]


def replay(video: Path, settings: Settings, pipeline: VisionPipeline | None = None,
           annotate_to: Path | None = None, csv_to: Path | None = None) -> ReplaySummary:
    """Run the vision path over every frame of ``video``; start-up is excluded from the timing."""
    video = Path(video)
    if not video.is_file():
        raise CaptureError(f"video {video} not found: give the path of a video file (mp4, avi, mkv ...)")
    pipeline = pipeline or VisionPipeline.from_settings(settings)
    pipeline.reset()
    labels = pipeline.classifier.labels
    source = open_source(replace(settings.camera, source=str(video), realtime=False, loop=False), realtime=False)
    source.open()  # a bad video fails here, before any output file is created
    fps = source.fps or settings.camera.fps  # the clip's own rate; the source falls back when it has none
    summary = ReplaySummary(video=str(video), model=str(pipeline.classifier.model_path))
    # The same rule as the live window, over the whole clip: any face frame counts.
    whole_clip = AffectAggregator(replace(settings.affect, window_frames=CLIP_WINDOW_FRAMES, min_face_share=0.0),
                                  pipeline.classifier.metadata, pipeline.aggregator.decision)
    writer = None
    csv_handle = None
    csv_writer = None
    started = time.perf_counter()
    try:
        if csv_to is not None:
            csv_handle = open(csv_to, "w", newline="", encoding="utf-8")
            csv_writer = csv.writer(csv_handle)
            csv_writer.writerow(["frame", "time_s", "face", "x", "y", "w", "h", "frame_label",
                                 *[f"p_{label}" for label in labels], "group", "label", "confidence"])
        for index, image in read_frames(source, pipeline):
            result = pipeline.process(image, now=index / fps, index=index)
            summary.frames += 1
            if result.box is not None:
                summary.frames_with_face += 1
                summary.labels[labels[int(np.argmax(result.probabilities))]] += 1
                summary.decisions[GROUPS[pipeline.aggregator.decision.decide_one(result.probabilities)]] += 1
            summary.groups[result.reading.group] += 1
            whole_clip.add(result.probabilities)
            summary.timeline.append({"frame": index, "face_in_frame": result.box is not None,
                                     **result.reading.to_dict()})
            if csv_writer is not None:
                csv_writer.writerow(csv_row(result, labels))
            if annotate_to is not None:
                if writer is None:
                    height, width = image.shape[:2]
                    writer = cv2.VideoWriter(str(annotate_to), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    if not writer.isOpened():
                        raise CaptureError(f"cannot write {annotate_to}: check the folder exists and is writable")
                writer.write(annotate(image, result, labels, settings.affect.method))
    finally:
        summary.seconds = time.perf_counter() - started
        source.close()
        if writer is not None:
            writer.release()
        if csv_handle is not None:
            csv_handle.close()
    if summary.frames == 0:
        raise CaptureError(f"video {video} has no readable frames: is it a valid, non-empty video file?")
    summary.stage_ms = pipeline.timer.mean_ms()
    summary.clip = whole_clip.read(summary.timeline[-1]["time"])  # the newest frame's time
    return summary
