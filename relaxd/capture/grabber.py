"""The capture thread: always the newest frame, never a backlog, and an honest health report.

``FrameGrabber`` reads a ``FrameSource`` on its own daemon thread and keeps only the
newest frame, stamped with the monotonic clock. A slow consumer therefore sees fresh
frames (the ones it missed are counted as dropped) instead of an ever older queue.

A second small thread watches the frame age, because a source can hang inside
``read()``: it reports a stall once when it starts and once when frames come back.
When the source fails (``read()`` returns None or raises) the grabber closes it and
opens a new one from the factory, waiting ``reconnect_initial_s``, then twice as long
each time up to ``reconnect_max_s``, until it works or ``stop()`` is called. A video
file that does not loop simply ends.

Two kinds of trouble, told apart for the systemd watchdog: ``stalled`` (no fresh frame,
whatever the cause; the session fades meanwhile) and ``hung`` (the capture thread has been
stuck inside one ``read()`` or ``open()`` for longer than ``stall_timeout_s``). An unplugged
camera is stalled but not hung, and the back-off reconnects it once it is back; a hung native
call is something only a restart of the process can end.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import structlog

from relaxd.capture.sources import Frame, FrameSource, open_source
from relaxd.errors import CaptureError
from relaxd.settings import CameraSettings

log = structlog.get_logger("relaxd.capture")

EventCallback = Callable[[str, dict[str, Any]], None]
"""``on_event(kind, detail)``; kinds: stalled, recovered, lost, reconnecting, reopen_failed,
reconnected, ended, failed."""


_LOG_LEVELS = {"stalled": "warning", "lost": "warning", "reopen_failed": "warning", "failed": "error"}


class CaptureStatus(str, enum.Enum):
    STARTING = "starting"  # started, no frame yet
    STREAMING = "streaming"
    STALLED = "stalled"  # the source is open but no frame came within stall_timeout_s
    RECONNECTING = "reconnecting"  # the source failed; waiting to reopen it
    ENDED = "ended"  # a video file that does not loop reached its end
    FAILED = "failed"  # could not open at start(), or an unexpected error in the thread
    STOPPED = "stopped"  # stop() was called


TERMINAL = (CaptureStatus.ENDED, CaptureStatus.FAILED, CaptureStatus.STOPPED)


@dataclass(frozen=True)
class CaptureStats:
    """A snapshot of the grabber's health, for logs, the panel and the watchdog."""

    status: CaptureStatus
    frame_age_s: float
    frames_captured: int
    frames_dropped: int  # replaced by a newer frame before any consumer took them
    reconnects: int  # successful reopenings
    reconnect_attempts: int


