"""The session record: one SQLite file per chair.

It holds child profiles, sessions, a per-second affect summary, per-second stimulus
levels, controller events, caregiver alerts and the webhook outbox of ``relaxd.alerts``.

Decisions made here:

* **No images, ever.** Profiles hold a pseudonym, intensity caps, a preferred scenario
  and free-text notes; no table has a BLOB column. Affect is stored as numbers only.
* **WAL journal**, so the panel and ``relaxd report`` can read while the daemon writes,
  and ``synchronous=FULL``, so an alert committed to the outbox survives a power cut:
  the daemon writes a few rows a second, which an SD card handles easily.
* **One connection behind a lock** (``check_same_thread=False``). The daemon's threads
  (control loop, alert delivery, socket) each write a row now and then; a lock is
  simpler than a connection per thread and their clean-up, and other *processes*
  (panel, reports, a restarted daemon) still share the file through WAL and the
  busy timeout.
* **Schema versions by number**: ``_MIGRATIONS[n]`` turns version ``n-1`` into ``n``;
  each runs in one transaction with its row in ``schema_version``, so opening a store
  twice (or after a crash mid-migration) is always safe.
* **Session ids are never reused** (AUTOINCREMENT, since schema version 2): after an
  erasure deletes a child's sessions, the next session still gets a new number, so a
  note, a backup or an exported report that names a session id means one session.
* Wall-clock times are ISO 8601 strings in UTC with milliseconds; second numbers of a
  session count from its start.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import structlog

from relaxd.errors import RelaxdError
from relaxd.vocabulary import GROUPS, PRIORITIES

if TYPE_CHECKING:  # only for type hints: the store does not depend on the vision side
    from relaxd.affect import AffectReading

log = structlog.get_logger(__name__)

EXPORT_FORMATS = ("csv", "json")
EXPORT_VERSION = 1

END_REASONS = {
    "stopped": "stopped",
    "scenario_finished": "scenario finished",
    "estop": "emergency stop",
    "fault": "fault",
    "daemon_stopped": "daemon stopped",
    "daemon_restarted": "daemon restarted after a crash",
}
"""A session's ``end_reason`` in words for therapists (the daemon writes the keys)."""


def describe_end_reason(reason: Optional[str]) -> str:
    """Words for an ``end_reason``; an unknown one is shown as it is, a missing one as "not given"."""
    return END_REASONS.get(reason or "", reason or "not given")


class StoreError(RelaxdError):
    """The session store cannot be opened, read or written."""


class RecordNotFoundError(StoreError):
    """A profile, session or alert with that id does not exist."""


class InvalidRecordError(StoreError):
    """A value given to the store is out of range or missing (e.g. an empty pseudonym)."""


