"""The learner's view of the store: one child's history, everyone else's, and the therapist's rules.

``relaxd.control.learner`` is pure; this module reads what it needs from the session store.
It runs on the socket threads (the ``start`` and ``suggest`` commands), never on the control
loop. The same history always gives the same suggestion (``seed_for``), so what the panel's
start screen and ``relaxctl suggest`` show is what ``start`` without a scenario plays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import structlog

from relaxd.control.controller import CommandRejected, ScenarioSwitcher
from relaxd.control.learner import ChildRules, PastSegment, ScenarioLearner, Suggestion, seed_for
from relaxd.control.outcome import ChosenBy
from relaxd.control.scenarios import Scenario
from relaxd.settings import ControllerSettings
from relaxd.store import OutcomeRecord, Profile, SessionStore

log = structlog.get_logger(__name__)


class NoScenarioAllowed(CommandRejected):
    """The learner has nothing it may choose for this child."""


def _segment(record: OutcomeRecord) -> PastSegment:
    return PastSegment(record.scenario, record.reward, record.session_id, record.time_to_calm_s, record.halted)


def child_rules(store: SessionStore, profile: Optional[Profile]) -> ChildRules:
    if profile is None:
        return ChildRules()
    rules = store.scenario_rules(profile.id)
    return ChildRules(frozenset(r.scenario for r in rules if r.rule == "excluded"),
                      {r.scenario: r.reason for r in rules if r.rule == "blocked"})


def learner_for(store: SessionStore, scenarios: Mapping[str, Scenario], pseudonym: str,
                profile: Optional[Profile]) -> ScenarioLearner:
    """The child's learner: the population is every other child's recorded outcomes on this chair."""
    everyone = store.scenario_outcomes()
    own = [_segment(r) for r in everyone if profile is not None and r.profile_id == profile.id]
    others = [_segment(r) for r in everyone if profile is None or r.profile_id != profile.id]
    sessions = len({segment.session_id for segment in own})
    return ScenarioLearner(scenarios, own, others, child_rules(store, profile), seed=seed_for(pseudonym, sessions))


def switcher_of(learner: ScenarioLearner) -> ScenarioSwitcher:
    """Within a session: another scenario the learner picks, never one already tried in it.

    It runs on the control loop: a failure of the learner keeps the scenario (and says so in
    the journal), it never stops the loop.
    """

    def switch(current: str, tried: frozenset) -> Optional[tuple[str, str]]:
        try:
            suggestion = learner.suggest(avoid=tried | {current})
        except Exception:  # a numerical failure of the draw: stay on the scenario
            log.exception("learner.switch_failed", scenario=current)
            return None
        return None if suggestion is None else (suggestion.scenario, suggestion.why)

    return switch


@dataclass(frozen=True)
class StartPlan:
    """What a start without an explicit scenario plays, who chose it and why."""

    scenario: Optional[str]  # None: the controller's own fallback (preferred, else default)
    chosen_by: ChosenBy
    why: str
    suggestion: Optional[Suggestion] = None
    switcher: Optional[ScenarioSwitcher] = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"scenario": self.scenario, "chosen_by": self.chosen_by.value, "why": self.why}
        if self.suggestion is not None:
            data.update({key: value for key, value in self.suggestion.to_dict().items() if key != "scenario"})
        return data


def plan_start(store: SessionStore, scenarios: Mapping[str, Scenario], settings: ControllerSettings,
               pseudonym: str, profile: Optional[Profile]) -> StartPlan:
    """The profile's preferred scenario, else the learner's choice (when learning is on), else the default.

    A preferred scenario that a therapist has since excluded, or that a halt blocked, is passed
    over for the learner's choice; the default with learning off is refused then.
    """
    rules = child_rules(store, profile)
    unusable = set(rules.excluded) | set(rules.blocked)
    if profile is not None and profile.preferred_scenario and profile.preferred_scenario not in unusable:
        return StartPlan(profile.preferred_scenario, ChosenBy.PROFILE, "the child's preferred scenario (profile)")
    if not settings.learn:
        if settings.default_scenario in unusable:
            raise NoScenarioAllowed(f"the chair's default {settings.default_scenario!r} is excluded or blocked for "
                                    f"{pseudonym!r} and learning is off (control.learn): name a scenario to start")
        return StartPlan(settings.default_scenario, ChosenBy.DEFAULT, "the chair's default scenario (learning is off)")
    learner = learner_for(store, scenarios, pseudonym, profile)
    suggestion = learner.suggest()
    if suggestion is None:
        raise NoScenarioAllowed(f"every scenario is excluded or blocked for {pseudonym!r}: a therapist can approve "
                                "a blocked one (relaxctl approve-scenario) or name one to start")
    return StartPlan(suggestion.scenario, ChosenBy.LEARNER, suggestion.why, suggestion, switcher_of(learner))
