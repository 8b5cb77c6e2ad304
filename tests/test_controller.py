"""The relaxation state machine, rule by rule, on a fake clock (plain floats, 15 readings/s)."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Optional

import numpy as np
import pytest

from relaxd.affect import AffectAggregator, AffectReading
from relaxd.control import (
    ChildProfile,
    CommandRejected,
    ControlError,
    Controller,
    Event,
    EventKind,
    Output,
    Priority,
    ProfileError,
    State,
    load_scenarios,
    scenarios_from_yaml,
)
from relaxd.errors import ConfigError
from relaxd.settings import AffectSettings, ControllerSettings
from relaxd.vision.model_meta import FER2013_GROUPS, FER2013_LABELS, ModelMetadata
from relaxd.vision.preprocess import PreprocessSpec

RATE = 15  # readings a second, as the vision loop produces them

# Spelled out so the tests read on their own and do not move when the defaults do.
SETTINGS = ControllerSettings(
    default_scenario="calm-sea",
    calibration_s=10.0,
    step=0.1,
    positive_hold_s=5.0,
    raise_interval_s=20.0,
    lower_interval_s=2.0,
    negative_release_s=2.0,
    halt_confidence=0.85,
    halt_after_s=6.0,
    halt_fade_s=3.0,
    halt_min_s=30.0,
    no_face_pause_s=3.0,
    child_left_s=20.0,
    pause_intensity=0.1,
    resume_hold_s=2.0,
    stop_fade_s=5.0,
    reading_timeout_s=3.0,
)

SHORT = """\
scenarios:
  short:
    loop: false
    phases:
      - name: only
        duration_s: 30
        light: {colour: "#3366CC", brightness: 0.4}
        sound: {generate: tones, volume: 0.2}
        vibration: {pattern: steady, level: 0.2}
