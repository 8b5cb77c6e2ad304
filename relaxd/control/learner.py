"""Which scenario calms this child: Thompson sampling over scenario features, per child.

Pure: the caller reads the history from the store (off the control loop) and passes it in;
randomness comes from a seed, so the panel's suggestion, ``relaxctl suggest`` and the start
of the session agree on the same history.

The model: a scenario's reward for a child (``ScenarioOutcome.reward``, 0..1) is linear in
its features (``ScenarioFeatures.vector``: vibration, sound, warm light, very slow) plus a
small per-scenario term:

    reward(child, s) = w_child . [1, features(s), onehot(s)] + noise

so a child who dislikes vibration is learned to dislike it in every scenario that vibrates,
after a session or two instead of one session per scenario. The **population prior**: the
weights are first fitted (Bayesian linear regression) to every other child's outcomes on this
chair; a child's own prior is that fit with its uncertainty widened by how much children
differ (``CHILD_SPREAD``), and the child's own outcomes update it. A new child therefore
starts from what calmed other children here, not from zero. Each choice samples the weights
from the child's posterior and takes the best allowed scenario under the sample (Thompson
sampling): uncertain scenarios get tried now and then, and less often as the evidence grows.

Hard constraints are applied before any sampling: a scenario excluded by a therapist for the
child, or blocked because it led to a halt for the child (until a therapist approves it), is
never chosen. The operator's explicit choice is not the learner's business: it always wins.
"""

from __future__ import annotations

import statistics
import zlib
from dataclasses import dataclass, field
from typing import Collection, Mapping, Optional, Sequence

import numpy as np

from relaxd.control.scenarios import Scenario

FEATURES = ("vibration", "sound", "warm light", "very slow")
PRIOR_MEAN_REWARD = 0.5
PRIOR_SD = {"intercept": 0.3, "feature": 0.3, "scenario": 0.1}  # before any child was seen
CHILD_SPREAD = {"intercept": 0.15, "feature": 0.25, "scenario": 0.1}  # how much one child differs
NOISE_SD = 0.2  # of one segment's reward around the child's mean
HISTORY_SHOWN = 5  # "in 4 of the last 5 sessions"


@dataclass(frozen=True)
class PastSegment:
    """One recorded segment, as the learner needs it (from the store's scenario outcomes)."""

    scenario: str
    reward: float
    session_id: int
    time_to_calm_s: Optional[float] = None
    halted: bool = False


@dataclass(frozen=True)
class ChildRules:
    """A therapist's limits for one child: excluded scenarios, and those blocked after a halt."""

    excluded: frozenset[str] = frozenset()
    blocked: Mapping[str, str] = field(default_factory=dict)  # scenario -> why (the halt)


@dataclass(frozen=True)
class Suggestion:
    """The learner's pick and the reason a person is shown."""

    scenario: str
    why: str
    estimate: float  # posterior mean reward of the pick, 0..1
    allowed: tuple[str, ...]
    excluded: tuple[str, ...]
    blocked: Mapping[str, str]

    def to_dict(self) -> dict:
        return {"scenario": self.scenario, "why": self.why, "estimate": round(self.estimate, 3),
                "allowed": list(self.allowed), "excluded": list(self.excluded), "blocked": dict(self.blocked)}


def seed_for(pseudonym: str, sessions_so_far: int) -> int:
    """The same child with the same history gets the same draw (panel, relaxctl, start agree)."""
    return zlib.crc32(f"{pseudonym}/{sessions_so_far}".encode("utf-8"))


