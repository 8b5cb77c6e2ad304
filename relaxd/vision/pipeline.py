"""The daemon's vision path for one frame: detect, preprocess, infer, aggregate.

``relaxd run`` and ``relaxd replay`` both call ``VisionPipeline.process`` so a replayed
clip exercises exactly the code the chair runs. Each stage is timed, because on a
Raspberry Pi 4 the question is always which stage eats the frame budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from relaxd.affect import AffectAggregator, AffectReading
from relaxd.settings import Settings
from relaxd.vision.classifier import EmotionClassifier
from relaxd.vision.decision import configured_decision
from relaxd.vision.detector import FaceDetector
from relaxd.vision.preprocess import Box, face_to_input

STAGES = ("decode", "detect", "preprocess", "infer", "aggregate")


@dataclass
class StageTimer:
    """Accumulated wall time per stage, reported as mean milliseconds per frame."""

    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frames: int = 0

    def add(self, stage: str, seconds: float) -> None:
        self.totals[stage] += seconds

    def mean_ms(self) -> dict[str, float]:
        return {stage: round(1000.0 * total / max(1, self.frames), 3) for stage, total in self.totals.items()}


@dataclass(frozen=True)
class FrameResult:
    """What the vision path made of one frame."""

    index: int
    time: float
    box: Box | None
    probabilities: np.ndarray | None
    reading: AffectReading


class VisionPipeline:
    """Face detector + emotion classifier + affect aggregator, wired and timed."""

    def __init__(self, detector: FaceDetector, classifier: EmotionClassifier, aggregator: AffectAggregator):
        self.detector = detector
        self.classifier = classifier
        self.aggregator = aggregator
        self.timer = StageTimer()

    @classmethod
    def from_settings(cls, settings: Settings) -> "VisionPipeline":
        classifier = EmotionClassifier.from_settings(settings.classifier)
        detector = FaceDetector(settings.detector)
        decision = configured_decision(settings.affect, classifier.metadata)
        return cls(detector, classifier, AffectAggregator(settings.affect, classifier.metadata, decision))

    def process(self, frame: np.ndarray, now: float, index: int = 0,
                small_gray: np.ndarray | None = None) -> FrameResult:
        """Run one frame through the path; ``now`` is the frame's monotonic (or video) time.

        ``small_gray`` is the camera's own small grey copy of the frame, where it makes one.
        """
        timer = self.timer
        started = time.perf_counter()
        box = self.detector.track(frame, small_gray)
        detected = time.perf_counter()
        timer.add("detect", detected - started)
        probabilities = None
        if box is not None:
            face = face_to_input(frame, box, self.classifier.spec)
            prepared = time.perf_counter()
            timer.add("preprocess", prepared - detected)
            probabilities = self.classifier.predict(face[np.newaxis])[0]
            inferred = time.perf_counter()
            timer.add("infer", inferred - prepared)
            detected = inferred
        reading = self.aggregator.update(now, probabilities)
        timer.add("aggregate", time.perf_counter() - detected)
        timer.frames += 1
        return FrameResult(index, now, box, probabilities, reading)

    def reset(self) -> None:
        """Forget the face track and the affect window (a new session or a new clip)."""
        self.detector.reset()
        self.aggregator.reset()
