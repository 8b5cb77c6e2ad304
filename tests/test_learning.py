"""Issue 15: scenario outcomes, the learner, switches within a session and per-child sensitivity.

The controller runs on the fake clock of ``test_controller`` (15 readings a second); the
learner is the real one on hand-made histories; the store is a real SQLite file.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest
from test_controller import PROFILE, RATE, SCENARIOS, SETTINGS, Chair, kinds

from relaxd.control import ChildProfile, EventKind, State
from relaxd.control.learner import ChildRules, PastSegment, ScenarioLearner, seed_for
from relaxd.control.outcome import CALM_HORIZON_S, ChosenBy, ScenarioOutcome, SegmentTracker
from relaxd.store import SessionStore

LEARNING = dataclasses.replace(SETTINGS, reassess_s=20.0, switch_negative_share=0.5, crossfade_s=4.0,
                               calm_hold_s=5.0, halt_after_s=120.0, halt_confidence=0.95, negative_release_s=2.0)


class Switcher:
    """The learner's part in a switch, recorded: always proposes ``to`` (or nothing)."""

    def __init__(self, to: str | None = "quiet-glow") -> None:
        self.to = to
        self.calls: list[tuple[str, frozenset]] = []

    def __call__(self, current: str, tried: frozenset) -> tuple[str, str] | None:
        self.calls.append((current, tried))
        return None if self.to is None else (self.to, "test: calmer for this child")


def learner_chair(switcher, chosen_by=ChosenBy.LEARNER, settings=LEARNING, profile=PROFILE) -> Chair:
    chair = Chair(settings, profile)
    chair._keep(chair.controller.start(profile, "calm-sea", chair.now, chosen_by=chosen_by, why="test",
                                       switcher=switcher))
    chair.feed(settings.calibration_s + 0.1, "neutral")
    assert chair.state == State.RUNNING
    return chair


# --------------------------------------------------------------------------- outcomes


def test_time_to_calm_is_the_start_of_the_first_sustained_calm_run():
    tracker = SegmentTracker("calm-sea", ChosenBy.LEARNER, start=100.0, calm_hold_s=10.0)
    for t in range(0, 20):  # negative for 20 s
        tracker.add(100.0 + t, "negative")
    for t in range(20, 26):  # calm 6 s, then a frown: not yet calm
        tracker.add(100.0 + t, "neutral")
    tracker.add(126.0, "negative")
    for t in range(27, 40):
        tracker.add(100.0 + t, "positive" if t % 2 else "neutral")
    outcome = tracker.finish(40.0)
    assert outcome.time_to_calm_s == pytest.approx(27.0)
    assert outcome.negative_share == pytest.approx(21 / 40)
    assert not outcome.halted and not outcome.ended_early
    assert outcome.reward == pytest.approx(0.5 * (1 - 27.0 / CALM_HORIZON_S) + 0.5 * (1 - 21 / 40), abs=1e-6)


def test_a_halt_scores_nothing_and_an_operator_giving_up_halves_the_score():
    calm = ScenarioOutcome("x", ChosenBy.LEARNER, 60.0, None, 0.2, halted=False, ended_early=False)
    assert calm.reward == pytest.approx(0.4)
    assert dataclasses.replace(calm, ended_early=True).reward == pytest.approx(0.2)
    assert dataclasses.replace(calm, halted=True, time_to_calm_s=1.0).reward == 0.0
    assert ScenarioOutcome.from_dict(calm.to_dict()) == calm
    tracker = SegmentTracker("x", ChosenBy.OPERATOR, 0.0, 5.0)
    tracker.add(1.0, "negative")
    assert tracker.finish(30.0, stopped_by_operator=True).ended_early  # stopped before the child calmed


# --------------------------------------------------------------------------- switching in the controller