class ScenarioLearner:
    """One child's posterior over the scenarios of this chair."""

    def __init__(self, scenarios: Mapping[str, Scenario], child: Sequence[PastSegment],
                 population: Sequence[PastSegment], rules: ChildRules = ChildRules(), seed: int = 0) -> None:
        self.names = sorted(scenarios)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._x = np.array([[1.0, *scenarios[name].features.vector(), *np.eye(len(self.names))[i]]
                            for i, name in enumerate(self.names)])
        self.rules = rules
        self.child = [s for s in child if s.scenario in self._index]
        self.population = [s for s in population if s.scenario in self._index]
        self._rng = np.random.default_rng(seed)
        prior_mean = np.zeros(self._x.shape[1])
        prior_mean[0] = PRIOR_MEAN_REWARD
        population_mean, population_cov = self._update(prior_mean, np.diag(self._variances(PRIOR_SD)), self.population)
        self.mean, self.cov = self._update(population_mean, population_cov + np.diag(self._variances(CHILD_SPREAD)),
                                           self.child)

    def _variances(self, sd: Mapping[str, float]) -> np.ndarray:
        return np.array([sd["intercept"] ** 2] + [sd["feature"] ** 2] * len(FEATURES)
                        + [sd["scenario"] ** 2] * len(self.names))

    def _update(self, mean: np.ndarray, cov: np.ndarray, segments: Sequence[PastSegment]) -> tuple[np.ndarray, np.ndarray]:
        """Bayesian linear regression: the Gaussian prior (mean, cov) updated by ``segments``."""
        if not segments:
            return mean, cov
        x = self._x[[self._index[s.scenario] for s in segments]]
        y = np.array([s.reward for s in segments])
        precision = np.linalg.inv(cov)
        posterior_precision = precision + x.T @ x / NOISE_SD ** 2
        posterior_cov = np.linalg.inv(posterior_precision)
        posterior_mean = posterior_cov @ (precision @ mean + x.T @ y / NOISE_SD ** 2)
        return posterior_mean, (posterior_cov + posterior_cov.T) / 2.0

    # ------------------------------------------------------------------ choosing

    def allowed(self) -> list[str]:
        """The scenarios the learner may choose for this child (not excluded, not blocked)."""
        return [n for n in self.names if n not in self.rules.excluded and n not in self.rules.blocked]

    def estimates(self) -> dict[str, float]:
        """Posterior mean reward of every scenario for this child."""
        return {name: float(self._x[i] @ self.mean) for name, i in self._index.items()}

    def pick(self, avoid: Collection[str] = ()) -> Optional[str]:
        """One Thompson draw: the best allowed scenario (not in ``avoid``) under sampled weights."""
        candidates = [n for n in self.allowed() if n not in avoid]
        if not candidates:
            return None
        weights = self._rng.multivariate_normal(self.mean, self.cov, method="cholesky")
        scores = {name: float(self._x[self._index[name]] @ weights) for name in candidates}
        return max(candidates, key=lambda name: (scores[name], name))

    def suggest(self, avoid: Collection[str] = ()) -> Optional[Suggestion]:
        """``pick`` with the reason a therapist is shown."""
        name = self.pick(avoid)
        if name is None:
            return None
        return Suggestion(name, self.why(name), self.estimates()[name], tuple(self.allowed()),
                          tuple(sorted(self.rules.excluded)), dict(self.rules.blocked))

    def why(self, name: str) -> str:
        """In words, from this child's sessions first, else from the other children's."""
        own = self._sessions_with(self.child, name)
        if own:
            recent = own[-HISTORY_SHOWN:]
            calmed = [t for t in recent if t is not None]
            text = f"calmed in {len(calmed)} of the last {len(recent)} sessions with it"
            if calmed:
                text += f" (median {statistics.median(calmed):.0f} s to calm)"
            estimates = self.estimates()
            best = max(self.allowed(), key=lambda n: estimates[n])
            if best != name and len(own) < 3:
                text += f"; trying it again: too few sessions to rule it out against {best}"
            return text
        others = self._sessions_with(self.population, name)
        if others:
            calmed = sum(t is not None for t in others)
            return f"new for this child; calmed other children here in {calmed} of {len(others)} sessions"
        features = self._x[self._index[name]][1:1 + len(FEATURES)]
        offered = ", ".join(f for f, on in zip(FEATURES, features) if on) or "light only"
        return f"not tried on this chair yet: the learner is exploring ({offered})"

    @staticmethod
    def _sessions_with(segments: Sequence[PastSegment], name: str) -> list[Optional[float]]:
        """Per session in which ``name`` played (oldest first): its time to calm, None if it did not calm."""
        by_session: dict[int, Optional[float]] = {}
        for segment in segments:
            if segment.scenario == name:
                known = by_session.get(segment.session_id)
                if segment.time_to_calm_s is not None and (known is None or segment.time_to_calm_s < known):
                    by_session[segment.session_id] = segment.time_to_calm_s
                else:
                    by_session.setdefault(segment.session_id, known)
        return [by_session[key] for key in sorted(by_session)]
