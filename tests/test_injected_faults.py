"""Faults injected into a running chair from outside: SIGKILL, a full disk, a read-only store.

- SIGKILL is real: ``relaxd run`` in its own process, killed with signal 9 mid-session; the
  next start closes the session at the time of its last record, not at the restart.
- The full disk is real: the store lives on a 2 MB tmpfs that the test fills with a padding
  file until ENOSPC (this needs the right to mount, as root in CI has; elsewhere it skips).
- "Read-only" is SQLite's own SQLITE_READONLY, raised on the chair's connection with
  ``PRAGMA query_only``: what the daemon meets on a file that turned read-only under it.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from chairkit import wait_for

from relaxd.control import State
from relaxd.daemon import Chair
from relaxd.demo import ensure_demo_clip
from relaxd.settings import ClassifierSettings, ControllerSettings, IpcSettings, Settings, StoreSettings
from relaxd.store import SessionStore

SESSION_GOING_ON = {State.STARTING, State.RUNNING, State.PAUSED, State.HALTED}


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory) -> Path:
    return ensure_demo_clip(tmp_path_factory.mktemp("demo"))


def recorded_seconds(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            return conn.execute("SELECT COUNT(*) FROM stimulus_seconds").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def test_sigkill_mid_session_is_closed_at_its_last_record_by_the_next_start(tmp_path, tiny_model, demo_clip):
    db = tmp_path / "r.db"
    config = tmp_path / "chair.yaml"
    config.write_text(f"camera:\n  source: {demo_clip}\nclassifier:\n  model: {tiny_model}\n"
                      f"store:\n  path: {db}\nipc:\n  socket: ''\ncontrol:\n  calibration_s: 1.0\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, "-m", "relaxd", "--config", str(config), "run", "--profile", "kid-k"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert wait_for(lambda: recorded_seconds(db) >= 4, timeout=60), "the session recorded nothing"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    killed_at = datetime.now().astimezone()
    time.sleep(3.0)  # the restart comes later: a session closed at restart time would show it
    restarted_at = datetime.now().astimezone()
    restart = subprocess.run([sys.executable, "-m", "relaxd", "--config", str(config), "run", "--no-session",
                              "--duration", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert restart.returncode == 0, restart.stderr
    store = SessionStore(db)
    try:
        (session,) = store.list_sessions()
        assert session.end_reason == "daemon_restarted"
        ended = datetime.fromisoformat(session.ended_at)
        # Its last second's record is stamped with that second's end: at most a second past the kill.
        assert ended <= killed_at + timedelta(seconds=1.0), f"closed at {ended}, the kill was at {killed_at}"
        assert ended < restarted_at - timedelta(seconds=1.5), f"closed at {ended}: the restart time"
        last_second = max(row["second"] for row in store.stimulus_seconds(session.id))
        started = datetime.fromisoformat(session.started_at)
        assert (ended - started).total_seconds() >= last_second  # the recorded length is kept
    finally:
        store.close()


@pytest.fixture
def small_disk():
    """A 2 MB tmpfs of its own, so the test can fill it: needs the right to mount (root in CI)."""
    folder = Path(tempfile.mkdtemp(prefix="relaxd-small-disk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}): run as root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)
    folder.rmdir()


def settings_for(tmp_path: Path, model: Path, clip: Path) -> Settings:
    settings = Settings(classifier=ClassifierSettings(model=str(model)),
                        store=StoreSettings(path=str(tmp_path / "relaxd.db"), busy_timeout_s=0.2),
                        control=ControllerSettings(calibration_s=1.0), ipc=IpcSettings(socket=""))
    return dataclasses.replace(settings, camera=dataclasses.replace(settings.camera, source=str(clip)))


def fill_the_disk(chair: Chair) -> None:
    """Fill the store's file system (a small tmpfs) with a padding file until it says ENOSPC."""
    padding = Path(chair.store.path).parent / "padding"
    with open(padding, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error


def free_the_disk(chair: Chair) -> None:
    (Path(chair.store.path).parent / "padding").unlink()


def make_read_only(chair: Chair) -> None:
    with chair.store._lock:
        chair.store._conn.execute("PRAGMA query_only = ON")


def make_writable(chair: Chair) -> None:
    with chair.store._lock:
        chair.store._conn.execute("PRAGMA query_only = OFF")


@pytest.mark.parametrize(("break_it", "mend_it", "words"), [
    (fill_the_disk, free_the_disk, "disk holding"),
    (make_read_only, make_writable, "read-only"),
], ids=["disk-full", "read-only"])
def test_a_full_or_read_only_store_is_an_alarm_that_heals_without_losing_a_second(
        request, tmp_path, tiny_model, demo_clip, break_it, mend_it, words):
    folder = request.getfixturevalue("small_disk") if break_it is fill_the_disk else tmp_path
    chair = Chair(settings_for(folder, tiny_model, demo_clip))
    thread = threading.Thread(target=chair.run, kwargs={"profile": "kid-full", "scenario": "calm-sea"}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: chair.session_id is not None and chair.report.readings > 20)
        break_it(chair)
        assert wait_for(lambda: not chair.status()["health"]["store"]["ok"], 20), "the outage was not reported"
        store_health = chair.status()["health"]["store"]
        assert words in store_health["error"], store_health  # the advice names the real cause
        readings = chair.report.readings
        assert wait_for(lambda: chair.report.readings > readings + 20), "the control loop stalled"
        assert not chair.latch.latched and chair.controller.state in SESSION_GOING_ON
        mend_it(chair)
        assert wait_for(lambda: chair.status()["health"]["store"]["ok"], 20)
        assert wait_for(lambda: chair.status()["health"]["store"]["backlog"] == 0, 20)
    finally:
        chair.request_stop("test")
        thread.join(15)
    store = SessionStore(folder / "relaxd.db")
    try:
        (session,) = store.list_sessions()
        seconds = [row["second"] for row in store.stimulus_seconds(session.id)]
        assert seconds == list(range(seconds[0], seconds[-1] + 1)), "seconds recorded during the outage were lost"
    finally:
        store.close()