"""
SCENARIOS = {**load_scenarios(None), **scenarios_from_yaml(SHORT)}
PROFILE = ChildProfile(pseudonym="otter", intensity_cap=0.6, start_intensity=0.3)
LABEL = {"negative": "sad", "neutral": "neutral", "positive": "happy"}


def reading(t: float, group: str, confidence: float = 0.6) -> AffectReading:
    """A reading as the affect aggregator makes it; group 'none' = no face."""
    if group == "none":
        return AffectReading(t, False, "none", None, 0.0, MappingProxyType({}), 15, 0)
    scores = {g: (confidence if g == group else (1.0 - confidence) / 2) for g in LABEL}
    return AffectReading(t, True, group, LABEL[group], confidence, MappingProxyType(scores), 15, 15)


class Chair:
    """A controller on a fake clock that counts reading frames; every event is kept."""

    def __init__(self, settings: ControllerSettings = SETTINGS, profile: ChildProfile = PROFILE) -> None:
        self.controller = Controller(settings, SCENARIOS)
        self.profile = profile
        self.frame = 0
        self.events: list[Event] = []
        self.outputs: list[Output] = []

    @property
    def now(self) -> float:
        return self.frame / RATE

    @property
    def state(self) -> State:
        return self.controller.state

    def start(self, scenario: Optional[str] = None) -> list[Event]:
        return self._keep(self.controller.start(self.profile, scenario, self.now))

    def feed(self, seconds: float, group: str, confidence: float = 0.6) -> list[Event]:
        """``seconds`` of readings at 15/s, with a control-loop tick after each."""
        new: list[Event] = []
        for _ in range(round(seconds * RATE)):
            self.frame += 1
            new += self.controller.on_reading(reading(self.now, group, confidence), self.now)
            new += self.tick().events
        return self._keep(new)

    def wait(self, seconds: float) -> list[Event]:
        """``seconds`` of ticks with no reading at all."""
        new: list[Event] = []
        for _ in range(round(seconds * RATE)):
            self.frame += 1
            new += self.tick().events
        return self._keep(new)

    def tick(self) -> Output:
        output = self.controller.tick(self.now)
        self.outputs.append(output)
        return output

    def command(self, name: str, *args) -> list[Event]:
        return self._keep(getattr(self.controller, name)(self.now, *args))

    def _keep(self, events: list[Event]) -> list[Event]:
        self.events += events
        return events


def kinds(events: list[Event]) -> list[EventKind]:
    return [event.kind for event in events]


def running_chair(profile: ChildProfile = PROFILE, settings: ControllerSettings = SETTINGS) -> Chair:
    """Started and calibrated on neutral readings: running at the start intensity."""
    chair = Chair(settings, profile)
    chair.start()
    chair.feed(settings.calibration_s + 0.1, "neutral")
    assert chair.state == State.RUNNING
    return chair


# --------------------------------------------------------------------------- start and calibration


def test_start_calibrates_at_the_start_intensity_then_runs():
    chair = Chair()
    (started,) = chair.start()
    assert (started.kind, started.state_from, started.state_to) == (EventKind.STARTED, State.IDLE, State.STARTING)
    first = chair.tick()
    assert first.intensity == 0.3 and not first.targets.is_off() and first.scenario == "calm-sea"
    chair.feed(9.9, "neutral")
    assert chair.state == State.STARTING
    (calibrated,) = chair.feed(0.2, "neutral")
    assert (calibrated.kind, calibrated.state_to) == (EventKind.CALIBRATED, State.RUNNING)
    assert calibrated.data["baseline"]["neutral"] == pytest.approx(0.6)
    assert calibrated.data["face_readings"] == 150
    assert chair.controller.intensity == 0.3


def test_no_raise_while_calibrating_and_the_hold_restarts_when_running():
    chair = Chair()
    chair.start()
    assert EventKind.INTENSITY_RAISED not in kinds(chair.feed(9.9, "positive"))
    events = chair.feed(5.5, "positive")  # calibrated at 10 s, hold counts from there
    raised = [e for e in events if e.kind == EventKind.INTENSITY_RAISED]
    assert len(raised) == 1 and raised[0].time >= SETTINGS.calibration_s + SETTINGS.positive_hold_s


def test_start_picks_the_named_then_preferred_then_default_scenario():
    chair = Chair(profile=ChildProfile("otter", 0.6, 0.3, preferred_scenario="sunset"))
    chair.start()
    assert chair.controller.scenario == "sunset"
    chair.command("stop")
    chair.start("forest-breath")
    assert chair.controller.scenario == "forest-breath"
    chair.command("stop")
    chair.profile = PROFILE
    chair.start()
    assert chair.controller.scenario == "calm-sea"


def test_start_rejects_an_unknown_scenario_and_a_second_start():
    chair = Chair()
    with pytest.raises(CommandRejected, match="no scenario named 'moon'.*calm-sea"):
        chair.start("moon")
    assert chair.state == State.IDLE
    chair.start()
    with pytest.raises(CommandRejected, match="cannot start a session while starting"):
        chair.start()


# --------------------------------------------------------------------------- neutral and positive


def test_neutral_keeps_the_intensity():
    chair = running_chair()
    events = chair.feed(120.0, "neutral")
    assert chair.controller.intensity == 0.3 and chair.state == State.RUNNING
    assert not {EventKind.INTENSITY_RAISED, EventKind.INTENSITY_LOWERED} & set(kinds(events))


def test_sustained_positive_raises_one_step_after_positive_hold_s():
    chair = running_chair()
    onset = chair.now + 1 / RATE
    assert chair.feed(4.9, "positive") == []
    (raised,) = chair.feed(0.2, "positive")
    assert raised.kind == EventKind.INTENSITY_RAISED and raised.state_to == State.RUNNING
    assert (raised.data["from"], raised.data["to"]) == (0.3, 0.4)
    assert raised.time - onset == pytest.approx(SETTINGS.positive_hold_s, abs=1 / RATE)
    assert chair.tick().intensity == 0.4


def test_raises_are_rate_limited_to_one_per_raise_interval_s():
    chair = running_chair(ChildProfile("otter", intensity_cap=1.0, start_intensity=0.3))
    events = chair.feed(60.0, "positive")
    times = [e.time for e in events if e.kind == EventKind.INTENSITY_RAISED]
    assert len(times) == 3  # at 5, 25 and 45 s of positive
    assert all(later - earlier >= SETTINGS.raise_interval_s for earlier, later in zip(times, times[1:]))
    assert chair.controller.intensity == pytest.approx(0.6)


def test_raises_stop_at_the_childs_cap():
    chair = running_chair(ChildProfile("otter", intensity_cap=0.5, start_intensity=0.3))
    events = chair.feed(200.0, "positive")
    assert kinds(events).count(EventKind.INTENSITY_RAISED) == 2
    assert chair.controller.intensity == 0.5 and chair.tick().intensity == 0.5


def test_positive_broken_by_a_neutral_reading_does_not_raise():
    chair = running_chair()
    for _ in range(12):
        chair.feed(4.8, "positive")
        chair.feed(0.2, "neutral")
    assert chair.controller.intensity == 0.3
    assert EventKind.INTENSITY_RAISED not in kinds(chair.events)


# --------------------------------------------------------------------------- negative


def test_the_first_negative_reading_lowers_at_once():
    chair = running_chair()
    (lowered,) = chair.feed(1 / RATE, "negative")
    assert lowered.kind == EventKind.INTENSITY_LOWERED and lowered.time == chair.now
    assert (lowered.data["from"], lowered.data["to"]) == (0.3, 0.2)
    assert "negative" in lowered.reason and chair.tick().intensity == 0.2


def test_lowering_is_rate_limited_to_one_per_lower_interval_s():
    chair = running_chair(ChildProfile("otter", intensity_cap=0.8, start_intensity=0.6))
    events = chair.feed(5.0, "negative")
    times = [e.time for e in events if e.kind == EventKind.INTENSITY_LOWERED]
    assert len(times) == 3  # at 0, 2 and 4 s
    assert all(later - earlier >= SETTINGS.lower_interval_s for earlier, later in zip(times, times[1:]))
    assert chair.controller.intensity == pytest.approx(0.3) and chair.state == State.RUNNING


def test_a_strong_negative_reading_halts_at_once_with_a_high_priority_alert():
    chair = running_chair()
    (halt,) = chair.feed(1 / RATE, "negative", confidence=0.9)
    assert (halt.kind, halt.state_from, halt.state_to) == (EventKind.ADVERSE_REACTION, State.RUNNING, State.HALTED)
    assert halt.priority == Priority.HIGH and halt.is_alert
    assert "confidence 0.90" in halt.reason and halt.data["label"] == "sad"


def test_sustained_negative_halts_after_halt_after_s():
    chair = running_chair()
    onset = chair.now + 1 / RATE
    chair.feed(5.9, "negative")
    assert chair.state == State.RUNNING
    events = chair.feed(0.2, "negative")
    (halt,) = [e for e in events if e.kind == EventKind.ADVERSE_REACTION]
    assert halt.time - onset == pytest.approx(SETTINGS.halt_after_s, abs=1 / RATE)
    assert "negative for 6.0 s" in halt.reason and halt.priority == Priority.HIGH


def test_a_flickering_negative_label_still_halts():
    chair = running_chair()
    onset = chair.now + 1 / RATE
    while chair.state == State.RUNNING and chair.now - onset < 10:
        chair.feed(0.4, "negative")
        chair.feed(0.3, "neutral")
    (halt,) = [e for e in chair.events if e.kind == EventKind.ADVERSE_REACTION]
    assert halt.time - onset <= SETTINGS.halt_after_s + 0.5


def test_negative_episodes_end_after_negative_release_s():
    chair = running_chair()
    for _ in range(6):  # 1 s negative, then 3 s neutral (> release): six short episodes
        chair.feed(1.0, "negative")
        chair.feed(3.0, "neutral")
    assert chair.state == State.RUNNING
    assert EventKind.ADVERSE_REACTION not in kinds(chair.events)


def test_halt_fades_monotonically_to_zero_by_halt_fade_s():
    chair = running_chair()
    chair.feed(1 / RATE, "negative", confidence=0.95)
    halted_at = chair.now
    fade = [chair.controller.tick(halted_at + i * 0.05) for i in range(0, 81)]  # 4 s
    levels = [output.intensity for output in fade]
    assert levels[0] == pytest.approx(0.3)  # no jolt: starts where it was
    assert all(later <= earlier for earlier, later in zip(levels, levels[1:]))
    brightness = [output.targets.light_brightness for output in fade]
    assert all(later <= earlier for earlier, later in zip(brightness, brightness[1:]))
    at_end = fade[60]  # halted_at + halt_fade_s
    assert at_end.time == pytest.approx(halted_at + SETTINGS.halt_fade_s)
    assert at_end.intensity == 0.0 and at_end.targets.is_off()
    assert 0.0 < levels[30] < 0.3  # 1.5 s in: half way
    assert all(output.state == State.HALTED for output in fade)


def test_halted_ignores_readings_until_the_operator_resumes():
    chair = running_chair()
    chair.feed(1 / RATE, "negative", confidence=0.95)
    chair.feed(60.0, "positive")
    assert chair.state == State.HALTED and chair.tick().targets.is_off()
    assert EventKind.RESUMED not in kinds(chair.events)


def test_resume_after_a_halt_waits_halt_min_s_then_restarts_at_start_intensity_or_lower():
    chair = running_chair(ChildProfile("otter", intensity_cap=0.8, start_intensity=0.3))
    chair.feed(25.1, "positive")  # two raises: 0.5
    assert chair.controller.intensity == pytest.approx(0.5)
    chair.feed(1 / RATE, "negative", confidence=0.95)
    chair.feed(29.0, "neutral")
    with pytest.raises(CommandRejected, match="halt_min_s = 30 s"):
        chair.command("resume")
    chair.feed(1.1, "neutral")
    (resumed,) = chair.command("resume")
    assert (resumed.kind, resumed.state_from, resumed.state_to) == (EventKind.RESUMED, State.HALTED, State.RUNNING)
    assert chair.controller.intensity == 0.3 and chair.tick().intensity == 0.3  # start, not 0.5


def test_resume_after_a_halt_never_restarts_above_the_level_at_the_halt():
    chair = running_chair()
    chair.feed(1 / RATE, "negative")  # lowered to 0.2
    chair.feed(1.0, "neutral")
    chair.feed(1 / RATE, "negative", confidence=0.95)
    chair.feed(31.0, "neutral")
    chair.command("resume")
    assert chair.controller.intensity == 0.2


# --------------------------------------------------------------------------- no face


def test_no_face_for_no_face_pause_s_pauses_at_pause_intensity_and_holds_the_programme():
    chair = running_chair()
    chair.feed(2.9, "none")
    assert chair.state == State.RUNNING
    (paused,) = chair.feed(0.2, "none")
    assert (paused.kind, paused.state_to, paused.data["cause"]) == (EventKind.PAUSED, State.PAUSED, "no face")
    before = chair.tick()
    chair.feed(5.0, "none")
    after = chair.tick()
    assert before.intensity == after.intensity == SETTINGS.pause_intensity
    assert after.scenario_time_s == before.scenario_time_s  # the scenario clock is held
    assert chair.controller.intensity == 0.3  # the session's level is remembered


def test_child_left_alert_after_child_left_s_more_once():
    chair = running_chair()
    gone = chair.now + 1 / RATE
    chair.feed(SETTINGS.no_face_pause_s + SETTINGS.child_left_s - 0.1, "none")
    assert EventKind.CHILD_LEFT not in kinds(chair.events)
    (alert,) = chair.feed(0.2, "none")
    assert alert.kind == EventKind.CHILD_LEFT and alert.priority == Priority.MEDIUM
    assert alert.time - gone == pytest.approx(23.0, abs=1 / RATE)
    assert "child left the chair" in alert.reason
    chair.feed(60.0, "none")
    assert kinds(chair.events).count(EventKind.CHILD_LEFT) == 1


def test_face_back_with_calm_affect_for_resume_hold_s_resumes_at_the_previous_intensity():
    chair = running_chair(ChildProfile("otter", intensity_cap=0.8, start_intensity=0.3))
    chair.feed(5.1, "positive")  # raised to 0.4
    chair.feed(4.0, "none")
    assert chair.state == State.PAUSED and chair.tick().intensity == 0.1
    chair.feed(1.9, "neutral")
    assert chair.state == State.PAUSED
    (resumed,) = chair.feed(0.2, "neutral")
    assert (resumed.kind, resumed.state_to) == (EventKind.RESUMED, State.RUNNING)
    assert chair.tick().intensity == pytest.approx(0.4)


def test_face_back_with_negative_affect_does_not_resume():
    chair = running_chair()
    chair.feed(4.0, "none")
    chair.feed(3.0, "negative")
    assert chair.state == State.PAUSED
    assert chair.tick().intensity <= SETTINGS.pause_intensity


def test_operator_pause_waits_for_the_operator():
    chair = running_chair()
    (paused,) = chair.command("pause")
    assert paused.data["cause"] == "operator"
    chair.feed(10.0, "neutral")
    assert chair.state == State.PAUSED
    chair.command("resume")
    assert chair.state == State.RUNNING and chair.tick().intensity == 0.3


def test_pause_while_calibrating_resumes_to_calibrating():
    chair = Chair()
    chair.start()
    chair.feed(4.0, "neutral")
    chair.command("pause")
    chair.feed(20.0, "neutral")  # the scenario clock, and so calibration, is held
    chair.command("resume")
    assert chair.state == State.STARTING
    chair.feed(6.1, "neutral")
    assert chair.state == State.RUNNING


# --------------------------------------------------------------------------- e-stop and fault


def chair_in(situation: str) -> Chair:
    """A chair in each state the e-stop must handle (two mid-fade ones included)."""
    chair = Chair()
    if situation == "idle":
        return chair
    chair.start()
    chair.feed(1.0, "neutral")
    if situation == "starting":
        return chair
    chair.feed(10.0, "neutral")
    if situation == "paused":
        chair.feed(3.5, "none")
    elif situation == "halted (fading)":
        chair.feed(1 / RATE, "negative", confidence=0.95)
    elif situation == "idle (fading out)":
        chair.command("stop")
    elif situation == "estopped":
        chair.command("estop", "panel")
    elif situation == "fault":
        chair.command("fault", "camera lost")
    return chair


SITUATIONS = ["idle", "idle (fading out)", "starting", "running", "paused", "halted (fading)", "estopped", "fault"]


def test_the_e_stop_situations_cover_every_state():
    assert {chair_in(s).state for s in SITUATIONS} == set(State)


@pytest.mark.parametrize("situation", SITUATIONS)
def test_estop_in_every_state_zeroes_every_target_at_once_and_latches(situation):
    chair = chair_in(situation)
    stimulating = situation not in ("idle", "estopped", "fault")
    assert (not chair.tick().targets.is_off()) == stimulating  # so "at once" means something
    events = chair.command("estop", "button")
    assert events[-1].kind == EventKind.ESTOP and events[-1].state_to == State.ESTOPPED
    assert events[-1].priority == Priority.HIGH and "button" in events[-1].reason
    now = chair.tick()
    assert now.time == events[-1].time  # same instant: no fade
    assert now.state == State.ESTOPPED and now.intensity == 0.0 and now.targets.is_off()
    chair.feed(30.0, "positive")
    chair.wait(5.0)
    assert chair.state == State.ESTOPPED
    assert all(o.targets.is_off() for o in chair.outputs[-(35 * RATE):])
    for command in ("pause", "resume", "stop", "clear_fault"):
        with pytest.raises(CommandRejected, match="reset the emergency stop first"):
            chair.command(command)
    with pytest.raises(CommandRejected, match="reset the emergency stop first"):
        chair.start()
    assert chair.state == State.ESTOPPED


def test_reset_estop_goes_idle_and_never_restarts_stimulation():
    chair = running_chair()
    chair.command("estop", "button")
    (reset,) = chair.command("reset_estop")
    assert (reset.kind, reset.state_from, reset.state_to) == (EventKind.ESTOP_RESET, State.ESTOPPED, State.IDLE)
    chair.feed(60.0, "positive")
    chair.wait(5.0)
    assert chair.state == State.IDLE
    assert all(o.targets.is_off() and o.intensity == 0.0 for o in chair.outputs[-(65 * RATE):])
    assert kinds(chair.events).count(EventKind.STARTED) == 1  # only the operator's own start


def test_estop_never_raises_even_with_a_stale_clock():
    chair = running_chair()
    events = chair.controller.estop(chair.now - 5.0, "watchdog")
    assert chair.state == State.ESTOPPED and events[0].kind == EventKind.ESTOP


def test_a_fault_zeroes_at_once_and_clearing_it_goes_idle():
    chair = running_chair()
    (fault,) = chair.command("fault", "vibration controller link lost")
    assert (fault.kind, fault.state_to, fault.priority) == (EventKind.FAULT, State.FAULT, Priority.MEDIUM)
    assert chair.tick().targets.is_off()
    with pytest.raises(CommandRejected, match="reset the fault first"):
        chair.start()
    chair.command("clear_fault")
    assert chair.state == State.IDLE and chair.tick().targets.is_off()


def test_no_reading_for_reading_timeout_s_is_a_fault():
    chair = running_chair()
    chair.wait(2.9)
    assert chair.state == State.RUNNING
    (fault,) = chair.wait(0.2)
    assert fault.kind == EventKind.FAULT and "vision stalled" in fault.reason
    assert chair.tick().targets.is_off()


def test_a_fault_while_estopped_stays_latched_and_surfaces_at_reset():
    chair = running_chair()
    chair.command("estop", "button")
    chair.command("fault", "camera lost")
    assert chair.state == State.ESTOPPED
    (reset,) = chair.command("reset_estop")
    assert reset.state_to == State.FAULT and "camera lost" in reset.reason


# --------------------------------------------------------------------------- ending


def test_a_non_looping_scenario_finishing_fades_out_to_idle():
    chair = Chair()
    chair.start("short")
    events = chair.feed(30.1, "neutral")
    (finished,) = [e for e in events if e.kind == EventKind.SCENARIO_FINISHED]
    assert (finished.state_from, finished.state_to) == (State.RUNNING, State.IDLE)
    fade = [o for o in chair.outputs if o.time >= finished.time]
    levels = [o.intensity for o in fade]
    assert levels[0] == pytest.approx(0.3) and fade[0].scenario == "short"
    chair.feed(5.0, "neutral")
    levels = [o.intensity for o in chair.outputs if o.time >= finished.time]
    assert all(later <= earlier for earlier, later in zip(levels, levels[1:]))
    last = chair.tick()
    assert last.intensity == 0.0 and last.targets.is_off() and last.scenario is None


def test_operator_stop_fades_out_to_idle():
    chair = running_chair()
    ended, stopped = chair.command("stop")
    assert (stopped.kind, stopped.state_to) == (EventKind.STOPPED, State.IDLE)
    assert ended.kind == EventKind.SCENARIO_ENDED and ended.data["scenario"] == "calm-sea"  # its outcome first
    assert chair.tick().intensity == pytest.approx(0.3)
    chair.wait(2.4)
    assert chair.tick().intensity == pytest.approx(0.3 * (1 - 2.4 / SETTINGS.stop_fade_s))
    chair.wait(2.6)
    assert chair.tick().targets.is_off()
    assert chair.command("stop") == []  # stopping when idle is harmless


# --------------------------------------------------------------------------- events, profiles, misuse


def test_events_chain_and_always_say_why():
    chair = running_chair()
    chair.feed(6.0, "positive")
    chair.feed(1 / RATE, "negative")
    chair.feed(4.0, "none")
    chair.feed(2.5, "neutral")
    chair.feed(1 / RATE, "negative", confidence=0.95)
    chair.feed(31.0, "neutral")
    chair.command("resume")
    chair.command("estop", "button")
    chair.command("reset_estop")
    events = chair.events
    assert {EventKind.INTENSITY_RAISED, EventKind.INTENSITY_LOWERED, EventKind.PAUSED, EventKind.RESUMED,
            EventKind.ADVERSE_REACTION, EventKind.ESTOP, EventKind.ESTOP_RESET} <= set(kinds(events))
    assert all(event.reason for event in events)
    assert all(a.state_to == b.state_from for a, b in zip(events, events[1:]))
    assert all(a.time <= b.time for a, b in zip(events, events[1:]))
    assert json.loads(json.dumps([event.to_dict() for event in events]))[0]["kind"] == "started"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"pseudonym": " "}, "non-empty pseudonym"),
        ({"intensity_cap": 1.2}, "intensity_cap must be a number within 0..1"),
        ({"start_intensity": -0.1}, "start_intensity must be a number within 0..1"),
        ({"intensity_cap": 0.2, "start_intensity": 0.3}, "above its intensity_cap"),
    ],
)
def test_bad_profiles_are_rejected(fields, message):
    with pytest.raises(ProfileError, match=message):
        ChildProfile(**{"pseudonym": "otter", **fields})


def test_an_unknown_default_scenario_is_a_config_error():
    with pytest.raises(ConfigError, match="control.default_scenario 'moon'"):
        Controller(ControllerSettings(default_scenario="moon"), SCENARIOS)


def test_time_going_backwards_is_an_error():
    chair = running_chair()
    with pytest.raises(ControlError, match="never go backwards"):
        chair.controller.tick(chair.now - 1.0)


def test_pause_resume_and_stop_with_nothing_to_do_change_nothing_and_record_nothing():
    """One rule for the three: a second pause, a resume while running, any of them at idle is a no-op."""
    chair = running_chair()
    assert chair.command("resume") == [] and chair.state == State.RUNNING
    assert [e.kind for e in chair.command("pause")] == [EventKind.PAUSED]
    assert chair.command("pause") == [] and chair.state == State.PAUSED  # not "paused -> paused"
    chair.command("stop")
    assert chair.state == State.IDLE
    for command in ("pause", "resume", "stop"):
        assert chair.command(command) == [] and chair.state == State.IDLE, command


# --------------------------------------------------------------------------- a realistic sequence


def test_first_reduction_within_one_second_of_sustained_negative_onset_at_15_readings_a_second():
    """Real aggregator, noisy per-frame probabilities: calm, then the child becomes upset."""
    rng = np.random.default_rng(7)
    metadata = ModelMetadata("test-fer", "1", FER2013_LABELS, FER2013_GROUPS, PreprocessSpec(), "float32")
    aggregator = AffectAggregator(AffectSettings(), metadata)  # threshold rule, 15-frame window
    chair = Chair()

    def frame(peak: str) -> np.ndarray:
        """A classifier output: mostly ``peak``, the rest spread with noise."""
        p = rng.dirichlet(np.ones(len(FER2013_LABELS))) * 0.45
        p[FER2013_LABELS.index(peak)] += 0.55
        return p

    def play(seconds: float, peak_of) -> None:
        for _ in range(round(seconds * RATE)):
            chair.frame += 1
            result = aggregator.update(chair.now, frame(peak_of()))
            chair._keep(chair.controller.on_reading(result, chair.now))
            chair._keep(list(chair.tick().events))

    chair.start()
    play(40.0, lambda: "neutral" if rng.random() < 0.9 else "happy")
    assert chair.state == State.RUNNING
    assert EventKind.INTENSITY_LOWERED not in kinds(chair.events)
    onset = chair.now
    play(10.0, lambda: "sad" if rng.random() < 0.7 else "neutral")  # 70% of frames read sad
    lowered = [e for e in chair.events if e.kind == EventKind.INTENSITY_LOWERED]
    assert lowered and lowered[0].time - onset <= 1.0
    halt = [e for e in chair.events if e.kind == EventKind.ADVERSE_REACTION]
    assert halt and halt[0].time - onset <= SETTINGS.halt_after_s + 1.0  # and halts when it persists
