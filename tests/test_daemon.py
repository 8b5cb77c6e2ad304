"""``relaxd run`` end to end, in simulation: the generated demo clip as the camera,
simulated (or gpiozero mock) outputs, a real SQLite file, a real TFLite model.

Safety properties are checked on what the outputs were really told, not on the
controller's intentions.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from chairkit import outputs_of, wait_for
from fakemcu import FakeMcu
from gpiozero.pins.mock import MockFactory
from mockpins import ChairPin

from relaxd.actuators.serial_link import encode
from relaxd.commands import ChairCommands
from relaxd.control import STIMULATING, State
from relaxd.daemon import Chair, resolve_demo_source
from relaxd.ipc import CommandError
from relaxd.demo import ensure_demo_clip
from relaxd.settings import (ActuatorSettings, ClassifierSettings, ControllerSettings, IpcSettings, SafetySettings,
                             Settings, StoreSettings)
from relaxd.store import SessionStore, StoreError


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory) -> Path:
    return ensure_demo_clip(tmp_path_factory.mktemp("demo"))


def chair_settings(tmp_path: Path, model: Path, clip: Path, **sections) -> Settings:
    settings = Settings(
        classifier=ClassifierSettings(model=str(model)),
        store=StoreSettings(path=str(tmp_path / "relaxd.db")),
        control=ControllerSettings(calibration_s=1.0),
        ipc=IpcSettings(socket=""),  # no control socket: tests must not collide with a running daemon
        **sections,
    )
    return dataclasses.replace(settings, camera=dataclasses.replace(settings.camera, source=str(clip)))




def run_in_thread(chair: Chair, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=chair.run, kwargs=kwargs, daemon=True)
    thread.start()
    return thread




def test_a_simulated_session_stimulates_and_is_recorded(tmp_path, tiny_model, demo_clip):
    chair = Chair(chair_settings(tmp_path, tiny_model, demo_clip))
    thread = run_in_thread(chair, profile="kid-a", scenario="calm-sea")
    assert wait_for(lambda: chair.bank.light.value > 0.0 and chair.report.readings > 5), "the light never came on"
    status = chair.status()
    assert status["scenario"] == "calm-sea" and status["phase"], status
    assert status["session"]["profile"] == "kid-a" and status["levels"]["light"] > 0
    chair.request_stop("test")
    thread.join(10)
    assert not thread.is_alive()
    report = chair.report
    assert report.frames > 0 and report.readings > 0
    assert [e["kind"] for e in report.events][:1] == ["started"]
    assert all(value == 0.0 for value in outputs_of(chair).values()), "outputs must be off after exit"
    store = SessionStore(tmp_path / "relaxd.db")
    (session,) = store.list_sessions()
    assert session.ended_at is not None and session.scenario == "calm-sea"
    assert store.stimulus_seconds(session.id), "per-second stimulus levels were not recorded"
    assert chair.bank.sound.sources and chair.bank.sound.sources[0][1].startswith("generated"), \
        "the sound output did not follow the scenario's generated sound"
    assert any(e["kind"] == "started" for e in store.events(session.id))
    store.close()


def test_the_cameras_own_small_grey_frame_is_what_the_detector_gets(tmp_path, tiny_model, demo_clip, monkeypatch):
    """A Pi camera delivers a lores Y plane beside the main frame (issue 16): the daemon must ask for
    it at the detector's width and hand that very array to the pipeline, not convert again."""
    import cv2

    from relaxd.capture import grabber as grabber_module

    real_open, widths, sent, received = grabber_module.open_source, [], [], []

    def open_with_small_gray(settings, *, realtime=None, small_width=0):
        source = real_open(settings, realtime=realtime, small_width=small_width)
        widths.append(small_width)

        def read_with_small_gray():
            image = source.read()
            if image is None:
                return None, None
            height = image.shape[0] * small_width // image.shape[1]
            small = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (small_width, height))
            sent.append(small)
            return image, small

        source.read_with_small_gray = read_with_small_gray
        return source

    monkeypatch.setattr(grabber_module, "open_source", open_with_small_gray)
    settings = chair_settings(tmp_path, tiny_model, demo_clip)
    chair = Chair(settings)
    process = chair.pipeline.process

    def spy(image, timestamp, index, small_gray=None):
        received.append(small_gray)
        return process(image, timestamp, index, small_gray)

    chair.pipeline.process = spy
    thread = run_in_thread(chair, profile="kid-lores", scenario="calm-sea")
    try:
        assert wait_for(lambda: len(received) > 10 and chair.report.readings > 5), "vision never ran"
    finally:
        chair.request_stop("test")
        thread.join(10)
    assert widths and set(widths) == {settings.detector.detect_width}
    assert all(small is not None and any(small is copy for copy in sent) for small in received), \
        "the pipeline got something other than the camera's own small grey frame"
    assert chair.report.readings > 0, "no face was found on the small grey frames"


