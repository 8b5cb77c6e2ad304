"""Frame capture: real OpenCV on tiny generated clips, and scripted sources for failures.

Each generated frame is a flat grey whose level encodes its frame number, so order,
loops and drops can be read back from the decoded pixels.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from chairkit import wait_for

from relaxd.capture.sources import lores_size
from relaxd.capture import (
    CaptureStatus,
    FrameGrabber,
    FrameSource,
    OpenCVSource,
    PiCameraSource,
    open_source,
)
from relaxd.errors import CaptureError
from relaxd.settings import CameraSettings

W, H = 160, 120
FAST = dict(stall_timeout_s=0.1, reconnect_initial_s=0.05, reconnect_max_s=0.2)


def level(number: int) -> int:
    return 8 + 4 * number  # 4 grey levels apart survive MJPG; up to 60 frames


def frame_number(image: np.ndarray) -> int:
    return round((float(image.mean()) - 8) / 4)


def write_clip(path: Path, frames: int, fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for number in range(frames):
        writer.write(np.full((H, W, 3), level(number), np.uint8))
    writer.release()
    return path


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.avi", 30)


class Recorder:
    """An on_event callback that remembers events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self._seen: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str, detail: dict) -> None:
        with self._lock:
            self.events.append((kind, detail))
            self._seen.setdefault(kind, threading.Event()).set()

    def wait_for(self, kind: str, timeout: float = 5.0) -> bool:
        with self._lock:
            seen = self._seen.setdefault(kind, threading.Event())
        return seen.wait(timeout)

    @property
    def kinds(self) -> list[str]:
        with self._lock:
            return [kind for kind, _ in self.events]


class ScriptedSource(FrameSource):
    """A live source that delivers ``frames`` images (None = forever), then fails or blocks."""

    is_live = True

    def __init__(self, frames: int | None, *, block: threading.Event | None = None) -> None:
        self.name = f"scripted({frames})"
        self.frames_left = frames
        self.block = block
        self.closed = threading.Event()

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray | None:
        if self.frames_left is None or self.frames_left > 0:
            if self.frames_left is not None:
                self.frames_left -= 1
            time.sleep(0.005)
            return np.zeros((H, W, 3), np.uint8)
        if self.block is not None:
            self.block.wait()
        return None

    def close(self) -> None:
        self.closed.set()


class UnpluggedSource(ScriptedSource):
    def __init__(self) -> None:
        super().__init__(0)
        self.name = "usb:0"

    def open(self) -> None:
        raise CaptureError("camera usb:0 could not be opened")


class FakeClock:
    """A monotonic clock for pacing tests: each reading costs ``cost`` seconds of 'work'."""

    def __init__(self, cost: float = 0.0) -> None:
        self.now = 100.0
        self.cost = cost
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += self.cost
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- sources -----------------------------------------------------------------------------


def test_file_replay_gives_every_frame_in_order(clip: Path) -> None:
    with OpenCVSource(clip, realtime=False) as source:
        frames = list(source.frames())
        assert source.fps == pytest.approx(25.0)
        assert source.finite and not source.is_live
    assert [frame_number(f.image) for f in frames] == list(range(30))
    assert [f.index for f in frames] == list(range(30))
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(a.timestamp <= b.timestamp for a, b in zip(frames, frames[1:]))


def test_realtime_pacing_follows_a_fixed_schedule_without_drift(clip: Path) -> None:
    clock = FakeClock(cost=0.01)  # 10 ms of decoding per frame must not push the schedule back
    source = OpenCVSource(clip, realtime=True, clock=clock, sleep=clock.sleep)
    with source:
        delivered = []
        for _ in range(10):
            assert source.read() is not None
            delivered.append(clock.now)
    assert [t - delivered[0] for t in delivered] == pytest.approx([k / 25 for k in range(10)])


def test_realtime_pacing_restarts_the_schedule_instead_of_bursting_after_a_pause(clip: Path) -> None:
    clock = FakeClock()
    with OpenCVSource(clip, realtime=True, clock=clock, sleep=clock.sleep) as source:
        for _ in range(3):
            source.read()
        clock.now += 1.0  # the reader was away for 25 frame periods
        clock.sleeps.clear()
        for _ in range(4):
            source.read()
    # First late frame goes out at once, then one period between frames again: no catch-up burst.
    assert clock.sleeps == pytest.approx([0.04, 0.04, 0.04])


