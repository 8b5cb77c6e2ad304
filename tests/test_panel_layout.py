"""Every text on every panel screen fits or wraps, in the states that lengthen text.

A real ``PanelApp`` (SDL's dummy driver) is drawn at 800x480 and 1024x600 from staged
states: the longest pseudonym the daemon accepts, long reasons and alarm messages, every
state and alarm kind, failing health, the disconnected screen with a long problem, the
messages STOP leaves. ``Painter.problems()`` names any line that leaves its box or the
screen, overlaps another line, or is cut off; each must be empty. Messages that matter
(STOP's failure, an alarm's text) are also checked to be drawn whole, word for word.

With ``RELAXD_PANEL_SHOTS=DIR`` set, a screenshot of each screen is saved in DIR: that
is how ``docs/panel/`` is made (see the README).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import pygame
import pytest

from relaxd.panel.app import PanelApp
from relaxd.panel.client import Outcome, PanelState, Sample
from relaxd.panel.screens import ALARM_TITLES, STATE_TITLES
from relaxd.settings import PanelSettings
from relaxd.vocabulary import ALERT_KINDS

SIZES = ((800, 480), (1024, 600))
WIDE_NAME = "W" * 64  # the widest pseudonym the daemon accepts (64 characters)
WORDY_NAME = "the-quiet-one-from-the-blue-room-on-tuesday-mornings-group-b-2026"[:64]
LONG_REASON = ("affect negative for 4.2 s (share 0.83 above 0.60, weight 1.5): intensity lowered from 0.62 to 0.41 "
               "and vibration stopped until the child is calm again")
LONG_PROBLEM = ("cannot connect to relaxd at /run/relaxd/a-rather-long-folder-name/relaxd.sock: [Errno 2] No such "
                "file or directory. Is the relaxd service running? Start it with 'sudo systemctl start relaxd', "
                "and check 'journalctl -u relaxd' for why it stopped")
STORE_MESSAGE = ("the session store failed (unavailable for 31 s: the session store /var/lib/relaxd/relaxd.db failed "
                 "(database is locked): another process holds it; stop that process or raise store.busy_timeout_s); "
                 "stimulation stopped")


class StagedLink:
    """Stands in for ``ChairLink``: the test sets the state; commands are recorded, never sent."""

    def __init__(self, state: PanelState) -> None:
        self.state = state
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.queued: list[Outcome] = []

    def timeline(self) -> tuple[Sample, ...]:
        groups = ["neutral"] * 60 + ["negative"] * 40 + ["positive"] * 80
        return tuple(Sample(1000.0 - 300.0 + i * 1.6, g, 0.2 + 0.003 * i) for i, g in enumerate(groups))

    def retry_in(self) -> Optional[float]:
        return None if self.state.connected else 3.0

    def send(self, cmd: str, *, tag: Optional[str] = None, **args: Any) -> None:
        self.sent.append((cmd, args))

    fetch = send

    def estop(self, by: str = "panel") -> None:
        self.sent.append(("estop", {"by": by}))

    def outcomes(self) -> list[Outcome]:
        done, self.queued = self.queued, []
        return done

    def close(self) -> None:
        pass


def status(state: str = "running", *, profile: Optional[str] = WIDE_NAME, alarms: tuple = (),
           healthy: bool = True, **extra: Any) -> dict[str, Any]:
    """A status reply as the daemon sends it, with every text as long as it gets."""
    problem = {"ok": False, "reason": "link lost: no answer from the microcontroller on /dev/ttyACM0 for 1.5 s",
               "link_faults": 3}
    return {
        "state": state, "reason": LONG_REASON, "scenario": "slow-waves-without-vibration-and-warm-light",
        "phase": "the-long-wind-down-phase", "session": {"id": 123456, "profile": profile} if profile else None,
        "last_session": None if profile else {"id": 123456, "profile": WIDE_NAME, "end_reason": "estop"},
        "last_decision": {"kind": "intensity_lowered", "reason": LONG_REASON, "age_s": 12.0},
        "intensity": 0.55, "levels": {"light": 0.5, "sound": 0.4, "vibration": 0.0},
        "caps": {"light": 0.8, "sound": 0.8, "vibration": 0.35},
        "affect": {"face_present": True, "group": "negative", "label": "surprise", "confidence": 0.87, "age_s": 0.1},
        "alarms": list(alarms), "simulation": True,
        "health": {"camera": {"ok": healthy, "status": "streaming" if healthy else "reconnecting"},
                   "outputs": {"ok": True, "link_faults": 0} if healthy else problem,
                   "vision": {"ok": healthy, "reading_age_s": 0.1 if healthy else 42.0},
                   "controller": {"ok": healthy, "loop_on_time": healthy},
                   "latch": {"ok": state != "estopped", "latched": state == "estopped", "tripped_by": "panel"}},
        **extra,
    }


def alarm(kind: str, message: str, priority: str = "high") -> dict[str, Any]:
    return {"id": f"{kind:0<32}"[:32], "kind": kind, "priority": priority, "message": message,
            "time": "2026-12-03T09:15:00.000+00:00"}


@pytest.fixture(params=SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def app(request, tmp_path):
    pygame.display.init()
    pygame.font.init()
    panel = PanelApp(tmp_path / "none.sock", PanelSettings(notice_s=30.0), size=request.param,
                     clock=lambda: 1000.0)
    panel.link.close()
    panel.link = StagedLink(PanelState.offline())
    yield panel
    panel.close()


def show(app: PanelApp, name: str, state: PanelState) -> list[str]:
    """Draw ``name`` in ``state``; the problems of the frame."""
    app.link.state = state
    app.current = name
    app.step()
    return app.frame.problems()


def drawn_whole(app: PanelApp, text: str) -> bool:
    """Every word of ``text`` appears, in order, in what the frame drew."""
    words = " ".join(app.labels).split()
    position = 0
    for word in text.split():
        try:
            position = words.index(word, position) + 1
        except ValueError:
            return False
    return True


def test_every_screen_in_every_state_fits(app):
    start, sessions = app.screens["start"], app.screens["sessions"]
    start.on_outcome(Outcome("list_profiles", "profiles", True, [
        {"pseudonym": WIDE_NAME, "preferred_scenario": None}, {"pseudonym": WORDY_NAME, "preferred_scenario": None},
        {"pseudonym": "kid-3", "preferred_scenario": None}]), app)
    start.on_outcome(Outcome("list_scenarios", "scenarios", True, [
        {"name": "slow-waves-without-vibration-and-warm-light", "default": True}, {"name": "calm-sea"}]), app)
    start.pick_profile(WIDE_NAME)
    sessions.on_outcome(Outcome("list_sessions", "sessions", True, [
        {"id": 123456 - i, "profile": WIDE_NAME, "scenario": "slow-waves-without-vibration-and-warm-light",
         "started_at": "2026-12-03T09:15:00.000+00:00", "ended_at": "2026-12-03T09:35:00.000+00:00",
         "end_reason": reason} for i, reason in enumerate(("estop", "scenario_finished", "daemon_restarted"))]), app)
    app.screens["caps"].note = "No session: applies until the next session starts with its profile's caps"

    problems: dict[str, list[str]] = {}
    for state in STATE_TITLES:
        for profile in (WIDE_NAME, WORDY_NAME, None):
            for healthy in (True, False):
                staged = PanelState.from_status(status(state, profile=profile, healthy=healthy))
                for screen in ("home", "start", "caps", "sessions", "settings", "alarms"):
                    problems[f"{screen} {state} {profile and profile[:5]} healthy={healthy}"] = \
                        show(app, screen, staged)
    settings = app.screens["settings"]
    settings.unlocked = True
    problems["settings unlocked"] = show(app, "settings", PanelState.from_status(status(healthy=False)))
    settings.approvals = True
    settings.blocked = [{"profile": WIDE_NAME, "scenario": "slow-waves-without-vibration-and-warm-light",
                         "reason": "halted in session 123456: " + LONG_REASON} for _ in range(6)]
    problems["settings approvals"] = show(app, "settings", PanelState.from_status(status(healthy=False)))
    settings.blocked = []
    problems["settings approvals, none"] = show(app, "settings", PanelState.from_status(status(healthy=False)))
    settings.approvals = False
    settings.unlocked = False
    app.screens["name"].entered = WIDE_NAME
    problems["name"] = show(app, "name", PanelState.from_status(status("idle", profile=None)))
    app.screens["name"].use(app)  # a name already taken: an error in its place
    app.current = "name"
    problems["name taken"] = show(app, "name", PanelState.from_status(status("idle", profile=None)))
    problems["disconnected"] = show(app, "home", PanelState.offline(LONG_PROBLEM))
    assert {key: found for key, found in problems.items() if found} == {}


@pytest.mark.parametrize("kind", ALERT_KINDS)
def test_each_alarm_fits_the_banner_and_its_screen_shows_it_whole(app, kind):
    message = STORE_MESSAGE if kind == "store_failed" else f"{ALARM_TITLES[kind]}: {LONG_REASON}"
    alarms = (alarm(kind, message), alarm("camera_lost", "camera reconnecting: stimulation faded", "medium"))
    state = PanelState.from_status(status("halted", alarms=alarms))
    assert show(app, "home", state) == []
    assert any(label.startswith(f"ALARM: {ALARM_TITLES[kind]}") for label in app.labels), app.labels
    assert "Acknowledge" in app.labels
    banner = [b for b in app.chrome.buttons if b.label == ""]
    assert len(banner) == 1, "the banner is one touch target"
    banner[0].action()
    assert app.current == "alarms"
    assert show(app, "alarms", state) == []
    assert drawn_whole(app, message), f"the alarm's message is not drawn whole: {app.labels}"


@pytest.mark.parametrize("why", ["not connected", "timed out after 1.0 s waiting for relaxd's answer"])
def test_a_stop_that_did_not_arrive_is_said_whole_and_stays_until_a_stop_does(app, why):
    state = PanelState.from_status(status())
    app.link.state = state
    app.link.queued.append(Outcome("estop", "estop", False, code="unreachable", message=why))
    assert show(app, "home", state) == []
    assert drawn_whole(app, "STOP did not reach the chair") and drawn_whole(app, "press the chair's own emergency "
                                                                                 "button"), app.labels
    for _ in range(3):
        app.step()
    assert drawn_whole(app, "press the chair's own emergency button"), "the failure must stay on screen"
    app.link.queued.append(Outcome("estop", "estop", True, {"latched": True}))
    app.step()
    assert not drawn_whole(app, "STOP did not reach the chair")


def test_stop_touched_while_disconnected_says_so_whole(app):
    state = PanelState.offline(LONG_PROBLEM)
    app.link.state = state
    app.stop_pressed()
    assert show(app, "home", state) == []
    assert drawn_whole(app, "STOP cannot reach the chair (not connected): press the chair's own emergency button")
    assert ("estop", {"by": "panel"}) in app.link.sent, "STOP is still tried"


def test_the_problem_finder_catches_overflow_overlap_and_cut_text():
    """The check the tests above rely on fails where it should."""
    from relaxd.panel.widgets import Painter

    pygame.font.init()
    painter = Painter(pygame.Surface((800, 480)))
    painter.text("runs off the right edge of the screen", (700, 10), 26)
    painter.text("first", (10, 100), 26)
    painter.text("second", (20, 104), 26)
    with painter.within(pygame.Rect(0, 200, 100, 40)):
        painter.text("too wide for its box", (0, 200), 26)
    painter.wrapped("many words " * 30, pygame.Rect(0, 300, 200, 40), 26)
    found = painter.problems()
    assert any(p.startswith("off the screen") for p in found)
    assert any(p.startswith("overlap: 'first'") for p in found)
    assert any(p.startswith("outside its box") for p in found)
    assert any(p.startswith("cut off") for p in found)


def test_screenshots_of_every_screen_in_an_everyday_state(app, tmp_path):
    """The pictures in docs/panel/ (``RELAXD_PANEL_SHOTS=docs/panel``, at 800x480), each checked as the others are."""
    wanted = os.environ.get("RELAXD_PANEL_SHOTS")
    folder = Path(wanted) if wanted and app.window.get_size() == (800, 480) else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    everyday = dict(reason="operator started 'calm-sea'", scenario="calm-sea", phase="open-sea",
                    last_decision={"kind": "intensity_raised", "reason": "positive for 20.0 s", "age_s": 4.0},
                    affect={"face_present": True, "group": "positive", "label": "happy", "confidence": 0.91,
                            "age_s": 0.1})
    running = PanelState.from_status(status("running", profile="kid-7", **everyday))
    idle = PanelState.from_status(status("idle", profile=None, **everyday))
    halted = PanelState.from_status(status("halted", profile="kid-7", **{
        **everyday, "alarms": [alarm("adverse_reaction", "negative for 8.0 s (>= halt_after_s 8 s)")],
        "last_decision": {"kind": "adverse_reaction", "reason": "negative for 8.0 s (>= halt_after_s 8 s)",
                          "age_s": 2.0},
        "affect": {"face_present": True, "group": "negative", "label": "fear", "confidence": 0.78, "age_s": 0.1}}))
    start, sessions = app.screens["start"], app.screens["sessions"]
    start.on_outcome(Outcome("list_profiles", "profiles", True, [
        {"pseudonym": name, "preferred_scenario": None} for name in ("kid-7", "otter", "blue-kite", "sam-b")]), app)
    start.on_outcome(Outcome("list_scenarios", "scenarios", True, [
        {"name": "calm-sea", "default": True}, {"name": "forest-rain"}, {"name": "night-sky"}]), app)
    start.pick_profile("otter")
    sessions.on_outcome(Outcome("list_sessions", "sessions", True, [
        {"id": 12 - i, "profile": name, "scenario": "calm-sea", "started_at": f"2026-12-03T0{9 - i}:15:00.000+00:00",
         "ended_at": f"2026-12-03T0{9 - i}:35:00.000+00:00", "end_reason": reason}
        for i, (name, reason) in enumerate((("kid-7", "scenario_finished"), ("otter", "stopped"),
                                             ("blue-kite", "estop"), ("sam-b", "scenario_finished")))]), app)
    shots = {"home": ("home", running), "home-halted-alarm": ("home", halted), "alarms": ("alarms", halted),
             "start": ("start", idle), "name": ("name", idle), "caps": ("caps", running),
             "sessions": ("sessions", idle), "settings-locked": ("settings", idle),
             "disconnected": ("home", PanelState.offline("cannot connect to relaxd at /run/relaxd/relaxd.sock "
                                                         "(no such file): is the relaxd service running?"))}
    for picture, (screen, state) in shots.items():
        if screen == "name":
            app.go("name")
        assert show(app, screen, state) == [], picture
        app.save(folder / f"{picture}.png")
    settings = app.screens["settings"]
    settings.unlocked = True
    assert show(app, "settings", running) == []
    app.save(folder / "settings.png")
    sizes = {pygame.image.load(str(path)).get_size() for path in folder.glob("*.png")}
    assert sizes == {app.window.get_size()} and len(list(folder.glob("*.png"))) == len(shots) + 1


def test_the_start_screen_suggests_a_scenario_says_why_and_leaves_the_choice_to_the_daemon(app):
    start = app.screens["start"]
    app.go("start")
    start.on_outcome(Outcome("list_profiles", "profiles", True, [{"pseudonym": "otter", "preferred_scenario": None}]),
                     app)
    start.on_outcome(Outcome("list_scenarios", "scenarios", True, [
        {"name": "calm-sea", "default": True}, {"name": "quiet-glow"}]), app)
    start.pick_profile("otter")
    assert app.link.sent[-1] == ("suggest", {"profile": "otter"})
    why = "calmed in 4 of the last 5 sessions with it (median 45 s to calm)"
    start.on_outcome(Outcome("suggest", "suggest", True, {"profile": "otter", "scenario": "quiet-glow",
                                                           "chosen_by": "learner", "why": why}), app)
    assert start.scenario == "quiet-glow" and start.following_suggestion()
    idle = PanelState.from_status(status("idle", profile=None))
    assert show(app, "start", idle) == []
    assert drawn_whole(app, "otter · quiet-glow: calmed in 4 of the last 5")
    (go,) = [b for b in start.buttons if b.label == "Start"]
    go.action()
    assert app.link.sent[-1] == ("start", {"profile": "otter", "scenario": None})  # the daemon's (learner's) pick
    start._pick_scenario("calm-sea")  # the operator's own choice
    assert not start.following_suggestion()
    show(app, "start", idle)
    (go,) = [b for b in start.buttons if b.label == "Start"]
    go.action()
    assert app.link.sent[-1] == ("start", {"profile": "otter", "scenario": "calm-sea"})


def test_start_before_the_suggestion_arrives_leaves_the_choice_to_the_daemon(app):
    """The pre-selected default is not the operator's choice; a hand pick is, and a late suggestion keeps it."""
    start = app.screens["start"]
    app.go("start")
    start.on_outcome(Outcome("list_profiles", "profiles", True, [{"pseudonym": "otter", "preferred_scenario": None}]),
                     app)
    start.on_outcome(Outcome("list_scenarios", "scenarios", True, [
        {"name": "calm-sea", "default": True}, {"name": "quiet-glow"}]), app)
    start.pick_profile("otter")  # the suggestion is still on its way
    idle = PanelState.from_status(status("idle", profile=None))
    show(app, "start", idle)
    (go,) = [b for b in start.buttons if b.label == "Start"]
    go.action()
    assert start.scenario == "calm-sea"
    assert app.link.sent[-1] == ("start", {"profile": "otter", "scenario": None})
    start._pick_scenario("calm-sea")  # now the operator's own choice
    start.on_outcome(Outcome("suggest", "suggest", True, {"profile": "otter", "scenario": "quiet-glow",
                                                           "chosen_by": "learner", "why": "new"}), app)
    assert start.scenario == "calm-sea"  # the late suggestion does not undo the hand pick
    show(app, "start", idle)
    (go,) = [b for b in start.buttons if b.label == "Start"]
    go.action()
    assert app.link.sent[-1] == ("start", {"profile": "otter", "scenario": "calm-sea"})


def test_blocked_scenarios_are_approved_behind_the_pin(app):
    settings = app.screens["settings"]
    app.go("settings")
    idle = PanelState.from_status(status("idle", profile=None))
    show(app, "settings", idle)
    assert not any(b.label == "Approvals" for b in settings.buttons), "locked: no approvals"
    settings.unlocked = True
    show(app, "settings", idle)
    (approvals,) = [b for b in settings.buttons if b.label == "Approvals"]
    approvals.action()
    assert app.link.sent[-1] == ("list_blocked", {})
    settings.on_outcome(Outcome("list_blocked", "blocked", True, [
        {"profile": "otter", "scenario": "sunset", "reason": "halted in session 4: negative for 8.0 s"}]), app)
    assert show(app, "settings", idle) == []
    assert drawn_whole(app, "otter · sunset")
    (approve,) = [b for b in settings.buttons if b.label == "Approve"]
    approve.action()
    assert app.link.sent[-1] == ("approve_scenario", {"profile": "otter", "scenario": "sunset", "by": "panel"})
    app.go("home")
    assert not settings.unlocked and not settings.approvals  # the PIN again next time