def test_persistent_negative_cross_fades_to_the_learners_next_choice_and_records_why():
    switcher = Switcher()
    chair = learner_chair(switcher)
    chair.feed(LEARNING.reassess_s, "negative", confidence=0.6)
    assert switcher.calls == [("calm-sea", frozenset({"calm-sea"}))]
    ended, switched = [e for e in chair.events if e.kind in (EventKind.SCENARIO_ENDED, EventKind.SCENARIO_SWITCHED)]
    assert ended.data["scenario"] == "calm-sea" and ended.data["chosen_by"] == "learner"
    assert ended.data["negative_share"] > 0.4  # calibration's calm readings and then 20 s of negative ones
    assert switched.data["from"] == "calm-sea" and switched.data["to"] == "quiet-glow"
    assert "negative in" in switched.reason and "calmer for this child" in switched.reason
    assert chair.controller.scenario == "quiet-glow" and chair.state == State.RUNNING
    chair.feed(LEARNING.crossfade_s + 1.0, "neutral")
    # The cross-fade: no jump in light or vibration between two ticks, sound out then in.
    fade = [o for o in chair.outputs if o.time >= switched.time][: int(LEARNING.crossfade_s * RATE) + 2]
    for before, after in zip(fade, fade[1:]):
        assert abs(after.targets.light_brightness - before.targets.light_brightness) < 0.02
        assert abs(after.targets.vibration - before.targets.vibration) < 0.02
    assert fade[0].targets.sound.kind == "pink_noise" and fade[-1].targets.sound.kind == "silence"
    assert fade[-1].targets.vibration == 0.0  # quiet-glow does not vibrate


def test_calm_or_mixed_readings_keep_the_scenario():
    switcher = Switcher()
    chair = learner_chair(switcher)
    for _ in range(3):
        chair.feed(LEARNING.reassess_s * 0.6, "neutral")
        chair.feed(LEARNING.reassess_s * 0.4, "negative")  # 40% < switch_negative_share
    assert switcher.calls == [] or all(call[0] == "calm-sea" for call in switcher.calls)
    assert chair.controller.scenario == "calm-sea"
    assert EventKind.SCENARIO_SWITCHED not in kinds(chair.events)


@pytest.mark.parametrize("chosen_by", [ChosenBy.OPERATOR, ChosenBy.PROFILE, ChosenBy.DEFAULT])
def test_a_scenario_the_learner_did_not_choose_is_never_switched(chosen_by):
    switcher = Switcher()
    chair = learner_chair(switcher, chosen_by=chosen_by)
    chair.feed(3 * LEARNING.reassess_s, "negative")
    assert switcher.calls == [] and chair.controller.scenario == "calm-sea"
    assert EventKind.SCENARIO_SWITCHED not in kinds(chair.events)


def test_switches_never_exceed_the_cap_and_the_e_stop_and_halt_work_mid_cross_fade():
    capped = ChildProfile("capped", intensity_cap=0.35, start_intensity=0.35)
    chair = learner_chair(Switcher(), profile=capped)
    chair.feed(LEARNING.reassess_s - 1.0, "positive")
    chair.feed(1.0 + 1.0, "negative")  # never mind the rules: whatever happens, never above the cap
    assert all(o.intensity <= capped.intensity_cap + 1e-9 for o in chair.outputs)
    assert all(max(o.targets.light_brightness, o.targets.vibration, o.targets.sound.volume)
               <= capped.intensity_cap + 1e-9 for o in chair.outputs)

    chair = learner_chair(Switcher())
    chair.feed(LEARNING.reassess_s, "negative")
    assert chair.controller.scenario == "quiet-glow"  # now cross-fading
    chair.command("estop", "button")
    assert chair.tick().targets.is_off() and chair.state == State.ESTOPPED

    chair = learner_chair(Switcher())
    chair.feed(LEARNING.reassess_s, "negative")
    (halt,) = [e for e in chair.feed(1 / RATE, "negative", confidence=0.97) if e.kind == EventKind.ADVERSE_REACTION]
    assert halt.data["scenario"] == "quiet-glow"  # the daemon blocks this one for the child
    chair.wait(LEARNING.halt_fade_s + 0.1)
    assert chair.tick().targets.is_off()


def test_a_halt_or_stop_in_the_middle_of_a_cross_fade_never_raises_a_channel():
    """The fade to off starts from the blend the child is in, not from the new scenario's look."""
    keep_level = dataclasses.replace(LEARNING, lower_interval_s=60.0, crossfade_s=8.0)
    strong = ChildProfile("strong", intensity_cap=0.6, start_intensity=0.6)
    for ending in ("halt", "stop"):
        chair = learner_chair(Switcher(to="calm-sea"), settings=keep_level, profile=strong)
        chair.controller._session.scenario = SCENARIOS["quiet-glow"]  # start from silence, no vibration
        chair.feed(keep_level.reassess_s, "negative", confidence=0.6)
        assert chair.controller.scenario == "calm-sea", "no switch happened"
        chair.feed(0.5, "negative", confidence=0.6)  # half a second into the cross-fade
        before = chair.outputs[-1].targets
        if ending == "halt":
            (halt,) = [e for e in chair.feed(1 / RATE, "negative", confidence=0.97)
                       if e.kind == EventKind.ADVERSE_REACTION]
            assert (halt.data["scenario"], halt.data["previous_scenario"]) == ("calm-sea", "quiet-glow")
        else:
            chair.command("stop")
        after = [o.targets for o in chair.outputs[-1:]] + [chair.tick().targets for _ in range(3 * RATE)]
        for targets in after:
            assert targets.light_brightness <= before.light_brightness + 1e-9, ending
            assert targets.sound.volume <= before.sound.volume + 1e-9, ending
            assert targets.vibration <= before.vibration + 0.02, ending  # its wave pattern is frozen at the stop