# ---------------------------------------------------------------------------------------
# Schema

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE profiles (
            id INTEGER PRIMARY KEY,
            pseudonym TEXT NOT NULL UNIQUE CHECK (length(trim(pseudonym)) > 0),
            light_cap REAL NOT NULL DEFAULT 1.0 CHECK (light_cap BETWEEN 0.0 AND 1.0),
            sound_cap REAL NOT NULL DEFAULT 1.0 CHECK (sound_cap BETWEEN 0.0 AND 1.0),
            vibration_cap REAL NOT NULL DEFAULT 1.0 CHECK (vibration_cap BETWEEN 0.0 AND 1.0),
            preferred_scenario TEXT,
            notes TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER REFERENCES profiles(id) ON DELETE CASCADE,
            scenario TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            end_reason TEXT
        )""",
        "CREATE INDEX sessions_by_profile ON sessions(profile_id)",
        """CREATE TABLE affect_seconds (
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            second INTEGER NOT NULL CHECK (second >= 0),
            negative REAL NOT NULL,
            neutral REAL NOT NULL,
            positive REAL NOT NULL,
            dominant_group TEXT NOT NULL,
            dominant_label TEXT,
            confidence REAL NOT NULL,
            face_share REAL NOT NULL,
            readings INTEGER NOT NULL,
            PRIMARY KEY (session_id, second)
        )""",
        """CREATE TABLE stimulus_seconds (
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            second INTEGER NOT NULL CHECK (second >= 0),
            light REAL NOT NULL CHECK (light BETWEEN 0.0 AND 1.0),
            sound REAL NOT NULL CHECK (sound BETWEEN 0.0 AND 1.0),
            vibration REAL NOT NULL CHECK (vibration BETWEEN 0.0 AND 1.0),
            PRIMARY KEY (session_id, second)
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE,
            time TEXT NOT NULL,
            kind TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT,
            reason TEXT NOT NULL DEFAULT '',
            data TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX events_by_session ON events(session_id)",
        """CREATE TABLE alerts (
            id TEXT PRIMARY KEY,
            session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE,
            time TEXT NOT NULL,
            kind TEXT NOT NULL,
            priority TEXT NOT NULL CHECK (priority IN ('high', 'medium', 'low')),
            message TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}',
            acknowledged_at TEXT,
            acknowledged_by TEXT
        )""",
        "CREATE INDEX alerts_unacknowledged ON alerts(acknowledged_at)",
        # Rows are never deleted by the delivery thread: delivered_at marks them done.
        # AUTOINCREMENT keeps seq strictly increasing, which is the delivery order.
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            alert_id TEXT REFERENCES alerts(id) ON DELETE CASCADE,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_attempt_at TEXT,
            last_error TEXT,
            delivered_at TEXT
        )""",
        "CREATE INDEX outbox_pending ON outbox(delivered_at, seq)",
    ),
    # Session ids are never reused, even after an erasure deleted the newest sessions: notes,
    # backups and exported reports that say "session 12" mean one session for ever. SQLite
    # cannot add AUTOINCREMENT to a table, so the table is rebuilt (its rows keep their ids).
    2: (
        """CREATE TABLE sessions_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            profile_id INTEGER REFERENCES profiles(id) ON DELETE CASCADE,
            scenario TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            end_reason TEXT
        )""",
        "INSERT INTO sessions_v2 (id, profile_id, scenario, started_at, ended_at, end_reason) "
        "SELECT id, profile_id, scenario, started_at, ended_at, end_reason FROM sessions",
        "DROP TABLE sessions",
        "ALTER TABLE sessions_v2 RENAME TO sessions",
        "CREATE INDEX sessions_by_profile ON sessions(profile_id)",
    ),
    # What the learner learns from (issue 15): each scenario's stretch of a session with its
    # outcome, and a therapist's per-child rules. Both go with the child on erasure (cascade).
    3: (
        """CREATE TABLE scenario_outcomes (
            id INTEGER PRIMARY KEY,
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            scenario TEXT NOT NULL,
            chosen_by TEXT NOT NULL,
            seconds REAL NOT NULL CHECK (seconds >= 0),
            time_to_calm_s REAL CHECK (time_to_calm_s IS NULL OR time_to_calm_s >= 0),
            negative_share REAL NOT NULL CHECK (negative_share BETWEEN 0.0 AND 1.0),
            halted INTEGER NOT NULL CHECK (halted IN (0, 1)),
            ended_early INTEGER NOT NULL CHECK (ended_early IN (0, 1)),
            reward REAL NOT NULL CHECK (reward BETWEEN 0.0 AND 1.0),
            recorded_at TEXT NOT NULL
        )""",
        "CREATE INDEX scenario_outcomes_by_profile ON scenario_outcomes(profile_id, id)",
        """CREATE TABLE scenario_rules (
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            scenario TEXT NOT NULL,
            rule TEXT NOT NULL CHECK (rule IN ('excluded', 'blocked')),
            reason TEXT NOT NULL DEFAULT '',
            set_by TEXT NOT NULL DEFAULT '',
            set_at TEXT NOT NULL,
            PRIMARY KEY (profile_id, scenario)
        )""",
    ),
    # A second delivery channel besides the webhook (issue 18): each channel has its own
    # rows and delivers them in its own order, so a broker outage never holds up the webhook.
    4: (
        "ALTER TABLE outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'webhook'",
        # A message of a session (an MQTT session summary) goes with it on erasure.
        "ALTER TABLE outbox ADD COLUMN session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE",
        "CREATE INDEX outbox_pending_by_channel ON outbox(channel, delivered_at, seq)",
    ),
}
SCHEMA_VERSION = max(_MIGRATIONS)
SCENARIO_RULES = ("excluded", "blocked")
OUTBOX_CHANNELS = ("webhook", "mqtt")
OutboxMessage = tuple[str, str, dict[str, Any]]  # (channel, idempotency key, payload)


# ---------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Profile:
    """A child, known only by a pseudonym. Caps bound each stimulus (0..1)."""

    id: int
    pseudonym: str
    light_cap: float
    sound_cap: float
    vibration_cap: float
    preferred_scenario: Optional[str]
    notes: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class SessionRecord:
    id: int
    profile_id: Optional[int]
    scenario: str
    started_at: str
    ended_at: Optional[str]
    end_reason: Optional[str]


@dataclass(frozen=True)
class AffectSecond:
    """One second of affect: what the many readings of that second add up to.

    ``negative``/``neutral``/``positive`` are the mean group scores of the readings with a
    face (0 when there was none); ``face_share`` is the share of readings with a face.
    """

    second: int
    negative: float
    neutral: float
    positive: float
    dominant_group: str  # "negative" | "neutral" | "positive" | "none" (no face all second)
    dominant_label: Optional[str]
    confidence: float  # mean confidence of the readings that showed the dominant label
    face_share: float
    readings: int


@dataclass(frozen=True)
class OutcomeRecord:
    """One scenario's stretch of a session (``relaxd.control.outcome.ScenarioOutcome``) as stored."""

    id: int
    session_id: int
    profile_id: int
    scenario: str
    chosen_by: str
    seconds: float
    time_to_calm_s: Optional[float]
    negative_share: float
    halted: bool
    ended_early: bool
    reward: float
    recorded_at: str


