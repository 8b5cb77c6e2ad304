"""The panel's screens, each drawn from the current ``PanelState`` on every frame.

Screens are immediate-mode: ``draw`` lays out and paints the screen and rebuilds its
``buttons``; a touch goes to the buttons of the last frame. A screen talks to the chair
only through its ``Host`` (the app): ``send`` a command, ``go`` to another screen,
``notice`` a message. Command results come back in ``on_outcome``.

``Chrome`` is the frame around every screen: the alarm banner with Acknowledge, the
notice line, the navigation and the large red STOP, which is on every screen,
the disconnected one included.

Layout in logical pixels (800x480)::

    +--------------------------------------------+---------+
    | alarm banner / title          [Acknowledge] |  STOP   |
    | notice line                                 |         |
    | content                                     +---------+
    |                                             | Home    |
    |                                             | Start   |
    |                                             | Caps    |
    |                                             | Sessions|
    |                                             | Settings|
    +--------------------------------------------+---------+

Five navigation tabs fit under STOP at the 60 px minimum with 3 px between them; a tab
touched by mistake only changes the screen, so the narrow gap is acceptable there.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Callable, Optional, Protocol

import pygame

from relaxd import __version__
from relaxd.ipc import PROTOCOL_VERSION
from relaxd.panel.client import CHANNELS, Outcome, PanelState, Sample, Timeline
from relaxd.panel.widgets import (ALARM_HIGH, ALARM_MEDIUM, BAD_RED, BUTTON, CHANNEL_COLOURS, GO_GREEN,
                                  GROUP_COLOURS, MUTED, SELECTED, STATE_COLOURS, STOP_RED, SURFACE, TEXT, WARN_AMBER,
                                  Bar, Button, Colour, Keypad, Painter, TouchArea, draw_dot, fit)
from relaxd.settings import DEFAULT_PANEL_PIN, PanelSettings
from relaxd.store import describe_end_reason, local_time

SIZE = (800, 480)
STOP_RECT = pygame.Rect(636, 4, 160, 150)
BANNER_RECT = pygame.Rect(0, 0, 628, 70)
ACK_RECT = pygame.Rect(484, 4, 140, 62)
NOTICE_RECT = pygame.Rect(12, 70, 612, 31)  # one line, or two small ones for a long message
CONTENT = pygame.Rect(8, 100, 620, 376)
NAV = (("home", "Home"), ("start", "Start"), ("caps", "Caps"), ("sessions", "Sessions"), ("settings", "Settings"))
NAV_TOP, NAV_STEP, NAV_HEIGHT = 160, 63, 60
SESSIONS_LISTED = 40  # the sessions screen pages through this many of the newest
PSEUDONYM_MAX = 64  # what the daemon accepts
# What the operator reads for each state: words, not the protocol's names.
STATE_TITLES = {"idle": "Idle", "starting": "Starting", "running": "Running", "paused": "Paused",
                "halted": "Halted", "estopped": "Emergency stop", "fault": "Fault", "unknown": "Unknown"}


ALARM_TITLES = {"adverse_reaction": "Adverse reaction", "estop": "Emergency stop",
                "child_left": "Child left the chair", "camera_lost": "Camera lost",
                "link_lost": "Output link lost", "fault": "Fault", "store_failed": "Session record failing"}


def state_title(state: str) -> str:
    return STATE_TITLES.get(state, state.capitalize())


def alarm_title(kind: str) -> str:
    return ALARM_TITLES.get(kind, kind.replace("_", " ").capitalize())


class Host(Protocol):
    """What a screen may use of the app."""

    settings: PanelSettings
    socket_path: Path

    @property
    def state(self) -> PanelState: ...

    def timeline(self) -> tuple[Sample, ...]: ...

    def now(self) -> float: ...

    def retry_in(self) -> Optional[float]: ...

    def send(self, cmd: str, *, tag: Optional[str] = None, **args: object) -> None: ...

    def fetch(self, cmd: str, *, tag: Optional[str] = None, timeout_s: float, **args: object) -> None: ...

    def go(self, name: str) -> None: ...

    def notice(self, text: str, colour: Colour = TEXT) -> None: ...


class Screen:
    """Base class: a name, the buttons of the last frame, hooks for the app."""

    name = ""

    def __init__(self) -> None:
        self.buttons: list[Button] = []

    def draw(self, painter: Painter, host: Host) -> None:
        raise NotImplementedError

    def on_enter(self, host: Host) -> None:
        """Called when the app switches to this screen."""

    def on_leave(self, host: Host) -> None:
        """Called when the app switches away from this screen."""

    def on_outcome(self, outcome: Outcome, host: Host) -> None:
        """Every finished command, whoever sent it; screens pick theirs by ``outcome.tag``."""


# --------------------------------------------------------------------------- the frame


class Chrome:
    """Banner, notice, navigation and STOP: the same on every screen."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.on_stop = on_stop
        self.buttons: list[Button] = []

    def draw(self, painter: Painter, host: Host, current: str, notice: Optional[tuple[str, Colour]]) -> None:
        state = host.state
        self.buttons = [Button(STOP_RECT, "STOP", self.on_stop, STOP_RED, text_size=60)]  # first: hit-tested first
        alarm = state.top_alarm if state.connected else None
        if alarm is not None:
            more = f"  (+{len(state.alarms) - 1} more)" if len(state.alarms) > 1 else ""
            colour = ALARM_HIGH if alarm.priority == "high" else ALARM_MEDIUM
            painter.box(BANNER_RECT, colour, radius=0)
            text_width = ACK_RECT.left - 24
            painter.text(fit(painter.font(30), f"ALARM: {alarm_title(alarm.kind)}{more}", text_width),
                         (12, 8), 30, TEXT)
            message = alarm.message
            if painter.font(22).size(message)[0] > text_width:  # the whole text is one touch away
                message = "touch here for the whole message"
            painter.text(message, (12, 40), 22, TEXT)
            self.buttons.append(Button(ACK_RECT, "Acknowledge", lambda: host.send("ack", tag="ack", id=alarm.id,
                                                                                   by="panel"),
                                       WARN_AMBER, text_size=28, text_colour=(20, 20, 20)))
        else:
            painter.box(BANNER_RECT, SURFACE, radius=0)
            middle = BANNER_RECT.centery
            if state.connected:
                right = BANNER_RECT.right - 12
                if state.simulation:
                    right = painter.text("SIMULATION", (right, middle), 24, WARN_AMBER, "midright").left - 16
                colour = STATE_COLOURS.get(state.state, TEXT)
                title = painter.text(f"Chair: {state_title(state.state)}", (12, middle), 34, colour, "midleft")
                if state.profile:  # a long pseudonym is shortened here; Home shows it whole
                    painter.text(fit(painter.font(30), f"·  {state.profile}", right - title.right - 12),
                                 (title.right + 12, middle), 30, colour, "midleft")
            else:
                painter.text("Chair not connected", (12, middle), 34, BAD_RED, "midleft")
        if notice is not None:
            text, colour = notice
            painter.fitted(text, NOTICE_RECT, sizes=(26, 22, 20), colour=colour)
        if state.connected:
            for index, (name, label) in enumerate(NAV):
                rect = pygame.Rect(STOP_RECT.left, NAV_TOP + index * NAV_STEP, STOP_RECT.width, NAV_HEIGHT)
                self.buttons.append(Button(rect, label, lambda name=name: host.go(name),
                                           SELECTED if name == current else BUTTON))
        if alarm is not None:  # the banner itself, drawn above: a touch shows every alarm in full
            self.buttons.append(Button(pygame.Rect(0, 0, ACK_RECT.left - 4, BANNER_RECT.height), "",
                                       lambda: host.go(AlarmsScreen.name), drawn=False))
        for button in self.buttons:
            button.draw(painter)


