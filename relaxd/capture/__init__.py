"""Frame capture: sources (Pi Camera, USB/V4L2, stream, video file) and the newest-frame grabber thread."""

from relaxd.capture.grabber import CaptureStats, CaptureStatus, EventCallback, FrameGrabber
from relaxd.capture.sources import Frame, FrameSource, OpenCVSource, PiCameraSource, open_source

__all__ = [
    "CaptureStats",
    "CaptureStatus",
    "EventCallback",
    "Frame",
    "FrameGrabber",
    "FrameSource",
    "OpenCVSource",
    "PiCameraSource",
    "open_source",
]