def test_realtime_pacing_with_the_real_clock_is_not_faster_than_the_file(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "fifty.avi", 10, fps=50.0)
    with OpenCVSource(path, realtime=True) as source:
        started = time.monotonic()
        numbers = [frame_number(f.image) for f in source.frames()]
        elapsed = time.monotonic() - started
    assert numbers == list(range(10))
    assert elapsed >= 9 / 50 * 0.95  # lower bound only: 9 periods between 10 frames


def test_loop_restarts_the_file_at_its_end(clip: Path) -> None:
    with OpenCVSource(clip, loop=True) as source:
        assert not source.finite
        numbers = [frame_number(source.read()) for _ in range(75)]
    assert numbers == list(range(30)) * 2 + list(range(15))


@pytest.mark.parametrize("make", ["missing", "text", "directory", "empty"])
def test_unusable_video_file_is_a_capture_error_naming_the_path(tmp_path: Path, make: str) -> None:
    path = tmp_path / "clip.mp4"
    if make == "text":
        path.write_text("this is not a video\n")
    elif make == "directory":
        path.mkdir()
    elif make == "empty":
        path.touch()
    source = open_source(CameraSettings(source=str(path)))
    with pytest.raises(CaptureError, match="video file") as error:
        source.open()
    assert str(path) in str(error.value)


def test_a_camera_that_is_not_there_is_a_capture_error_naming_it() -> None:
    with pytest.raises(CaptureError, match=r"usb:99.*/dev/video99"):
        OpenCVSource(99).open()


def test_read_before_open_is_an_error(clip: Path) -> None:
    with pytest.raises(CaptureError, match="before open"):
        OpenCVSource(clip).read()


@pytest.mark.parametrize(
    ("spec", "name", "live"),
    [
        ("usb:0", "usb:0", True),
        ("2", "usb:2", True),
        ("rtsp://admin:secret@cam.local:554/stream", "rtsp://admin:***@cam.local:554/stream", True),
        ("http://cam.local/video.mjpg", "http://cam.local/video.mjpg", True),
    ],
)
def test_open_source_parses_cameras_and_urls(spec: str, name: str, live: bool) -> None:
    source = open_source(CameraSettings(source=spec))
    assert isinstance(source, OpenCVSource)
    assert (source.name, source.is_live, source.finite, source.realtime) == (name, live, False, False)


def test_open_source_file_takes_realtime_and_loop_from_settings_unless_overridden(clip: Path) -> None:
    settings = CameraSettings(source=str(clip), realtime=True, loop=False)
    paced = open_source(settings)
    replay = open_source(settings, realtime=False)
    assert (paced.realtime, paced.loop, paced.finite, paced.is_live) == (True, False, True, False)
    assert (replay.realtime, replay.finite) == (False, True)


def test_open_source_picamera() -> None:
    source = open_source(CameraSettings(source="picamera", width=640, height=480))
    assert isinstance(source, PiCameraSource) and source.is_live


@pytest.mark.parametrize("spec", ["demo", "usb:x", "usb:", "  "])
def test_open_source_rejects_what_it_cannot_open(spec: str) -> None:
    with pytest.raises(CaptureError, match="camera.source"):
        open_source(CameraSettings(source=spec))


def test_picamera_without_picamera2_says_how_to_install_it() -> None:
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here")
    with pytest.raises(CaptureError, match=r"python3-picamera2.*--system-site-packages"):
        PiCameraSource().open()


class StandInPicamera2:
    """picamera2 needs libcamera and a camera: this records what PiCameraSource asks of it."""

    cameras = 1
    fail_start = False

    def __init__(self) -> None:
        if not self.cameras:
            raise IndexError("list index out of range")  # what Picamera2() raises with no camera attached
        self.calls: list[tuple] = []
        StandInPicamera2.last = self

    def create_video_configuration(self, **kwargs):
        self.calls.append(("configuration", kwargs))
        return {"configuration": kwargs}

    def configure(self, config) -> None:
        self.calls.append(("configure", config))

    def start(self) -> None:
        if self.fail_start:
            raise RuntimeError("Failed to start camera: Device or resource busy")
        self.calls.append(("start",))

    def capture_array(self, stream: str) -> np.ndarray:
        self.calls.append(("capture_array", stream))
        return np.zeros((480, 640, 3), np.uint8)

    def capture_arrays(self, streams: list[str]):
        """main and a 320x240 YUV420 lores: Y rows above U and V, each row padded to a 384 stride."""
        self.calls.append(("capture_arrays", tuple(streams)))
        yuv = np.full((360, 384), 255, np.uint8)
        yuv[:240, :320] = np.arange(320, dtype=np.uint8)[np.newaxis, :] % 200
        return [np.zeros((480, 640, 3), np.uint8), yuv], {}

    def stop(self) -> None:
        self.calls.append(("stop",))

    def close(self) -> None:
        self.calls.append(("close",))