# --------------------------------------------------------------------------- alarms


class AlarmsScreen(Screen):
    """Every active alarm in full, one at a time, with its time and Acknowledge (reached from the banner)."""

    name = "alarms"

    def __init__(self) -> None:
        super().__init__()
        self.index = 0

    def on_enter(self, host: Host) -> None:
        self.index = 0

    def draw(self, painter: Painter, host: Host) -> None:
        alarms = host.state.alarms
        left = CONTENT.left + 4
        self.buttons = []
        if not alarms:
            painter.text("No active alarms", (left, 110), 32, MUTED)
        else:
            self.index = min(self.index, len(alarms) - 1)
            alarm = alarms[self.index]
            painter.text(f"Alarm {self.index + 1} of {len(alarms)}: {alarm_title(alarm.kind)}", (left, 108), 30,
                         BAD_RED if alarm.priority == "high" else WARN_AMBER)
            painter.text(f"{alarm.priority} priority, raised {to_minute(alarm.time)}", (left, 142), 22, MUTED)
            painter.fitted(alarm.message, pygame.Rect(left, 170, 604, 224), sizes=(26, 22, 20, 18))
            self.buttons.append(Button(pygame.Rect(left + 304, 404, 300, 70), "Acknowledge",
                                       lambda: host.send("ack", tag="ack", id=alarm.id, by="panel"), WARN_AMBER,
                                       text_colour=(20, 20, 20)))
        self.buttons.append(Button(pygame.Rect(left, 404, 140, 70), "Prev", lambda: self._turn(-1),
                                   enabled=self.index > 0, text_size=28))
        self.buttons.append(Button(pygame.Rect(left + 152, 404, 140, 70), "Next", lambda: self._turn(1),
                                   enabled=self.index < len(alarms) - 1, text_size=28))
        for button in self.buttons:
            button.draw(painter)

    def _turn(self, step: int) -> None:
        self.index = max(0, self.index + step)


# --------------------------------------------------------------------------- home


