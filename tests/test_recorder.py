"""The session recorder against a real SQLite file that another process locks."""

from __future__ import annotations

import threading
import time

import pytest
from chairkit import wait_for
from storelock import StoreLock

from relaxd.recorder import SessionRecorder
from relaxd.store import SessionStore


@pytest.fixture
def store(tmp_path):
    store = SessionStore(tmp_path / "relaxd.db", busy_timeout_s=0.2)
    yield store
    store.close()


def add_event(reason: str):
    return lambda store: store.add_event(None, "note", reason=reason)


def reasons(store) -> list[str]:
    return [row["reason"] for row in store._all("SELECT reason FROM events ORDER BY id")]


def test_rows_queue_while_another_process_locks_the_store_and_all_arrive_in_order(store):
    recorder = SessionRecorder(store).start()
    try:
        with StoreLock(store.path) as lock:
            submitted = threading.Event()

            def control_loop():
                for i in range(20):
                    recorder.submit("event", add_event(f"row {i}"))
                submitted.set()

            loop = threading.Thread(target=control_loop)
            loop.start()
            assert submitted.wait(5.0), "submit() blocked on the locked store"
            assert wait_for(lambda: not recorder.health().ok)
            health = recorder.health()
            assert health.backlog == 20 and health.outage_s > 0.0
            assert "another program holds the store's lock" in health.error  # not 'malformed'
            lock.release()
            loop.join()
        assert recorder.drain(10.0)
        assert reasons(store) == [f"row {i}" for i in range(20)]
        assert recorder.health().ok and recorder.health().outage_s == 0.0
    finally:
        recorder.close()


def test_beyond_its_budget_the_recorder_drops_counts_and_asks_for_a_fault(store):
    recorder = SessionRecorder(store, budget=5).start()
    try:
        with StoreLock(store.path):
            results = [recorder.submit("affect second", add_event(f"row {i}")) for i in range(8)]
            assert results.count(False) >= 2  # at most the budget plus the row being written are kept
            assert recorder.health().dropped == {"affect second": results.count(False)}
            assert recorder.should_fault
        assert recorder.drain(10.0)
        assert len(reasons(store)) == results.count(True)
    finally:
        recorder.close()


def test_an_outage_longer_than_fault_after_s_asks_for_a_fault(store):
    recorder = SessionRecorder(store, fault_after_s=0.3).start()
    try:
        with StoreLock(store.path):
            recorder.submit("event", add_event("waits"))
            assert wait_for(lambda: recorder.should_fault)
        assert wait_for(lambda: not recorder.should_fault)
    finally:
        recorder.close()


def test_close_gives_up_on_a_locked_store_and_says_what_was_not_written(store):
    recorder = SessionRecorder(store).start()
    with StoreLock(store.path):
        recorder.submit("event", add_event("a"))
        recorder.submit("session end", add_event("b"))
        started = time.monotonic()
        left = recorder.close(timeout_s=0.5)
        assert time.monotonic() - started < 5.0  # a bounded wait, not the lock holder's pleasure
    assert left == {"event": 1, "session end": 1} or left == {"session end": 1}
    assert recorder.submit("event", add_event("late")) is False


def test_a_row_the_store_refuses_is_logged_and_the_rest_still_written(store):
    recorder = SessionRecorder(store).start()
    try:
        recorder.submit("event", add_event("before"))
        recorder.submit("stimulus second", lambda s: s.add_stimulus_second(1, 0, light=2.0, sound=0, vibration=0))
        recorder.submit("event", add_event("after"))
        assert recorder.drain(5.0)
        assert reasons(store) == ["before", "after"]
        health = recorder.health()
        assert health.rejected == {"stimulus second": 1} and health.ok
    finally:
        recorder.close()
