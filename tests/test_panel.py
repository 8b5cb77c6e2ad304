"""The touchscreen panel, end to end against a running ``Chair`` in simulation.

A real ``PanelApp`` draws with pygame on SDL's dummy video driver; touches are pygame
events posted to its queue; what the daemon did is checked over the control socket.
Each screen is saved as a PNG in ``tmp_path`` and checked for its red STOP (by pixel
colour at the STOP rectangle) and for the text it drew.

The camera plays a generated faceless clip, as in test_ipc: with no face the affect rules
never halt or lower, so the chair's state is the one the panel's touches produced.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # before pygame's import (conftest sets it too)

import numpy as np
import pygame
import pytest
from chairkit import call, faceless_clip, short_dir, wait_for

from relaxd.daemon import Chair
from relaxd.ipc import ControlServer
from relaxd.panel import PanelConfigError, PanelProtocolError
from relaxd.panel.app import PanelApp, check_pin, main, parse_size
from relaxd.panel.client import ChairLink, PanelState, Sample, Timeline
from relaxd.panel.screens import (STOP_RECT, DisconnectedScreen, HomeScreen, SessionsScreen, SettingsScreen,
                                  session_label)
from relaxd.panel.widgets import ALARM_HIGH, GROUP_COLOURS, STOP_RED, Button, Painter, PanelLayoutError
from relaxd.settings import (ActuatorSettings, ClassifierSettings, ControllerSettings, IpcSettings, PanelSettings,
                             Settings, StoreSettings)

PIN = "2468"
FAST = PanelSettings(pin=PIN, poll_interval_s=0.1, reconnect_initial_s=0.1, reconnect_max_s=0.3, notice_s=30.0)


# --------------------------------------------------------------------------- helpers






def start_chair(store_dir: Path, model: Path, clip: Path, socket_path: Path) -> tuple[Chair, threading.Thread]:
    settings = Settings(
        classifier=ClassifierSettings(model=str(model)),
        store=StoreSettings(path=str(store_dir / "relaxd.db")),
        control=ControllerSettings(calibration_s=0.5, no_face_pause_s=60.0, child_left_s=600.0),
        actuators=ActuatorSettings(light_ramp_up_per_s=10.0, sound_ramp_up_per_s=10.0, vibration_ramp_up_per_s=10.0),
        ipc=IpcSettings(socket=str(socket_path), command_timeout_s=2.0),
    )
    chair = Chair(dataclasses.replace(settings, camera=dataclasses.replace(settings.camera, source=str(clip))))
    thread = threading.Thread(target=chair.run, daemon=True)
    thread.start()
    assert wait_for(lambda: socket_path.exists()), "the control socket never appeared"
    return chair, thread


def stop_chair(chair: Chair, thread: threading.Thread) -> None:
    chair.request_stop("test done")
    thread.join(10)
    assert not thread.is_alive()






def frames_until(app: PanelApp, condition, timeout: float = 10.0) -> bool:
    """Run the panel's frames until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.step()
        if condition():
            return True
        time.sleep(0.03)
    return False


def touch(app: PanelApp, pos: tuple[int, int]) -> None:
    """A mouse click at a logical position, through pygame's event queue."""
    window_pos = app.to_window(pygame.Rect(pos, (1, 1))).topleft
    pygame.event.post(pygame.event.Event(pygame.MOUSEBUTTONDOWN, pos=window_pos, button=1))
    app.step()


def press(app: PanelApp, label: str, nth: int = 0) -> None:
    """Touch the ``nth`` enabled button labelled ``label`` on the screen as last drawn."""
    matches = [b for b in app.chrome.buttons + app.shown.buttons if b.label == label and b.enabled]
    assert len(matches) > nth, f"no enabled button {label!r} on {app.shown.name}: {app.labels}"
    touch(app, matches[nth].rect.center)


def red_share(image: pygame.Surface, rect: pygame.Rect) -> float:
    """The share of ``rect``'s pixels that are STOP red (within a rounding step, for scaled windows)."""
    pixels = pygame.surfarray.array3d(image)[rect.left:rect.right, rect.top:rect.bottom].astype(int)
    close = np.all(np.abs(pixels - np.array(STOP_RED)) <= 3, axis=-1)
    return float(close.mean())