def test_a_stop_by_the_chair_itself_records_no_outcome():
    chair = learner_chair(Switcher())
    events = chair.controller.stop(chair.now, "camera lost", by_operator=False)
    assert EventKind.SCENARIO_ENDED not in kinds(events) and EventKind.STOPPED in kinds(events)


def test_a_learner_with_nothing_left_to_offer_keeps_the_scenario():
    switcher = Switcher(to=None)
    chair = learner_chair(switcher)
    chair.feed(LEARNING.reassess_s, "negative")
    assert len(switcher.calls) == 1 and chair.controller.scenario == "calm-sea"


# --------------------------------------------------------------------------- per-child sensitivity


def calibrated_on(negative_share: float, settings=LEARNING) -> Chair:
    """Calibrated on a resting face that reads negative ``negative_share`` of the time (the default
    rule lowers on those readings while calibrating, so it starts high enough to have room left)."""
    chair = Chair(settings, ChildProfile("flicker", intensity_cap=0.8, start_intensity=0.8))
    chair.start("calm-sea")
    for index in range(int((settings.calibration_s + 0.1) * RATE)):
        negative = (index % 100) < negative_share * 100
        chair.feed(1 / RATE, "negative" if negative else "neutral", confidence=0.3 if negative else 0.7)
    assert chair.state == State.RUNNING, chair.events[-1]
    return chair


def test_a_child_whose_calm_face_reads_negative_ignores_faint_flickers_only():
    chair = calibrated_on(0.4)
    (calibrated,) = [e for e in chair.events if e.kind == EventKind.CALIBRATED]
    assert calibrated.data["lower_confidence"] == pytest.approx(min(LEARNING.sensitivity_max_confidence,
                                                                    calibrated.data["resting_negative"] + 0.1))
    assert "halts unchanged" in calibrated.reason
    level = chair.controller.intensity
    chair.feed(1 / RATE, "negative", confidence=0.3)  # a faint flicker: ignored for this child
    assert chair.controller.intensity == level
    chair.feed(3.0, "neutral")
    assert level >= LEARNING.step
    chair.feed(1 / RATE, "negative", confidence=0.7)  # confident enough: lowers at once
    assert chair.controller.intensity == pytest.approx(level - LEARNING.step)


def test_sensitivity_never_delays_a_sustained_or_confident_negative():
    strict = dataclasses.replace(LEARNING, halt_after_s=6.0, halt_confidence=0.85)
    reactions = {}
    for share in (0.0, 0.5):
        chair = calibrated_on(share, strict)
        start = chair.now
        chair.feed(LEARNING.negative_release_s + 1.0, "neutral")  # calibration's flickers are over
        onset = chair.now
        chair.feed(8.0, "negative", confidence=0.3)  # faint but sustained
        lowered = [e.time - onset for e in chair.events if e.kind == EventKind.INTENSITY_LOWERED and e.time >= onset]
        (halt,) = [e.time - onset for e in chair.events if e.kind == EventKind.ADVERSE_REACTION]
        reactions[share] = (lowered[0], halt)
        assert start < onset
    default_first_lower, default_halt = reactions[0.0]
    sensitive_first_lower, sensitive_halt = reactions[0.5]
    assert sensitive_halt == pytest.approx(default_halt)  # the sustained negative halts at the same moment
    assert sensitive_first_lower <= strict.lower_interval_s + 1 / RATE  # and lowers within lower_interval_s
    for share in (0.0, 0.5):  # a confident negative halts at once for every child
        chair = calibrated_on(share, strict)
        assert EventKind.ADVERSE_REACTION in kinds(chair.feed(1 / RATE, "negative", confidence=0.9))


