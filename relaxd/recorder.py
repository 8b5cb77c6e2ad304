"""The session recorder: the one thread that writes the control loop's rows to the store.

The control loop runs at 20 Hz against a 0.5 s watchdog; SQLite with ``synchronous=FULL``
on an SD card, a store locked by another process (a backup, ``sqlite3`` in a shell) or a
full disk can take seconds. So the loop never writes: it hands each row to ``submit()``,
which only appends to a bounded queue and never blocks (Frigate's recorder does the same for
the same reason).

The recorder thread writes the rows in order. A write that fails because the store is
unavailable (locked, read-only, full, gone) is retried with back-off, the rows behind it
wait, and ``health()`` reports the outage, its length and its error, so the chair raises a
technical alarm and, past ``fault_after_s``, the daemon moves the session to its fault state
(stimulation that cannot be recorded stops). Once the store is back, everything queued
reaches it. Beyond the queue's budget new rows are dropped and counted by kind, never
silently. Each row carries the time it happened, not the time it was written.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Optional, Tuple

import structlog

from relaxd.store import InvalidRecordError, RecordNotFoundError, SessionStore, StoreError

log = structlog.get_logger(__name__)

BUDGET = 20_000
"""Rows held while the store is unavailable: at about 3 rows a second, well over an hour."""
FAULT_AFTER_S = 30.0
"""A store unavailable this long while a session runs faults it: stimulation that is not recorded stops."""
RETRY_INITIAL_S, RETRY_MAX_S = 0.1, 2.0

Write = Callable[[SessionStore], Any]


@dataclass
class SessionHandle:
    """A session as the control loop knows it: its store id arrives once the recorder wrote its row."""

    pseudonym: Optional[str]
    id: Optional[int] = None
    profile_id: Optional[int] = None
    recorded: threading.Event = field(default_factory=threading.Event)

    def wait_recorded(self, timeout_s: float) -> Optional[int]:
        """The session's id, waiting up to ``timeout_s`` for its row (never from the control loop)."""
        self.recorded.wait(timeout_s)
        return self.id


@dataclass(frozen=True)
class RecorderHealth:
    ok: bool
    backlog: int
    outage_s: float
    error: Optional[str]
    dropped: Dict[str, int]
    rejected: Dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "backlog": self.backlog, "outage_s": round(self.outage_s, 2),
                "error": self.error, "dropped": dict(self.dropped), "rejected": dict(self.rejected)}


class SessionRecorder:
    """Writes rows to ``store`` on its own thread, in the order they were submitted."""

    def __init__(self, store: SessionStore, *, budget: int = BUDGET, fault_after_s: float = FAULT_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.budget = budget
        self.fault_after_s = fault_after_s
        self._clock = clock
        self._queue: Deque[Tuple[str, Write]] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._busy = False  # a write taken from the queue and not finished
        self._outage_since: Optional[float] = None
        self._error: Optional[str] = None
        self._dropped: Dict[str, int] = collections.Counter()   # over budget: the record has a gap
        self._rejected: Dict[str, int] = collections.Counter()  # rows the store refused (a bug, logged)
        self._thread = threading.Thread(target=self._run, name="relaxd-recorder", daemon=True)

    def start(self) -> "SessionRecorder":
        self._thread.start()
        return self

    def submit(self, kind: str, write: Write) -> bool:
        """Queue ``write(store)``; never blocks. False (and counted) when the budget is spent."""
        with self._wake:
            if self._stopping or len(self._queue) >= self.budget:
                self._dropped[kind] += 1
                if self._dropped[kind] == 1:
                    log.error("recorder.dropping", kind=kind, backlog=len(self._queue),
                              why="stopping" if self._stopping else "the store has been unavailable too long")
                return False
            self._queue.append((kind, write))
            self._wake.notify()
            return True

    def outage_s(self) -> float:
        """How long the store has been failing (0 while it works)."""
        since = self._outage_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    @property
    def should_fault(self) -> bool:
        """The store has been unavailable past ``fault_after_s``, or rows were dropped."""
        return self.outage_s() > self.fault_after_s or bool(self._dropped)

    def health(self) -> RecorderHealth:
        with self._wake:
            backlog = len(self._queue)  # the row being written stays at its head until done
            dropped, rejected = dict(self._dropped), dict(self._rejected)
        outage = self.outage_s()
        return RecorderHealth(ok=outage == 0.0 and not dropped, backlog=backlog, outage_s=outage,
                              error=self._error, dropped=dropped, rejected=rejected)

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued is written; False if ``timeout_s`` passed first."""
        deadline = self._clock() + timeout_s
        with self._wake:
            while self._queue or self._busy:
                left = deadline - self._clock()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._wake.wait(min(left, 0.05))
        return True

    def close(self, timeout_s: float = 3.0) -> Dict[str, int]:
        """Write what is queued for up to ``timeout_s``, then stop; returns what was left unwritten, by kind."""
        drained = self.drain(timeout_s) if self._thread.is_alive() else not self._queue
        with self._wake:
            self._stopping = True
            left = collections.Counter(kind for kind, _ in self._queue)
            self._queue.clear()
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        if not drained and left:
            log.error("recorder.unwritten_at_exit", rows=dict(left), error=self._error,
                      what="the store was unavailable; the next start closes the session at its last record")
        return dict(left)

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                kind, write = self._queue[0]
                self._busy = True
            try:
                self._write_until_done(kind, write)
            finally:
                with self._wake:
                    if self._queue and self._queue[0][1] is write:
                        self._queue.popleft()
                    self._busy = False
                    self._wake.notify_all()

    def _write_until_done(self, kind: str, write: Write) -> None:
        delay = RETRY_INITIAL_S
        while not self._stopping:
            try:
                write(self.store)
            except (InvalidRecordError, RecordNotFoundError) as error:  # this row is wrong, not the store
                log.error("recorder.row_refused", kind=kind, error=str(error))
                self._rejected[kind] += 1
                return
            except StoreError as error:
                self._error = str(error)  # before the outage shows, so health never has one without the other
                if self._outage_since is None:
                    self._outage_since = self._clock()
                    log.error("recorder.store_unavailable", kind=kind, error=str(error))
                with self._wake:
                    self._wake.wait(delay)  # close() wakes it
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception:  # a bug in a write: log it, keep the thread and the rest of the queue
                log.exception("recorder.write_failed", kind=kind)
                self._rejected[kind] += 1
                return
            if self._outage_since is not None:
                log.warning("recorder.store_back", after_s=round(self.outage_s(), 2),
                            backlog=len(self._queue))
                self._outage_since, self._error = None, None
            return
