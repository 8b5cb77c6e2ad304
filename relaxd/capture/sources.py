"""Frame sources: one small interface over the Pi Camera, USB/V4L2 cameras, streams and video files.

A source only knows how to open a device, hand out the next BGR image and close it.
Threads, time stamps, stall detection and reconnection live in
:mod:`relaxd.capture.grabber`, so each source stays small enough to trust.

``open_source`` turns the ``camera.source`` setting into a source object (not yet
opened); call ``open()`` or use it as a context manager.
"""

from __future__ import annotations

import abc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
import structlog

from relaxd.errors import CaptureError
from relaxd.settings import CameraSettings

log = structlog.get_logger("relaxd.capture")

INSTALL_PICAMERA2 = "install python3-picamera2 (apt) and create the venv with --system-site-packages"


@dataclass(frozen=True)
class Frame:
    """One captured image and when it was taken, so a stale frame can be told from a fresh one."""

    image: np.ndarray  # BGR uint8 (H, W, 3); read-only when it comes from FrameGrabber
    timestamp: float  # time.monotonic() when the frame was captured/decoded
    index: int  # sequence number from the source, starting at 0
    small_gray: np.ndarray | None = None  # the camera's own small grey copy for detection, where it makes one


class FrameSource(abc.ABC):
    """A camera, stream or video file that hands out BGR uint8 images one at a time.

    ``read()`` returns ``None`` when there is no frame: the normal end of a file that
    does not loop (``finite`` is True), or a failure (camera unplugged, stream cut).
    """

    name: str = "source"
    is_live: bool = False  # a real camera or stream, as opposed to a video file
    fps: float | None = None  # nominal frame rate, if known

    @property
    def finite(self) -> bool:
        """True when ``read()`` returning None means a normal end, not a failure to recover from."""
        return False

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device; raise CaptureError naming the source and what to check."""

    @abc.abstractmethod
    def read(self) -> np.ndarray | None:
        """The next BGR uint8 (H, W, 3) image, or None when there is none (end or failure)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device. Safe to call twice or without open()."""

    def read_with_small_gray(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The next image and, where the camera makes one itself, a small grey copy of it for
        face detection (None otherwise: the detector then converts and downscales on the CPU)."""
        return self.read(), None

    def frames(self) -> Iterator[Frame]:
        """Every frame in order until ``read()`` returns None (replaying a file for tests and benchmarks)."""
        index = 0
        while (image := self.read()) is not None:
            yield Frame(image, time.monotonic(), index)
            index += 1

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _redact(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class OpenCVSource(FrameSource):
    """A V4L2/USB camera index, a stream URL or a video file, read through ``cv2.VideoCapture``.

    Files only: ``realtime=True`` paces frames at the file's own frame rate (a simulated
    live camera), ``loop=True`` restarts the file at its end. ``clock`` and ``sleep`` are
    seams for tests of the pacing.
    """

    def __init__(
        self,
        target: int | str | os.PathLike[str],
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        *,
        realtime: bool = False,
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._size = (int(width), int(height))
        self._requested_fps = float(fps)
        self._camera_index: int | None = None
        self._url: str | None = None
        self._path: Path | None = None
        if isinstance(target, int):
            self._camera_index = target
            self.name = f"usb:{target}"
            self.is_live = True
        elif "://" in str(target):
            self._url = str(target)
            self.name = _redact(self._url)
            self.is_live = True
        else:
            self._path = Path(target).expanduser()
            self.name = str(self._path)
            self.is_live = False
        self.realtime = realtime and self._path is not None
        self.loop = loop and self._path is not None
        self.fps = self._requested_fps if self.is_live else None
        self._clock = clock
        self._sleep = sleep
        self._cap: cv2.VideoCapture | None = None
        self._pending: np.ndarray | None = None  # the file's first frame, decoded by open() to validate it
        self._anchor = 0.0  # realtime pacing: monotonic time the first frame went out
        self._scheduled = 0  # realtime pacing: frames handed out since the anchor

    @property
    def finite(self) -> bool:
        return self._path is not None and not self.loop

    def open(self) -> None:
        if self._cap is not None:
            return
        if self._camera_index is not None:
            self._cap = self._open_camera(self._camera_index)
        elif self._url is not None:
            self._cap = self._open_stream(self._url)
        else:
            assert self._path is not None
            self._cap = self._open_file(self._path)
        self._scheduled = 0

    def _open_camera(self, index: int) -> cv2.VideoCapture:
        use_v4l2 = sys.platform.startswith("linux") and cv2.videoio_registry.hasBackend(cv2.CAP_V4L2)
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2 if use_v4l2 else cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"camera {self.name} could not be opened: check that it is plugged in, that "
                f"/dev/video{index} exists and that this user is in the 'video' group"
            )
        width, height = self._size
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_FPS, self._requested_fps)
        got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if got != self._size:
            log.info("camera ignored the requested size; frames will be resized",
                     source=self.name, requested=self._size, delivered=got)
        return cap

    def _open_stream(self, url: str) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(url)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"stream {self.name} could not be opened: check the URL, the network and that the camera is on"
            )
        nominal = cap.get(cv2.CAP_PROP_FPS)
        if 0 < nominal < 1000:
            self.fps = nominal
        return cap

    def _open_file(self, path: Path) -> cv2.VideoCapture:
        if not path.exists():
            raise CaptureError(
                f"video file {path} does not exist: check camera.source "
                f"(a relative path is read from the working directory {Path.cwd()})"
            )
        if not path.is_file():
            raise CaptureError(f"video file {path} is not a file: point camera.source at a video file")
        if not os.access(path, os.R_OK):
            raise CaptureError(f"video file {path} is not readable: check its permissions")
        cap = cv2.VideoCapture(str(path))
        ok, first = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            cap.release()
            raise CaptureError(
                f"video file {path} could not be decoded by OpenCV: check that it is a video "
                f"(e.g. MP4/H.264 or AVI/MJPG), not empty or truncated"
            )
        self._pending = first
        nominal = cap.get(cv2.CAP_PROP_FPS)
        if 0 < nominal < 1000:
            self.fps = nominal
        else:
            self.fps = self._requested_fps
            log.info("video file has no frame rate; using camera.fps", source=self.name, fps=self.fps)
        return cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise CaptureError(f"{self.name}: read() before open()")
        image = self._decode()
        if image is None:
            return None
        if self.realtime:
            self._pace()
        if self._camera_index is not None and image.shape[1::-1] != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        return image

    def _decode(self) -> np.ndarray | None:
        assert self._cap is not None
        if self._pending is not None:
            image, self._pending = self._pending, None
            return image
        ok, image = self._cap.read()
        if ok:
            return image
        if not self.loop:
            return None
        # Reopening is slower than seeking to frame 0 but works for every container.
        self._cap.release()
        self._cap = cv2.VideoCapture(str(self._path))
        ok, image = self._cap.read()
        return image if ok else None

    def _pace(self) -> None:
        """Hold the frame until its due time on a fixed schedule, so waiting never accumulates drift."""
        assert self.fps
        period = 1.0 / self.fps
        now = self._clock()
        if self._scheduled == 0:
            self._anchor = now  # the schedule starts with the first frame
        due = self._anchor + self._scheduled * period
        if now > due + period:
            # We fell behind (machine busy): restart the schedule rather than burst to catch up,
            # as a real camera delivers late frames, never a backlog.
            self._anchor, self._scheduled, due = now, 0, now
        elif due > now:
            self._sleep(due - now)
        self._scheduled += 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None