@dataclass(frozen=True)
class ScenarioRule:
    """A scenario a therapist excluded for a child, or one blocked after a halt until approved."""

    profile_id: int
    scenario: str
    rule: str  # "excluded" | "blocked"
    reason: str
    set_by: str
    set_at: str


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    key: str  # idempotency key, sent with the payload and as a header
    alert_id: Optional[str]
    payload: dict[str, Any]
    attempts: int


def now_iso() -> str:
    """Wall-clock time now, as stored: ISO 8601, UTC, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


LOCAL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def local_time(stamp: Optional[str], fmt: str = LOCAL_TIME_FORMAT) -> str:
    """A stored UTC stamp as this machine's local time (by default to the second, with the zone's
    name); "-" for none, the raw text if it is not a stamp."""
    if not stamp:
        return "-"
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime(fmt).strip()
    except ValueError:
        return stamp


def _sortable_time(stamp: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------
# Per-second accumulation


class AffectSecondAccumulator:
    """Turns the many ``AffectReading``s of each second into one ``AffectSecond``.

    Feed readings in time order; ``add`` returns the finished row of the previous second
    when a reading of a later second arrives, ``flush`` returns the last one at session end.
    Seconds without any reading produce no row.
    """

    def __init__(self, start_time: float) -> None:
        self._start = start_time  # monotonic time of the session start (the readings' clock)
        self._second: Optional[int] = None
        self._readings: list[AffectReading] = []

    def add(self, reading: "AffectReading") -> Optional[AffectSecond]:
        second = max(0, int(math.floor(reading.time - self._start)))
        finished = None
        if self._second is not None and second > self._second:
            finished = self.flush()
        if self._second is None:
            self._second = second
        self._readings.append(reading)
        return finished

    def flush(self) -> Optional[AffectSecond]:
        if self._second is None or not self._readings:
            return None
        row = summarize_second(self._second, self._readings)
        self._second, self._readings = None, []
        return row


def summarize_second(second: int, readings: Sequence["AffectReading"]) -> AffectSecond:
    """Reduce one second's readings to a row (see ``AffectSecond``)."""
    if not readings:
        raise InvalidRecordError(f"second {second} has no readings to summarise")
    faces = [r for r in readings if r.face_present]
    if not faces:
        return AffectSecond(second, 0.0, 0.0, 0.0, "none", None, 0.0, 0.0, len(readings))
    shares = {g: sum(float(r.group_scores.get(g, 0.0)) for r in faces) / len(faces) for g in GROUPS}
    # most_common keeps first-seen order among ties, so ties go to the earlier reading.
    group = Counter(r.group for r in faces).most_common(1)[0][0]
    label = Counter(r.label for r in faces).most_common(1)[0][0]
    with_label = [r.confidence for r in faces if r.label == label]
    return AffectSecond(
        second=second,
        negative=shares["negative"],
        neutral=shares["neutral"],
        positive=shares["positive"],
        dominant_group=group,
        dominant_label=label,
        confidence=sum(with_label) / len(with_label),
        face_share=len(faces) / len(readings),
        readings=len(readings),
    )


# ---------------------------------------------------------------------------------------
# The store

_UNSET: Any = object()


def _check_unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidRecordError(f"{name} must be a number from 0 to 1, got {value!r}")
    return float(value)


def _check_pseudonym(pseudonym: str) -> str:
    if not isinstance(pseudonym, str) or not pseudonym.strip():
        raise InvalidRecordError("a profile needs a non-empty pseudonym (never the child's real name)")
    return pseudonym.strip()