@pytest.fixture
def picamera2(monkeypatch):
    module = type(sys)("picamera2")
    camera_class = type("Picamera2", (StandInPicamera2,), {})
    module.Picamera2 = camera_class
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return camera_class


def test_picamera_asks_for_bgr_frames_at_the_configured_size_and_rate(picamera2) -> None:
    with PiCameraSource(640, 480, fps=20.0) as source:
        assert source.read().shape == (480, 640, 3)
        camera = picamera2.last
        (_, config), *_ = camera.calls
        assert config == {"main": {"size": (640, 480), "format": "RGB888"},  # BGR in memory, as OpenCV wants
                          "controls": {"FrameDurationLimits": (50_000, 50_000)}}
    assert [call[0] for call in camera.calls] == ["configuration", "configure", "start", "capture_array",
                                                  "stop", "close"]


def test_picamera_failures_name_the_fix_and_release_the_camera(picamera2) -> None:
    picamera2.cameras = 0
    with pytest.raises(CaptureError, match="no Pi camera found.*ribbon cable.*rpicam-hello --list-cameras"):
        PiCameraSource().open()
    picamera2.cameras, picamera2.fail_start = 1, True
    with pytest.raises(CaptureError, match=r"could not be started at \(640, 480\).*resource busy"):
        PiCameraSource().open()
    assert picamera2.last.calls[-1] == ("close",), "a camera that did not start must be released"


# -- grabber -----------------------------------------------------------------------------


def test_grabber_keeps_only_the_newest_frame_for_a_slow_consumer(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "fast.avi", 20, fps=100.0)
    settings = CameraSettings(source=str(path), realtime=True, loop=True)
    got = []
    with FrameGrabber.from_settings(settings) as grabber:
        last = -1
        for _ in range(8):
            frame = grabber.latest(last, timeout=5.0)
            assert frame is not None
            got.append(frame)
            last = frame.index
            time.sleep(0.03)  # three frame periods of "work"
        stats = grabber.stats()
    indices = [f.index for f in got]
    assert all(a < b for a, b in zip(indices, indices[1:]))
    assert any(b - a > 1 for a, b in zip(indices, indices[1:]))
    assert stats.frames_dropped > 0
    # Every captured frame was either handed out, dropped, or is the newest one not yet taken.
    assert stats.frames_captured - stats.frames_dropped - len(got) in (0, 1)
    with pytest.raises(ValueError):
        got[0].image[0, 0, 0] = 1  # frames are shared, so read-only


def test_grabber_ends_at_the_end_of_a_file_that_does_not_loop(clip: Path) -> None:
    recorder = Recorder()
    settings = CameraSettings(source=str(clip), loop=False)
    grabber = FrameGrabber.from_settings(settings, realtime=False, on_event=recorder)
    with grabber:
        last, seen = -1, []
        while (frame := grabber.latest(last, timeout=5.0)) is not None:
            seen.append(frame.index)
            last = frame.index
        assert grabber.status is CaptureStatus.ENDED
        assert not grabber.stalled
        assert grabber.latest(last, timeout=None) is None  # no hang once it has ended
    assert seen[-1] == 29  # the final frame stays available as the newest
    assert grabber.stats().frames_captured == 30
    assert recorder.kinds == ["ended"]
    assert grabber.status is CaptureStatus.ENDED


