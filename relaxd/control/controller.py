"""The relaxation state machine: affect readings and a clock in, stimulus targets and events out.

Pure logic: no I/O, no threads, no clock of its own. Every call takes ``now`` (monotonic
seconds), so every rule is a fast unit test with plain floats as the clock.

States::

    idle ──start──▶ starting ──calibration_s──▶ running ◀──resume──▶ paused
                        │  (baseline, no raises)   │   (operator, or no face)
                        └───────── strong or sustained negative ──────────▶ halted
    any state ──estop──▶ estopped (latched) ──reset_estop──▶ idle
    any state ──fault──▶ fault ──clear_fault──▶ idle

Rules (every number is a ``ControllerSettings`` field), after the relaxation-chair paper
(Mačerauskas & Žigunovs): neutral keeps the stimulation, positive raises it a step,
negative lowers or halts it and alerts the caregiver.

* Raising is strict: positive must be read without a break for ``positive_hold_s`` while
  running (time calibrating or paused does not count), at most one raise per
  ``raise_interval_s``, never above the child's cap.
* Lowering is eager: the first negative reading of an episode lowers at once, then at most
  once per ``lower_interval_s``. An episode ends only after ``negative_release_s`` without a
  negative reading, so a flickering label cannot keep resetting the halt timer.
* A negative reading with confidence >= ``halt_confidence``, or an episode lasting
  ``halt_after_s``, halts: a linear fade to off over ``halt_fade_s`` and a high-priority
  ``adverse_reaction`` alert. Only the operator resumes, after ``halt_min_s``, at the child's
  start intensity or the pre-halt one, whichever is lower.
* No face for ``no_face_pause_s`` pauses at ``pause_intensity``; ``child_left_s`` later a
  medium-priority ``child_left`` alert. The face back with non-negative affect for
  ``resume_hold_s`` resumes at the intensity the session had. An operator pause waits for
  the operator.
* E-stop works from every state, never raises, zeroes every target at once (no fade) and
  latches; ``reset_estop`` goes to idle and never restarts stimulation by itself. A fault
  (e.g. no reading for ``reading_timeout_s``: the vision loop stalled) zeroes at once too.
* The scenario clock runs only while starting or running, so a pause holds the programme.
  A non-looping scenario's end, or an operator stop, fades out over ``stop_fade_s`` to idle.
* Scenario switches (issue 15): a scenario the learner chose is reassessed every
  ``reassess_s`` of its programme after calibration; when at least ``switch_negative_share`` of the face
  readings of that interval were negative, the learner's ``switcher`` names another one and
  the chair cross-fades to it over ``crossfade_s``. A scenario chosen by the operator or the
  child's profile is never switched. A switch changes only the programme: the intensity, the
  child's cap, the halt and the e-stop work on exactly as before.
* Each scenario's stretch of the session ends with a ``scenario_ended`` event carrying its
  ``ScenarioOutcome`` (time to calm, negative share, halt, early end): what the learner
  learns from. An e-stop or a fault records no outcome: it says nothing about the scenario.
* Per-child sensitivity: a child whose face readings were negative at least
  ``SENSITIVE_RESTING_NEGATIVE`` of the time while calibrating (a calm face that reads as negative) lowers only on negative
  readings at least ``min(sensitivity_max_confidence, resting + SENSITIVITY_MARGIN)``
  confident, or on a negative episode that has lasted ``lower_interval_s``. The halt rules
  (``halt_confidence``, ``halt_after_s``) are not touched, so a confident or sustained
  negative halts exactly when it would for any child.

Every change is an ``Event`` with its reason; alerts carry a priority. Caps and ramp rates
are enforced again by the actuator bank; the controller's own changes are whole steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from relaxd.control.outcome import ChosenBy, SegmentTracker
from relaxd.control.scenarios import RGB, Scenario, SoundTarget, StimulusTargets
from relaxd.errors import ConfigError, RelaxdError
from relaxd.settings import ControllerSettings
from relaxd.vocabulary import GROUPS, Priority

if TYPE_CHECKING:
    from relaxd.affect import AffectReading

_OPERATOR, _NO_FACE = "operator", "no face"
SENSITIVE_RESTING_NEGATIVE = 0.25  # resting negative share from which a child's lowering is adjusted
SENSITIVITY_MARGIN = 0.1  # the adjusted lowering confidence: resting share + this, at most the setting

#: ``switcher(current, tried)``: another scenario and why, or None to stay (the learner's choice).
ScenarioSwitcher = Callable[[str, frozenset], Optional[tuple[str, str]]]


class ControlError(RelaxdError):
    """Base class of the controller's errors."""