class PiCameraSource(FrameSource):
    """The Raspberry Pi camera through picamera2 (libcamera); tests use a stand-in module, the real one needs a Pi.

    With ``small_width`` the camera delivers, from the same request as each main frame, a
    low-resolution YUV420 stream too, scaled by the ISP: its Y plane is the grey image the
    face detector scans, so no grey conversion or resizing of the whole frame is left to the
    CPU (picamera2's own face-detection example does the same).
    """

    is_live = True

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0, small_width: int = 0) -> None:
        self.name = "picamera"
        self.fps = float(fps)
        self._size = (int(width), int(height))
        self._lores = lores_size(self._size, small_width)
        self._camera = None

    def open(self) -> None:
        if self._camera is not None:
            return
        try:
            from picamera2 import Picamera2  # lazy: the module must import on machines without it
        except ImportError as exc:
            raise CaptureError(f"picamera2 is not available: {INSTALL_PICAMERA2}") from exc
        frame_us = int(1_000_000 / self.fps)
        try:
            camera = Picamera2()
        except Exception as exc:  # picamera2 raises IndexError/RuntimeError when no camera is attached
            raise CaptureError(f"no Pi camera found ({exc}): check the ribbon cable and `rpicam-hello --list-cameras`") from exc
        try:
            # picamera2's "RGB888" names the libcamera/DRM format; in memory each pixel is
            # [B, G, R], i.e. exactly OpenCV's BGR order, so no conversion is needed.
            # (Some Pi 5 pipelines are reported to swap it: check colours there.)
            streams = {"main": {"size": self._size, "format": "RGB888"}}
            if self._lores is not None:
                streams["lores"] = {"size": self._lores, "format": "YUV420"}  # the Pi 4 ISP's lores format
            config = camera.create_video_configuration(
                **streams, controls={"FrameDurationLimits": (frame_us, frame_us)})
            camera.configure(config)
            camera.start()
        except Exception as exc:
            camera.close()
            raise CaptureError(f"Pi camera could not be started at {self._size} ({exc})") from exc
        self._camera = camera

    def read(self) -> np.ndarray | None:
        return self.read_with_small_gray()[0]

    def read_with_small_gray(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self._camera is None:
            raise CaptureError("picamera: read() before open()")
        if self._lores is None:
            return self._camera.capture_array("main"), None
        (image, yuv), _ = self._camera.capture_arrays(["main", "lores"])
        width, height = self._lores
        # A YUV420 array is the Y plane (height rows) above the U and V planes, each row
        # padded to the stride: the top-left width x height block is the grey image.
        return image, yuv[:height, :width]

    def close(self) -> None:
        if self._camera is not None:
            camera, self._camera = self._camera, None
            try:
                camera.stop()
            finally:
                camera.close()


def lores_size(size: tuple[int, int], small_width: int) -> tuple[int, int] | None:
    """The lores stream's size for detection at ``small_width``: the main stream's aspect
    ratio, even sides (YUV420 halves them for U and V); None when it would not be smaller."""
    width, height = size
    if small_width <= 0 or small_width >= width:
        return None
    small = small_width - small_width % 2
    return small, max(2, int(round(height * small / width / 2)) * 2)


def open_source(settings: CameraSettings, *, realtime: bool | None = None, small_width: int = 0) -> FrameSource:
    """The source named by ``settings.source``, not yet opened.

    ``small_width`` asks a camera that can scale in hardware (the Pi camera) for a small
    grey copy of each frame at that width too, for the face detector (``detector.detect_width``).

    ``picamera``; ``usb:N`` or a plain integer (V4L2 index); a URL (``rtsp://``, ``http://``...);
    otherwise a video file path. ``realtime`` overrides ``settings.realtime`` for files
    (False = replay as fast as possible). ``demo`` must be resolved to a file before this.
    """
    spec = settings.source.strip()
    size = (settings.width, settings.height)
    if not spec:
        raise CaptureError("camera.source is empty: set it to picamera, usb:N, a video file or a URL")
    if spec == "demo":
        raise CaptureError("camera.source 'demo' must be resolved to the demo clip before open_source()")
    if spec == "picamera":
        return PiCameraSource(*size, settings.fps, small_width=small_width)
    if spec.startswith("usb:") or spec.isdigit():
        number = spec.removeprefix("usb:")
        if not number.isdigit():
            raise CaptureError(f"camera.source {spec!r}: expected usb:N with N the camera number, e.g. usb:0")
        return OpenCVSource(int(number), *size, settings.fps)
    if "://" in spec:
        return OpenCVSource(spec, *size, settings.fps)
    return OpenCVSource(
        spec, *size, settings.fps,
        realtime=settings.realtime if realtime is None else realtime,
        loop=settings.loop,
    )