def test_grabber_reports_a_stall_reconnects_with_backoff_and_recovers() -> None:
    first = ScriptedSource(3)
    script = [first, UnpluggedSource(), UnpluggedSource(), UnpluggedSource(), ScriptedSource(None)]
    recorder = Recorder()
    grabber = FrameGrabber(lambda: script.pop(0), CameraSettings(**FAST), on_event=recorder)
    with grabber:
        assert recorder.wait_for("recovered")
        last, indices = -1, []
        for _ in range(3):
            frame = grabber.latest(last, timeout=5.0)
            assert frame is not None
            indices.append(frame.index)
            last = frame.index
        assert grabber.status is CaptureStatus.STREAMING
        assert not grabber.stalled
        stats = grabber.stats()
    kinds = recorder.kinds
    assert kinds.count("stalled") == 1 and kinds.count("recovered") == 1
    assert kinds.index("lost") < kinds.index("stalled") < kinds.index("reconnected") < kinds.index("recovered")
    delays = [detail["delay_s"] for kind, detail in recorder.events if kind == "reconnecting"]
    assert delays == [0.05, 0.1, 0.2, 0.2]
    assert kinds.count("reopen_failed") == 3
    assert (stats.reconnects, stats.reconnect_attempts) == (1, 4)
    assert first.closed.is_set()
    assert indices[0] >= 3 and all(a < b for a, b in zip(indices, indices[1:]))


def test_grabber_reports_a_blocked_source_as_stalled_and_stop_does_not_hang() -> None:
    release = threading.Event()
    source = ScriptedSource(2, block=release)
    recorder = Recorder()
    grabber = FrameGrabber(lambda: source, CameraSettings(**FAST), on_event=recorder)
    grabber.start()
    try:
        assert recorder.wait_for("stalled")
        assert grabber.status is CaptureStatus.STALLED
        assert grabber.stalled and grabber.stats().frame_age_s > FAST["stall_timeout_s"]
        assert wait_for(lambda: grabber.hung)  # stuck inside read(): only a restart helps
        started = time.monotonic()
        assert grabber.stop(timeout=0.2) is False  # still blocked in read()
        assert time.monotonic() - started < 2.0
        assert grabber.status is CaptureStatus.STOPPED
        assert grabber.latest(1, timeout=None) is None
    finally:
        release.set()
    assert source.closed.wait(5.0)  # the capture thread closes its source once read() returns
    assert "lost" not in recorder.kinds


def test_an_unplugged_camera_is_stalled_but_not_hung_while_the_grabber_reconnects() -> None:
    """systemd must not restart the daemon for a camera the back-off can bring back."""
    plugged_in = threading.Event()
    first = [ScriptedSource(2)]  # streams briefly, then fails

    def factory() -> FrameSource:
        if first:
            return first.pop()
        return ScriptedSource(None) if plugged_in.is_set() else UnpluggedSource()

    recorder = Recorder()
    grabber = FrameGrabber(factory, CameraSettings(**FAST), on_event=recorder)
    with grabber:
        assert recorder.wait_for("stalled") and recorder.wait_for("reopen_failed")
        deadline = time.monotonic() + 4 * FAST["stall_timeout_s"]
        while time.monotonic() < deadline:  # through several failed reopenings
            assert grabber.stalled and not grabber.hung
            time.sleep(0.01)
        plugged_in.set()
        assert recorder.wait_for("recovered")
        assert not grabber.stalled and not grabber.hung


def test_a_camera_open_that_never_returns_is_hung() -> None:
    release = threading.Event()

    class FrozenOpen(ScriptedSource):
        def open(self) -> None:
            release.wait()

    script = [ScriptedSource(2), FrozenOpen(None)]
    grabber = FrameGrabber(lambda: script.pop(0), CameraSettings(**FAST))
    grabber.start()
    try:
        assert wait_for(lambda: grabber.hung)
        assert grabber.status is CaptureStatus.RECONNECTING
    finally:
        release.set()
        grabber.stop(timeout=5.0)
    assert not grabber.hung


def test_grabber_start_fails_loudly_on_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.avi"
    grabber = FrameGrabber.from_settings(CameraSettings(source=str(missing)))
    with pytest.raises(CaptureError, match=str(missing)):
        grabber.start()
    assert grabber.status is CaptureStatus.FAILED
    assert grabber.latest(timeout=None) is None


def test_picamera_delivers_the_y_plane_of_a_lores_stream_for_detection(picamera2) -> None:
    with PiCameraSource(640, 480, fps=20.0, small_width=320) as source:
        image, small = source.read_with_small_gray()
        (_, config), *_ = picamera2.last.calls
    assert config["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert image.shape == (480, 640, 3) and small.shape == (240, 320)
    assert small.max() < 200, "the stride padding and the U/V planes are cut off"
    assert lores_size((640, 480), 0) is None and lores_size((640, 480), 640) is None
    assert lores_size((1280, 720), 321) == (320, 180)