def test_estop_button_cuts_every_output_and_latches(tmp_path, tiny_model, demo_clip):
    factory = MockFactory(pin_class=ChairPin)
    settings = chair_settings(
        tmp_path, tiny_model, demo_clip,
        actuators=ActuatorSettings(light_backend="gpio", vibration_backend="gpio",
                                   light_ramp_up_per_s=10, vibration_ramp_up_per_s=10),
        safety=SafetySettings(estop_pin=5),
    )
    estop_pin = factory.pin(5)  # a ChairPin: the normally-closed contact is closed, no stop
    chair = Chair(settings, pin_factory=factory)
    thread = run_in_thread(chair, profile="kid-b", scenario="calm-sea")
    output_pins = [factory.pin(n) for n in (17, 27, 22, 12)]
    assert wait_for(lambda: any(pin.state > 0 for pin in output_pins)), "no output came on"

    estop_pin.drive_high()  # pressed (or the wire was cut)
    assert [pin.state for pin in output_pins] == [0, 0, 0, 0], "outputs must be off when the edge callback returns"
    assert wait_for(lambda: chair.controller.state == State.ESTOPPED)
    time.sleep(0.3)
    assert [pin.state for pin in output_pins] == [0, 0, 0, 0], "the control loop switched an output back on"
    assert any(alert.kind == "estop" for alert in chair.alerts.active())
    chair.request_stop("test")
    thread.join(10)
    assert chair.report.final_state == "estopped"


def test_a_part_that_fails_to_open_closes_the_ones_opened_before_it(tmp_path, tiny_model, demo_clip):
    """A corrupted store file fails the chair's construction after the outputs and the e-stop
    button are open: both are closed again (pins released, outputs off), so a second chair on
    the same pins can open them and a technician meets one clear error, not a pin conflict."""
    factory = MockFactory(pin_class=ChairPin)
    settings = chair_settings(tmp_path, tiny_model, demo_clip,
                              actuators=ActuatorSettings(light_backend="gpio", vibration_backend="gpio"),
                              safety=SafetySettings(estop_pin=5))
    (tmp_path / "relaxd.db").write_bytes(b"not a database, just bytes" * 100)
    settings = dataclasses.replace(settings, store=dataclasses.replace(settings.store, path=str(tmp_path / "relaxd.db")))
    with pytest.raises(StoreError):
        Chair(settings, pin_factory=factory)
    assert [factory.pin(n).state for n in (17, 27, 22, 12)] == [0, 0, 0, 0]
    (tmp_path / "relaxd.db").unlink()
    chair = Chair(settings, pin_factory=factory)  # the same pins open again: the first chair released them
    chair.close()


def test_camera_loss_fades_to_idle_and_alerts(tmp_path, tiny_model, demo_clip):
    settings = chair_settings(tmp_path, tiny_model, demo_clip)
    settings = dataclasses.replace(settings, camera=dataclasses.replace(
        settings.camera, loop=False, stall_timeout_s=0.3, reconnect_initial_s=0.1, reconnect_max_s=0.2))
    chair = Chair(settings)
    thread = run_in_thread(chair, profile="kid-c", scenario="calm-sea")
    assert wait_for(lambda: any(a.kind == "camera_lost" for a in chair.alerts.active()), timeout=40)
    assert wait_for(lambda: chair.controller.state not in STIMULATING, timeout=15)
    chair.request_stop("test")
    thread.join(10)
    assert all(value == 0.0 for value in outputs_of(chair).values())