class CommandRejected(ControlError):
    """An operator command that the current state does not allow; nothing changed."""


class ProfileError(ControlError, ValueError):
    """A child profile has a missing or out-of-range value."""


class State(str, Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    ESTOPPED = "estopped"
    FAULT = "fault"

    def __str__(self) -> str:
        return self.value


STIMULATING = frozenset({State.STARTING, State.RUNNING, State.PAUSED})  # where the affect rules apply


class EventKind(str, Enum):
    STARTED = "started"
    CALIBRATED = "calibrated"
    INTENSITY_RAISED = "intensity_raised"
    INTENSITY_LOWERED = "intensity_lowered"
    PAUSED = "paused"
    RESUMED = "resumed"
    CHILD_LEFT = "child_left"
    ADVERSE_REACTION = "adverse_reaction"
    STOPPED = "stopped"
    SCENARIO_FINISHED = "scenario_finished"
    ESTOP = "estop"
    ESTOP_RESET = "estop_reset"
    FAULT = "fault"
    FAULT_CLEARED = "fault_cleared"
    SCENARIO_SWITCHED = "scenario_switched"
    SCENARIO_ENDED = "scenario_ended"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Event:
    """Something the controller did or noticed, and why."""

    time: float
    kind: EventKind
    state_from: State
    state_to: State
    reason: str
    priority: Optional[Priority] = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def is_alert(self) -> bool:
        return self.priority is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly values (for the store, the socket and the panel)."""
        return {
            "time": self.time,
            "kind": self.kind.value,
            "state_from": self.state_from.value,
            "state_to": self.state_to.value,
            "reason": self.reason,
            "priority": None if self.priority is None else self.priority.value,
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class ChildProfile:
    """What the controller knows about a child: a pseudonym and their limits. Never an image."""

    pseudonym: str
    intensity_cap: float = 0.6
    start_intensity: float = 0.3
    preferred_scenario: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.pseudonym, str) or not self.pseudonym.strip():
            raise ProfileError("a child profile needs a non-empty pseudonym (never the child's real name)")
        for name in ("intensity_cap", "start_intensity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ProfileError(f"profile {self.pseudonym!r}: {name} must be a number within 0..1, got {value!r}")
        if self.start_intensity > self.intensity_cap:
            raise ProfileError(
                f"profile {self.pseudonym!r}: start_intensity {self.start_intensity} is above its "
                f"intensity_cap {self.intensity_cap}; lower the start or raise the cap"
            )


@dataclass(frozen=True)
class Output:
    """What the actuators should do now: ``tick``'s answer."""

    time: float
    state: State
    intensity: float  # the intensity applied to the targets (pause level and fades included)
    targets: StimulusTargets  # already scaled by ``intensity``
    scenario: Optional[str]
    phase: Optional[str]
    scenario_time_s: float
    events: tuple[Event, ...] = ()


class _ScenarioClock:
    """Seconds of programme played: runs while starting or running, frozen otherwise."""

    def __init__(self, now: float) -> None:
        self._banked = 0.0
        self._since: Optional[float] = now

    def time(self, now: float) -> float:
        return self._banked + (max(0.0, now - self._since) if self._since is not None else 0.0)

    def freeze(self, now: float) -> None:
        if self._since is not None:
            self._banked = self.time(now)
            self._since = None

    def run(self, now: float) -> None:
        if self._since is None:
            self._since = now


@dataclass(frozen=True)
class _Fade:
    """A linear fade to off of the applied intensity, holding the scenario's look at one moment."""

    started: float
    start_level: float
    duration_s: float
    scenario: Scenario
    scenario_time_s: float
    look: StimulusTargets  # the full-intensity targets at that moment (mid cross-fade: the blend)

    def level(self, now: float) -> float:
        if self.duration_s <= 0.0:
            return 0.0
        return self.start_level * min(1.0, max(0.0, 1.0 - (now - self.started) / self.duration_s))

    def done(self, now: float) -> bool:
        return now - self.started >= self.duration_s


@dataclass(frozen=True)
class _Crossfade:
    """From the scenario before a switch (still playing on) to the new one, over ``duration_s``."""

    old: Scenario
    old_time_s: float  # the old scenario's programme time at the switch
    started: float
    duration_s: float

    def done(self, now: float) -> bool:
        return now - self.started >= self.duration_s

    def blend(self, new: StimulusTargets, now: float) -> StimulusTargets:
        """Light and vibration move linearly; the old sound fades out, then the new one fades in."""
        mix = min(1.0, max(0.0, (now - self.started) / self.duration_s))
        old = self.old.targets_at(self.old_time_s + (now - self.started), 1.0)

        def between(a: float, b: float) -> float:
            return a + (b - a) * mix

        rgb: RGB = tuple(between(a, b) for a, b in zip(old.light_rgb, new.light_rgb))  # type: ignore[assignment]
        sound: SoundTarget = old.sound.scaled(1.0 - 2.0 * mix) if mix < 0.5 else new.sound.scaled(2.0 * mix - 1.0)
        return StimulusTargets(rgb, between(old.light_brightness, new.light_brightness), sound,
                               between(old.vibration, new.vibration))


@dataclass
class _Session:
    profile: ChildProfile
    scenario: Scenario
    clock: _ScenarioClock
    chosen_by: ChosenBy
    tracker: Optional[SegmentTracker]  # None once the session's outcome is recorded
    switcher: Optional[ScenarioSwitcher] = None
    tried: set[str] = field(default_factory=set)
    crossfade: Optional[_Crossfade] = None
    reassessed_at_s: float = 0.0  # programme time of the last reassessment
    lower_confidence: float = 0.0  # per-child sensitivity: 0 = every negative reading lowers
    calibrated: bool = False
    baseline_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0.0))
    baseline_readings: int = 0
    baseline_negative: int = 0  # face readings decided negative while calibrating

    def baseline(self) -> dict[str, float]:
        """Mean group shares of the face readings seen while calibrating."""
        n = self.baseline_readings
        return {group: total / n for group, total in self.baseline_sums.items()} if n else {}