class HomeScreen(Screen):
    """State and why, the child's affect and its timeline, output levels, health; pause/resume/end."""

    name = "home"
    # Ending a session takes two touches within this many seconds, so a child's stray touch
    # does not end it (STOP, on every screen, still takes one).
    CONFIRM_END_S = 4.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._end_armed_until = 0.0

    def _end_session(self, host: Host) -> None:
        if self._clock() < self._end_armed_until:
            self._end_armed_until = 0.0
            host.send("stop")
        else:
            self._end_armed_until = self._clock() + self.CONFIRM_END_S

    def draw(self, painter: Painter, host: Host) -> None:
        state = host.state
        left = CONTENT.left + 4
        title = state_title(state.state)
        size = next((size for size in (60, 48, 40) if painter.font(size).size(title)[0] <= 316), 40)
        painter.text(title, (left, 104), size, STATE_COLOURS.get(state.state, TEXT))
        # Shortened if need be: relaxctl status, the alarm and the session report have it whole.
        painter.fitted(self.why(state), pygame.Rect(left, 148, 316, 48), sizes=(24, 20, 18), colour=MUTED,
                       shorten=True)
        child = state.profile or (f"{state.last_profile} (ended)" if state.last_profile else None)
        for row, (caption, value) in enumerate((("Child", child), ("Scenario", state.scenario),
                                                ("Phase", state.phase))):
            painter.text(f"{caption}:", (330, 106 + row * 28), 26, MUTED)
            painter.text(fit(painter.font(26), value or "-", CONTENT.right - 434), (430, 106 + row * 28), 26)

        self._draw_affect(painter, state, left)
        self._draw_timeline(painter, host, pygame.Rect(left, 234, 604, 58))
        for column, channel in enumerate(CHANNELS):
            x = left + column * 206
            cap = state.caps[channel]
            painter.text(f"{channel.capitalize()} {state.levels[channel]:.2f}", (x, 316), 24)
            painter.text(f"cap {cap:.2f}", (x + 192, 316), 20, MUTED, "topright")
            Bar(pygame.Rect(x, 338, 192, 20), CHANNEL_COLOURS[channel]).draw(painter, state.levels[channel], cap)
        x = left + 10
        for part in state.health:
            x = draw_dot(painter, (x, 380), part.ok, part.title) + 28

        stimulating = state.state in ("starting", "running")
        armed = self._clock() < self._end_armed_until
        self.buttons = [
            Button(pygame.Rect(left, 400, 192, 70), "Pause", lambda: host.send("pause"), enabled=stimulating),
            Button(pygame.Rect(left + 206, 400, 192, 70), "Resume", lambda: host.send("resume"),
                   enabled=state.state in ("paused", "halted")),
            Button(pygame.Rect(left + 412, 400, 192, 70), "Tap again to end" if armed else "End session",
                   lambda: self._end_session(host), WARN_AMBER if armed else BUTTON,
                   enabled=stimulating or state.state in ("paused", "halted"),
                   text_size=24 if armed else 32, text_colour=(20, 20, 20) if armed else TEXT),
        ]
        for button in self.buttons:
            button.draw(painter)

    @staticmethod
    def why(state: PanelState) -> str:
        """The last decision and how long ago, so a raise is explained by its own reason, not the state's."""
        if not state.decision:
            return state.reason or "-"
        age = state.decision_age_s
        when = "" if age is None else ("just now: " if age < 1.0 else f"{age:.0f} s ago: ")
        return when + state.decision

    @staticmethod
    def _draw_affect(painter: Painter, state: PanelState, left: int) -> None:
        painter.text("Affect:", (left, 202), 26, MUTED)
        affect = state.affect
        if affect is None:
            painter.text("no reading yet", (left + 84, 202), 26, MUTED)
            return
        if not affect.face_present:
            painter.text("no face", (left + 84, 202), 26, MUTED)
        else:
            painter.text(fit(painter.font(30), f"{affect.group} ({affect.label or '-'})", 330 - left - 92),
                         (left + 84, 200), 30, GROUP_COLOURS.get(affect.group, TEXT))
        painter.text("confidence", (330, 202), 22, MUTED)
        Bar(pygame.Rect(420, 200, 150, 22), GROUP_COLOURS.get(state.group, TEXT)).draw(
            painter, affect.confidence if affect.face_present else 0.0)
        painter.text(f"{affect.confidence:.0%}" if affect.face_present else "-", (578, 202), 24)

    @staticmethod
    def _draw_timeline(painter: Painter, host: Host, rect: pygame.Rect) -> None:
        """The affect group as a coloured strip along the bottom, intensity as a line above it."""
        painter.box(rect, SURFACE, radius=4)
        window = host.settings.timeline_s
        now = host.now()
        samples = host.timeline()

        def x_of(t: float) -> int:
            return rect.left + round(rect.width * min(1.0, max(0.0, 1.0 - (now - t) / window)))

        strip = pygame.Rect(rect.left, rect.bottom - 14, rect.width, 14)
        gap = 3.0 * host.settings.poll_interval_s + 1.0
        for start, end, group in Timeline.runs(samples, gap):
            x0, x1 = x_of(start), x_of(end)
            pygame.draw.rect(painter.surface, GROUP_COLOURS[group] if group in GROUP_COLOURS else MUTED,
                             pygame.Rect(x0, strip.top, max(1, x1 - x0), strip.height))
        line_area = rect.height - strip.height - 6
        points = [(x_of(s.time), rect.top + 3 + round(line_area * (1.0 - s.intensity))) for s in samples]
        if len(points) >= 2:
            pygame.draw.lines(painter.surface, TEXT, False, points, 2)
        painter.text("line: intensity  ·  strip: affect", (rect.left + 6, rect.top + 3), 16, MUTED)
        step = next((step for step in TIMELINE_TICKS_S if window / step <= 6), window)
        ticks = int(window // step)
        for tick in range(ticks + 1):
            x = rect.right - round(rect.width * tick * step / window)
            pygame.draw.line(painter.surface, MUTED, (x, rect.bottom), (x, rect.bottom + 4), 1)
            label = "now" if tick == 0 else (f"-{tick * step / 60:g} min" if step >= 60 else f"-{tick * step:g} s")
            anchor = "topright" if tick == 0 else ("topleft" if x - rect.left < 30 else "midtop")
            painter.text(label, (x, rect.bottom + 5), 18, MUTED, anchor)


TIMELINE_TICKS_S = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)  # the timeline's scale: at most 6 ticks


# --------------------------------------------------------------------------- start


