"""The session record on a real SQLite file."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from relaxd.store import (
    SCHEMA_VERSION,
    AffectSecond,
    AffectSecondAccumulator,
    InvalidRecordError,
    RecordNotFoundError,
    SessionStore,
    StoreError,
)


@pytest.fixture
def store(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as s:
        yield s


def reading(time, group="neutral", label="neutral", confidence=0.8, face=True, scores=None):
    """An object shaped like relaxd.affect.AffectReading (the store only reads its fields)."""
    if scores is None:
        scores = {g: (1.0 if g == group else 0.0) for g in ("negative", "neutral", "positive")}
    return SimpleNamespace(
        time=time, face_present=face, group=group if face else "none", label=label if face else None,
        confidence=confidence if face else 0.0, group_scores=scores if face else {}, frames=15,
        face_frames=15 if face else 0,
    )


# -- opening, schema, pragmas --------------------------------------------------------------


def test_new_store_is_wal_with_foreign_keys_and_current_schema(store):
    assert store.journal_mode() == "wal"
    assert store.schema_version() == SCHEMA_VERSION
    assert store._one("PRAGMA foreign_keys")[0] == 1


def test_reopening_does_not_migrate_twice(tmp_path):
    path = tmp_path / "relaxd.db"
    SessionStore(path).close()
    with SessionStore(path) as again:
        assert again.schema_version() == SCHEMA_VERSION
    rows = sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchall()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_session_ids_are_never_reused_after_an_erasure(store):
    """Notes and exported reports that say "session 2" must keep meaning one session."""
    keep = store.create_profile("kid-keep").id
    erased = store.create_profile("kid-erased").id
    first = store.start_session(keep, "calm-sea")
    second = store.start_session(erased, "calm-sea")
    assert store.delete_profile(erased, with_sessions=True) == [second]
    third = store.start_session(keep, "calm-sea")
    assert third > second > first, (first, second, third)


def test_a_version_1_store_migrates_keeping_its_sessions_and_their_rows(tmp_path):
    """The sessions table is rebuilt for AUTOINCREMENT: ids, events and seconds of old sessions survive."""
    from relaxd import store as store_module

    path = tmp_path / "relaxd.db"
    version_1 = {1: store_module._MIGRATIONS[1]}
    original = store_module._MIGRATIONS
    store_module._MIGRATIONS, store_module.SCHEMA_VERSION = version_1, 1
    try:
        with SessionStore(path) as old:
            kid = old.create_profile("kid-old").id
            old_ids = [old.start_session(kid, "calm-sea") for _ in range(3)]
            old.add_event(old_ids[1], "started", from_state="idle", to_state="starting", reason="test")
    finally:
        store_module._MIGRATIONS, store_module.SCHEMA_VERSION = original, max(original)
    with SessionStore(path) as new:
        assert new.schema_version() == SCHEMA_VERSION
        assert [s.id for s in new.list_sessions(limit=10)] == sorted(old_ids, reverse=True)
        assert [e["kind"] for e in new.events(old_ids[1])] == ["started"]
        assert new._one("PRAGMA foreign_keys")[0] == 1
        newest = new.start_session(kid, "calm-sea")
        assert newest == max(old_ids) + 1
        erased = new.create_profile("kid-erased").id
        gone = new.start_session(erased, "calm-sea")
        new.delete_profile(erased, with_sessions=True)
        assert new.start_session(kid, "calm-sea") == gone + 1


def test_store_from_a_newer_relaxd_is_refused(tmp_path):
    path = tmp_path / "relaxd.db"
    SessionStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'later')", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this relaxd"):
        SessionStore(path)


def test_a_file_that_is_not_sqlite_gives_a_clear_error(tmp_path):
    path = tmp_path / "relaxd.db"
    path.write_bytes(b"this is a text file, not a database\n" * 200)
    with pytest.raises(StoreError) as info:
        SessionStore(path)
    message = str(info.value)
    assert str(path) in message
    assert "move it aside" in message.lower()


def test_a_corrupted_sqlite_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "relaxd.db"
    with SessionStore(path) as s:
        s.create_profile("Fox")
    raw = bytearray(path.read_bytes())
    raw[0:16] = b"garbage garbage!"  # destroy the SQLite header
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="not a readable SQLite session store"):
        SessionStore(path)


def test_an_unwritable_location_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="store.path"):
        SessionStore(blocker / "sub" / "relaxd.db")


def test_closed_store_raises_store_error(tmp_path):
    s = SessionStore(tmp_path / "relaxd.db")
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.list_profiles()


# -- profiles ------------------------------------------------------------------------------


def test_profile_create_read_update_delete(store):
    fox = store.create_profile("Fox", light_cap=0.6, sound_cap=0.4, vibration_cap=0.2,
                               preferred_scenario="forest", notes="likes green")
    assert store.get_profile(fox.id) == fox
    assert (fox.pseudonym, fox.light_cap, fox.sound_cap, fox.vibration_cap) == ("Fox", 0.6, 0.4, 0.2)
    assert store.find_profile("Fox") == fox
    store.create_profile("Owl")
    assert [p.pseudonym for p in store.list_profiles()] == ["Fox", "Owl"]

    changed = store.update_profile(fox.id, vibration_cap=0.0, preferred_scenario=None)
    assert changed.vibration_cap == 0.0 and changed.preferred_scenario is None
    assert changed.light_cap == 0.6 and changed.notes == "likes green"

    store.delete_profile(fox.id)
    with pytest.raises(RecordNotFoundError, match=str(fox.id)):
        store.get_profile(fox.id)


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_pseudonym_is_refused(store, bad):
    with pytest.raises(InvalidRecordError, match="pseudonym"):
        store.create_profile(bad)


def test_empty_pseudonym_is_refused_by_the_schema_too(store):
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store._connection().execute(
            "INSERT INTO profiles (pseudonym, created_at, updated_at) VALUES ('  ', 'now', 'now')")


@pytest.mark.parametrize("cap", [-0.1, 1.5, float("nan"), "0.5", True])
def test_cap_out_of_range_is_refused(store, cap):
    with pytest.raises(InvalidRecordError, match="light_cap"):
        store.create_profile("Fox", light_cap=cap)


def test_duplicate_pseudonym_is_refused(store):
    store.create_profile("Fox")
    with pytest.raises(InvalidRecordError, match="already exists"):
        store.create_profile(" Fox ")


def test_profile_with_sessions_is_deleted_only_when_asked(store):
    fox = store.create_profile("Fox")
    session = store.start_session(fox.id, "forest")
    with pytest.raises(InvalidRecordError, match="'Fox' has 1 recorded session.*delete-profile NAME --with-sessions"):
        store.delete_profile(fox.id)
    assert store.get_profile(fox.id) == fox, "a refused deletion deletes nothing"
    assert store.delete_profile(fox.id, with_sessions=True) == [session]
    with pytest.raises(RecordNotFoundError):
        store.get_session(session)


def test_an_erased_profile_leaves_no_trace_in_the_file(tmp_path):
    """Erasure on a family's request: the pseudonym, notes and records must not stay readable in
    free pages or the WAL, where any copy of the SD card would still carry them."""
    path = tmp_path / "relaxd.db"
    with SessionStore(path) as store:
        keep = store.create_profile("Badger")
        gone = store.create_profile("Zanzibar-Quokka", notes="ErasureMarker likes slow waves")
        for scenario in ("calm-sea", "sunset"):
            session = store.start_session(gone.id, scenario)
            store.add_event(session, "started", reason="ErasureMarker session began")
            store.add_stimulus_second(session, 0, light=0.5, sound=0.25, vibration=0.0)
        kept_session = store.start_session(keep.id, "forest")
        assert len(store.delete_profile(gone.id, with_sessions=True)) == 2
        on_disk = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.name.startswith("relaxd.db"))
        assert b"ErasureMarker" not in on_disk and b"Zanzibar-Quokka" not in on_disk
        assert b"Badger" in on_disk, "the check must be able to see what is still stored"
        assert [p.pseudonym for p in store.list_profiles()] == [keep.pseudonym]
        assert [s.id for s in store.list_sessions()] == [kept_session], "only that child's sessions go"


def test_schema_has_no_place_for_images(store):
    tables = [r[0] for r in store._all("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        types = {r["type"].upper() for r in store._all(f"PRAGMA table_info({table})")}
        assert "BLOB" not in types, table


# -- sessions, per-second rows, events -----------------------------------------------------


def test_session_lifecycle(store):
    fox = store.create_profile("Fox")
    sid = store.start_session(fox.id, "forest", started_at="2024-05-01T10:00:00.000+00:00")
    assert store.get_session(sid).ended_at is None
    assert store.end_session(sid, "completed", ended_at="2024-05-01T10:20:00.000+00:00") is True
    assert store.end_session(sid, "again") is False
    record = store.get_session(sid)
    assert (record.end_reason, record.ended_at) == ("completed", "2024-05-01T10:20:00.000+00:00")
    assert [s.id for s in store.list_sessions(profile_id=fox.id)] == [sid]


def test_sessions_left_open_by_a_crash_are_closed_at_start(store):
    first = store.start_session(None, "demo")
    second = store.start_session(None, "demo")
    store.end_session(second, "completed")
    assert store.close_unfinished_sessions() == [first]
    assert store.get_session(first).end_reason == "daemon_restarted"
    assert store.get_session(second).end_reason == "completed"


def test_session_for_an_unknown_profile_is_refused(store):
    with pytest.raises(RecordNotFoundError, match="no profile with id 99"):
        store.start_session(99, "forest")


def test_accumulator_makes_one_row_per_second():
    acc = AffectSecondAccumulator(start_time=100.0)
    rows = []
    stream = [
        reading(100.1, "neutral", "neutral", 0.8),
        reading(100.5, "negative", "sad", 0.6, scores={"negative": 0.6, "neutral": 0.4, "positive": 0.0}),
        reading(100.9, "negative", "sad", 0.4, scores={"negative": 0.8, "neutral": 0.2, "positive": 0.0}),
        reading(101.2, face=False),
        reading(101.7, face=False),
        reading(103.0, "positive", "happy", 0.9),  # second 2 had no reading: no row
    ]
    for r in stream:
        row = acc.add(r)
        if row is not None:
            rows.append(row)
    rows.append(acc.flush())
    assert acc.flush() is None
    assert [r.second for r in rows] == [0, 1, 3]

    first = rows[0]
    assert first.readings == 3 and first.face_share == 1.0
    assert first.negative == pytest.approx((0 + 0.6 + 0.8) / 3)
    assert first.neutral == pytest.approx((1 + 0.4 + 0.2) / 3)
    assert (first.dominant_group, first.dominant_label) == ("negative", "sad")
    assert first.confidence == pytest.approx(0.5)

    empty = rows[1]
    assert (empty.dominant_group, empty.dominant_label, empty.face_share, empty.readings) == ("none", None, 0.0, 2)
    assert rows[2].dominant_label == "happy" and rows[2].positive == 1.0


def test_accumulator_works_with_real_affect_readings():
    affect = pytest.importorskip("relaxd.affect")
    real = affect.AffectReading(time=5.2, face_present=True, group="positive", label="happy", confidence=0.7,
                                group_scores={"negative": 0.1, "neutral": 0.2, "positive": 0.7}, frames=15,
                                face_frames=14)
    acc = AffectSecondAccumulator(start_time=5.0)
    assert acc.add(real) is None
    row = acc.flush()
    assert (row.second, row.dominant_group, row.positive) == (0, "positive", 0.7)


def populate(store):
    """A short session with affect, stimulus, events and an alert."""
    fox = store.create_profile("Fox", light_cap=0.5)
    sid = store.start_session(fox.id, "forest", started_at="2024-05-01T10:00:00.000+00:00")
    acc = AffectSecondAccumulator(0.0)
    for t in (0.2, 0.6, 1.1, 1.5, 2.3):
        row = acc.add(reading(t, "positive" if t > 1 else "neutral", "happy" if t > 1 else "neutral", 0.75))
        if row:
            store.add_affect_second(sid, row)
    store.add_affect_second(sid, acc.flush())
    for second, level in enumerate((0.1, 0.2, 0.3)):
        store.add_stimulus_second(sid, second, light=level, sound=level / 2, vibration=0.0)
    store.add_event(sid, "transition", from_state="starting", to_state="running", reason="calibrated",
                    time="2024-05-01T10:00:01.200+00:00")
    store.add_event(sid, "step_up", reason="positive for 1 s", data={"intensity": 0.3},
                    time="2024-05-01T10:00:02.500+00:00")
    store.insert_alert(alert_id="a1", time="2024-05-01T10:00:02.900+00:00", kind="child_left", priority="medium",
                       message="no face for 10 s", session_id=sid, data={"seconds": 10})
    store.end_session(sid, "completed", ended_at="2024-05-01T10:00:03.000+00:00")
    return sid


def test_per_second_rows_are_stored_in_order(store):
    sid = populate(store)
    affect = store.affect_seconds(sid)
    assert [a.second for a in affect] == [0, 1, 2]
    assert [a.dominant_label for a in affect] == ["neutral", "happy", "happy"]
    assert [s["light"] for s in store.stimulus_seconds(sid)] == [0.1, 0.2, 0.3]
    assert [e["kind"] for e in store.events(sid)] == ["transition", "step_up"]
    assert store.events(sid)[1]["data"] == {"intensity": 0.3}


def test_stimulus_level_out_of_range_is_refused(store):
    sid = store.start_session(None, "demo")
    with pytest.raises(InvalidRecordError, match="vibration"):
        store.add_stimulus_second(sid, 0, light=0.1, sound=0.1, vibration=1.2)


def test_foreign_keys_are_enforced(store):
    with pytest.raises(InvalidRecordError):
        store.add_affect_second(12345, AffectSecond(0, 0, 1, 0, "neutral", "neutral", 1, 1, 1))


# -- export --------------------------------------------------------------------------------


def test_export_json_round_trip(store, tmp_path):
    sid = populate(store)
    out = store.export_session(sid, "json", tmp_path / "out" / "session.json")
    data = json.loads(out.read_text())
    assert data["format"] == "relaxd-session" and data["version"] == 1
    assert data["session"]["id"] == sid and data["session"]["end_reason"] == "completed"
    assert data["profile"]["pseudonym"] == "Fox" and data["profile"]["light_cap"] == 0.5
    assert data["affect"] == [asdict(a) for a in store.affect_seconds(sid)]
    assert data["stimulus"] == store.stimulus_seconds(sid)
    assert data["events"] == store.events(sid)
    assert [a["id"] for a in data["alerts"]] == ["a1"]
    assert "notes" not in data["profile"]  # free-text notes stay in the store


def test_export_csv_round_trip(store, tmp_path):
    sid = populate(store)
    out = store.export_session(sid, "csv", tmp_path / "session.csv")
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["second"]) for r in rows] == [0, 1, 2]
    for row, affect, stimulus in zip(rows, store.affect_seconds(sid), store.stimulus_seconds(sid)):
        for key in ("negative", "neutral", "positive", "confidence", "face_share"):
            assert float(row[key]) == getattr(affect, key)
        assert row["dominant_label"] == affect.dominant_label
        for key in ("light", "sound", "vibration"):
            assert float(row[key]) == stimulus[key]
    assert rows[1]["events"] == "transition starting->running"
    assert rows[2]["events"] == "step_up"
    assert rows[2]["alerts"] == "medium:child_left"


def test_export_rejects_unknown_format_and_unknown_session(store, tmp_path):
    sid = populate(store)
    with pytest.raises(InvalidRecordError, match="csv"):
        store.export_session(sid, "xlsx", tmp_path / "x")
    with pytest.raises(RecordNotFoundError):
        store.export_session(999, "json", tmp_path / "x.json")


# -- threads -------------------------------------------------------------------------------


def test_concurrent_writes_from_two_threads(store):
    sid = store.start_session(None, "demo")
    errors = []
    start = threading.Barrier(2)

    def write_events(tag):
        try:
            start.wait()
            for i in range(200):
                store.add_event(sid, f"{tag}", reason=str(i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write_events, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = store.events(sid)
    assert len(events) == 400
    for tag in ("a", "b"):  # each thread's rows arrived complete and in its own order
        assert [int(e["reason"]) for e in events if e["kind"] == tag] == list(range(200))


def test_two_stores_on_one_file_share_it(tmp_path):
    path = tmp_path / "relaxd.db"
    with SessionStore(path) as daemon, SessionStore(path) as panel:
        fox = daemon.create_profile("Fox")
        assert panel.get_profile(fox.id).pseudonym == "Fox"