@dataclass
class _AffectTrack:
    """The rules' memory: since when each ongoing kind of reading has lasted."""

    negative_onset: Optional[float] = None  # start of the current negative episode
    last_negative: Optional[float] = None
    last_lower: Optional[float] = None
    positive_since: Optional[float] = None  # unbroken positive readings since
    last_raise: Optional[float] = None
    no_face_since: Optional[float] = None
    face_back_since: Optional[float] = None  # face present with non-negative affect since
    child_left_alerted: bool = False


class Controller:
    """The relaxation state machine for one chair (see the module docstring for the rules)."""

    def __init__(self, settings: ControllerSettings, scenarios: Mapping[str, Scenario]) -> None:
        if not scenarios:
            raise ConfigError("the controller needs at least one scenario; check control.scenarios_file")
        if settings.default_scenario not in scenarios:
            raise ConfigError(
                f"control.default_scenario {settings.default_scenario!r} is not a loaded scenario; "
                f"choose one of {sorted(scenarios)}"
            )
        self._settings = settings
        self._scenarios = dict(scenarios)
        self._state = State.IDLE
        self._level = 0.0
        self._session: Optional[_Session] = None
        self._track = _AffectTrack()
        self._fade: Optional[_Fade] = None
        self._pause_cause: Optional[str] = None
        self._halted_at = 0.0
        self._level_at_halt = 0.0
        self._last_reading_at = 0.0
        self._pending_fault: Optional[str] = None  # a fault reported while e-stopped
        self._now = -math.inf
        self._events: list[Event] = []

    # ----------------------------------------------------------------- read-only view

    @property
    def state(self) -> State:
        return self._state

    @property
    def intensity(self) -> float:
        """The session's working intensity, the value the rules step (0 when none)."""
        return self._level

    @property
    def scenario(self) -> Optional[str]:
        return self._session.scenario.name if self._session else None

    @property
    def scenario_names(self) -> list[str]:
        return sorted(self._scenarios)

    @property
    def scenarios(self) -> Mapping[str, Scenario]:
        return MappingProxyType(self._scenarios)

    # ----------------------------------------------------------------- operator commands

    @property
    def chosen_by(self) -> Optional[ChosenBy]:
        return self._session.chosen_by if self._session else None

    def start(self, profile: ChildProfile, scenario_name: Optional[str], now: float, *,
              chosen_by: ChosenBy = ChosenBy.OPERATOR, why: str = "",
              switcher: Optional[ScenarioSwitcher] = None) -> list[Event]:
        """Begin a session; ``scenario_name`` None = the profile's preferred, else the default.

        ``chosen_by`` says who named ``scenario_name`` (the operator unless told otherwise);
        only a scenario the learner chose is ever switched, by ``switcher``.
        """
        self._advance(now)
        self._require((State.IDLE,), "start a session")
        if not scenario_name:
            scenario_name = profile.preferred_scenario or self._settings.default_scenario
            chosen_by = ChosenBy.PROFILE if profile.preferred_scenario else ChosenBy.DEFAULT
        if scenario_name not in self._scenarios:
            raise CommandRejected(f"no scenario named {scenario_name!r}; choose one of {self.scenario_names}")
        name = scenario_name
        self._session = _Session(profile, self._scenarios[name], _ScenarioClock(now), chosen_by,
                                 SegmentTracker(name, chosen_by, now, self._settings.calm_hold_s),
                                 switcher if chosen_by is ChosenBy.LEARNER else None, {name})
        self._track = _AffectTrack()
        self._fade = None
        self._level = profile.start_intensity
        self._last_reading_at = now
        data = {"scenario": name, "pseudonym": profile.pseudonym, "intensity": self._level,
                "chosen_by": chosen_by.value, "why": why}
        reason = {ChosenBy.OPERATOR: f"operator started '{name}'",
                  ChosenBy.LEARNER: f"started '{name}', chosen by the learner: {why}",
                  ChosenBy.PROFILE: f"started '{name}', the child's preferred scenario",
                  ChosenBy.DEFAULT: f"started '{name}', the chair's default scenario"}[chosen_by]
        self._enter(State.STARTING, now, EventKind.STARTED, reason, data=data)
        return self._take_events()

    # pause, resume and stop do nothing (no event) when there is nothing to do: no session,
    # already paused, already running. They are refused only where the e-stop or a fault holds
    # the chair, or a halt has not lasted halt_min_s.

    def pause(self, now: float) -> list[Event]:
        """Operator pause: low intensity, programme held, until the operator resumes."""
        self._advance(now)
        if self._state in (State.IDLE, State.PAUSED):
            return []
        self._require(tuple(STIMULATING), "pause")
        self._pause(now, _OPERATOR, "operator paused")
        return self._take_events()

    def resume(self, now: float) -> list[Event]:
        """Operator resume from a pause, or from a halt once ``halt_min_s`` has passed."""
        self._advance(now)
        if self._state in (State.IDLE, State.STARTING, State.RUNNING):
            return []
        self._require((State.PAUSED, State.HALTED), "resume")
        if self._state == State.HALTED:
            self._resume_after_halt(now)
        else:
            self._track.no_face_since = now if self._track.no_face_since is not None else None
            self._resume(now, "operator resumed")
        return self._take_events()

    def stop(self, now: float, reason: str = "operator stopped", *, by_operator: bool = True) -> list[Event]:
        """End the session with a fade-out; a no-op when idle. ``by_operator`` False: the chair
        stopped it (camera lost), which says nothing about how the scenario suited the child."""
        self._advance(now)
        if self._state == State.IDLE:
            return []
        self._require((*STIMULATING, State.HALTED), "stop")
        if not by_operator and self._session is not None:
            self._session.tracker = None  # says nothing about the scenario: no outcome
        self._end_session(now, EventKind.STOPPED, reason, by_operator=by_operator)
        return self._take_events()

    def estop(self, now: float, source: str) -> list[Event]:
        """Emergency stop from any state: every target zero at once, latched. Never raises."""
        self._now = max(self._now, now)
        self._fade = None
        self._level = 0.0
        self._enter(State.ESTOPPED, now, EventKind.ESTOP, f"emergency stop ({source})", Priority.HIGH, {"source": source})
        self._session = None
        return self._take_events()

    def reset_estop(self, now: float) -> list[Event]:
        """Release the latch: to idle (or to fault if one was reported meanwhile); never restarts."""
        self._advance(now)
        self._require((State.ESTOPPED,), "reset the emergency stop")
        target = State.FAULT if self._pending_fault else State.IDLE
        reason = "operator reset the emergency stop" + (f"; fault still active: {self._pending_fault}" if self._pending_fault else "")
        self._enter(target, now, EventKind.ESTOP_RESET, reason)
        return self._take_events()

    def fault(self, now: float, reason: str) -> list[Event]:
        """Something the chair depends on failed: every target zero at once. Never raises."""
        self._now = max(self._now, now)
        if self._state == State.ESTOPPED:
            self._pending_fault = reason
            self._emit(now, EventKind.FAULT, f"fault while e-stopped: {reason}", Priority.MEDIUM)
        else:
            self._to_fault(now, reason)
        return self._take_events()

    def clear_fault(self, now: float) -> list[Event]:
        """The operator says the fault is fixed: to idle (or clears one noted while e-stopped)."""
        self._advance(now)
        if self._state == State.ESTOPPED and self._pending_fault:
            self._pending_fault = None
            self._emit(now, EventKind.FAULT_CLEARED, "operator cleared the fault (still e-stopped)")
            return self._take_events()
        self._require((State.FAULT,), "clear a fault")
        self._pending_fault = None
        self._enter(State.IDLE, now, EventKind.FAULT_CLEARED, "operator cleared the fault")
        return self._take_events()

    # ----------------------------------------------------------------- inputs and output

    def on_reading(self, reading: "AffectReading", now: float) -> list[Event]:
        """Apply the affect rules to one reading (ignored outside starting/running/paused)."""
        self._advance(now)
        self._last_reading_at = now
        if self._state in STIMULATING:
            self._note_baseline(reading)
            session = self._session
            if session is not None and session.tracker is not None:
                session.tracker.add(now, reading.group if reading.face_present and reading.group in GROUPS else None)
            self._apply_rules(reading, now)
            self._reassess(now)
        self._check_timers(now)
        return self._take_events()

    def tick(self, now: float) -> Output:
        """Time-driven transitions, then the targets for now; call at the control-loop rate."""
        self._advance(now)
        self._check_timers(now)
        return self._output(now, tuple(self._take_events()))

    def _output(self, now: float, events: tuple[Event, ...]) -> Output:
        if self._state in STIMULATING:
            assert self._session is not None
            scenario, t_s = self._session.scenario, self._session.clock.time(now)
        elif self._fade is not None:
            scenario, t_s = self._fade.scenario, self._fade.scenario_time_s
        else:
            return Output(now, self._state, 0.0, StimulusTargets.off(), None, None, 0.0, events)
        level = self._applied_level(now)
        _, phase, _ = scenario.phase_at(t_s)
        look = self._fade.look if self._state not in STIMULATING and self._fade is not None else self._look(now)
        return Output(now, self._state, level, look.scaled(level), scenario.name, phase.name, t_s, events)

    def _look(self, now: float) -> StimulusTargets:
        """The session's full-intensity targets now: its scenario, or the blend of a cross-fade."""
        session = self._session
        assert session is not None
        targets = session.scenario.targets_at(session.clock.time(now), 1.0)
        if session.crossfade is not None:
            if session.crossfade.done(now):
                session.crossfade = None
            else:
                targets = session.crossfade.blend(targets, now)
        return targets

    def _fade_out(self, now: float, duration_s: float) -> "_Fade":
        """A fade to off from what the child sees, hears and feels now (mid cross-fade: the blend,
        so no channel jumps up when a halt or a stop lands in a switch)."""
        session = self._session
        assert session is not None
        return _Fade(now, self._applied_level(now), duration_s, session.scenario, session.clock.time(now),
                     self._look(now))

    def _applied_level(self, now: float) -> float:
        """The intensity the actuators get: the working level, the pause level, or a fade."""
        if self._state in (State.STARTING, State.RUNNING):
            return self._level
        if self._state == State.PAUSED:
            return min(self._level, self._settings.pause_intensity)
        return self._fade.level(now) if self._fade is not None else 0.0

    # ----------------------------------------------------------------- affect rules

    def _apply_rules(self, reading: "AffectReading", now: float) -> None:
        group = reading.group if reading.face_present else "none"
        if group not in GROUPS:
            self._on_no_face(now)
            return
        self._track.no_face_since = None
        self._track.child_left_alerted = False
        if group == "negative":
            self._on_negative(reading, now)
        else:
            self._on_calm(group, now)

    def _on_no_face(self, now: float) -> None:
        track = self._track
        track.positive_since = None
        track.face_back_since = None
        if track.no_face_since is None:
            track.no_face_since = now

    def _on_negative(self, reading: "AffectReading", now: float) -> None:
        track, settings = self._track, self._settings
        track.positive_since = None
        track.face_back_since = None
        if track.last_negative is None or now - track.last_negative > settings.negative_release_s:
            track.negative_onset = now
        track.last_negative = now
        assert track.negative_onset is not None
        episode_s = now - track.negative_onset
        data = {"label": reading.label, "confidence": reading.confidence, "episode_s": episode_s}
        if reading.confidence >= settings.halt_confidence:
            self._halt(now, f"strong negative reading ({reading.label}, confidence {reading.confidence:.2f} "
                            f">= halt_confidence {settings.halt_confidence:.2f})", data)
        elif episode_s >= settings.halt_after_s:
            self._halt(now, f"negative for {episode_s:.1f} s (>= halt_after_s {settings.halt_after_s:g} s)", data)
        elif self._may_lower(now) and self._lowers_for_this_child(reading.confidence, episode_s):
            self._step(now, -settings.step, EventKind.INTENSITY_LOWERED,
                       f"negative reading ({reading.label}, confidence {reading.confidence:.2f})", data)
            track.last_lower = now

    def _on_calm(self, group: str, now: float) -> None:
        """Neutral or positive: neutral keeps the intensity; sustained positive may raise it."""
        track = self._track
        if group == "positive":
            track.positive_since = now if track.positive_since is None else track.positive_since
        else:
            track.positive_since = None
        if track.face_back_since is None:
            track.face_back_since = now
        if self._may_auto_resume(now):
            self._resume(now, f"face back with {group} affect for {now - track.face_back_since:.1f} s")
        elif self._may_raise(now):
            assert track.positive_since is not None
            self._step(now, self._settings.step, EventKind.INTENSITY_RAISED,
                       f"positive for {now - track.positive_since:.1f} s", {})
            track.last_raise = now

    def _may_lower(self, now: float) -> bool:
        last = self._track.last_lower
        return self._level > 0.0 and (last is None or now - last >= self._settings.lower_interval_s)

    def _lowers_for_this_child(self, confidence: float, episode_s: float) -> bool:
        """Per-child sensitivity: a low-confidence flicker of a negative-looking calm face does not
        lower; a confident one, or an episode lasting lower_interval_s, does (see the docstring)."""
        assert self._session is not None
        return confidence >= self._session.lower_confidence or episode_s >= self._settings.lower_interval_s

    def _reassess(self, now: float) -> None:
        """Every reassess_s of a learner-chosen scenario: switch it if negative persisted."""
        session, settings = self._session, self._settings
        if self._state != State.RUNNING or session is None or session.tracker is None:
            return
        played = session.clock.time(now)
        if played - session.reassessed_at_s < settings.reassess_s:
            return
        session.reassessed_at_s = played
        share, faces = session.tracker.take_window()
        if session.switcher is None or faces == 0 or share < settings.switch_negative_share:
            return
        choice = session.switcher(session.scenario.name, frozenset(session.tried))
        if choice is None or choice[0] not in self._scenarios or choice[0] == session.scenario.name:
            return
        name, why = choice
        old = session.scenario
        self._emit(now, EventKind.SCENARIO_ENDED, f"'{old.name}' switched off",
                   data=session.tracker.finish(played).to_dict())
        session.crossfade = _Crossfade(old, played, now, settings.crossfade_s)
        session.scenario, session.clock = self._scenarios[name], _ScenarioClock(now)
        session.tracker = SegmentTracker(name, ChosenBy.LEARNER, now, settings.calm_hold_s)
        session.tried.add(name)
        session.reassessed_at_s = 0.0
        self._emit(now, EventKind.SCENARIO_SWITCHED,
                   f"negative in {share:.0%} of the last {settings.reassess_s:g} s of '{old.name}': "
                   f"cross-fading to '{name}' ({why})",
                   data={"from": old.name, "to": name, "why": why, "negative_share": round(share, 4)})

    def _may_raise(self, now: float) -> bool:
        track, settings = self._track, self._settings
        assert self._session is not None
        return (
            self._state == State.RUNNING
            and track.positive_since is not None
            and now - track.positive_since >= settings.positive_hold_s
            and (track.last_raise is None or now - track.last_raise >= settings.raise_interval_s)
            and self._level < self._session.profile.intensity_cap
        )

    def _may_auto_resume(self, now: float) -> bool:
        since = self._track.face_back_since
        return (
            self._state == State.PAUSED
            and self._pause_cause == _NO_FACE
            and since is not None
            and now - since >= self._settings.resume_hold_s
        )

    def _step(self, now: float, delta: float, kind: EventKind, reason: str, data: Mapping[str, Any]) -> None:
        """Change the working level by one step, within 0..the child's cap."""
        assert self._session is not None
        before = self._level
        self._level = round(min(self._session.profile.intensity_cap, max(0.0, before + delta)), 9)
        self._emit(now, kind, reason, data={**data, "from": before, "to": self._level})

    def _note_baseline(self, reading: "AffectReading") -> None:
        """While calibrating, average the face readings' group shares (reported, not acted on)."""
        session = self._session
        if self._state != State.STARTING or session is None or not reading.face_present:
            return
        for group in GROUPS:
            session.baseline_sums[group] += float(reading.group_scores.get(group, 0.0))
        session.baseline_readings += 1
        session.baseline_negative += reading.group == "negative"

    # ----------------------------------------------------------------- time-driven rules

    def _check_timers(self, now: float) -> None:
        if self._state in STIMULATING and now - self._last_reading_at >= self._settings.reading_timeout_s:
            self._to_fault(now, f"no affect reading for {now - self._last_reading_at:.1f} s "
                                f"(reading_timeout_s {self._settings.reading_timeout_s:g} s): vision stalled")
        self._check_calibrated(now)
        self._check_no_face(now)
        self._check_child_left(now)
        self._check_finished(now)
        if self._state == State.IDLE and self._fade is not None and self._fade.done(now):
            self._fade = None

    def _check_calibrated(self, now: float) -> None:
        session = self._session
        if self._state != State.STARTING or session is None:
            return
        if session.clock.time(now) >= self._settings.calibration_s:
            session.calibrated = True
            baseline = session.baseline()
            resting = session.baseline_negative / session.baseline_readings if session.baseline_readings else None
            reason = f"calibrated for {self._settings.calibration_s:g} s"
            limit = self._settings.sensitivity_max_confidence
            if resting is not None and limit > 0.0 and resting >= SENSITIVE_RESTING_NEGATIVE:
                session.lower_confidence = round(min(limit, resting + SENSITIVITY_MARGIN), 6)
                reason += (f"; the resting face read negative {resting:.0%} of the time, so only negative "
                           f"readings at least {session.lower_confidence:.2f} confident or lasting "
                           f"{self._settings.lower_interval_s:g} s lower the intensity (halts unchanged)")
            data = {"baseline": baseline, "face_readings": session.baseline_readings,
                    "resting_negative": resting, "lower_confidence": session.lower_confidence}
            self._enter(State.RUNNING, now, EventKind.CALIBRATED, reason, data=data)
            session.reassessed_at_s = session.clock.time(now)  # reassessment intervals count from here
            if session.tracker is not None:
                session.tracker.take_window()

    def _check_no_face(self, now: float) -> None:
        since = self._track.no_face_since
        if self._state in (State.STARTING, State.RUNNING) and since is not None:
            if now - since >= self._settings.no_face_pause_s:
                self._pause(now, _NO_FACE, f"no face for {now - since:.1f} s")

    def _check_child_left(self, now: float) -> None:
        track, settings = self._track, self._settings
        if self._state not in STIMULATING or track.no_face_since is None or track.child_left_alerted:
            return
        absent_s = now - track.no_face_since
        if absent_s >= settings.no_face_pause_s + settings.child_left_s:
            track.child_left_alerted = True
            self._emit(now, EventKind.CHILD_LEFT, f"child left the chair: no face for {absent_s:.0f} s",
                       Priority.MEDIUM, {"absent_s": absent_s})

    def _check_finished(self, now: float) -> None:
        session = self._session
        if self._state in (State.STARTING, State.RUNNING) and session is not None:
            if session.scenario.finished(session.clock.time(now)):
                self._end_session(now, EventKind.SCENARIO_FINISHED, f"scenario '{session.scenario.name}' finished")

    # ----------------------------------------------------------------- transitions

    def _pause(self, now: float, cause: str, reason: str) -> None:
        self._pause_cause = cause
        self._enter(State.PAUSED, now, EventKind.PAUSED, reason, data={"cause": cause})

    def _resume(self, now: float, reason: str) -> None:
        assert self._session is not None
        self._pause_cause = None
        self._level = min(self._level, self._session.profile.intensity_cap)
        target = State.RUNNING if self._session.calibrated else State.STARTING
        self._enter(target, now, EventKind.RESUMED, reason, data={"intensity": self._level})

    def _resume_after_halt(self, now: float) -> None:
        assert self._session is not None
        halted_s = now - self._halted_at
        if halted_s < self._settings.halt_min_s:
            raise CommandRejected(
                f"halted {halted_s:.0f} s ago after an adverse reaction: resume is allowed after "
                f"halt_min_s = {self._settings.halt_min_s:g} s; check on the child first"
            )
        self._level = min(self._session.profile.start_intensity, self._level_at_halt)
        self._fade = None
        self._session.reassessed_at_s = self._session.clock.time(now)
        if self._session.tracker is not None:
            self._session.tracker.take_window()  # the next reassessment counts from the resume
        self._track = _AffectTrack()
        self._last_reading_at = now
        self._resume(now, f"operator resumed {halted_s:.0f} s after the halt")

    def _halt(self, now: float, reason: str, data: Mapping[str, Any]) -> None:
        """Adverse reaction: fade to off over halt_fade_s, high-priority alert."""
        session = self._session
        assert session is not None
        # Blocked for this child until a therapist approves: the scenario playing, and in a
        # cross-fade also the one it leaves (the distress began there).
        blamed = {"scenario": session.scenario.name}
        if session.crossfade is not None and not session.crossfade.done(now):
            blamed["previous_scenario"] = session.crossfade.old.name
        self._fade = self._fade_out(now, self._settings.halt_fade_s)
        self._halted_at = now
        self._level_at_halt = self._level
        data = {**data, **blamed}
        self._enter(State.HALTED, now, EventKind.ADVERSE_REACTION, reason, Priority.HIGH, data)
        if session.tracker is not None:
            session.tracker.halted = True  # the scenario's outcome, whatever follows a resume

    def _record_outcome(self, now: float, *, by_operator: bool = False) -> None:
        """End the scenario's stretch of the session with its outcome (once)."""
        session = self._session
        if session is None or session.tracker is None:
            return
        outcome = session.tracker.finish(session.clock.time(now), stopped_by_operator=by_operator)
        session.tracker = None
        how = "halted" if outcome.halted else ("stopped early" if outcome.ended_early else "ended")
        self._emit(now, EventKind.SCENARIO_ENDED, f"'{outcome.scenario}' {how}", data=outcome.to_dict())

    def _end_session(self, now: float, kind: EventKind, reason: str, *, by_operator: bool = False) -> None:
        """To idle with a fade-out (a halt's fade, already under way, continues)."""
        session = self._session
        self._record_outcome(now, by_operator=by_operator)
        if self._fade is None and session is not None:
            self._fade = self._fade_out(now, self._settings.stop_fade_s)
        self._enter(State.IDLE, now, kind, reason)
        self._session = None
        self._level = 0.0

    def _to_fault(self, now: float, reason: str) -> None:
        self._fade = None
        self._level = 0.0
        self._enter(State.FAULT, now, EventKind.FAULT, reason, Priority.MEDIUM, {"reason": reason})
        self._session = None

    def _enter(self, state: State, now: float, kind: EventKind, reason: str,
               priority: Optional[Priority] = None, data: Optional[Mapping[str, Any]] = None) -> None:
        """Change state (the scenario clock runs only while starting or running) and record why."""
        before, self._state = self._state, state
        if state == State.RUNNING and before != State.RUNNING and self._track.positive_since is not None:
            self._track.positive_since = now  # a raise needs positive_hold_s of positive while running
        if self._session is not None:
            if state in (State.STARTING, State.RUNNING):
                self._session.clock.run(now)
            else:
                self._session.clock.freeze(now)
        self._events.append(Event(now, kind, before, state, reason, priority, MappingProxyType(dict(data or {}))))

    def _emit(self, now: float, kind: EventKind, reason: str, priority: Optional[Priority] = None,
              data: Optional[Mapping[str, Any]] = None) -> None:
        """Record an event that leaves the state as it is."""
        self._events.append(Event(now, kind, self._state, self._state, reason, priority,
                                  MappingProxyType(dict(data or {}))))

    # ----------------------------------------------------------------- plumbing

    def _advance(self, now: float) -> None:
        if not math.isfinite(now) or now < self._now:
            raise ControlError(f"time must be finite and never go backwards: got now={now} after {self._now}; "
                               "pass time.monotonic() values")
        self._now = now

    def _require(self, allowed: tuple[State, ...], command: str) -> None:
        if self._state in allowed:
            return
        hint = {
            State.ESTOPPED: "; reset the emergency stop first",
            State.FAULT: "; reset the fault first",
            State.IDLE: "; start a session first",
        }.get(self._state, "")
        raise CommandRejected(f"cannot {command} while {self._state}{hint}")

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events
