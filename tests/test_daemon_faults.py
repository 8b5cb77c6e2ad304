"""The daemon under faults that used to stall or crash it: a locked store, a refusing or silent board.

Each test runs a real chair (demo clip, real SQLite file, fake microcontroller on a pty) and
checks what the chair did: no watchdog trip, the documented fault state, the record complete.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from chairkit import wait_for
from fakemcu import FakeMcu
from storelock import StoreLock

from relaxd.control import State

SESSION_GOING_ON = {State.STARTING, State.RUNNING, State.PAUSED, State.HALTED}
from relaxd.daemon import Chair
from relaxd.demo import ensure_demo_clip
from relaxd.settings import (ActuatorSettings, ClassifierSettings, ControllerSettings, IpcSettings, Settings,
                             StoreSettings)
from relaxd.store import SessionStore


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory) -> Path:
    return ensure_demo_clip(tmp_path_factory.mktemp("demo"))


def settings_for(tmp_path: Path, model: Path, clip: Path, **sections) -> Settings:
    settings = Settings(
        classifier=ClassifierSettings(model=str(model)),
        store=StoreSettings(path=str(tmp_path / "relaxd.db"), busy_timeout_s=0.2),
        control=ControllerSettings(calibration_s=1.0),
        ipc=IpcSettings(socket=""),
        **sections,
    )
    return dataclasses.replace(settings, camera=dataclasses.replace(settings.camera, source=str(clip)))


def serial_actuators(mcu: FakeMcu) -> ActuatorSettings:
    return ActuatorSettings(light_backend="serial", vibration_backend="serial", serial_port=mcu.port,
                            serial_ack_timeout_s=0.25, serial_retries=3, serial_heartbeat_s=0.1,
                            serial_link_timeout_s=3.0, serial_deadman_ms=1000,
                            light_ramp_up_per_s=10.0, vibration_ramp_up_per_s=10.0)


def run_in_thread(chair: Chair, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=chair.run, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def stop(chair: Chair, thread: threading.Thread) -> None:
    chair.request_stop("test")
    thread.join(15)
    assert not thread.is_alive(), "the daemon did not stop"


def test_a_store_locked_by_another_process_for_3_s_neither_stalls_nor_stops_the_chair(tmp_path, tiny_model, demo_clip):
    chair = Chair(settings_for(tmp_path, tiny_model, demo_clip))
    thread = run_in_thread(chair, profile="kid-lock", scenario="calm-sea")
    try:
        assert wait_for(lambda: chair.bank.light.value > 0.0 and chair.session_id is not None)
        with StoreLock(tmp_path / "relaxd.db"):
            locked_at = chair.report.readings
            assert wait_for(lambda: not chair.status()["health"]["store"]["ok"]), "the outage was not reported"
            assert wait_for(lambda: chair.report.readings > locked_at + 10), "the control loop stalled"
            status = chair.status()  # answers while the lock is held: it reads no store
            assert status["health"]["store"]["backlog"] > 0 and "lock" in status["health"]["store"]["error"]
            time.sleep(3.0)
            assert not chair.latch.latched, f"the locked store tripped the {chair.latch.tripped_by}"
            assert chair.controller.state in SESSION_GOING_ON
        assert wait_for(lambda: chair.status()["health"]["store"]["ok"])
        assert wait_for(lambda: chair.status()["health"]["store"]["backlog"] == 0), "the backlog was not written"
    finally:
        stop(chair, thread)
    store = SessionStore(tmp_path / "relaxd.db")
    (session,) = store.list_sessions()
    assert session.end_reason == "daemon_stopped"
    seconds = [row["second"] for row in store.stimulus_seconds(session.id)]
    assert seconds == list(range(seconds[0], seconds[-1] + 1)), "seconds recorded during the lock were lost"
    store.close()


def test_a_store_unavailable_past_the_fault_limit_faults_the_session_and_alerts(tmp_path, tiny_model, demo_clip):
    chair = Chair(settings_for(tmp_path, tiny_model, demo_clip))
    chair.recorder.fault_after_s = 0.5
    thread = run_in_thread(chair, profile="kid-full", scenario="calm-sea")
    try:
        assert wait_for(lambda: chair.bank.light.value > 0.0 and chair.session_id is not None)
        with StoreLock(tmp_path / "relaxd.db"):
            assert wait_for(lambda: chair.controller.state == State.FAULT), "an unrecordable session kept going"
            assert wait_for(lambda: chair.bank.light.value == 0.0)
            assert not chair.latch.latched  # a fault, not a watchdog e-stop
        assert wait_for(lambda: any(a.kind == "store_failed" for a in chair.alerts.active()))
        assert thread.is_alive()
    finally:
        stop(chair, thread)
    store = SessionStore(tmp_path / "relaxd.db")
    (session,) = store.list_sessions()
    assert session.end_reason == "fault"
    assert any("session record cannot be written" in (e["reason"] or "") for e in store.events(session.id))
    store.close()


def test_stopping_with_the_store_locked_is_prompt_and_the_next_start_closes_at_the_last_record(
        tmp_path, tiny_model, demo_clip):
    chair = Chair(settings_for(tmp_path, tiny_model, demo_clip))
    thread = run_in_thread(chair, profile="kid-term", scenario="calm-sea")
    assert wait_for(lambda: chair.bank.light.value > 0.0 and chair.session_id is not None)
    with StoreLock(tmp_path / "relaxd.db"):
        time.sleep(0.5)
        started = time.monotonic()
        stop(chair, thread)
        assert time.monotonic() - started < 10.0
        assert chair.report.unwritten.get("session end") == 1, chair.report.unwritten
    store = SessionStore(tmp_path / "relaxd.db")
    (open_session,) = store.list_sessions()
    assert open_session.ended_at is None
    restart = time.time()
    store.close_unfinished_sessions()
    (closed,) = store.list_sessions()
    ended = closed.ended_at
    assert closed.end_reason == "daemon_restarted" and closed.started_at <= ended
    from datetime import datetime
    assert datetime.fromisoformat(ended).timestamp() < restart, "closed at the restart time, not the last record"
    store.close()


def test_a_refused_serial_command_faults_the_session_instead_of_ending_the_daemon(tmp_path, tiny_model, demo_clip):
    mcu = FakeMcu()
    chair = Chair(settings_for(tmp_path, tiny_model, demo_clip, actuators=serial_actuators(mcu)))
    thread = run_in_thread(chair, profile="kid-nak", scenario="calm-sea")
    try:
        assert wait_for(lambda: any(mcu.light))
        mcu.nak_always["LIGHT"] = "RANGE"
        assert wait_for(lambda: chair.controller.state == State.FAULT), "the refusal did not fault the session"
        assert thread.is_alive(), "the daemon ended on a NAK"
        assert wait_for(lambda: any(a.kind == "link_lost" and "RANGE" in a.message for a in chair.alerts.active()))
        assert chair.bank.latched and not chair.latch.latched
    finally:
        stop(chair, thread)
        mcu.close()
    store = SessionStore(tmp_path / "relaxd.db")
    (session,) = store.list_sessions()
    assert session.end_reason == "fault"
    assert any("RANGE" in (e["reason"] or "") for e in store.events(session.id))
    store.close()


def test_a_silent_board_faults_the_session_and_records_it(tmp_path, tiny_model, demo_clip):
    mcu = FakeMcu()
    chair = Chair(settings_for(tmp_path, tiny_model, demo_clip, actuators=serial_actuators(mcu)))
    thread = run_in_thread(chair, profile="kid-silent", scenario="calm-sea")
    try:
        assert wait_for(lambda: any(mcu.light))
        mcu.silent = True
        assert wait_for(lambda: chair.controller.state == State.FAULT), "a silent board did not fault the session"
        assert thread.is_alive() and not chair.latch.latched, "a silent board is a fault, not a watchdog e-stop"
    finally:
        stop(chair, thread)
        mcu.close()
    store = SessionStore(tmp_path / "relaxd.db")
    (session,) = store.list_sessions()
    assert session.end_reason == "fault"
    assert any("link lost" in (e["reason"] or "") for e in store.events(session.id))
    store.close()


def test_two_damaged_replies_in_a_row_neither_stop_nor_fault_the_session(tmp_path, tiny_model, demo_clip):
    mcu = FakeMcu()
    chair = Chair(settings_for(tmp_path, tiny_model, demo_clip, actuators=serial_actuators(mcu)))
    thread = run_in_thread(chair, profile="kid-crc", scenario="calm-sea")
    try:
        assert wait_for(lambda: any(mcu.light))
        mcu.corrupt_acks = 2
        assert wait_for(lambda: mcu.corrupt_acks == 0)
        time.sleep(1.0)
        assert chair.controller.state in SESSION_GOING_ON and not chair.latch.latched and not chair.bank.latched
    finally:
        stop(chair, thread)
        mcu.close()


def test_the_buzzer_sounds_at_once_while_the_store_is_locked_and_the_alert_is_stored_after(
        tmp_path, tiny_model, demo_clip):
    """Alerts used to be stored first: a locked store kept the nurse-call relay silent until it was back."""
    from gpiozero.pins.mock import MockFactory

    from relaxd.settings import AlertSettings

    factory = MockFactory()
    chair = Chair(settings_for(tmp_path, tiny_model, demo_clip, alerts=AlertSettings(relay_pin=23)),
                  pin_factory=factory)
    relay = factory.pin(23)
    thread = run_in_thread(chair, profile="kid-buzz", scenario="calm-sea")
    try:
        assert wait_for(lambda: chair.session_id is not None)
        with StoreLock(tmp_path / "relaxd.db") as lock:
            chair._alert("adverse_reaction", "high", "test: sustained distress")
            assert relay.state == 1, "the relay waited for the store"
            assert any(alert.kind == "adverse_reaction" for alert in chair.alerts.active())
            time.sleep(1.0)
            lock.release()
            assert wait_for(lambda: chair.status()["health"]["store"]["backlog"] == 0)
    finally:
        stop(chair, thread)
    store = SessionStore(tmp_path / "relaxd.db")
    stored = [alert for alert in store.list_alerts() if alert["kind"] == "adverse_reaction"]
    assert len(stored) == 1 and stored[0]["session_id"] is not None
    store.close()