def test_systemd_is_asked_to_restart_for_a_hung_camera_not_for_an_unplugged_one(tmp_path, tiny_model, demo_clip):
    """The back-off reconnects an unplugged camera in-process; a restart loop would only end in
    systemd giving up. A driver call that never returns is what the restart is for."""
    chair = Chair(chair_settings(tmp_path, tiny_model, demo_clip))
    real = chair.grabber
    try:
        chair.grabber = types.SimpleNamespace(stalled=True, hung=False)  # reconnecting with back-off
        assert chair.health.failing() == []
        chair.grabber = types.SimpleNamespace(stalled=True, hung=True)  # stuck inside read()/open()
        assert chair.health.failing() == ["camera"]
    finally:
        chair.grabber = real
        chair.close()


def test_a_lost_microcontroller_link_faults_the_session_and_reset_asks_for_a_restart(tmp_path, tiny_model, demo_clip):
    mcu = FakeMcu()
    settings = chair_settings(
        tmp_path, tiny_model, demo_clip,
        actuators=ActuatorSettings(light_backend="serial", vibration_backend="serial", serial_port=mcu.port,
                                   serial_ack_timeout_s=0.25, serial_retries=3, serial_heartbeat_s=0.1,
                                   serial_link_timeout_s=3.0, serial_deadman_ms=1000,
                                   light_ramp_up_per_s=10.0, vibration_ramp_up_per_s=10.0))
    chair = Chair(settings)
    thread = run_in_thread(chair, profile="kid-link", scenario="calm-sea")
    try:
        assert wait_for(lambda: any(mcu.light)), "the light never came on over the link"
        mcu.send_raw(encode(0, "DEADMAN"))  # the firmware reports that its dead-man timer fired
        assert wait_for(lambda: chair.controller.state == State.FAULT), "the controller did not fault"
        assert chair.bank.latched and any(alert.kind == "link_lost" for alert in chair.alerts.active())
        assert "outputs" in chair.health.failing(), "systemd must be told to restart the daemon (and reopen the link)"
        commands = ChairCommands(chair, timeout_s=2.0)
        with pytest.raises(CommandError, match="restart the daemon"):
            commands.handle("reset", {"by": "test"})
        assert chair.controller.state == State.FAULT and chair.bank.latched
        commands.handle("estop", {"by": "test"})
        assert wait_for(lambda: chair.controller.state == State.ESTOPPED)
        with pytest.raises(CommandError, match="restart the daemon"):  # an e-stop reset must not unlatch it either
            commands.handle("reset", {"by": "test"})
        assert chair.bank.latched and chair.latch.latched
    finally:
        chair.request_stop("test")
        thread.join(10)
        mcu.close()
    store = SessionStore(tmp_path / "relaxd.db")
    (session,) = store.list_sessions()
    assert session.end_reason == "fault"
    assert any("microcontroller link lost" in (e["reason"] or "") for e in store.events(session.id))
    store.close()


def test_a_failing_vision_loop_faults_the_session_and_asks_systemd_for_a_restart(tmp_path, tiny_model, demo_clip):
    """An exception in detection or inference (a broken runtime, a frame OpenCV rejects) ends the
    vision thread: the chair must say so at once, not run blind until the reading timeout and then
    sit in a fault that no reset can clear."""
    settings = chair_settings(tmp_path, tiny_model, demo_clip, actuators=ActuatorSettings(light_ramp_up_per_s=10))
    chair = Chair(settings)
    thread = run_in_thread(chair, profile="kid-vision", scenario="calm-sea")
    try:
        assert wait_for(lambda: chair.bank.light.value > 0.0), "the session never stimulated"

        def broken(*args, **kwargs):
            raise RuntimeError("tensor arena too small")

        chair.pipeline.process = broken
        assert wait_for(lambda: chair.controller.state == State.FAULT, timeout=2.0), \
            "the controller did not fault before the reading timeout"
        assert wait_for(lambda: all(value == 0.0 for value in outputs_of(chair).values()))
        (alert,) = [a for a in chair.alerts.active() if a.kind == "fault"]
        assert alert.message == "vision failed: RuntimeError: tensor arena too small"
        assert chair.health.failing() == ["vision"], "systemd must be told to restart the daemon"
        assert chair.status()["health"]["vision"]["ok"] is False
        with pytest.raises(CommandError, match="restart the daemon"):
            ChairCommands(chair, timeout_s=2.0).handle("reset", {"by": "test"})
        assert chair.controller.state == State.FAULT
    finally:
        chair.request_stop("test")
        thread.join(10)
    store = SessionStore(tmp_path / "relaxd.db")
    (session,) = store.list_sessions()
    assert session.end_reason == "fault"
    assert any("vision failed: RuntimeError: tensor arena too small" in (e["reason"] or "")
               for e in store.events(session.id))
    store.close()