def test_a_child_whose_calm_face_reads_calm_keeps_the_default_rule():
    chair = calibrated_on(0.1)
    (calibrated,) = [e for e in chair.events if e.kind == EventKind.CALIBRATED]
    assert calibrated.data["lower_confidence"] == 0.0
    level = chair.controller.intensity
    chair.feed(1 / RATE, "negative", confidence=0.3)
    assert chair.controller.intensity == pytest.approx(level - LEARNING.step)


# --------------------------------------------------------------------------- the learner


def segments(scenario: str, reward: float, sessions: range, ttc: float | None = 30.0) -> list[PastSegment]:
    return [PastSegment(scenario, reward, session, ttc) for session in sessions]


def test_a_new_child_starts_from_what_calmed_other_children_here():
    population = segments("night-sky", 0.9, range(1, 30)) + segments("calm-sea", 0.2, range(30, 60), None)
    picks = [ScenarioLearner(SCENARIOS, [], population, seed=seed).pick() for seed in range(100)]
    # The population's best, or one like it (sound, no vibration), far more often than its worst.
    assert max(set(picks), key=picks.count) == "night-sky"
    alike = [n for n, s in SCENARIOS.items() if s.features.sound and not s.features.vibration]
    assert sum(picks.count(n) for n in alike) > 60
    assert picks.count("calm-sea") < 3
    learner = ScenarioLearner(SCENARIOS, [], population, seed=1)
    assert "new for this child; calmed other children here in 29 of 29 sessions" == learner.why("night-sky")


def test_a_dislike_of_vibration_is_learned_across_every_vibrating_scenario():
    vibrating = [n for n, s in SCENARIOS.items() if s.features.vibration]
    child = [PastSegment(name, 0.05, i) for i, name in enumerate(vibrating[:2])] + \
        [PastSegment("night-sky", 0.8, 10)]
    learner = ScenarioLearner(SCENARIOS, child, [], seed=3)
    estimates = learner.estimates()
    untried_vibrating = [n for n in vibrating[2:]]
    untried_still = [n for n, s in SCENARIOS.items() if not s.features.vibration and n != "night-sky"]
    assert max(estimates[n] for n in untried_vibrating) < min(estimates[n] for n in untried_still)


def test_excluded_and_blocked_scenarios_are_never_chosen():
    rules = ChildRules(excluded=frozenset({"night-sky"}), blocked={"quiet-glow": "halted in session 3"})
    population = segments("night-sky", 0.95, range(1, 40)) + segments("quiet-glow", 0.95, range(40, 80))
    for seed in range(200):
        learner = ScenarioLearner(SCENARIOS, [], population, rules, seed=seed)
        assert learner.pick() not in ("night-sky", "quiet-glow")
        assert learner.pick(avoid=learner.allowed()) is None  # nothing else left: never the blocked one
    assert ScenarioLearner(SCENARIOS, [], [], ChildRules(excluded=frozenset(SCENARIOS))).pick() is None


def test_the_same_history_gives_the_same_suggestion():
    child = segments("sunset", 0.7, range(1, 4))
    first = ScenarioLearner(SCENARIOS, child, [], seed=seed_for("otter", 3)).suggest()
    again = ScenarioLearner(SCENARIOS, child, [], seed=seed_for("otter", 3)).suggest()
    assert first == again
    assert seed_for("otter", 3) != seed_for("otter", 4) != seed_for("seal", 3)


def test_the_reason_cites_the_childs_own_sessions():
    child = [PastSegment("sunset", 0.8, s, ttc) for s, ttc in ((1, 40.0), (2, 50.0), (3, None), (4, 30.0), (5, 60.0))]
    learner = ScenarioLearner(SCENARIOS, child, [], seed=0)
    assert learner.why("sunset") == "calmed in 4 of the last 5 sessions with it (median 45 s to calm)"
    assert learner.why("meadow").startswith("not tried on this chair yet")


# --------------------------------------------------------------------------- the store