class StartScreen(Screen):
    """Pick a child profile and a scenario, then Start.

    Picking a child asks the daemon what it would play for that child and why (``suggest``:
    the profile's preferred scenario or the learner's choice) and selects it; Start then leaves
    the choice to the daemon, so the learner may switch within the session. Picking another
    scenario by hand is the operator's explicit choice, which the learner never overrides.
    Until the operator picks one by hand, Start names no scenario, even before the suggestion
    has arrived: the pre-selected default is a placeholder, not the operator's choice.
    """

    name = "start"
    PAGE = 3

    def __init__(self) -> None:
        super().__init__()
        self.profiles: list[dict] = []
        self.scenarios: list[dict] = []
        self.profile: Optional[str] = None
        self.scenario: Optional[str] = None
        self.pages = {"profiles": 0, "scenarios": 0}
        self.loading = False
        self.suggestion: Optional[dict] = None  # the daemon's plan for the picked child
        self.hand_picked = False  # the operator chose the scenario since picking the child
        self._host: Optional[Host] = None

    def on_enter(self, host: Host) -> None:
        self._host = host
        self.loading = True
        host.send("list_profiles", tag="profiles")
        host.send("list_scenarios", tag="scenarios")

    def on_outcome(self, outcome: Outcome, host: Host) -> None:
        if outcome.tag == "profiles" and outcome.ok:
            self.profiles = list(outcome.result)
        elif outcome.tag == "scenarios":
            self.loading = False
            if outcome.ok:
                self.scenarios = list(outcome.result)
                if self.scenario is None:
                    self.scenario = next((s["name"] for s in self.scenarios if s.get("default")), None)
        elif outcome.tag == "suggest" and outcome.ok and outcome.result.get("profile") == self.profile:
            self.suggestion = dict(outcome.result)
            if not self.hand_picked and any(s["name"] == self.suggestion["scenario"] for s in self.scenarios):
                self.scenario = self.suggestion["scenario"]
        elif outcome.tag == "start" and outcome.ok:
            host.notice(f"Session started for {outcome.result['profile']} ({outcome.result['scenario']})", GO_GREEN)
            host.go("home")

    def pick_profile(self, pseudonym: str) -> None:
        self.profile = pseudonym
        self.suggestion = None
        self.hand_picked = False
        preferred = next((p.get("preferred_scenario") for p in self.profiles if p["pseudonym"] == pseudonym), None)
        if preferred and any(s["name"] == preferred for s in self.scenarios):
            self.scenario = preferred
        if self._host is not None:
            self._host.send("suggest", tag="suggest", profile=pseudonym)

    def following_suggestion(self) -> bool:
        """The selected scenario is the daemon's suggestion (Start then names none)."""
        return self.suggestion is not None and self.scenario == self.suggestion["scenario"]

    def scenario_to_send(self) -> Optional[str]:
        """What Start names: the operator's own pick, or None to leave it to the daemon."""
        return self.scenario if self.hand_picked and not self.following_suggestion() else None

    def taken(self) -> set[str]:
        return {p["pseudonym"] for p in self.profiles}

    def suggested_name(self) -> str:
        """A fresh pseudonym (child-N) that the name screen offers to keep or replace."""
        number = 1
        while f"child-{number}" in self.taken():
            number += 1
        return f"child-{number}"

    def add_profile(self, pseudonym: str) -> None:
        """A new child, known to the daemon once its first session starts (start creates the profile)."""
        if pseudonym not in self.taken():
            self.profiles.append({"pseudonym": pseudonym, "preferred_scenario": None})
        self.pages["profiles"] = [p["pseudonym"] for p in self.profiles].index(pseudonym) // self.PAGE
        self.pick_profile(pseudonym)

    def draw(self, painter: Painter, host: Host) -> None:
        state = host.state
        self.buttons = []
        self._column(painter, "Child", "profiles", [p["pseudonym"] for p in self.profiles], self.profile,
                     self.pick_profile, CONTENT.left + 4)
        self.buttons.append(Button(pygame.Rect(CONTENT.left + 4 + 2 * 76, 330, 138, 60), "New child",
                                   lambda: host.go(NameScreen.name), text_size=28))
        self._column(painter, "Scenario", "scenarios", [s["name"] for s in self.scenarios], self.scenario,
                     self._pick_scenario, 318)
        if self.loading:
            painter.text("loading…", (CONTENT.left + 4, 420), 26, MUTED)
        elif state.state != "idle":
            why = "reset it in Settings" if state.state in ("estopped", "fault") else "end that session on Home"
            painter.fitted(f"The chair is {state_title(state.state).lower()}: {why} first.",
                           pygame.Rect(CONTENT.left + 4, 404, 296, 70), sizes=(24, 20), colour=WARN_AMBER)
        else:
            summary = f"{self.profile or 'pick a child'}  ·  {self.scenario or 'pick a scenario'}"
            if self.following_suggestion():
                assert self.suggestion is not None
                summary += f": {self.suggestion['why']}"
            painter.fitted(summary, pygame.Rect(CONTENT.left + 4, 404, 296, 70), sizes=(24, 20, 18, 16),
                           centred=True, shorten=True)
        ready = self.profile is not None and self.scenario is not None and state.state == "idle"
        self.buttons.append(Button(pygame.Rect(318, 404, 298, 70), "Start",
                                   lambda: host.send("start", tag="start", profile=self.profile,
                                                     scenario=self.scenario_to_send()),
                                   GO_GREEN, enabled=ready, text_size=40))
        for button in self.buttons:
            button.draw(painter)

    def _pick_scenario(self, name: str) -> None:
        self.scenario = name
        self.hand_picked = True

    def _column(self, painter: Painter, title: str, key: str, names: list[str], selected: Optional[str],
                pick: Callable[[str], None], x: int) -> None:
        """A paged list of names as buttons, with Prev/Next below it."""
        pages = max(1, -(-len(names) // self.PAGE))
        page = self.pages[key] = min(self.pages[key], pages - 1)
        painter.text(f"{title} ({len(names)})" if names else f"{title}: none yet", (x, 104), 26, MUTED)
        for row, name in enumerate(names[page * self.PAGE:(page + 1) * self.PAGE]):
            self.buttons.append(Button(pygame.Rect(x, 128 + row * 66, 298, 60), name,
                                       lambda name=name: pick(name), SELECTED if name == selected else BUTTON,
                                       text_size=30, wrap=True))
        self.buttons.append(Button(pygame.Rect(x, 330, 70, 60), "Prev", lambda: self._turn(key, -1, pages),
                                   enabled=page > 0, text_size=26))
        self.buttons.append(Button(pygame.Rect(x + 76, 330, 70, 60), "Next", lambda: self._turn(key, 1, pages),
                                   enabled=page < pages - 1, text_size=26))

    def _turn(self, key: str, step: int, pages: int) -> None:
        self.pages[key] = min(pages - 1, max(0, self.pages[key] + step))


class NameScreen(Screen):
    """A new child's pseudonym, typed on an on-screen keyboard (the panel has no other)."""

    name = "name"
    ROWS = ("1234567890", "qwertyuiop", "asdfghjkl-", "zxcvbnm_.")
    HINT = "A pseudonym only, never the child's real name."

    def __init__(self, start: StartScreen) -> None:
        super().__init__()
        self.start = start
        self.entered = ""
        self.error = ""

    def on_enter(self, host: Host) -> None:
        self.entered, self.error = self.start.suggested_name(), ""

    def key(self, key: str) -> None:
        self.error = ""
        if key == "Del":
            self.entered = self.entered[:-1]
        elif len(self.entered) < PSEUDONYM_MAX:
            self.entered += key

    def use(self, host: Host) -> None:
        name = self.entered.strip()
        if not name:
            self.error = "Type a pseudonym first."
        elif name in self.start.taken():
            self.error = "That pseudonym is already a child here: pick it on Start, or type another."
        else:
            self.start.add_profile(name)
            host.go(StartScreen.name)

    def draw(self, painter: Painter, host: Host) -> None:
        left = CONTENT.left + 4
        field = pygame.Rect(left, 104, 330, 40)
        painter.box(field, SURFACE)
        shown = self.entered + "_"
        while len(shown) > 1 and painter.font(28).size(shown)[0] > field.width - 16:
            shown = shown[1:]  # the end of a long name, where the typing happens
        painter.text(shown, (field.left + 8, field.centery), 28, TEXT, "midleft")
        painter.fitted(self.error or f"{self.HINT} Up to {PSEUDONYM_MAX} characters.",
                       pygame.Rect(field.right + 10, 100, CONTENT.right - field.right - 14, 48), sizes=(20, 18),
                       colour=BAD_RED if self.error else WARN_AMBER)
        self.buttons = []
        for row, keys in enumerate(self.ROWS):
            for column, key in enumerate(keys):
                self.buttons.append(Button(pygame.Rect(left + column * 62, 150 + row * 62, 60, 60), key,
                                           lambda key=key: self.key(key), text_size=30))
        self.buttons.append(Button(pygame.Rect(left + 9 * 62, 150 + 3 * 62, 60, 60), "Del",
                                   lambda: self.key("Del"), text_size=24))
        self.buttons.append(Button(pygame.Rect(left, 404, 200, 70), "Cancel", lambda: host.go(StartScreen.name)))
        self.buttons.append(Button(pygame.Rect(left + 214, 404, 390, 70), "Use this pseudonym",
                                   lambda: self.use(host), GO_GREEN, enabled=bool(self.entered.strip())))
        for button in self.buttons:
            button.draw(painter)


# --------------------------------------------------------------------------- caps


class CapsScreen(Screen):
    """Lower (or raise again, up to 1) the child's light, sound and vibration caps."""

    name = "caps"

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[str, float] = {}  # sent, not yet answered: lets quick taps add up
        self.in_flight = 0
        self.note = ""

    def on_outcome(self, outcome: Outcome, host: Host) -> None:
        if outcome.tag != "caps":
            return
        self.in_flight -= 1
        if self.in_flight == 0:  # the state (refreshed before the outcome) now shows every change
            self.pending.clear()
        if outcome.ok:
            self.note = (f"Saved to {outcome.result['profile']}'s profile" if outcome.result["persisted"]
                         else "No session: applies until the next session starts with its profile's caps")

    def change(self, host: Host, channel: str, step: float) -> None:
        current = self.pending.get(channel, host.state.caps[channel])
        value = round(min(1.0, max(0.0, current + step)), 2)
        self.pending[channel] = value
        self.in_flight += 1
        host.send("set_caps", tag="caps", **{channel: value})

    def draw(self, painter: Painter, host: Host) -> None:
        state = host.state
        step = host.settings.caps_step
        painter.text("Caps: the most this child gets", (CONTENT.left + 4, 104), 32)
        self.buttons = []
        for row, channel in enumerate(CHANNELS):
            y = 146 + row * 86
            value = self.pending.get(channel, state.caps[channel])
            painter.text(channel.capitalize(), (CONTENT.left + 4, y + 35), 32, TEXT, "midleft")
            self.buttons.append(Button(pygame.Rect(140, y, 76, 70), "-", lambda c=channel: self.change(host, c, -step),
                                       enabled=value > 0.0, text_size=56))
            Bar(pygame.Rect(230, y + 38, 290, 24), CHANNEL_COLOURS[channel]).draw(painter, value)
            painter.text(f"{value:.2f}" + ("  (sending)" if channel in self.pending else ""), (230, y + 8), 26)
            painter.text(f"now {state.levels[channel]:.2f}", (520, y + 8), 22, MUTED, "topright")
            self.buttons.append(Button(pygame.Rect(536, y, 76, 70), "+", lambda c=channel: self.change(host, c, step),
                                       enabled=value < 1.0, text_size=56))
        painter.fitted(self.note or "Each touch moves a cap by "
                       f"{step:g}. Caps are saved to the running session's profile.",
                       pygame.Rect(CONTENT.left + 4, 410, 600, 60), sizes=(24, 20), colour=MUTED)
        for button in self.buttons:
            button.draw(painter)


# --------------------------------------------------------------------------- sessions


class SessionsScreen(Screen):
    """The newest sessions, a page at a time; a touch asks the daemon for that session's report picture.

    The picture is the daemon's report PNG (numbers only: affect shares, levels, events;
    never an image of the child), loaded from the path in the reply. It first fits the
    screen whole; a touch on it shows it at full size around the touched point, where its
    text is readable on the 7" display, panned with Left/Right/Up/Down; another touch fits
    it again.
    """

    name = "sessions"
    PAGE = 4
    PICTURE = pygame.Rect(CONTENT.left, CONTENT.top, CONTENT.width - 76, CONTENT.height - 16)  # the hint below
    BACK = pygame.Rect(CONTENT.right - 68, CONTENT.top, 68, 90)
    PAN = (("Left", -1, 0), ("Right", 1, 0), ("Up", 0, -1), ("Down", 0, 1))

    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[dict] = []
        self.page = 0
        self.loading = False
        self.viewing: Optional[int] = None  # the session whose report is asked for or shown
        self.image: Optional[pygame.Surface] = None  # the report at its own size
        self.picture: Optional[pygame.Surface] = None  # the report scaled to fit
        self.shown_png: Optional[str] = None  # the file the picture came from
        self.zoomed_at: Optional[tuple[int, int]] = None  # top-left of the full-size view, in image pixels

    def on_enter(self, host: Host) -> None:
        self.loading = True
        self.back()
        host.send("list_sessions", tag="sessions", limit=SESSIONS_LISTED)

    def on_leave(self, host: Host) -> None:
        self.back()

    def on_outcome(self, outcome: Outcome, host: Host) -> None:
        if outcome.tag == "sessions":
            self.loading = False
            if outcome.ok:
                self.sessions = list(outcome.result)
        elif outcome.tag == "report":
            if not outcome.ok:  # the app has put the daemon's message on the notice line
                self.back()
            elif outcome.result["session"] == self.viewing:  # not one the operator has left meanwhile
                self._show(outcome.result["png"], host)

    def open(self, host: Host, session_id: int) -> None:
        self.back()
        self.viewing = session_id
        host.fetch("report", tag="report", timeout_s=host.settings.report_timeout_s, session=session_id)

    def back(self) -> None:
        self.viewing, self.image, self.picture, self.shown_png, self.zoomed_at = None, None, None, None, None

    def _show(self, png: str, host: Host) -> None:
        try:
            image = pygame.image.load(png)
        except (pygame.error, OSError) as exc:  # e.g. the panel's user is not in the socket's group
            host.notice(f"cannot open the report picture {png} ({exc}): is the panel's user in the relaxd group?",
                        BAD_RED)
            self.back()
            return
        scale = min(self.PICTURE.width / image.get_width(), self.PICTURE.height / image.get_height(), 1.0)
        size = (max(1, round(image.get_width() * scale)), max(1, round(image.get_height() * scale)))
        try:
            self.picture = pygame.transform.smoothscale(image, size)
        except ValueError:  # smoothscale needs 24 or 32 bits per pixel
            self.picture = pygame.transform.scale(image, size)
        self.image, self.shown_png = image, png

    def toggle_zoom(self, pos: tuple[int, int]) -> None:
        """Full size around the touched point of the fitted picture; back to fitted from full size."""
        if self.image is None or self.picture is None:
            return
        if self.zoomed_at is not None:
            self.zoomed_at = None
            return
        placed = self.picture.get_rect(midtop=self.PICTURE.midtop)
        scale = self.image.get_width() / self.picture.get_width()
        centre = ((pos[0] - placed.left) * scale, (pos[1] - placed.top) * scale)
        self.zoomed_at = self._clamped(round(centre[0] - self.PICTURE.width / 2),
                                       round(centre[1] - self.PICTURE.height / 2))

    def pan(self, dx: int, dy: int) -> None:
        """Move the full-size view by half a screen."""
        if self.zoomed_at is not None:
            x, y = self.zoomed_at
            self.zoomed_at = self._clamped(x + dx * self.PICTURE.width // 2, y + dy * self.PICTURE.height // 2)

    def _clamped(self, x: int, y: int) -> tuple[int, int]:
        assert self.image is not None
        return (min(max(0, x), max(0, self.image.get_width() - self.PICTURE.width)),
                min(max(0, y), max(0, self.image.get_height() - self.PICTURE.height)))

    def draw(self, painter: Painter, host: Host) -> None:
        if self.viewing is None:
            self._draw_list(painter, host)
        else:
            self._draw_report(painter, host)
        for button in self.buttons:
            button.draw(painter)

    def _draw_report(self, painter: Painter, host: Host) -> None:
        self.buttons = [Button(self.BACK, "Back", self.back, text_size=28)]
        if self.picture is None or self.image is None:
            painter.text(f"Drawing the report of session {self.viewing}…", (CONTENT.left + 4, 120), 28, MUTED)
            return
        if self.zoomed_at is None:
            placed = painter.surface.blit(self.picture, self.picture.get_rect(midtop=self.PICTURE.midtop))
            hint = "Touch the picture to read it at full size"
        else:
            view = pygame.Rect(self.zoomed_at, self.PICTURE.size).clip(self.image.get_rect())
            placed = painter.surface.blit(self.image.subsurface(view), self.PICTURE.topleft)
            hint = "Full size: Left, Right, Up, Down to move; touch the picture to see all of it"
            for index, (label, dx, dy) in enumerate(self.PAN):
                self.buttons.append(Button(pygame.Rect(self.BACK.left, self.BACK.bottom + 6 + index * 66, 68, 60),
                                           label, lambda dx=dx, dy=dy: self.pan(dx, dy), text_size=20))
        painter.fitted(hint, pygame.Rect(CONTENT.left + 4, self.PICTURE.bottom + 1, self.PICTURE.width - 4, 15),
                       sizes=(18, 16), colour=MUTED)
        if placed.width >= 60 and placed.height >= 60:
            self.buttons.append(TouchArea(placed, "", lambda: None, on_touch=self.toggle_zoom))

    def _draw_list(self, painter: Painter, host: Host) -> None:
        left = CONTENT.left + 4
        pages = max(1, -(-len(self.sessions) // self.PAGE))
        self.page = min(self.page, pages - 1)
        self.buttons = []
        if self.loading:
            painter.text("loading…", (left, 104), 26, MUTED)
        elif not self.sessions:
            painter.text("No sessions recorded yet", (left, 104), 26, MUTED)
        else:
            painter.text(fit(painter.font(24), f"Sessions, newest first (page {self.page + 1} of {pages}): "
                             "touch one for its report", 604), (left, 104), 24, MUTED)
        for row, session in enumerate(self.sessions[self.page * self.PAGE:(self.page + 1) * self.PAGE]):
            label = "\n".join(fit(painter.font(26), line, 588) for line in session_label(session).split("\n"))
            self.buttons.append(Button(pygame.Rect(left, 130 + row * 68, 604, 62), label,
                                       lambda sid=session["id"]: self.open(host, sid), text_size=26))
        self.buttons.append(Button(pygame.Rect(left, 404, 140, 70), "Prev", lambda: self._turn(-1, pages),
                                   enabled=self.page > 0, text_size=28))
        self.buttons.append(Button(pygame.Rect(left + 152, 404, 140, 70), "Next", lambda: self._turn(1, pages),
                                   enabled=self.page < pages - 1, text_size=28))

    def _turn(self, step: int, pages: int) -> None:
        self.page = min(pages - 1, max(0, self.page + step))


def session_label(session: dict) -> str:
    """Two lines for a session's button: who and what, then when and how it ended."""
    ended = "not ended" if session.get("ended_at") is None else describe_end_reason(session.get("end_reason"))
    return (f"#{session['id']}  {session.get('profile') or '-'}  ·  {session.get('scenario') or '-'}\n"
            f"{to_minute(session.get('started_at'))}  ·  {ended}")


def to_minute(stamp: Optional[str]) -> str:
    """A stored stamp as the chair's local date and time, to the minute (a button's width)."""
    return local_time(stamp, "%Y-%m-%d %H:%M")


# --------------------------------------------------------------------------- settings


class SettingsScreen(Screen):
    """Behind the PIN: socket path, versions, health details, the e-stop reset, and the
    approvals: scenarios blocked for a child after a halt, which only a therapist releases."""

    name = "settings"
    # A child at the touchscreen can try PINs faster than an adult notices: after this many
    # wrong ones in a row the keypad refuses every PIN for LOCKOUT_S seconds.
    MAX_WRONG_PINS = 5
    LOCKOUT_S = 60.0

    def __init__(self, pin: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._pin = pin
        self._clock = clock
        self._wrong_in_a_row = 0
        self._locked_until = 0.0
        self.unlocked = False
        self.approvals = False  # showing the blocked scenarios instead of the settings
        self.blocked: list[dict] = []
        self.error = ""
        self.keypad = Keypad((316, 104), self._check_pin, key_size=(96, 64))

    def lockout_left(self) -> float:
        """Seconds until the keypad takes PINs again (0 when it does now)."""
        return max(0.0, self._locked_until - self._clock())

    def _check_pin(self, entered: str) -> None:
        if self.lockout_left() > 0:
            return  # not even the right PIN counts while locked out
        if hmac.compare_digest(entered.encode(), self._pin.encode()):
            self.unlocked, self.error, self._wrong_in_a_row = True, "", 0
            return
        self._wrong_in_a_row += 1
        self.error = "Wrong PIN - try again"
        if self._wrong_in_a_row >= self.MAX_WRONG_PINS:
            self._wrong_in_a_row = 0
            self._locked_until = self._clock() + self.LOCKOUT_S

    def on_enter(self, host: Host) -> None:
        self.keypad.entered, self.error = "", ""

    def on_leave(self, host: Host) -> None:
        self.unlocked = self.approvals = False  # the PIN is asked again on every visit

    def on_outcome(self, outcome: Outcome, host: Host) -> None:
        if outcome.tag == "reset" and outcome.ok:
            host.notice("Reset: the chair is idle; start a session to stimulate again", GO_GREEN)
        elif outcome.tag == "blocked" and outcome.ok:
            self.blocked = list(outcome.result)
        elif outcome.tag == "approved" and outcome.ok:
            host.notice(f"{outcome.result['scenario']} approved for {outcome.result['profile']}", GO_GREEN)
            host.send("list_blocked", tag="blocked")

    def show_approvals(self, host: Host) -> None:
        self.approvals = True
        host.send("list_blocked", tag="blocked")

    def draw(self, painter: Painter, host: Host) -> None:
        if self.unlocked and self.approvals:
            self._draw_approvals(painter, host)
        elif self.unlocked:
            self._draw_unlocked(painter, host)
        else:
            self._draw_keypad(painter)
        for button in self.buttons:
            button.draw(painter)

    def default_pin_warning(self, painter: Painter, rect: pygame.Rect) -> None:
        if self._pin == DEFAULT_PANEL_PIN:
            painter.fitted(f"The PIN is still the default {DEFAULT_PANEL_PIN}: anyone can reset the e-stop. "
                           "Set panel.pin in the chair's config.", rect, sizes=(22, 20, 18), colour=WARN_AMBER)

    def _draw_keypad(self, painter: Painter) -> None:
        left = CONTENT.left + 4
        self.default_pin_warning(painter, pygame.Rect(left, 290, 290, 100))
        painter.text("Settings are locked", (left, 104), 32)
        painter.text("Enter the PIN:", (left, 144), 26, MUTED)
        field = pygame.Rect(left, 174, 280, 60)
        painter.box(field, SURFACE)
        painter.text(" ".join("*" * len(self.keypad.entered)) or " ", field.center, 44, TEXT, "center")
        wait = self.lockout_left()
        if wait > 0:
            painter.text(f"Too many wrong PINs - wait {wait:.0f} s", (left, 250), 28, BAD_RED)
        elif self.error:
            painter.text(self.error, (left, 250), 28, BAD_RED)
        self.buttons = list(self.keypad.buttons)

    def _draw_unlocked(self, painter: Painter, host: Host) -> None:
        state = host.state
        left = CONTENT.left + 4
        painter.text("Settings", (left, 104), 32)
        lines = [
            ("Socket", str(host.socket_path)),
            ("Panel", f"relaxd {__version__}, protocol v{PROTOCOL_VERSION}, pygame {pygame.version.ver} "
                      f"(SDL {'.'.join(map(str, pygame.get_sdl_version()))})"),
            ("Chair", "simulation (no hardware)" if state.simulation else "hardware"),
            ("E-stop", f"LATCHED by {state.tripped_by}" if state.latched else "not latched"),
        ] + [(part.title, ("ok, " if part.ok else "PROBLEM, ") + part.detail)
             for part in state.health if part.key != "latch"]
        for row, (title, value) in enumerate(lines):
            y = 140 + row * 27
            painter.text(f"{title}:", (left, y), 24, MUTED)
            painter.text(fit(painter.font(24), value, 490), (left + 124, y), 24,
                         BAD_RED if value.startswith(("LATCHED", "PROBLEM")) else TEXT)
        self.default_pin_warning(painter, pygame.Rect(left, 354, 604, 44))
        resettable = state.latched or state.state in ("estopped", "fault")
        label = "Reset fault" if state.state == "fault" and not state.latched else "Reset e-stop"
        self.buttons = [
            Button(pygame.Rect(left, 400, 270, 70), label, lambda: host.send("reset", tag="reset", by="panel"),
                   WARN_AMBER, enabled=resettable, text_colour=(20, 20, 20)),
            Button(pygame.Rect(left + 282, 400, 170, 70), "Approvals", lambda: self.show_approvals(host),
                   text_size=28),
            Button(pygame.Rect(left + 464, 400, 140, 70), "Lock", self._lock),
        ]

    APPROVALS_SHOWN = 3

    def _draw_approvals(self, painter: Painter, host: Host) -> None:
        """Each scenario blocked after a halt, newest first, with its Approve button."""
        left = CONTENT.left + 4
        painter.text("Blocked after a halt", (left, 104), 32)
        self.buttons = []
        if not self.blocked:
            painter.fitted("No scenario is blocked: the learner may choose any scenario a therapist has not "
                           "excluded.", pygame.Rect(left, 150, 604, 80), sizes=(24, 20), colour=MUTED)
        for row, item in enumerate(self.blocked[:self.APPROVALS_SHOWN]):
            y = 144 + row * 64
            painter.fitted(f"{item['profile']} · {item['scenario']}", pygame.Rect(left, y, 440, 28),
                           sizes=(24, 20, 18), shorten=True)
            painter.fitted(item.get("reason") or "", pygame.Rect(left, y + 28, 440, 26), sizes=(18, 16),
                           colour=MUTED, shorten=True)
            self.buttons.append(Button(
                pygame.Rect(left + 452, y, 152, 60), "Approve",
                lambda item=item: host.send("approve_scenario", tag="approved", profile=item["profile"],
                                            scenario=item["scenario"], by="panel"), GO_GREEN, text_size=26))
        if len(self.blocked) > self.APPROVALS_SHOWN:
            painter.text(f"and {len(self.blocked) - self.APPROVALS_SHOWN} more (relaxctl list-blocked)",
                         (left, 144 + self.APPROVALS_SHOWN * 64 + 4), 20, MUTED)
        self.buttons.append(Button(pygame.Rect(left, 400, 200, 70), "Back", self._back_to_settings))

    def _back_to_settings(self) -> None:
        self.approvals = False

    def _lock(self) -> None:
        self.unlocked = self.approvals = False


# --------------------------------------------------------------------------- disconnected


class DisconnectedScreen(Screen):
    """No daemon: say so plainly, show why and when the next attempt comes; only STOP stays."""

    name = "disconnected"
    TITLE = "Chair service not running — reconnecting…"

    def draw(self, painter: Painter, host: Host) -> None:
        state = host.state
        left = CONTENT.left + 4
        self.buttons = []
        if not state.problem:
            painter.text("Connecting to the chair service…", (left, 120), 36)
            return
        painter.fitted(self.TITLE, pygame.Rect(left, 108, 604, 44), sizes=(36, 30, 26), colour=WARN_AMBER)
        retry = host.retry_in()
        painter.text("next attempt " + (f"in {retry:.0f} s" if retry and retry >= 0.5 else "now"),
                     (left, 160), 26, MUTED)
        painter.fitted(state.problem, pygame.Rect(left, 196, 604, 170), sizes=(24, 20, 18))
        painter.fitted("The chair's own emergency button works without this panel. "
                       f"Socket: {host.socket_path}", pygame.Rect(left, 374, 604, 100), sizes=(24, 20, 18),
                       colour=MUTED)