def test_watchdog_expiry_switches_outputs_off(tmp_path, tiny_model, demo_clip):
    settings = chair_settings(tmp_path, tiny_model, demo_clip, safety=SafetySettings(watchdog_deadline_s=0.2),
                              actuators=ActuatorSettings(light_ramp_up_per_s=10))
    chair = Chair(settings)
    thread = run_in_thread(chair, profile="kid-d", scenario="calm-sea")
    assert wait_for(lambda: chair.bank.light.value > 0.0)
    original = chair.control_step
    stuck = threading.Event()

    def hang_once(now: float) -> None:
        if not stuck.is_set():
            stuck.set()
            time.sleep(1.0)  # the control loop misses its deadline
        original(now)

    chair.control_step = hang_once
    assert wait_for(lambda: chair.latch.latched, timeout=5), "the watchdog did not trip"
    assert chair.latch.tripped_by == "watchdog"
    assert all(value == 0.0 for value in outputs_of(chair).values())
    chair.request_stop("test")
    thread.join(10)


def test_resolve_demo_source_points_the_camera_at_the_generated_clip(tmp_path):
    settings = resolve_demo_source(Settings(), tmp_path)
    assert Path(settings.camera.source).is_file() and Path(settings.camera.source).parent == tmp_path


def test_sigterm_stops_the_daemon_cleanly(tmp_path, tiny_model, demo_clip):
    config = tmp_path / "chair.yaml"
    config.write_text(
        f"camera:\n  source: {demo_clip}\nclassifier:\n  model: {tiny_model}\n"
        f"store:\n  path: {tmp_path / 'r.db'}\nipc:\n  socket: ''\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "relaxd", "--config", str(config), "run"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    store_path = tmp_path / "r.db"
    assert wait_for(lambda: store_path.exists() and store_path.stat().st_size > 0, timeout=30)
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "stopped while" in out and "ended by this stop" in out
    store = SessionStore(store_path)
    (session,) = store.list_sessions()
    assert session.end_reason == "daemon_stopped"
    store.close()


STUCK_CAMERA_RUN = """
import sys, threading
from relaxd.capture import sources

original_read = sources.OpenCVSource.read
calls = [0]

def read_then_hang(self):
    calls[0] += 1
    if calls[0] > 5:
        threading.Event().wait()  # a camera stuck inside its driver call, never returning
    return original_read(self)

sources.OpenCVSource.read = read_then_hang
from relaxd.cli import main
sys.exit(main(["--config", sys.argv[1], "run", "--duration", "2"]))
"""


def test_a_camera_stuck_at_exit_does_not_keep_the_daemon_or_crash_it(tmp_path, tiny_model, demo_clip):
    """Python finalising under a thread stuck in native code aborts (exit 134): the daemon leaves first."""
    config = tmp_path / "chair.yaml"
    config.write_text(
        f"camera:\n  source: {demo_clip}\nclassifier:\n  model: {tiny_model}\n"
        f"store:\n  path: {tmp_path / 'r.db'}\nipc:\n  socket: ''\n"
    )
    result = subprocess.run([sys.executable, "-c", STUCK_CAMERA_RUN, str(config)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr
    assert "relaxd-capture still blocked" in result.stderr and "stopped while" in result.stdout
    store = SessionStore(tmp_path / "r.db")
    (session,) = store.list_sessions()
    assert session.end_reason == "daemon_stopped"  # the record was closed before leaving
    store.close()