def test_outcomes_and_rules_are_stored_and_erased_with_the_child(tmp_path: Path):
    store = SessionStore(tmp_path / "relaxd.db")
    kid = store.create_profile("kid-a")
    other = store.create_profile("kid-b")
    session = store.start_session(kid.id, "calm-sea")
    outcome = ScenarioOutcome("calm-sea", ChosenBy.LEARNER, 90.0, 20.0, 0.1, False, False)
    store.add_scenario_outcome(session, kid.id, outcome.to_dict())
    store.add_scenario_outcome(store.start_session(other.id, "sunset"), other.id,
                               dataclasses.replace(outcome, scenario="sunset").to_dict())
    (row,) = store.scenario_outcomes(profile_id=kid.id)
    assert (row.scenario, row.chosen_by, row.time_to_calm_s, row.reward) == ("calm-sea", "learner", 20.0, outcome.reward)
    assert [r.scenario for r in store.scenario_outcomes()] == ["calm-sea", "sunset"]
    store.set_scenario_rule(kid.id, "night-sky", "excluded", set_by="dr-b")
    store.set_scenario_rule(kid.id, "night-sky", "blocked", reason="halted")  # never weakens an exclusion
    store.set_scenario_rule(kid.id, "sunset", "blocked", reason="halted in session 1")
    assert {(r.scenario, r.rule) for r in store.scenario_rules(kid.id)} == {("night-sky", "excluded"),
                                                                            ("sunset", "blocked")}
    assert store.clear_scenario_rule(kid.id, "sunset", "blocked") and not store.clear_scenario_rule(kid.id, "sunset", "blocked")
    assert "scenarios" in store.session_data(session) and store.session_data(session)["scenarios"][0]["reward"] > 0
    store.end_session(session, "stopped")
    store.enqueue_message("mqtt", "k-summary", {"event": "session.ended", "session": {"profile": "kid-a"}},
                          session_id=session)
    assert store.outbox_pending("mqtt") == 1
    store.delete_profile(kid.id, with_sessions=True)
    assert store.outbox_pending("mqtt") == 0 and all("kid-a" not in r["payload"] for r in store.outbox_rows())
    assert store.scenario_outcomes(profile_id=kid.id) == [] and store.scenario_rules(kid.id) == []
    assert [r.scenario for r in store.scenario_outcomes()] == ["sunset"]  # the other child's stay
    store.close()


def test_a_version_2_store_migrates_with_its_sessions(tmp_path: Path):
    from relaxd.store import _MIGRATIONS

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # what relaxd with schema 2 left behind
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version in (1, 2):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, '2026-01-01T00:00:00.000+00:00')", (version,))
        conn.execute("INSERT INTO profiles (pseudonym, created_at, updated_at) VALUES ('kid-old', 'x', 'x')")
        conn.execute("INSERT INTO sessions (profile_id, scenario, started_at) VALUES (1, 'sunset', "
                     "'2026-01-01T00:00:00.000+00:00')")
        conn.execute("INSERT INTO outbox (key, payload, created_at) VALUES ('k-old', '{}', 'x')")
    store = SessionStore(path)
    assert store.schema_version() == max(_MIGRATIONS) and store.get_session(1).scenario == "sunset"
    store.add_scenario_outcome(1, 1, ScenarioOutcome("sunset", ChosenBy.OPERATOR, 5.0, None, 0.0,
                                                     False, False).to_dict())
    assert len(store.scenario_outcomes(session_id=1)) == 1
    assert store.next_outbox("webhook").key == "k-old"  # an old undelivered webhook row is still the webhook's
    assert store.next_outbox("mqtt") is None
    store.close()


def test_a_preferred_or_default_scenario_that_is_excluded_or_blocked_is_not_started(tmp_path: Path):
    from relaxd.learning import NoScenarioAllowed, plan_start
    from relaxd.settings import ControllerSettings

    store = SessionStore(tmp_path / "relaxd.db")
    kid = store.create_profile("kid-pref", preferred_scenario="sunset")
    assert plan_start(store, SCENARIOS, ControllerSettings(), "kid-pref", kid).chosen_by is ChosenBy.PROFILE
    for rule in ("blocked", "excluded"):
        store.set_scenario_rule(kid.id, "sunset", rule)
        plan = plan_start(store, SCENARIOS, ControllerSettings(), "kid-pref", kid)
        assert plan.chosen_by is ChosenBy.LEARNER and plan.scenario != "sunset", rule
        store.clear_scenario_rule(kid.id, "sunset", rule)
    store.set_scenario_rule(kid.id, "calm-sea", "excluded")
    no_learning = ControllerSettings(learn=False)
    store.update_profile(kid.id, preferred_scenario=None)
    with pytest.raises(NoScenarioAllowed, match="default 'calm-sea' is excluded or blocked.*name a scenario"):
        plan_start(store, SCENARIOS, no_learning, "kid-pref", store.get_profile(kid.id))
    store.close()