class FrameGrabber:
    """Reads frames on a daemon thread and keeps only the newest one.

    ``factory`` returns a new, unopened source each time it is called (for instance
    ``functools.partial(open_source, settings)``), so a lost camera can be reopened.
    """

    def __init__(
        self,
        factory: Callable[[], FrameSource],
        settings: CameraSettings,
        *,
        on_event: EventCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self._stall_timeout = settings.stall_timeout_s
        self._backoff_initial = settings.reconnect_initial_s
        self._backoff_max = max(settings.reconnect_max_s, settings.reconnect_initial_s)
        self._on_event = on_event
        self._clock = clock
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Everything below is guarded by self._cond.
        self._status = CaptureStatus.STARTING
        self._frame: Frame | None = None
        self._taken = False  # has a consumer received self._frame?
        self._done = False  # the capture thread will publish no more frames
        self._started_at: float | None = None
        self._stall_reported_at: float | None = None
        self._in_call_since: float | None = None  # the capture thread is inside read()/open()
        self._captured = 0
        self._dropped = 0
        self._reconnects = 0
        self._attempts = 0

    @classmethod
    def from_settings(
        cls, settings: CameraSettings, *, realtime: bool | None = None, on_event: EventCallback | None = None,
        small_width: int = 0,
    ) -> "FrameGrabber":
        """A grabber whose sources come from ``open_source(settings, realtime=realtime, small_width=small_width)``."""
        return cls(functools.partial(open_source, settings, realtime=realtime, small_width=small_width), settings,
                   on_event=on_event)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "FrameGrabber":
        """Open the first source here, so a bad source fails loudly now, then start the threads."""
        if self._threads:
            raise RuntimeError("FrameGrabber.start() called twice; make a new grabber instead")
        try:
            source = self._open_new()
        except Exception as exc:
            with self._cond:
                self._status = CaptureStatus.FAILED
                self._done = True
            self._emit("failed", {"error": str(exc)})
            if isinstance(exc, CaptureError):
                raise
            raise CaptureError(f"camera source could not be opened: {exc}") from exc
        with self._cond:
            self._started_at = self._clock()
        self._threads = [
            threading.Thread(target=self._capture_loop, args=(source,), name="relaxd-capture", daemon=True),
            threading.Thread(target=self._watch_loop, name="relaxd-capture-watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the threads and close the source; False if the source was still blocked after ``timeout``.

        A blocked source is left to its daemon thread, which closes it when ``read()`` returns.
        """
        self._stop.set()
        with self._cond:
            self._done = True
            if self._status not in TERMINAL:
                self._status = CaptureStatus.STOPPED
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("capture thread did not stop in time; its source is blocked in read()",
                        threads=stuck, timeout_s=timeout)
            return False
        return True

    def __enter__(self) -> "FrameGrabber":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- consumer side -------------------------------------------------------------------

    def latest(self, newer_than: int = -1, timeout: float | None = None) -> Frame | None:
        """The newest frame with ``index > newer_than``, waiting up to ``timeout`` seconds for one.

        Pass the index of the last frame you got and you never get the same frame twice.
        None on timeout, or at once when no frame will come any more (ended, failed, stopped).
        The image is read-only: it may be shared with other consumers.
        """
        with self._cond:
            def fresh() -> bool:
                return self._frame is not None and self._frame.index > newer_than

            self._cond.wait_for(lambda: fresh() or self._done, timeout)
            if not fresh():
                return None
            self._taken = True
            return self._frame

    # -- health --------------------------------------------------------------------------

    @property
    def status(self) -> CaptureStatus:
        with self._cond:
            return self._status

    @property
    def stalled(self) -> bool:
        """True when no frame came within ``stall_timeout_s`` (and the source has not simply ended or been stopped)."""
        with self._cond:
            if self._status in (CaptureStatus.ENDED, CaptureStatus.STOPPED):
                return False
            return self._age_locked() > self._stall_timeout

    @property
    def hung(self) -> bool:
        """True when the capture thread has been inside one camera call longer than ``stall_timeout_s``."""
        with self._cond:
            if self._in_call_since is None or self._status in TERMINAL:
                return False
            return self._clock() - self._in_call_since > self._stall_timeout

    def stats(self) -> CaptureStats:
        with self._cond:
            return CaptureStats(
                status=self._status,
                frame_age_s=self._age_locked(),
                frames_captured=self._captured,
                frames_dropped=self._dropped,
                reconnects=self._reconnects,
                reconnect_attempts=self._attempts,
            )

    def _age_locked(self) -> float:
        if self._frame is not None:
            return self._clock() - self._frame.timestamp
        if self._started_at is not None:
            return self._clock() - self._started_at
        return math.inf

    # -- capture thread ------------------------------------------------------------------

    def _capture_loop(self, source: FrameSource | None) -> None:
        delay = self._backoff_initial
        try:
            while not self._stop.is_set():
                if source is None:
                    source, delay = self._reconnect(delay)
                    continue
                try:
                    with self._camera_call():
                        (image, small_gray), reason = source.read_with_small_gray(), "read() returned no frame"
                except Exception as exc:  # a vanished camera raises all sorts of things
                    image, small_gray, reason = None, None, f"read() raised {exc!r}"
                if self._stop.is_set():
                    break
                if image is not None:
                    self._publish(image, small_gray)
                    delay = self._backoff_initial
                elif source.finite:
                    self._finish(CaptureStatus.ENDED, "ended", {"source": source.name, "reason": reason})
                    break
                else:
                    self._emit("lost", {"source": source.name, "reason": reason})
                    self._close(source)
                    source = None
        except Exception as exc:
            log.exception("capture thread crashed")
            self._finish(CaptureStatus.FAILED, "failed", {"error": repr(exc)})
        finally:
            if source is not None:
                self._close(source)
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _reconnect(self, delay: float) -> tuple[FrameSource | None, float]:
        """Wait ``delay``, then try once to open a new source; returns it (or None) and the next delay."""
        with self._cond:
            self._attempts += 1
            attempt = self._attempts
            if self._status not in TERMINAL:
                self._status = CaptureStatus.RECONNECTING
        self._emit("reconnecting", {"attempt": attempt, "delay_s": delay})
        if self._stop.wait(delay):
            return None, delay
        next_delay = min(delay * 2, self._backoff_max)
        try:
            with self._camera_call():
                source = self._open_new()
        except Exception as exc:
            self._emit("reopen_failed", {"attempt": attempt, "error": str(exc)})
            return None, next_delay
        with self._cond:
            self._reconnects += 1
        self._emit("reconnected", {"source": source.name, "attempt": attempt})
        # Keep the grown delay until a frame arrives: a camera that opens but never
        # delivers must not be reopened in a tight loop.
        return source, next_delay

    @contextlib.contextmanager
    def _camera_call(self) -> Iterator[None]:
        """Mark the capture thread as inside the camera driver, for ``hung``."""
        with self._cond:
            self._in_call_since = self._clock()
        try:
            yield
        finally:
            with self._cond:
                self._in_call_since = None

    def _open_new(self) -> FrameSource:
        source = self._factory()
        try:
            source.open()
        except BaseException:
            self._close(source)
            raise
        return source

    def _close(self, source: FrameSource) -> None:
        try:
            source.close()
        except Exception as exc:
            log.warning("closing the frame source failed", source=source.name, error=repr(exc))

    def _publish(self, image: np.ndarray, small_gray: np.ndarray | None = None) -> None:
        image.flags.writeable = False  # shared by every consumer: nobody may draw on it
        if small_gray is not None:
            small_gray.flags.writeable = False
        now = self._clock()
        with self._cond:
            if self._frame is not None and not self._taken:
                self._dropped += 1
            index = self._frame.index + 1 if self._frame is not None else 0
            self._frame = Frame(image, now, index, small_gray)
            self._taken = False
            self._captured += 1
            stalled_since, self._stall_reported_at = self._stall_reported_at, None
            self._status = CaptureStatus.STREAMING
            self._cond.notify_all()
        if stalled_since is not None:
            self._emit("recovered", {"stalled_for_s": round(now - stalled_since, 3)})

    def _finish(self, status: CaptureStatus, kind: str, detail: dict[str, Any]) -> None:
        with self._cond:
            self._status = status
            self._done = True
            self._cond.notify_all()
        self._emit(kind, detail)

    # -- watch thread ----------------------------------------------------------------------

    def _watch_loop(self) -> None:
        """Report a stall once, even while the capture thread is stuck inside read()."""
        interval = min(max(self._stall_timeout / 4, 0.01), 0.5)
        while not self._stop.wait(interval):
            with self._cond:
                if self._done:
                    return
                age = self._age_locked()
                if self._stall_reported_at is not None or age <= self._stall_timeout:
                    continue
                self._stall_reported_at = self._clock() - age
                if self._status in (CaptureStatus.STARTING, CaptureStatus.STREAMING):
                    self._status = CaptureStatus.STALLED
                status = self._status
            self._emit("stalled", {"age_s": round(age, 3), "status": status.value})

    # -- events ----------------------------------------------------------------------------

    def _emit(self, kind: str, detail: dict[str, Any]) -> None:
        """Log the event and hand it to ``on_event``; never called with the lock held."""
        getattr(log, _LOG_LEVELS.get(kind, "info"))(f"capture {kind}", **detail)
        if self._on_event is not None:
            try:
                self._on_event(kind, detail)
            except Exception:
                log.exception("capture on_event callback failed", kind=kind)