def shot(app: PanelApp, folder: Path, name: str) -> Path:
    """Save the window as ``name``.png and check the STOP button's red is there, big."""
    app.step()
    path = folder / f"{name}.png"
    app.save(path)
    saved = pygame.image.load(str(path))
    assert red_share(saved, app.to_window(STOP_RECT)) > 0.6, f"{name}: the red STOP is missing"
    assert "STOP" in app.labels
    return path


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return faceless_clip(tmp_path_factory.mktemp("clip") / "faceless.avi")


@pytest.fixture(scope="module")
def running(tmp_path_factory, tiny_model, clip):
    """A chair running in a thread with its control socket; yields (chair, socket path)."""
    folder = short_dir()
    path = folder / "relaxd.sock"
    chair, thread = start_chair(tmp_path_factory.mktemp("store"), tiny_model, clip, path)
    assert wait_for(lambda: call(path, "status")["affect"] is not None), "no affect reading arrived"
    yield chair, path
    stop_chair(chair, thread)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def chair_at_idle(running):
    """Idle, unlatched, no alarms: whatever the previous test left."""
    chair, path = running
    if call(path, "status")["health"]["latch"]["latched"]:
        assert wait_for(lambda: call(path, "status")["state"] == "estopped")
        call(path, "reset", by="test")
    if call(path, "status")["state"] == "fault":
        call(path, "reset", by="test")
    if call(path, "status")["state"] != "idle":
        call(path, "stop")
    for alarm in call(path, "status")["alarms"]:
        call(path, "ack", id=alarm["id"], by="test")
    return chair, path


@pytest.fixture
def panel(chair_at_idle):
    _, path = chair_at_idle
    app = PanelApp(path, FAST)
    assert frames_until(app, lambda: app.state.connected and "Idle" in app.labels), app.labels
    yield app
    app.close()


# --------------------------------------------------------------------------- pure parts


def test_panel_state_reads_a_real_status_and_refuses_garbage(chair_at_idle):
    _, path = chair_at_idle
    state = PanelState.from_status(call(path, "status"))
    assert state.connected and state.state == "idle" and state.session_id is None
    assert [part.title for part in state.health] == ["Camera", "Outputs", "Vision", "Control loop", "E-stop"]
    assert state.affect is not None and not state.affect.face_present and state.group == "none"
    assert set(state.levels) == set(state.caps) == {"light", "sound", "vibration"}
    assert state.simulation and not state.latched and state.top_alarm is None

    status = call(path, "status")
    status["affect"] = {**status["affect"], "face_present": True, "group": "positive", "label": "happy",
                        "confidence": 0.8}
    status["alarms"] = [{"id": "a", "kind": "no_face", "priority": "medium", "message": "m", "time": "t"},
                        {"id": "b", "kind": "estop", "priority": "high", "message": "m", "time": "t"}]
    state = PanelState.from_status(status)
    assert state.group == "positive" and state.affect.confidence == 0.8
    assert state.top_alarm.id == "b", "a high alarm goes on the banner before an older medium one"

    status["health"]["vision"] = {**status["health"]["vision"], "ok": False, "failure": "RuntimeError: boom"}
    (vision,) = [part for part in PanelState.from_status(status).health if part.key == "vision"]
    assert not vision.ok and vision.detail == "failed: restart"

    with pytest.raises(PanelProtocolError, match="health"):
        PanelState.from_status({"state": "idle"})
    with pytest.raises(PanelProtocolError, match="not an object"):
        PanelState.from_status(["idle"])


def test_timeline_keeps_its_window_and_restarts_with_each_session():
    timeline = Timeline(window_s=10.0)
    first = PanelState(connected=True, session_id=1, intensity=0.5)
    for t in range(15):
        timeline.add(float(t), first)
    assert [s.time for s in timeline.samples()][0] == 4.0, "samples older than the window are dropped"
    timeline.add(15.0, PanelState.offline("gone"))
    assert len(timeline.samples()) == 11, "a disconnection adds nothing"
    timeline.add(16.0, PanelState(connected=True, session_id=2))
    assert [s.time for s in timeline.samples()] == [16.0], "a new session starts a new timeline"

    samples = (Sample(0.0, "neutral", 0.1), Sample(1.0, "neutral", 0.2), Sample(2.0, "positive", 0.3),
               Sample(9.0, "positive", 0.3))
    assert Timeline.runs(samples, gap_s=2.0) == [(0.0, 2.0, "neutral"), (2.0, 4.0, "positive"),
                                                 (9.0, 11.0, "positive")]