class SessionStore:
    """The SQLite session record. Thread-safe; open one per process and ``close()`` it."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        self._conn: Optional[sqlite3.Connection] = self._connect(busy_timeout_s)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- opening --------------------------------------------------------------------------

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the folder of the session store {self.path} ({exc}): create it "
                "and give the relaxd user write access, or set store.path to a writable place"
            ) from exc
        conn = None
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            # The first statement that reads the file: a non-SQLite file fails here.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA secure_delete = ON")  # deleted records are overwritten, not left in free pages
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if conn is not None:
                conn.close()
            raise StoreError(
                f"cannot open the session store {self.path} ({exc}): check that the file and "
                "its folder are writable by the relaxd user, or set store.path"
            ) from exc
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise StoreError(
                f"{self.path} is not a readable SQLite session store ({exc}): it is corrupt or "
                "another kind of file. Move it aside (e.g. rename it to .bad; relaxd then creates "
                "a new, empty store) or set store.path to the right file"
            ) from exc
        if str(mode).lower() != "wal":
            log.warning("store.no_wal", path=str(self.path), journal_mode=mode)
        return conn

    def _migrate(self) -> None:
        with self._tx() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the session store {self.path} has schema version {current}, newer than this "
                f"relaxd knows ({SCHEMA_VERSION}): upgrade relaxd, or set store.path to another file"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            # Foreign keys are off while a migration rebuilds a table (SQLite's own procedure):
            # dropping the old table must not cascade into the rows that refer to it.
            self._connection().execute("PRAGMA foreign_keys = OFF")
            try:
                with self._tx() as conn:
                    # Re-check inside the write lock: another process may have migrated meanwhile.
                    done = conn.execute("SELECT 1 FROM schema_version WHERE version = ?", (version,))
                    if done.fetchone():
                        continue
                    for statement in _MIGRATIONS[version]:
                        conn.execute(statement)
                    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(f"migrating the session store {self.path} to version {version} left "
                                         f"{len(broken)} broken references; nothing was changed: keep the file "
                                         "and report it")
                    conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, now_iso()))
            finally:
                self._connection().execute("PRAGMA foreign_keys = ON")
            log.info("store.migrated", path=str(self.path), version=version)

    def schema_version(self) -> int:
        row = self._one("SELECT max(version) AS v FROM schema_version")
        return int(row["v"] or 0)

    def journal_mode(self) -> str:
        return str(self._one("PRAGMA journal_mode")[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "SessionStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def _error(self, exc: sqlite3.Error) -> StoreError:
        if isinstance(exc, sqlite3.IntegrityError):
            return InvalidRecordError(f"the session store {self.path} refused a value: {exc}")
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            advice = ("another program holds the store's lock (a backup, or sqlite3 in a shell): let it finish "
                      "or close it; relaxd keeps the rows queued meanwhile")
        elif "full" in text:
            advice = f"the disk holding {self.path} is full: free space (old reports, logs) and relaxd catches up"
        elif "readonly" in text or "read-only" in text:
            advice = f"{self.path} or its folder is read-only for the relaxd user: fix its owner or the mount"
        else:
            advice = "if it says 'malformed' or 'not a database', stop relaxd, move the file aside and restart"
        return StoreError(f"the session store {self.path} failed ({exc}): {advice}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the session store {self.path} is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Optional[sqlite3.Row]:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    # -- profiles -------------------------------------------------------------------------

    def create_profile(
        self,
        pseudonym: str,
        *,
        light_cap: float = 1.0,
        sound_cap: float = 1.0,
        vibration_cap: float = 1.0,
        preferred_scenario: Optional[str] = None,
        notes: str = "",
    ) -> Profile:
        name = _check_pseudonym(pseudonym)
        caps = [_check_unit(n, v) for n, v in
                (("light_cap", light_cap), ("sound_cap", sound_cap), ("vibration_cap", vibration_cap))]
        if self.find_profile(name) is not None:
            raise InvalidRecordError(f"a profile named {name!r} already exists: pick another pseudonym")
        stamp = now_iso()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO profiles (pseudonym, light_cap, sound_cap, vibration_cap, "
                "preferred_scenario, notes, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, *caps, preferred_scenario, notes, stamp, stamp),
            )
        return self.get_profile(int(cur.lastrowid))

    def get_profile(self, profile_id: int) -> Profile:
        row = self._one("SELECT * FROM profiles WHERE id = ?", (profile_id,))
        if row is None:
            raise RecordNotFoundError(f"no profile with id {profile_id} (relaxctl list-profiles lists them)")
        return Profile(**dict(row))

    def find_profile(self, pseudonym: str) -> Optional[Profile]:
        row = self._one("SELECT * FROM profiles WHERE pseudonym = ?", (pseudonym.strip(),))
        return Profile(**dict(row)) if row else None

    def list_profiles(self) -> list[Profile]:
        return [Profile(**dict(r)) for r in self._all("SELECT * FROM profiles ORDER BY pseudonym")]

    def update_profile(
        self,
        profile_id: int,
        *,
        pseudonym: str = _UNSET,
        light_cap: float = _UNSET,
        sound_cap: float = _UNSET,
        vibration_cap: float = _UNSET,
        preferred_scenario: Optional[str] = _UNSET,
        notes: str = _UNSET,
    ) -> Profile:
        """Change the given fields only; ``preferred_scenario=None`` clears it."""
        changes: dict[str, Any] = {}
        if pseudonym is not _UNSET:
            changes["pseudonym"] = _check_pseudonym(pseudonym)
        for name, value in (("light_cap", light_cap), ("sound_cap", sound_cap),
                            ("vibration_cap", vibration_cap)):
            if value is not _UNSET:
                changes[name] = _check_unit(name, value)
        if preferred_scenario is not _UNSET:
            changes["preferred_scenario"] = preferred_scenario
        if notes is not _UNSET:
            changes["notes"] = notes
        self.get_profile(profile_id)  # clear error for an unknown id
        if changes:
            changes["updated_at"] = now_iso()
            assignments = ", ".join(f"{name} = ?" for name in changes)  # names are ours, not input
            with self._tx() as conn:
                conn.execute(f"UPDATE profiles SET {assignments} WHERE id = ?", (*changes.values(), profile_id))
        return self.get_profile(profile_id)

    def delete_profile(self, profile_id: int, *, with_sessions: bool = False) -> list[int]:
        """Delete a profile; its sessions too only when asked (erasure on a family's request).

        Everything of those sessions goes with them (affect and stimulus seconds, events,
        alerts, undelivered webhook messages), one session per transaction, so a running
        daemon never waits on the store for long. ``secure_delete`` overwrites the freed pages
        and the WAL is checkpointed, so the records do not linger in the file. An interrupted
        deletion leaves whole sessions behind, never half of one: run it again. Returns the ids
        of the sessions deleted.
        """
        profile = self.get_profile(profile_id)
        sessions = [row["id"] for row in self._all("SELECT id FROM sessions WHERE profile_id = ?", (profile_id,))]
        if sessions and not with_sessions:
            raise InvalidRecordError(
                f"profile {profile.pseudonym!r} has {len(sessions)} recorded session(s): keep the reports you "
                "need, then erase them with it (relaxctl delete-profile NAME --with-sessions)"
            )
        for session_id in sessions:
            with self._tx() as conn:
                conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        with self._tx() as conn:
            if not with_sessions and conn.execute("SELECT 1 FROM sessions WHERE profile_id = ?",
                                                  (profile_id,)).fetchone():
                raise InvalidRecordError(f"profile {profile.pseudonym!r} got a session meanwhile: nothing deleted")
            conn.execute("DELETE FROM profiles WHERE id = ?", (profile_id,))  # cascades to any newer session
        self._checkpoint()
        log.info("store.profile_deleted", profile_id=profile_id, sessions=len(sessions))
        return sessions

    def _checkpoint(self) -> None:
        """Copy the WAL into the file and empty it; a reader holding an old snapshot defers part of it."""
        with self._lock:
            try:
                busy = self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
        if busy:
            log.warning("store.checkpoint_deferred", path=str(self.path),
                        why="another process is reading the store; SQLite finishes it later")

    # -- sessions -------------------------------------------------------------------------

    def start_session(self, profile_id: Optional[int], scenario: str, *, started_at: Optional[str] = None) -> int:
        """Open a session (``profile_id`` None: an anonymous or demo session); returns its id."""
        if profile_id is not None:
            self.get_profile(profile_id)
        if not scenario:
            raise InvalidRecordError("a session needs the name of its scenario")
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO sessions (profile_id, scenario, started_at) VALUES (?, ?, ?)",
                (profile_id, scenario, started_at or now_iso()),
            )
        return int(cur.lastrowid)

    def end_session(self, session_id: int, reason: str, *, ended_at: Optional[str] = None) -> bool:
        """Close a session; False if it was already closed."""
        self.get_session(session_id)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
                (ended_at or now_iso(), reason, session_id),
            )
        return cur.rowcount == 1

    def close_unfinished_sessions(self, reason: str = "daemon_restarted") -> list[int]:
        """At start-up: close sessions a crash left open, so none stays 'running' forever.

        Each is closed at the time of its last record (its newest event, or its start plus its
        last recorded second), not at the restart, so its length stays true.
        """
        with self._tx() as conn:
            open_sessions = conn.execute("SELECT id, started_at FROM sessions WHERE ended_at IS NULL").fetchall()
            for session_id, started_at in open_sessions:
                conn.execute("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ?",
                             (self._last_record_time(conn, session_id, started_at), reason, session_id))
        return [row[0] for row in open_sessions]

    @staticmethod
    def _last_record_time(conn: sqlite3.Connection, session_id: int, started_at: str) -> str:
        candidates = [started_at]
        (last_event,) = conn.execute("SELECT MAX(time) FROM events WHERE session_id = ?", (session_id,)).fetchone()
        if last_event:
            candidates.append(last_event)
        last_second = conn.execute(
            "SELECT MAX(m) FROM (SELECT MAX(second) AS m FROM affect_seconds WHERE session_id = ? "
            "UNION ALL SELECT MAX(second) FROM stimulus_seconds WHERE session_id = ?)",
            (session_id, session_id)).fetchone()[0]
        if last_second is not None:
            try:
                start = datetime.fromisoformat(started_at)
                candidates.append((start + timedelta(seconds=last_second + 1)).isoformat(timespec="milliseconds"))
            except ValueError:
                pass
        return max(candidates, key=_sortable_time)

    def get_session(self, session_id: int) -> SessionRecord:
        row = self._one("SELECT * FROM sessions WHERE id = ?", (session_id,))
        if row is None:
            raise RecordNotFoundError(f"no session with id {session_id} (relaxctl list-sessions lists them)")
        return SessionRecord(**dict(row))

    def list_sessions(self, *, profile_id: Optional[int] = None, limit: int = 50) -> list[SessionRecord]:
        """Newest first."""
        if profile_id is None:
            rows = self._all("SELECT * FROM sessions ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._all("SELECT * FROM sessions WHERE profile_id = ? ORDER BY id DESC LIMIT ?",
                             (profile_id, limit))
        return [SessionRecord(**dict(r)) for r in rows]

    # -- what the learner learns from -----------------------------------------------------

    def add_scenario_outcome(self, session_id: int, profile_id: int, outcome: dict[str, Any]) -> int:
        """Record a ``ScenarioOutcome.to_dict()`` of a session's scenario; returns its id."""
        ttc = outcome.get("time_to_calm_s")
        values = (session_id, profile_id, str(outcome["scenario"]), str(outcome["chosen_by"]),
                  float(outcome["seconds"]), None if ttc is None else float(ttc),
                  _check_unit("negative_share", outcome["negative_share"]), int(bool(outcome["halted"])),
                  int(bool(outcome["ended_early"])), _check_unit("reward", outcome["reward"]), now_iso())
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO scenario_outcomes (session_id, profile_id, scenario, chosen_by, seconds, "
                "time_to_calm_s, negative_share, halted, ended_early, reward, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        return int(cur.lastrowid)

    def scenario_outcomes(self, *, profile_id: Optional[int] = None, session_id: Optional[int] = None,
                          limit: int = 10_000) -> list[OutcomeRecord]:
        """Oldest first: every child's (the population), one child's, or one session's."""
        where, params = [], []
        for column, value in (("profile_id", profile_id), ("session_id", session_id)):
            if value is not None:
                where.append(f"{column} = ?")  # column names are ours, not input
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._all(f"SELECT * FROM (SELECT * FROM scenario_outcomes {clause} ORDER BY id DESC LIMIT ?) "
                         "ORDER BY id", (*params, limit))
        return [OutcomeRecord(**{**dict(r), "halted": bool(r["halted"]), "ended_early": bool(r["ended_early"])})
                for r in rows]

    def set_scenario_rule(self, profile_id: int, scenario: str, rule: str, *, reason: str = "",
                          set_by: str = "") -> ScenarioRule:
        """Exclude a scenario for a child, or block it after a halt (an exclusion is never
        weakened to a block)."""
        if rule not in SCENARIO_RULES:
            raise InvalidRecordError(f"a scenario rule is one of {SCENARIO_RULES}, got {rule!r}")
        if not scenario:
            raise InvalidRecordError("a scenario rule needs the scenario's name")
        self.get_profile(profile_id)
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO scenario_rules (profile_id, scenario, rule, reason, set_by, set_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (profile_id, scenario) DO UPDATE SET "
                "rule = excluded.rule, reason = excluded.reason, set_by = excluded.set_by, set_at = excluded.set_at "
                "WHERE NOT (scenario_rules.rule = 'excluded' AND excluded.rule = 'blocked')",
                (profile_id, scenario, rule, reason, set_by, now_iso()))
        return next(r for r in self.scenario_rules(profile_id) if r.scenario == scenario)

    def clear_scenario_rule(self, profile_id: int, scenario: str, rule: str) -> bool:
        """A therapist approves a blocked scenario, or includes an excluded one again; False if
        there was no such rule."""
        if rule not in SCENARIO_RULES:
            raise InvalidRecordError(f"a scenario rule is one of {SCENARIO_RULES}, got {rule!r}")
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM scenario_rules WHERE profile_id = ? AND scenario = ? AND rule = ?",
                               (profile_id, scenario, rule))
        return cur.rowcount == 1

    def blocked_scenarios(self) -> list[tuple[str, ScenarioRule]]:
        """Every child's scenarios blocked after a halt, with the child's pseudonym (for approval)."""
        rows = self._all("SELECT p.pseudonym, r.* FROM scenario_rules r JOIN profiles p ON p.id = r.profile_id "
                         "WHERE r.rule = 'blocked' ORDER BY r.set_at DESC")
        return [(row["pseudonym"], ScenarioRule(**{k: row[k] for k in row.keys() if k != "pseudonym"})) for row in rows]

    def scenario_rules(self, profile_id: int) -> list[ScenarioRule]:
        rows = self._all("SELECT * FROM scenario_rules WHERE profile_id = ? ORDER BY scenario", (profile_id,))
        return [ScenarioRule(**dict(r)) for r in rows]

    # -- per-second rows and events -------------------------------------------------------

    def add_affect_second(self, session_id: int, row: AffectSecond) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO affect_seconds (session_id, second, negative, neutral, positive, "
                "dominant_group, dominant_label, confidence, face_share, readings) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, row.second, row.negative, row.neutral, row.positive, row.dominant_group,
                 row.dominant_label, row.confidence, row.face_share, row.readings),
            )

    def affect_seconds(self, session_id: int) -> list[AffectSecond]:
        rows = self._all(
            "SELECT second, negative, neutral, positive, dominant_group, dominant_label, confidence, "
            "face_share, readings FROM affect_seconds WHERE session_id = ? ORDER BY second",
            (session_id,),
        )
        return [AffectSecond(**dict(r)) for r in rows]

    def add_stimulus_second(self, session_id: int, second: int, *, light: float, sound: float,
                            vibration: float) -> None:
        levels = [_check_unit(n, v) for n, v in (("light", light), ("sound", sound), ("vibration", vibration))]
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO stimulus_seconds (session_id, second, light, sound, vibration) "
                "VALUES (?, ?, ?, ?, ?)",
                (session_id, second, *levels),
            )

    def stimulus_seconds(self, session_id: int) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT second, light, sound, vibration FROM stimulus_seconds WHERE session_id = ? ORDER BY second",
            (session_id,),
        )
        return [dict(r) for r in rows]

    def add_event(
        self,
        session_id: Optional[int],
        kind: str,
        *,
        from_state: Optional[str] = None,
        to_state: Optional[str] = None,
        reason: str = "",
        data: Optional[dict[str, Any]] = None,
        time: Optional[str] = None,
    ) -> int:
        """Record a controller transition or another event; returns its id."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO events (session_id, time, kind, from_state, to_state, reason, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session_id, time or now_iso(), kind, from_state, to_state, reason, json.dumps(data or {})),
            )
        return int(cur.lastrowid)

    def events(self, session_id: int) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM events WHERE session_id = ? ORDER BY id", (session_id,))
        return [_decode_data(r) for r in rows]

    # -- alerts and the outbox (used by relaxd.alerts) ------------------------------------

    def insert_alert(
        self,
        *,
        alert_id: str,
        time: str,
        kind: str,
        priority: str,
        message: str,
        session_id: Optional[int],
        data: dict[str, Any],
        outbox: Sequence[OutboxMessage] = (),
    ) -> None:
        """Store an alert and, in the same transaction, its outbox entries ``(channel, key, payload)``.

        One transaction means an alert is never stored without its webhook or MQTT message,
        or the other way round, whatever happens in between.
        """
        if priority not in PRIORITIES:
            raise InvalidRecordError(f"alert priority must be one of {PRIORITIES}, got {priority!r}")
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO alerts (id, session_id, time, kind, priority, message, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (alert_id, session_id, time, kind, priority, message, json.dumps(data)),
            )
            for message in outbox:
                self._enqueue(conn, alert_id, *message)

    def acknowledge_alert(
        self, alert_id: str, by: str, *, time: Optional[str] = None, outbox: Sequence[OutboxMessage] = (),
    ) -> bool:
        """Mark an alert acknowledged; False if it already was (then nothing is queued)."""
        with self._tx() as conn:
            found = conn.execute("SELECT acknowledged_at FROM alerts WHERE id = ?", (alert_id,)).fetchone()
            if found is None:
                raise RecordNotFoundError(f"no alert with id {alert_id!r}")
            if found[0] is not None:
                return False
            conn.execute(
                "UPDATE alerts SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ?",
                (time or now_iso(), by, alert_id),
            )
            for message in outbox:
                self._enqueue(conn, alert_id, *message)
        return True

    def alert_ids_starting(self, prefix: str, limit: int = 10) -> list[str]:
        """Ids of the alerts whose id starts with ``prefix`` (case-insensitive), at most ``limit``, newest first."""
        escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._all("SELECT id FROM alerts WHERE id LIKE ? ESCAPE '\\' ORDER BY time DESC LIMIT ?",
                         (escaped + "%", limit))
        return [row["id"] for row in rows]

    def get_alert(self, alert_id: str) -> dict[str, Any]:
        row = self._one("SELECT * FROM alerts WHERE id = ?", (alert_id,))
        if row is None:
            raise RecordNotFoundError(f"no alert with id {alert_id!r}")
        return _decode_data(row)

    def list_alerts(self, *, unacknowledged_only: bool = False,
                    session_id: Optional[int] = None) -> list[dict[str, Any]]:
        """Oldest first."""
        where, params = [], []
        if unacknowledged_only:
            where.append("acknowledged_at IS NULL")
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return [_decode_data(r) for r in self._all(f"SELECT * FROM alerts {clause} ORDER BY time, rowid", params)]

    @staticmethod
    def _enqueue(conn: sqlite3.Connection, alert_id: Optional[str], channel: str, key: str,
                 payload: dict[str, Any], session_id: Optional[int] = None) -> None:
        if channel not in OUTBOX_CHANNELS:
            raise InvalidRecordError(f"an outbox channel is one of {OUTBOX_CHANNELS}, got {channel!r}")
        conn.execute(
            "INSERT INTO outbox (key, alert_id, payload, created_at, channel, session_id) VALUES (?, ?, ?, ?, ?, ?)",
            (key, alert_id, json.dumps(payload), now_iso(), channel, session_id),
        )

    def enqueue_message(self, channel: str, key: str, payload: dict[str, Any], *,
                        session_id: Optional[int] = None) -> None:
        """Queue a message that belongs to no alert for ``channel``; one that names a child (a
        session summary) belongs to its session and is erased with it."""
        with self._tx() as conn:
            self._enqueue(conn, None, channel, key, payload, session_id)

    def next_outbox(self, channel: str = "webhook") -> Optional[OutboxEntry]:
        """The channel's oldest entry not yet delivered, or None."""
        row = self._one(
            "SELECT seq, key, alert_id, payload, attempts FROM outbox "
            "WHERE delivered_at IS NULL AND channel = ? ORDER BY seq LIMIT 1", (channel,)
        )
        if row is None:
            return None
        return OutboxEntry(row["seq"], row["key"], row["alert_id"], json.loads(row["payload"]), row["attempts"])

    def mark_outbox_delivered(self, seq: int) -> None:
        stamp = now_iso()
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_attempt_at = ?, "
                "last_error = NULL WHERE seq = ?",
                (stamp, stamp, seq),
            )

    def mark_outbox_failed(self, seq: int, error: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ?, last_error = ? WHERE seq = ?",
                (now_iso(), error[:500], seq),
            )

    def outbox_pending(self, channel: Optional[str] = None) -> int:
        if channel is None:
            return int(self._one("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")[0])
        return int(self._one("SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND channel = ?", (channel,))[0])

    def outbox_rows(self) -> list[dict[str, Any]]:
        """Every outbox row, oldest first (for status and tests)."""
        return [dict(r) for r in self._all("SELECT * FROM outbox ORDER BY seq")]

    # -- export ---------------------------------------------------------------------------

    def session_data(self, session_id: int) -> dict[str, Any]:
        """Everything recorded about one session, as plain JSON-friendly values."""
        session = self.get_session(session_id)
        profile = None
        if session.profile_id is not None:
            p = self.get_profile(session.profile_id)
            profile = {"pseudonym": p.pseudonym, "light_cap": p.light_cap, "sound_cap": p.sound_cap,
                       "vibration_cap": p.vibration_cap, "preferred_scenario": p.preferred_scenario}
        return {
            "format": "relaxd-session",
            "version": EXPORT_VERSION,
            "session": asdict(session),
            "profile": profile,
            "affect": [asdict(a) for a in self.affect_seconds(session_id)],
            "stimulus": self.stimulus_seconds(session_id),
            "events": self.events(session_id),
            "scenarios": [asdict(o) for o in self.scenario_outcomes(session_id=session_id)],
            "alerts": self.list_alerts(session_id=session_id),
        }

    def export_session(self, session_id: int, fmt: str, out_path: str | Path) -> Path:
        """Write a session as ``json`` (everything) or ``csv`` (one row per second)."""
        if fmt not in EXPORT_FORMATS:
            raise InvalidRecordError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
        data = self.session_data(session_id)
        out = Path(out_path)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", encoding="utf-8", newline="") as handle:
                if fmt == "json":
                    json.dump(data, handle, indent=2)
                    handle.write("\n")
                else:
                    _write_csv(data, handle)
        except OSError as exc:
            raise StoreError(f"cannot write the export {out} ({exc}): choose a writable path") from exc
        return out


