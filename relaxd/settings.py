"""Typed settings: one frozen dataclass per config section.

This module only *declares* the settings: names, types, defaults, allowed ranges
(``field(metadata={"range": (low, high)})``) and choices (``metadata={"choices": ...}``).
``relaxd.config`` reads the YAML file into these classes and validates it against
exactly these declarations, so adding a setting is adding one field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def ranged(default, low, high, doc: str = ""):
    """A numeric setting that must lie in ``[low, high]``."""
    return field(default=default, metadata={"range": (low, high), "doc": doc})


def choice(default, choices: tuple[str, ...], doc: str = ""):
    """A string setting that must be one of ``choices``."""
    return field(default=default, metadata={"choices": choices, "doc": doc})


def text(default: str, doc: str = ""):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class CameraSettings:
    source: str = text("demo", "picamera | usb:N (V4L2 index) | a video file path | rtsp/http URL | demo")
    width: int = ranged(640, 64, 4096, "requested frame width in pixels")
    height: int = ranged(480, 48, 4096, "requested frame height in pixels")
    fps: float = ranged(30.0, 1.0, 120.0, "requested camera frame rate")
    realtime: bool = field(default=True, metadata={"doc": "play a video file at its own frame rate (simulated live camera)"})
    loop: bool = field(default=True, metadata={"doc": "restart a video file at its end (simulation only)"})
    stall_timeout_s: float = ranged(2.0, 0.1, 60.0, "no new frame for this long = camera stalled")
    reconnect_initial_s: float = ranged(0.5, 0.05, 60.0, "first wait before reopening a lost camera")
    reconnect_max_s: float = ranged(10.0, 0.1, 600.0, "longest wait between reopen attempts (back-off cap)")


@dataclass(frozen=True)
class DetectorSettings:
    cascade: str = text("", "Haar cascade XML; empty = OpenCV's haarcascade_frontalface_default.xml")
    scale_factor: float = ranged(1.1, 1.01, 2.0, "detectMultiScale scaleFactor")
    min_neighbors: int = ranged(5, 1, 20, "detectMultiScale minNeighbors")
    min_face_fraction: float = ranged(0.1, 0.02, 1.0, "smallest face, as a fraction of the frame height")
    detect_width: int = ranged(320, 80, 4096, "frames are downscaled to this width for detection")
    roi_margin: float = ranged(0.6, 0.1, 3.0, "search window around the last face, grown by this fraction")
    full_scan_interval: int = ranged(15, 1, 1000, "rescan the whole frame every N frames while tracking")
    pick: str = choice("largest", ("largest", "central"), "which face is the child's when several are found")


@dataclass(frozen=True)
class ClassifierSettings:
    model: str = text("", "path to the .tflite model (its .json metadata beside it); empty = the shipped default")
    threads: int = ranged(1, 1, 8, "TFLite interpreter threads")


@dataclass(frozen=True)
class AffectSettings:
    method: str = choice("threshold", ("threshold", "majority", "ema"),
                         "threshold: Yang, Lee & Park's rule; majority: most frequent label; ema: smoothed probabilities")
    window_frames: int = ranged(15, 1, 600, "sliding window length in frames")
    threshold: float = ranged(0.15, 0.0, 1.0, "threshold rule: share of window frames a non-neutral label needs")
    ema_alpha: float = ranged(0.3, 0.01, 1.0, "ema: weight of the newest frame")
    min_face_share: float = ranged(0.5, 0.0, 1.0, "fewer face frames than this share of the window = no face")


@dataclass(frozen=True)
class LoggingSettings:
    level: str = choice("info", ("debug", "info", "warning", "error"))
    format: str = choice("auto", ("auto", "json", "console"),
                         "auto: readable on a terminal, JSON lines otherwise (journald)")


@dataclass(frozen=True)
class Settings:
    camera: CameraSettings = field(default_factory=CameraSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    affect: AffectSettings = field(default_factory=AffectSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