def test_options_are_checked_with_messages_that_name_the_fix(capsys):
    assert check_pin("4711") == "4711"
    for bad in ("12", "12a4", "123456789", "١٢٣٤"):
        with pytest.raises(PanelConfigError, match="4 to 8 digits"):
            check_pin(bad)
    assert parse_size("1024x600") == (1024, 600)
    with pytest.raises(PanelConfigError, match="WIDTHxHEIGHT"):
        parse_size("800")
    with pytest.raises(PanelConfigError, match="between 400x240"):
        parse_size("100x100")
    with pytest.raises(PanelLayoutError, match="at least 60x60"):
        Button(pygame.Rect(0, 0, 40, 80), "tiny", lambda: None)
    assert main(["--socket", "/tmp/none.sock", "--pin", "12"]) == 2
    assert "4 to 8 digits" in capsys.readouterr().err
    assert main(["--socket", "/tmp/none.sock", "--size", "9x9"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["--config", "/nonexistent/relaxd.yaml"]) == 2
    assert "/nonexistent/relaxd.yaml" in capsys.readouterr().err


def test_home_screen_draws_affect_timeline_levels_and_health(tmp_path):
    """The home screen alone, from a hand-made state: a face, a timeline with all three groups."""
    pygame.display.init()
    pygame.font.init()
    try:
        surface = pygame.Surface((800, 480))
        status = {"state": "running", "reason": "affect positive: intensity raised", "scenario": "calm-sea",
                  "phase": "open-sea", "session": {"id": 3, "profile": "kid-7"}, "intensity": 0.6,
                  "levels": {"light": 0.5, "sound": 0.4, "vibration": 0.2},
                  "caps": {"light": 0.8, "sound": 1.0, "vibration": 0.5},
                  "affect": {"face_present": True, "group": "positive", "label": "happy", "confidence": 0.72,
                             "age_s": 0.1},
                  "alarms": [], "simulation": True,
                  "health": {"camera": {"ok": True, "status": "streaming"}, "outputs": {"ok": True},
                             "vision": {"ok": True, "reading_age_s": 0.1},
                             "controller": {"ok": False, "loop_on_time": False},
                             "latch": {"ok": True, "latched": False}}}
        groups = ["neutral"] * 40 + ["negative"] * 30 + ["positive"] * 50
        samples = tuple(Sample(100.0 + i * 1.5, g, 0.2 + 0.005 * i) for i, g in enumerate(groups))

        class Host:
            settings = PanelSettings()
            socket_path = Path("/run/relaxd/relaxd.sock")
            state = PanelState.from_status(status)

            def timeline(self):
                return samples

            def now(self):
                return samples[-1].time

            def send(self, cmd, **args):
                raise AssertionError("drawing sends nothing")

        painter = Painter(surface)
        home = HomeScreen()
        home.draw(painter, Host())
        pygame.image.save(surface, str(tmp_path / "home-with-affect.png"))
        for text in ("Running", "kid-7", "calm-sea", "open-sea", "positive (happy)", "72%", "Control loop"):
            assert text in painter.labels, text
        strip = pygame.surfarray.array3d(surface)[12:616, 280]  # the timeline's affect strip, one row
        for group in ("neutral", "negative", "positive"):
            assert np.all(strip == GROUP_COLOURS[group], axis=-1).sum() > 50, f"{group} missing from the strip"
        assert [b.label for b in home.buttons if b.enabled] == ["Pause", "End session"]
    finally:
        pygame.display.quit()


def test_session_buttons_say_how_a_session_ended_in_words():
    base = {"id": 7, "profile": "kid-a", "scenario": "calm-sea", "started_at": "2024-03-05T10:00:00.000+00:00"}
    ended = dict(base, ended_at="2024-03-05T10:05:00.000+00:00")
    assert session_label(dict(ended, end_reason="estop")).endswith("emergency stop")
    assert session_label(dict(ended, end_reason="scenario_finished")).endswith("scenario finished")
    assert session_label(dict(ended, end_reason="something new")).endswith("something new")
    assert session_label(dict(base, ended_at=None, end_reason=None)).endswith("not ended")
    assert session_label(base).startswith("#7  kid-a  ·  calm-sea\n")


def test_ending_a_session_takes_two_touches_within_seconds():
    pygame.display.init()
    pygame.font.init()
    try:
        now = [50.0]
        sent: list[str] = []

        class Host:
            settings = PanelSettings()
            state = PanelState(connected=True, state="running")

            def timeline(self):
                return ()

            def now(self):
                return now[0]

            def send(self, cmd, **args):
                sent.append(cmd)

        home, host, painter = HomeScreen(clock=lambda: now[0]), Host(), Painter(pygame.Surface((800, 480)))

        def touch_end() -> None:
            home.draw(painter, host)
            (button,) = [b for b in home.buttons if b.label in ("End session", "Tap again to end")]
            button.action()

        touch_end()
        assert sent == [] and home.buttons[-1].label == "End session"
        home.draw(painter, host)
        assert home.buttons[-1].label == "Tap again to end"
        now[0] += HomeScreen.CONFIRM_END_S + 0.1  # too late: the first touch has expired
        touch_end()
        assert sent == []
        now[0] += 1.0
        touch_end()
        assert sent == ["stop"]
    finally:
        pygame.display.quit()


def test_wrong_pins_lock_the_keypad_for_a_minute_even_against_the_right_pin():
    pygame.display.init()
    pygame.font.init()
    try:
        now = [1000.0]
        screen = SettingsScreen("2468", clock=lambda: now[0])

        def enter(pin: str) -> None:
            for key in (*pin, "OK"):
                screen.keypad.press(key)

        for _ in range(SettingsScreen.MAX_WRONG_PINS - 1):
            enter("1111")
        assert screen.lockout_left() == 0 and not screen.unlocked
        enter("1111")  # the last wrong one in a row starts the lockout
        assert screen.lockout_left() == SettingsScreen.LOCKOUT_S
        enter("2468")
        assert not screen.unlocked, "the right PIN must not work during the lockout"
        painter = Painter(pygame.Surface((800, 480)))
        screen.draw(painter, host=None)
        assert "Too many wrong PINs - wait 60 s" in painter.labels
        now[0] += SettingsScreen.LOCKOUT_S
        enter("2468")
        assert screen.unlocked
        screen.on_leave(host=None)
        enter("1111")  # a right PIN resets the count: one wrong PIN now does not lock
        assert screen.lockout_left() == 0
    finally:
        pygame.display.quit()


def test_stop_is_sent_at_once_while_another_command_hangs():
    """A command stuck in the daemon must not delay STOP: it has its own connection and thread."""
    folder = short_dir()
    path = folder / "s.sock"
    started, release = threading.Event(), threading.Event()

    def dispatch(cmd, args):
        if cmd == "slow":
            started.set()
            release.wait(10)
        return {"cmd": cmd}

    done: list = []

    def finished(cmd: str) -> bool:
        done.extend(link.outcomes())
        return any(o.cmd == cmd for o in done)

    try:
        with ControlServer(path, dispatch, IpcSettings(socket=str(path))):
            link = ChairLink(path, FAST).start()
            try:
                link.send("slow")
                assert started.wait(10), "the slow command never reached the server"
                link.estop()
                assert wait_for(lambda: finished("estop"))
                assert [(o.cmd, o.ok) for o in done] == [("estop", True)], "STOP came back before the slow command"
                release.set()
                assert wait_for(lambda: finished("slow"))
            finally:
                release.set()
                link.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- against the chair


def test_every_screen_shows_stop_and_its_content(panel, tmp_path):
    app = panel
    home = shot(app, tmp_path, "home")
    for text in ("Idle", "Camera", "Outputs", "Vision", "Control loop", "E-stop", "Pause", "End session"):
        assert text in app.labels, text

    press(app, "Start")
    assert frames_until(app, lambda: "calm-sea" in app.labels), app.labels
    start = shot(app, tmp_path, "start")
    assert "New child" in app.labels and "Start" in app.labels

    press(app, "Caps")
    caps = shot(app, tmp_path, "caps")
    for text in ("Light", "Sound", "Vibration", "-", "+"):
        assert text in app.labels, text

    press(app, "Settings")
    locked = shot(app, tmp_path, "settings-locked")
    assert "Enter the PIN:" in app.labels and "OK" in app.labels and "Reset e-stop" not in app.labels
    for digit in PIN:
        press(app, digit)
    press(app, "OK")
    unlocked = shot(app, tmp_path, "settings")
    assert str(app.socket_path) in app.labels and "Reset e-stop" in app.labels
    assert all(p.exists() for p in (home, start, caps, locked, unlocked))


def test_a_touch_on_stop_latches_the_chair_then_ack_and_reset_behind_the_pin(panel, tmp_path):
    app = panel
    path = app.socket_path
    call(path, "start", profile="kid-panel-stop", scenario="calm-sea")
    touch(app, STOP_RECT.center)
    assert wait_for(lambda: call(path, "status")["health"]["latch"]["latched"]), "STOP did not latch the chair"
    status = call(path, "status")
    assert status["health"]["latch"]["tripped_by"] == "panel"

    assert frames_until(app, lambda: "Acknowledge" in app.labels and "Emergency stop" in app.labels), app.labels
    banner = shot(app, tmp_path, "alarm")
    assert any(label.startswith("ALARM: Emergency stop") for label in app.labels)
    assert red_share(pygame.image.load(str(banner)), pygame.Rect(0, 0, 400, 70)) == 0.0, "STOP red is STOP only"
    banner_pixels = pygame.surfarray.array3d(pygame.image.load(str(banner)))[5:400, 2:68]
    assert np.all(banner_pixels == ALARM_HIGH, axis=-1).mean() > 0.5, "the banner has the high-alarm colour"
    press(app, "Acknowledge")
    assert wait_for(lambda: not call(path, "status")["alarms"]), "the alarm was not acknowledged"
    assert frames_until(app, lambda: "Acknowledge" not in app.labels)

    press(app, "Settings")
    for digit in "1111":
        press(app, digit)
    press(app, "OK")
    assert "Wrong PIN - try again" in app.labels
    shot(app, tmp_path, "pin-wrong")
    assert not [b for b in app.shown.buttons if b.label == "Reset e-stop"], "reset stays behind the PIN"
    for digit in PIN:
        press(app, digit)
    press(app, "OK")
    press(app, "Reset e-stop")
    assert wait_for(lambda: call(path, "status")["state"] == "idle"), "the reset did not reach the chair"
    assert not call(path, "status")["health"]["latch"]["latched"]
    assert frames_until(app, lambda: any(label.startswith("Reset: the chair is idle") for label in app.labels))
    press(app, "Home")
    press(app, "Settings")
    assert "Enter the PIN:" in app.labels, "leaving the settings locks them again"


def test_a_fault_is_reset_behind_the_pin_with_its_own_label(panel, running):
    app = panel
    chair, path = running
    call(path, "start", profile="kid-panel-fault", scenario="calm-sea")
    chair.call_in_control_loop(lambda now: (None, chair.controller.fault(now, "vision stalled (test)")), 2.0)
    assert frames_until(app, lambda: "Fault" in app.labels), app.labels
    press(app, "Start")
    assert frames_until(app, lambda: any("reset it in Settings" in label for label in app.labels)), app.labels
    press(app, "Settings")
    for digit in PIN:
        press(app, digit)
    press(app, "OK")
    assert frames_until(app, lambda: "Reset fault" in app.labels and "Reset e-stop" not in app.labels), app.labels
    press(app, "Reset fault")
    assert wait_for(lambda: call(path, "status")["state"] == "idle"), "the reset did not reach the chair"
    assert frames_until(app, lambda: any(label.startswith("Reset: the chair is idle") for label in app.labels))


def test_a_session_is_started_paused_resumed_and_ended_by_touch(panel, tmp_path):
    app = panel
    path = app.socket_path
    press(app, "Start")
    assert frames_until(app, lambda: "calm-sea" in app.labels)
    press(app, "New child")
    assert app.current == "name" and any(label.startswith("child-") for label in app.labels), "a pseudonym is offered"
    shot(app, tmp_path, "name")
    for _ in range(12):
        press(app, "Del")
    for key in "kid-7x":
        press(app, key)
    press(app, "Use this pseudonym")
    child = app.shown.profile
    assert app.current == "start" and child == "kid-7x", (app.current, child)
    press(app, "calm-sea")
    press(app, "Start", nth=1)  # the first "Start" is the navigation tab
    assert wait_for(lambda: (call(path, "status")["session"] or {}).get("profile") == child), "no session started"
    assert frames_until(app, lambda: app.current == "home" and child in app.labels), app.labels
    shot(app, tmp_path, "home-session")
    assert "calm-sea" in app.labels

    press(app, "Pause")
    assert wait_for(lambda: call(path, "status")["state"] == "paused")
    assert frames_until(app, lambda: "Paused" in app.labels)
    press(app, "Resume")
    assert wait_for(lambda: call(path, "status")["state"] in ("starting", "running"))
    assert frames_until(app, lambda: any(b.label == "End session" and b.enabled for b in app.shown.buttons))
    press(app, "End session")
    assert frames_until(app, lambda: "Tap again to end" in app.labels), "one touch must not end the session"
    assert call(path, "status")["state"] in ("starting", "running")
    press(app, "Tap again to end")
    assert wait_for(lambda: call(path, "status")["state"] == "idle")

    press(app, "Start")
    assert frames_until(app, lambda: child in app.labels), "the new profile is listed"


def test_caps_are_lowered_by_touch_and_saved_to_the_profile(panel, tmp_path):
    app = panel
    path = app.socket_path
    call(path, "start", profile="kid-panel-caps", scenario="calm-sea")
    press(app, "Caps")
    press(app, "-", nth=0)  # light
    assert wait_for(lambda: call(path, "status")["caps"]["light"] == 0.95)
    press(app, "-", nth=0)
    press(app, "-", nth=2)  # vibration
    # vibration starts at its ceiling, actuators.max_vibration 0.8
    assert wait_for(lambda: call(path, "status")["caps"] == {"light": 0.9, "sound": 0.8, "vibration": 0.75})
    assert frames_until(app, lambda: "Saved to kid-panel-caps's profile" in app.labels)
    shot(app, tmp_path, "caps-lowered")
    press(app, "+", nth=0)
    assert wait_for(lambda: call(path, "status")["caps"]["light"] == 0.95)
    (profile,) = [p for p in call(path, "list_profiles") if p["pseudonym"] == "kid-panel-caps"]
    assert (profile["light_cap"], profile["vibration_cap"]) == (0.95, 0.75)
    call(path, "stop")


def test_sessions_screen_lists_sessions_and_shows_a_report_picture(panel):
    """Record a short session, open Sessions by touch, touch it: the daemon's report PNG is shown."""
    app = panel
    path = app.socket_path
    session_id = call(path, "start", profile="kid-panel-report", scenario="calm-sea")["session_id"]
    time.sleep(1.2)  # a second or so of records
    call(path, "stop")
    shots = Path("/tmp/panel-shots")
    shots.mkdir(parents=True, exist_ok=True)

    press(app, "Sessions")
    first = f"#{session_id}  kid-panel-report  ·  calm-sea"
    assert frames_until(app, lambda: first in app.labels), app.labels
    listed = shot(app, shots, "sessions")
    assert "Prev" in app.labels and "Next" in app.labels
    rows = [b for b in app.shown.buttons if b.label.startswith("#")]
    assert rows[0].label.startswith(first), "the newest session is listed first"
    assert all(b.rect.width >= 60 and b.rect.height >= 60 for b in app.chrome.buttons + app.shown.buttons)

    touch(app, rows[0].rect.center)
    assert frames_until(app, lambda: app.shown.picture is not None, timeout=30), app.labels
    report = shot(app, shots, "session-report")
    assert Path(app.shown.shown_png).name.startswith(f"session-{session_id}-")
    assert "Back" in app.labels and "STOP" in app.labels

    def white_share(image: pygame.Surface) -> float:
        area = app.to_window(SessionsScreen.PICTURE)
        pixels = pygame.surfarray.array3d(image)[area.left:area.right, area.top:area.bottom]
        return float(np.all(pixels >= 240, axis=-1).mean())

    assert white_share(pygame.image.load(str(report))) > 0.4, "the report's white figure fills the content area"
    assert white_share(pygame.image.load(str(listed))) < 0.01, "the dark list has no figure"
    shown = app.shown.picture.get_size()
    assert shown[0] <= SessionsScreen.PICTURE.width and shown[1] <= SessionsScreen.PICTURE.height
    assert abs(shown[0] / shown[1] - 1.5) < 0.01, "the 1200x800 picture keeps its aspect"

    # A touch on the picture shows it at its own size around that point, where its text is readable.
    placed = app.shown.picture.get_rect(midtop=SessionsScreen.PICTURE.midtop)
    touch(app, (placed.right - 20, placed.bottom - 20))  # near the bottom-right corner: the event lane's end
    assert app.shown.zoomed_at is not None and "Left" in app.labels and "Down" in app.labels
    full = app.shown.image
    view = SessionsScreen.PICTURE
    assert app.shown.zoomed_at == (full.get_width() - view.width, full.get_height() - view.height)
    zoomed = pygame.image.load(str(shot(app, shots, "session-report-zoomed")))
    if app.window.get_size() == (800, 480):
        drawn = pygame.surfarray.array3d(zoomed)[view.left:view.right, view.top:view.bottom]
        source = pygame.surfarray.array3d(full)[-view.width:, -view.height:]
        assert np.array_equal(drawn, source), "full size means the report's own pixels, one for one"
    press(app, "Left")
    assert app.shown.zoomed_at[0] == full.get_width() - view.width - view.width // 2
    press(app, "Up")
    assert app.shown.zoomed_at[1] == full.get_height() - view.height - view.height // 2
    touch(app, view.center)
    assert app.shown.zoomed_at is None and "Left" not in app.labels, "a second touch fits the picture again"

    press(app, "Back")
    assert frames_until(app, lambda: first in app.labels), "Back returns to the list"


def test_a_report_the_daemon_refuses_shows_its_message(panel):
    app = panel
    press(app, "Sessions")
    assert frames_until(app, lambda: not app.shown.loading)
    app.shown.open(app, 999999)
    assert frames_until(app, lambda: any(label.startswith("report failed: no session 999999")
                                         for label in app.labels)), app.labels
    assert app.shown.viewing is None and "STOP" in app.labels


def test_disconnected_screen_then_reconnects_when_the_daemon_appears(tmp_path, tiny_model, clip):
    folder = short_dir()
    path = folder / "relaxd.sock"
    app = PanelApp(path, FAST, size=(1000, 700))  # scaled and letterboxed: touches must map back
    chair = None
    try:
        assert frames_until(app, lambda: DisconnectedScreen.TITLE in app.labels), app.labels
        assert "Home" not in app.labels, "no navigation without a chair"
        shot(app, tmp_path, "disconnected")
        x, y = app.to_window(STOP_RECT).center
        pygame.event.post(pygame.event.Event(pygame.FINGERDOWN, x=x / 1000, y=y / 700, touch_id=1, finger_id=0,
                                             dx=0.0, dy=0.0, pressure=1.0))
        app.step()
        assert any("not connected" in label for label in app.labels), app.labels
        assert frames_until(app, lambda: any(label.startswith("STOP did not reach the chair") for label in app.labels))

        chair, thread = start_chair(tmp_path, tiny_model, clip, path)
        assert frames_until(app, lambda: app.state.connected and "Idle" in app.labels, timeout=15), app.labels
        shot(app, tmp_path, "reconnected")
        assert not chair.latch.latched, "the STOP pressed while disconnected does not linger"
        stop_chair(chair, thread)
        chair = None
        assert frames_until(app, lambda: DisconnectedScreen.TITLE in app.labels), "a daemon that stops is noticed"
    finally:
        if chair is not None:
            stop_chair(chair, thread)
        app.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_relaxd_panel_runs_as_its_own_process(chair_at_idle):
    chair, path = chair_at_idle
    script = Path(sys.executable).with_name("relaxd-panel")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "relaxd.panel.app"]
    panel = subprocess.Popen([*command, "--socket", str(path), "--pin", "4711", "--log-level", "info"],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "SDL_VIDEODRIVER": "dummy"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(panel.stderr), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: any("panel.connected" in line for line in lines) or panel.poll() is not None,
                        timeout=30), "the panel never connected"
        assert panel.poll() is None, "".join(lines)
    finally:
        panel.terminate()
        panel.wait(timeout=30)
        reader.join(10)
    assert not any("Traceback" in line for line in lines), "".join(lines)
    assert call(path, "status")["state"] == "idle", "the panel going away changes nothing for the chair"


def test_escape_or_closing_the_window_quits_the_panel(panel):
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    assert panel.step() is False