CSV_COLUMNS = ("second", "negative", "neutral", "positive", "dominant_group", "dominant_label",
               "confidence", "face_share", "readings", "light", "sound", "vibration", "events", "alerts")


def _write_csv(data: dict[str, Any], handle: Any) -> None:
    """One row per second that has affect, stimulus, an event or an alert."""
    start = datetime.fromisoformat(data["session"]["started_at"])

    def second_of(stamp: str) -> int:
        return max(0, int((datetime.fromisoformat(stamp) - start).total_seconds()))

    rows: dict[int, dict[str, Any]] = {}

    def row(second: int) -> dict[str, Any]:
        return rows.setdefault(second, {"second": second, "events": [], "alerts": []})

    for affect in data["affect"]:
        row(affect["second"]).update(affect)
    for stimulus in data["stimulus"]:
        row(stimulus["second"]).update(stimulus)
    for event in data["events"]:
        states = f" {event['from_state']}->{event['to_state']}" if event["to_state"] else ""
        row(second_of(event["time"]))["events"].append(f"{event['kind']}{states}")
    for alert in data["alerts"]:
        row(second_of(alert["time"]))["alerts"].append(f"{alert['priority']}:{alert['kind']}")
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for second in sorted(rows):
        out = dict(rows[second])
        out["events"] = "; ".join(out["events"])
        out["alerts"] = "; ".join(out["alerts"])
        writer.writerow(out)


def _decode_data(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["data"] = json.loads(out.get("data") or "{}")
    return out
