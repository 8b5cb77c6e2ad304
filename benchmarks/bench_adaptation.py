"""Does the scenario learner calm children sooner than the fixed default? Synthetic children, simulated time.

Issue 15's evidence. Synthetic children with hidden preferences over the scenario features
(vibration, sound, warm light, very slow cycles: ``ScenarioFeatures.vector``) sit in the
chair session after session. Their faces are read with misreadings like the real model's,
and those readings drive the REAL ``Controller`` (default ``ControllerSettings``) and the REAL
``ScenarioLearner``, in simulated time; nothing of either is re-implemented here. The
policies, for the same children with the same random draws, each with its own history:

* ``learned``: the learner chooses (``ChosenBy.LEARNER``, seeded with ``seed_for``), from the
  child's own recorded segments and a population prior fitted to every OTHER child's segments
  so far, and the controller's ``switcher`` asks it for another scenario (``pick(avoid=tried)``)
  when a reassessment finds persistent negative. The history is built from the
  ``scenario_ended`` events the controller emitted (reward from the event), as the daemon does.
  A halt with scenario X blocks X for the child's later sessions (the simulated therapist never
  approves it again here); a therapist's exclusion is passed as ``ChildRules.excluded``.
* ``default``: always ``default_scenario`` ("calm-sea"), ``ChosenBy.DEFAULT``, no switching:
  today's chair (if the child's therapist excluded it: the first allowed scenario by name).
* ``random``: a scenario drawn uniformly among those allowed (not excluded, not blocked by
  this policy's own halts), no switching.
* ``oracle`` (a reference, reported beside the others, never in a target): always the child's
  best allowed scenario, known from the hidden affinities; what perfect knowledge would give.

Children are interleaved (session 1 of every child, then session 2, ...), so the population
prior grows as it would on a chair shared by a group.

**The child** (each a draw from one *type* of the population file, see below). Its hidden
affinity for scenario ``s`` is ``A(s) = w . features(s) + e(s) - boredom * min(run, 5)``:
``w`` drawn per child around its type's ``likes`` (normal, sd ``spread``), ``e(s)`` a
per-child, per-scenario term (normal, sd ``idiosyncrasy``), ``run`` the number of sessions in a
row just before this one that started with ``s``. Its *best scenario* (for
``best_scenario_share_last5``) is the highest ``w . features + e`` among the scenarios allowed
for it at that session (not excluded, not blocked). Every ``DT_S`` (0.5 s: two readings a
second, each followed by a tick) of simulated time:

* the effective affinity is ``A`` of the scenario playing (blended linearly over
  ``crossfade_s`` after a switch) times ``min(1, intensity / REF_INTENSITY) ** 0.5``, the
  intensity being the controller's output: at 0 nothing is seen, heard or felt, and the bare
  chair (affinity 0) is what the child feels; after a halt, 0;
* a hidden arousal ``a`` (0..1, kept as its logit) relaxes towards
  ``sigmoid(AROUSAL_OFFSET - AROUSAL_GAIN * A)`` (0.09 for an indifferent scenario, 0.02 for a
  liked one, 0.4-0.6 for a disliked one), quickly when it rises (``TAU_UP_S``, 8 s: distress
  comes fast), slowly when it falls (``TAU_S / (1 + max(A, 0))``, 40 s for an indifferent
  scenario), plus noise (sd ``noise`` on the logit). It starts at the type's
  ``distress * (1 - habituation) ** sessions_so_far`` (the chair gets familiar), varied by
  ``noise``;
* the child's true state is negative, calm or content: a negative bout starts at rate
  ``BOUT_RATE * a`` per second and lasts ``BOUT_MIN_S + BOUT_SCALE_S * a**2`` seconds on
  average (exponential), so a distressed child has long, merging bouts (a halt:
  ``halt_after_s``); a calm child starts smiling (a run of positive, ``CONTENT_S`` long on
  average) at a rate that grows with the effective affinity, which is what lets the
  controller raise the intensity;
* the reading: a true negative is read as neutral with probability ``negative_as_calm``,
  else as negative with confidence ``0.5 + 0.35 a`` + noise (sd 0.08; a confident, halting
  reading needs a very distressed child); a calm face is read as negative with probability
  ``calm_as_negative`` (confidence about 0.45), else as positive (when smiling) or neutral.
  Each reading is drawn independently. The face is always present.

**A session** lasts at most ``SESSION_S`` (7 minutes). The operator ends it (``stop``)
``CALM_STOP_S`` (2 minutes) after the child calmed (its time to calm + ``calm_hold_s``), or
``HALT_WAIT_S`` (5 s) after a halt (``adverse_reaction``; never resumed), else at
``SESSION_S``. **Metrics**, from the child's HIDDEN state, never the readings: time to calm =
the start of the first run of ``calm_hold_s`` (10 s) without a negative bout, from the session
start; a session that never calmed (halted ones included) counts as ``SESSION_S`` (censored).
Halts: 0 or 1 per session. The JSON's headline numbers are means per session over the last 5
sessions of each child (all of them when there are fewer than 5): ``learned_time_to_calm_s``,
``default_time_to_calm_s``, ``random_time_to_calm_s`` (and ``oracle_...``), ``learned_halts``,
``default_halts``, ``random_halts``; ``best_scenario_share_last5`` is the share of those
sessions in which the scenario the learner chose at the start was the child's best.
``diagnostics`` adds what explains them (near-best choices, close calls between a child's two
best scenarios, outcomes when the learner chose the best or another, switches, halts before
the first reassessment, the mean intensity the controller played, two reference choosers with
hidden knowledge: ``knows_type`` picks by the child's type's likes, ``knows_features`` by the
child's own feature weights, both without the per-scenario term; and ``discriminability``: how
far apart a child's best and second-best scenarios score, in sessions a learner would need to
tell them apart); ``per_session`` holds the learning curves.

**Constraint checks** (``constraint_violations``, each counted from what happened in the
learned policy): a learner choice (start or switch) that is excluded or blocked for the child;
any controller output whose intensity exceeds the child's ``intensity_cap``; in every tenth
learned session (child + session index = 5 mod 10) an e-stop probe: a copy of the running
controller is e-stopped at a random moment in the first minute (or when the session ends
sooner), fed readings for 20 s (a resume is tried at +5 s: it must be refused; the latch is
reset at +10 s: that must not restart anything) and every output must be off; in every tenth
(child + session = 0 mod 10) an operator probe: a side session with the operator's explicit
choice (the child's worst allowed scenario) and a switcher that always wants to switch: any
``scenario_switched`` is a violation. Probes never enter the metrics or the histories.

Targets (issue 15), 40 children x 10 sessions, on seeds not tuned on (the simulation and the
built-in population were tuned on seed 1): learned time to calm and halts at most 0.7x the
default's, ``best_scenario_share_last5`` >= 0.8, no violations (``meets_targets``).

**Population file** (``--population FILE``, YAML; the built-in one is
``benchmarks/populations/default.yaml``)::

    exclusion_share: 0.1            # optional (0.1): share of children with one scenario excluded by a therapist
    intensity_caps: [0.4, 0.5, 0.6] # optional: each child's intensity_cap, drawn from these (start 0.3 or the cap)
    types:                          # required: one or more child types
      - name: dislikes-vibration    # required, unique
        share: 0.25                 # required, > 0: weight of this type (shares are normalised)
        likes: {vibration: -1.5, sound: 0.3, warm: 0.2, very_slow: 0.2}  # required: affinity per
                                    # feature, -5..5 (a missing feature is 0); +-1.5 is a strong like/dislike
        spread: 0.3                 # optional (0.3): sd of each child's likes around these, 0..2
        idiosyncrasy: 0.1           # optional (0.1): sd of the per-child, per-scenario term, 0..1
        distress: 0.45              # optional (0.45): arousal at the start of the first session, 0..1
        noise: 0.5                  # optional (0.5): sd of the arousal noise (logit units), 0..3
        habituation: 0.05           # optional (0.05): start distress falls by this fraction per session, 0..1
        boredom: 0.02               # optional (0.02): affinity lost per session in a row with a scenario, 0..0.5
        misread: {negative_as_calm: 0.15, calm_as_negative: 0.04}  # optional (these): per reading, 0..1

Children are assigned to types in proportion to the shares (largest remainder), in a random
order. Any other key, a wrong type or an out-of-range value is an error naming the file and
the key (exit code 2, no traceback).

Run: ``.venv/bin/python benchmarks/bench_adaptation.py [--children 40] [--sessions 10]
[--seed 2] [--population FILE] [--plot FILE.png] [--json]``. 40 x 10 takes about 10 s on one
core; the timing goes to stderr. The same seed gives the same JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import yaml

from relaxd.affect import AffectReading
from relaxd.control import (ChildProfile, CommandRejected, Controller, EventKind, Output, Scenario, State,
                            load_scenarios)
from relaxd.control.learner import ChildRules, PastSegment, ScenarioLearner, seed_for
from relaxd.control.outcome import ChosenBy
from relaxd.settings import ControllerSettings

DEFAULT_POPULATION = Path(__file__).resolve().parent / "populations" / "default.yaml"
POLICIES = ("learned", "default", "random", "oracle")
FEATURE_KEYS = ("vibration", "sound", "warm", "very_slow")  # ScenarioFeatures.vector's order

DT_S = 0.5  # one reading (and one tick) every half second of simulated time
SESSION_S = 420.0  # longest session; also the censored time to calm
CALM_STOP_S = 120.0  # the operator ends the session this long after the child calmed (time to calm + calm_hold_s)
HALT_WAIT_S = 5.0  # the operator ends the session this long after a halt
REF_INTENSITY = 0.3  # at or above this intensity the scenario has its full effect
AROUSAL_OFFSET, AROUSAL_GAIN = -2.3, 1.6  # target arousal = sigmoid(OFFSET - GAIN * affinity)
TAU_S = 40.0  # arousal time constant while calming (shorter for a liked scenario)
TAU_UP_S = 8.0  # ... and while getting upset: distress comes fast
BOUT_RATE = 0.5  # negative bouts per second at arousal 1
BOUT_MIN_S, BOUT_SCALE_S = 0.8, 8.0  # mean bout length = MIN + SCALE * arousal**2
CONTENT_BASE, CONTENT_GAIN = 0.02, 0.08  # per second: a calm child starts smiling (more in a liked scenario)
CONTENT_S = 6.0  # mean length of a smile (a run of positive)
INTENSITY_EXPONENT = 0.5  # effect of a scenario = affinity * min(1, intensity / REF_INTENSITY) ** this
BOREDOM_RUN_MAX = 5
LAST_N = 5
NEAR_BEST_GAP = 0.25  # diagnostics only: a choice within this affinity of the best counts as near best
PROBE_EVERY = 10
DISCRIMINABILITY_REPEATS = 8  # sessions of each of a child's two best scenarios (diagnostics only)
DISCRIMINABILITY_OFFSET = 10_000  # their draws' session numbers, apart from the simulated sessions'
POWER_FACTOR = 2.0 * (1.96 + 0.84) ** 2  # sessions per arm = this / d**2: two-sided 5%, power 80%
ESTOP_PROBE_S, ESTOP_RESUME_AT_S, ESTOP_RESET_AT_S = 20.0, 5.0, 10.0
TARGET_RATIO = 0.7
TARGET_BEST_SHARE = 0.8
LABEL = {"negative": "sad", "neutral": "neutral", "positive": "happy"}
Switcher = Callable[[str, frozenset], Optional[tuple[str, str]]]

TYPE_DEFAULTS: dict[str, Any] = {"spread": 0.3, "idiosyncrasy": 0.1, "distress": 0.45, "noise": 0.5,
                                 "habituation": 0.05, "boredom": 0.02}
TYPE_RANGES = {"spread": (0.0, 2.0), "idiosyncrasy": (0.0, 1.0), "distress": (0.0, 1.0), "noise": (0.0, 3.0),
               "habituation": (0.0, 1.0), "boredom": (0.0, 0.5)}
MISREAD_DEFAULTS = {"negative_as_calm": 0.15, "calm_as_negative": 0.04}
LIKES_RANGE = (-5.0, 5.0)


# -- the population file --------------------------------------------------------------------------


class PopulationError(ValueError):
    """A population file that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class ChildType:
    name: str
    share: float
    likes: tuple[float, float, float, float]  # FEATURE_KEYS order
    spread: float
    idiosyncrasy: float
    distress: float
    noise: float
    habituation: float
    boredom: float
    negative_as_calm: float
    calm_as_negative: float


@dataclass(frozen=True)
class Population:
    source: str
    types: tuple[ChildType, ...]
    exclusion_share: float = 0.1
    intensity_caps: tuple[float, ...] = (0.4, 0.5, 0.6)


def _number(value: Any, where: str, low: float, high: float, source: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PopulationError(f"population file {source}: {where} must be a number, got {value!r}; "
                              f"write e.g. {example}")
    if not low <= value <= high:
        raise PopulationError(f"population file {source}: {where} must be within {low:g}..{high:g}, "
                              f"got {value!r}; change it to a value in that range")
    return float(value)


def _mapping(value: Any, where: str, allowed: Sequence[str], source: str, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PopulationError(f"population file {source}: {where} must be a mapping, got {value!r}; "
                              f"write e.g. {example}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise PopulationError(f"population file {source}: unknown key {where}.{unknown[0]}; "
                              f"the keys there are {', '.join(allowed)}")
    return value


def parse_population(data: Any, source: str) -> Population:
    """A population from the parsed YAML of ``source`` (checked key by key)."""
    top = _mapping(data, "the top level", ("types", "exclusion_share", "intensity_caps"), source,
                   "'types: [{name: calm, share: 1, likes: {vibration: 0.5}}]'")
    if "types" not in top:
        raise PopulationError(f"population file {source}: key 'types' is missing; add a list of child types, "
                              "e.g. 'types: [{name: calm, share: 1, likes: {vibration: 0.5}}]'")
    raw_types = top["types"]
    if not isinstance(raw_types, list) or not raw_types:
        raise PopulationError(f"population file {source}: types must be a non-empty list of child types, "
                              f"got {raw_types!r}")
    exclusion = _number(top.get("exclusion_share", 0.1), "exclusion_share", 0.0, 1.0, source, "exclusion_share: 0.1")
    caps_raw = top.get("intensity_caps", [0.4, 0.5, 0.6])
    if not isinstance(caps_raw, list) or not caps_raw:
        raise PopulationError(f"population file {source}: intensity_caps must be a non-empty list of numbers, "
                              f"got {caps_raw!r}; write e.g. intensity_caps: [0.4, 0.5, 0.6]")
    caps = tuple(_number(c, f"intensity_caps[{i}]", 0.05, 1.0, source, "intensity_caps: [0.4, 0.5, 0.6]")
                 for i, c in enumerate(caps_raw))
    allowed = ("name", "share", "likes", *TYPE_DEFAULTS, "misread")
    types, names = [], set()
    for i, raw in enumerate(raw_types):
        where = f"types[{i}]"
        entry = _mapping(raw, where, allowed, source, "{name: calm, share: 1, likes: {vibration: 0.5}}")
        for key in ("name", "share", "likes"):
            if key not in entry:
                raise PopulationError(f"population file {source}: key {where}.{key} is missing; every type needs "
                                      "name, share and likes, e.g. {name: calm, share: 1, likes: {vibration: 0.5}}")
        name = entry["name"]
        if not isinstance(name, str) or not name.strip():
            raise PopulationError(f"population file {source}: {where}.name must be a non-empty text, got {name!r}")
        if name in names:
            raise PopulationError(f"population file {source}: {where}.name {name!r} is used twice; rename one")
        names.add(name)
        share = _number(entry["share"], f"{where}.share", 0.0, 1e6, source, "share: 0.25")
        if share <= 0.0:
            raise PopulationError(f"population file {source}: {where}.share must be above 0, got {share!r}; "
                                  "remove the type or give it a positive share")
        likes_raw = _mapping(entry["likes"], f"{where}.likes", FEATURE_KEYS, source,
                             "likes: {vibration: -1.5, sound: 0.3, warm: 0.2, very_slow: 0.0}")
        likes = tuple(_number(likes_raw.get(k, 0.0), f"{where}.likes.{k}", *LIKES_RANGE, source, f"{k}: 0.5")
                      for k in FEATURE_KEYS)
        values = {k: _number(entry.get(k, default), f"{where}.{k}", *TYPE_RANGES[k], source, f"{k}: {default}")
                  for k, default in TYPE_DEFAULTS.items()}
        misread_raw = _mapping(entry.get("misread", {}), f"{where}.misread", tuple(MISREAD_DEFAULTS), source,
                               "misread: {negative_as_calm: 0.3, calm_as_negative: 0.04}")
        misread = {k: _number(misread_raw.get(k, default), f"{where}.misread.{k}", 0.0, 1.0, source, f"{k}: {default}")
                   for k, default in MISREAD_DEFAULTS.items()}
        types.append(ChildType(name, share, likes, **values, **misread))  # type: ignore[arg-type]
    return Population(source, tuple(types), exclusion, caps)


def load_population(path: Path) -> Population:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PopulationError(f"population file {path}: cannot be read ({error.strerror or error}); "
                              "check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise PopulationError(f"population file {path}: not valid YAML{at}; fix the syntax there") from None
    return parse_population(data, str(path))


# -- the children ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    index: int
    kind: ChildType
    profile: ChildProfile
    weights: tuple[float, ...]  # w, FEATURE_KEYS order (the reference choosers of the diagnostics)
    base_affinity: Mapping[str, float]  # w . features + e, before boredom
    excluded: frozenset[str]

    @property
    def pseudonym(self) -> str:
        return self.profile.pseudonym


def apportion(shares: Sequence[float], n: int) -> list[int]:
    """How many of ``n`` children each type gets: largest remainder of the normalised shares."""
    total = sum(shares)
    exact = [n * s / total for s in shares]
    counts = [int(math.floor(x)) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    return counts


def make_children(population: Population, scenarios: Mapping[str, Scenario], n: int, seed: int) -> list[Child]:
    rng = np.random.default_rng([seed, 1])
    names = sorted(scenarios)
    features = np.array([scenarios[s].features.vector() for s in names])
    kinds = [t for t, count in zip(population.types, apportion([t.share for t in population.types], n))
             for _ in range(count)]
    order = rng.permutation(n)
    children = []
    for i in range(n):
        kind = kinds[order[i]]
        weights = np.array(kind.likes) + rng.normal(0.0, kind.spread, len(FEATURE_KEYS))
        own = rng.normal(0.0, kind.idiosyncrasy, len(names))
        affinity = {s: float(features[j] @ weights + own[j]) for j, s in enumerate(names)}
        excluded = frozenset({names[int(rng.integers(len(names)))]}) if rng.random() < population.exclusion_share \
            else frozenset()
        cap = float(population.intensity_caps[int(rng.integers(len(population.intensity_caps)))])
        profile = ChildProfile(f"sim{seed}-{i:02d}", intensity_cap=cap, start_intensity=min(0.3, cap))
        children.append(Child(i, kind, profile, tuple(map(float, weights)), MappingProxyType(affinity), excluded))
    return children


# -- one session ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Noise:
    """The random draws of one child's session, shared by the three policies (same child, same luck)."""

    start: float
    arousal: np.ndarray  # normal, per step
    bout: np.ndarray  # uniform, per step
    misread: np.ndarray  # uniform, per step
    confidence: np.ndarray  # normal, per step
    positive: np.ndarray  # uniform, per step

    @classmethod
    def draw(cls, seed: int, child: int, session: int) -> "Noise":
        rng = np.random.default_rng([seed, 2, child, session])
        steps = int(SESSION_S / DT_S) + 2
        return cls(float(rng.normal()), rng.normal(size=steps), rng.random(steps), rng.random(steps),
                   rng.normal(size=steps), rng.random(steps))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class SessionResult:
    scenario: Optional[str]  # the first scenario
    played: list[str]
    time_to_calm_s: float  # hidden state, censored at SESSION_S
    calmed: bool
    halted: bool
    segments: list[dict[str, Any]]  # the scenario_ended events' data
    switches: int = 0
    violations: list[str] = field(default_factory=list)
    mean_intensity: float = 0.0  # over the ticks while starting or running
    halt_time_s: Optional[float] = None  # session time of the halt


def reading_at(now: float, group: str, confidence: float) -> AffectReading:
    scores = {g: (confidence if g == group else (1.0 - confidence) / 2.0) for g in LABEL}
    return AffectReading(now, True, group, LABEL[group], confidence, MappingProxyType(scores), 15, 15)


def _off(output: Output) -> bool:
    return output.intensity == 0.0 and output.targets.is_off()


def estop_probe(controller: Controller, now: float, rng: np.random.Generator) -> list[str]:
    """E-stop a copy of the running controller: every later output must be off, nothing restarts."""
    probe = copy.deepcopy(controller)
    problems = []
    probe.estop(now, "benchmark probe")
    t = now
    resumed = reset = False
    while t < now + ESTOP_PROBE_S:
        t += DT_S
        group = ("negative", "neutral", "positive")[int(rng.integers(3))]
        probe.on_reading(reading_at(t, group, float(rng.uniform(0.4, 0.95))), t)
        if not resumed and t >= now + ESTOP_RESUME_AT_S:
            resumed = True
            try:
                probe.resume(t)
                problems.append(f"e-stop probe: resume at +{t - now:.1f} s was accepted while e-stopped")
            except CommandRejected:
                pass
        if not reset and t >= now + ESTOP_RESET_AT_S:
            reset = True
            probe.reset_estop(t)
        output = probe.tick(t)
        if not _off(output):
            problems.append(f"e-stop probe: output not off at +{t - now:.1f} s after the press "
                            f"(state {output.state}, intensity {output.intensity})")
            break
    return problems


def run_session(settings: ControllerSettings, scenarios: Mapping[str, Scenario], child: Child,
                affinity: Mapping[str, float], sessions_so_far: int, noise: Noise, scenario: str,
                chosen_by: ChosenBy, *, switcher: Optional[Switcher] = None,
                why: str = "", forbidden: frozenset[str] = frozenset(), estop_at: Optional[float] = None,
                probe_rng: Optional[np.random.Generator] = None, expect_no_switch: bool = False) -> SessionResult:
    """One session of ``child`` on a fresh controller; ``forbidden``: choices that count as violations."""
    kind, cap = child.kind, child.profile.intensity_cap
    controller = Controller(settings, scenarios)
    result = SessionResult(scenario, [scenario], SESSION_S, False, False, [])
    if scenario in forbidden:
        result.violations.append(f"learner chose {scenario!r}, excluded or blocked for {child.pseudonym}")

    def handle(events: Sequence[Any], now: float) -> None:
        nonlocal old_affinity, switched_at
        for event in events:
            if event.kind is EventKind.SCENARIO_SWITCHED:
                result.switches += 1
                target = event.data["to"]
                result.played.append(target)
                if expect_no_switch:
                    result.violations.append(f"operator's choice {event.data['from']!r} was switched to {target!r}")
                if target in forbidden:
                    result.violations.append(f"learner switched to {target!r}, excluded or blocked for "
                                             f"{child.pseudonym}")
                old_affinity, switched_at = before[0], now
            elif event.kind is EventKind.ADVERSE_REACTION:
                if halted_at[0] is None:
                    halted_at[0] = now
            elif event.kind is EventKind.SCENARIO_ENDED:
                result.segments.append(dict(event.data))

    old_affinity, switched_at = 0.0, -math.inf
    halted_at: list[Optional[float]] = [None]
    before = [0.0]  # the affinity felt at the previous step (where a cross-fade starts from)

    def current_affinity(now: float) -> float:
        new = affinity[controller.scenario] if controller.scenario in affinity else 0.0
        mix = min(1.0, (now - switched_at) / settings.crossfade_s)
        return old_affinity + (new - old_affinity) * mix

    handle(controller.start(child.profile, scenario, 0.0, chosen_by=chosen_by, why=why, switcher=switcher), 0.0)
    start = min(0.99, max(0.01, kind.distress * (1.0 - kind.habituation) ** sessions_so_far))
    drive = math.log(start / (1.0 - start)) + kind.noise * noise.start  # arousal's logit
    negative = content = False
    level = child.profile.start_intensity
    calm_since: Optional[float] = 0.0
    hidden_ttc: Optional[float] = None
    step = 0
    now = 0.0
    levels: list[float] = []
    while True:
        step += 1
        now = step * DT_S
        # the child
        before[0] = current_affinity(now)
        strength = min(1.0, level / REF_INTENSITY) ** INTENSITY_EXPONENT
        effective = before[0] * strength if halted_at[0] is None else 0.0
        target = AROUSAL_OFFSET - AROUSAL_GAIN * effective
        tau = TAU_UP_S if target > drive else TAU_S / (1.0 + max(effective, 0.0))
        drive += (target - drive) * DT_S / tau + kind.noise * math.sqrt(2.0 * DT_S / tau) * noise.arousal[step]
        arousal = sigmoid(drive)
        if negative:
            negative = noise.bout[step] >= DT_S / (BOUT_MIN_S + BOUT_SCALE_S * arousal ** 2)
        else:
            negative = noise.bout[step] < BOUT_RATE * arousal * DT_S
        if negative:
            content = False
        elif content:
            content = noise.positive[step] >= DT_S / CONTENT_S
        else:
            content = noise.positive[step] < (CONTENT_BASE + CONTENT_GAIN * sigmoid(2.0 * effective - 1.0)) * DT_S
        if negative:
            calm_since = None
        elif calm_since is None:
            calm_since = now
        if hidden_ttc is None and calm_since is not None and now - calm_since >= settings.calm_hold_s:
            hidden_ttc = calm_since
        # the camera's reading of the face
        if negative and noise.misread[step] >= kind.negative_as_calm:
            group, confidence = "negative", 0.5 + 0.35 * arousal + 0.08 * noise.confidence[step]
        elif not negative and noise.misread[step] < kind.calm_as_negative:
            group, confidence = "negative", 0.45 + 0.06 * noise.confidence[step]
        else:
            group = "positive" if content else "neutral"
            confidence = 0.6 + 0.1 * noise.confidence[step]
        confidence = min(0.99, max(0.34, confidence))
        handle(controller.on_reading(reading_at(now, group, confidence), now), now)
        output = controller.tick(now)
        handle(output.events, now)
        level = output.intensity
        if output.state in (State.STARTING, State.RUNNING):
            levels.append(level)
        if output.intensity > cap + 1e-9:
            result.violations.append(f"intensity {output.intensity} above {child.pseudonym}'s cap {cap}")
        # the operator
        halted = halted_at[0] is not None
        calm_long = hidden_ttc is not None and now - (hidden_ttc + settings.calm_hold_s) >= CALM_STOP_S
        ending = (halted and now - halted_at[0] >= HALT_WAIT_S) or calm_long or now >= SESSION_S
        if estop_at is not None and probe_rng is not None and (now >= estop_at or ending):
            result.violations.extend(estop_probe(controller, now, probe_rng))
            estop_at = None
        if ending:
            handle(controller.stop(now, "operator ended the session"), now)
            break
    result.mean_intensity = float(np.mean(levels)) if levels else 0.0
    result.halted = halted_at[0] is not None
    result.halt_time_s = halted_at[0]
    result.calmed = hidden_ttc is not None
    result.time_to_calm_s = hidden_ttc if hidden_ttc is not None else SESSION_S
    return result


# -- the three policies ---------------------------------------------------------------------------


@dataclass
class World:
    """One policy's chair: every child's recorded segments, blocks and sessions."""

    policy: str
    history: dict[int, list[PastSegment]] = field(default_factory=dict)
    blocked: dict[int, dict[str, str]] = field(default_factory=dict)
    starts: dict[int, list[str]] = field(default_factory=dict)
    results: dict[int, list[SessionResult]] = field(default_factory=dict)
    best: dict[int, list[bool]] = field(default_factory=dict)
    reference_best: dict[str, list[bool]] = field(default_factory=dict)  # chooser -> chose the best, per session
    regret: dict[int, list[float]] = field(default_factory=dict)  # best's affinity - the chosen one's
    best_gap: dict[int, list[float]] = field(default_factory=dict)  # best's affinity - the second best's
    violations: list[str] = field(default_factory=list)
    skipped: int = 0

    def record(self, child: Child, session: int, result: SessionResult) -> None:
        self.results.setdefault(child.index, []).append(result)
        self.violations.extend(result.violations)
        if result.scenario is not None:
            self.starts.setdefault(child.index, []).append(result.scenario)
        for data in result.segments:
            sid = child.index * 1000 + session
            self.history.setdefault(child.index, []).append(
                PastSegment(str(data["scenario"]), float(data["reward"]), sid, data.get("time_to_calm_s"),
                            bool(data["halted"])))
            if data["halted"]:
                self.blocked.setdefault(child.index, {})[str(data["scenario"])] = \
                    f"halted in session {session + 1}"

    def run_length(self, child: Child, scenario: str) -> int:
        run = 0
        for name in reversed(self.starts.get(child.index, [])):
            if name != scenario:
                break
            run += 1
        return run


def affinity_now(world: World, child: Child, first: str) -> dict[str, float]:
    """The child's affinity this session: boredom with the scenario it starts with, if it is a repeat."""
    run = min(BOREDOM_RUN_MAX, world.run_length(child, first))
    return {s: a - (child.kind.boredom * run if s == first else 0.0) for s, a in child.base_affinity.items()}


def simulate(population: Population, children_n: int, sessions_n: int, seed: int,
             settings: Optional[ControllerSettings] = None) -> dict[str, Any]:
    settings = settings or ControllerSettings()
    scenarios = load_scenarios(None)
    names = sorted(scenarios)
    children = make_children(population, scenarios, children_n, seed)
    worlds = {p: World(p) for p in POLICIES}
    probes = {"estop": 0, "operator": 0}
    for session in range(sessions_n):
        for child in children:
            noise = Noise.draw(seed, child.index, session)
            rng = np.random.default_rng([seed, 3, child.index, session])
            # learned
            world = worlds["learned"]
            blocked = dict(world.blocked.get(child.index, {}))
            rules = ChildRules(excluded=child.excluded, blocked=blocked)
            population_segments = [s for i, segs in world.history.items() if i != child.index for s in segs]
            learner = ScenarioLearner(scenarios, world.history.get(child.index, []), population_segments, rules,
                                      seed_for(child.pseudonym, session))
            allowed = learner.allowed()
            forbidden = frozenset(child.excluded) | frozenset(blocked)
            suggestion = learner.suggest()
            if suggestion is None:
                world.skipped += 1
            else:
                def switcher(current: str, tried: frozenset,
                             learner: ScenarioLearner = learner) -> Optional[tuple[str, str]]:
                    name = learner.pick(avoid=tried)
                    return None if name is None else (name, learner.why(name))

                estop_at = float(rng.uniform(1.0, 60.0)) if (child.index + session) % PROBE_EVERY == 5 else None
                probes["estop"] += estop_at is not None
                result = run_session(settings, scenarios, child, affinity_now(world, child, suggestion.scenario),
                                     session, noise, suggestion.scenario, ChosenBy.LEARNER, switcher=switcher,
                                     why=suggestion.why, forbidden=forbidden, estop_at=estop_at, probe_rng=rng)
                best = max(allowed, key=lambda s: (child.base_affinity[s], s))
                world.best.setdefault(child.index, []).append(suggestion.scenario == best)
                if session >= sessions_n - LAST_N:
                    for chooser, likes in (("knows_type", child.kind.likes), ("knows_features", child.weights)):
                        pick = max(allowed, key=lambda s: (float(np.dot(scenarios[s].features.vector(), likes)), s))
                        world.reference_best.setdefault(chooser, []).append(pick == best)
                world.regret.setdefault(child.index, []).append(
                    child.base_affinity[best] - child.base_affinity[suggestion.scenario])
                second = sorted((child.base_affinity[s] for s in allowed), reverse=True)[1:2]
                world.best_gap.setdefault(child.index, []).append(
                    child.base_affinity[best] - second[0] if second else math.inf)
                world.record(child, session, result)
                if (child.index + session) % PROBE_EVERY == 0:  # the operator's explicit choice: never switched
                    probes["operator"] += 1
                    worst = min(allowed, key=lambda s: (child.base_affinity[s], s))
                    others = [s for s in names if s != worst]

                    def always_switch(current: str, tried: frozenset) -> Optional[tuple[str, str]]:
                        return others[0], "probe: a switcher that always wants to switch"

                    side = run_session(settings, scenarios, child, child.base_affinity, session, noise, worst,
                                       ChosenBy.OPERATOR, switcher=always_switch, expect_no_switch=True)
                    world.violations.extend(side.violations)
            # default: today's chair
            world = worlds["default"]
            first = settings.default_scenario
            if first in child.excluded:
                first = next(s for s in names if s not in child.excluded)
            world.record(child, session, run_session(settings, scenarios, child, affinity_now(world, child, first),
                                                     session, noise, first, ChosenBy.DEFAULT))
            # random among the allowed
            world = worlds["random"]
            pool = [s for s in names if s not in child.excluded and s not in world.blocked.get(child.index, {})]
            if not pool:
                world.skipped += 1
                continue
            first = pool[int(rng.integers(len(pool)))]
            world.record(child, session, run_session(settings, scenarios, child, affinity_now(world, child, first),
                                                     session, noise, first, ChosenBy.OPERATOR))
            # oracle (a reference, not a policy a chair could have): the child's best allowed scenario
            world = worlds["oracle"]
            pool = [s for s in names if s not in child.excluded and s not in world.blocked.get(child.index, {})]
            if not pool:
                world.skipped += 1
                continue
            first = max(pool, key=lambda s: (child.base_affinity[s], s))
            world.record(child, session, run_session(settings, scenarios, child, affinity_now(world, child, first),
                                                     session, noise, first, ChosenBy.OPERATOR))
    result = summarise(worlds, children, sessions_n, seed, population, probes, settings.reassess_s)
    result["diagnostics"]["discriminability"] = discriminability(settings, scenarios, children, sessions_n, seed)
    return result


def discriminability(settings: ControllerSettings, scenarios: Mapping[str, Scenario], children: Sequence[Child],
                     sessions_n: int, seed: int) -> dict[str, Any]:
    """Can outcomes tell a child's best scenario from its second best at all?

    Each child plays its best and its second-best scenario (hidden affinity, not excluded)
    ``DISCRIMINABILITY_REPEATS`` times each, with fresh draws, at a late session (habituated
    like the last five), without switching. The gap of the mean rewards, in units of the
    pooled sd, says how many sessions of EACH a learner would need before the two can be told
    apart (two-sided 5%, power 80%: ``POWER_FACTOR`` / d**2, about 15.7 / d**2); a learner has about five per child in all.
    """
    session = max(0, sessions_n - 3)
    effects, gaps = [], []
    for child in children:
        ranked = sorted((s for s in scenarios if s not in child.excluded),
                        key=lambda s: (-child.base_affinity[s], s))[:2]
        rewards = []
        for name in ranked:
            runs = [run_session(settings, scenarios, child, child.base_affinity, session,
                                Noise.draw(seed, child.index, DISCRIMINABILITY_OFFSET + k), name, ChosenBy.OPERATOR)
                    for k in range(DISCRIMINABILITY_REPEATS)]
            rewards.append([float(r.segments[0]["reward"]) if r.segments else 0.0 for r in runs])
        gap = float(np.mean(rewards[0]) - np.mean(rewards[1]))
        sd = float(np.sqrt((np.var(rewards[0], ddof=1) + np.var(rewards[1], ddof=1)) / 2.0))
        gaps.append(gap)
        effects.append(gap / sd if sd > 0 else (math.inf if gap > 0 else 0.0))
    d = float(np.median(np.abs(effects)))
    return {"note": "best vs second-best scenario of each child, "
                    f"{DISCRIMINABILITY_REPEATS} sessions each; reward units; d = gap / pooled sd",
            "median_reward_gap": round(float(np.median(gaps)), 4),
            "median_abs_effect_size_d": round(d, 3),
            "best_scored_higher_share": _mean([float(g > 0) for g in gaps]),
            "sessions_of_each_needed": round(POWER_FACTOR / d ** 2, 1) if d > 0 else None}


def _mean(values: Sequence[float]) -> Optional[float]:
    return round(float(np.mean(values)), 4) if len(values) else None


def summarise(worlds: Mapping[str, World], children: Sequence[Child], sessions_n: int, seed: int,
              population: Population, probes: Mapping[str, int], reassess_s: float) -> dict[str, Any]:
    last = max(0, sessions_n - LAST_N)
    out: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for policy, world in worlds.items():
        tail = [r for c in children for r in world.results.get(c.index, [])[last:]]
        out[f"{policy}_time_to_calm_s"] = _mean([r.time_to_calm_s for r in tail])
        out[f"{policy}_halts"] = _mean([float(r.halted) for r in tail])
        curves[policy] = {
            "time_to_calm_s": [_mean([world.results[c.index][k].time_to_calm_s for c in children
                                      if len(world.results.get(c.index, [])) > k]) for k in range(sessions_n)],
            "halts": [_mean([float(world.results[c.index][k].halted) for c in children
                             if len(world.results.get(c.index, [])) > k]) for k in range(sessions_n)],
            "calmed_share": [_mean([float(world.results[c.index][k].calmed) for c in children
                                    if len(world.results.get(c.index, [])) > k]) for k in range(sessions_n)],
        }
    learned = worlds["learned"]
    best_tail = [b for c in children for b in learned.best.get(c.index, [])[last:]]
    out["best_scenario_share_last5"] = _mean([float(b) for b in best_tail])
    curves["learned"]["best_scenario_share"] = [
        _mean([float(learned.best[c.index][k]) for c in children if len(learned.best.get(c.index, [])) > k])
        for k in range(sessions_n)]
    violations = [v for w in worlds.values() for v in w.violations if w.policy == "learned"]
    out["constraint_violations"] = len(violations)
    out["children"] = len(children)
    out["sessions"] = sessions_n
    out["seed"] = seed

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        if a is None or b is None:
            return None
        return round(a / b, 4) if b > 0 else (0.0 if a == 0 else None)

    ttc_ratio = ratio(out["learned_time_to_calm_s"], out["default_time_to_calm_s"])
    halt_ratio = ratio(out["learned_halts"], out["default_halts"])
    out["ratios"] = {"time_to_calm": ttc_ratio, "halts": halt_ratio}
    out["targets"] = {"ratio_at_most": TARGET_RATIO, "best_scenario_share_at_least": TARGET_BEST_SHARE,
                      "constraint_violations": 0}
    out["meets_targets"] = bool(
        ttc_ratio is not None and ttc_ratio <= TARGET_RATIO
        and (halt_ratio is not None and halt_ratio <= TARGET_RATIO)
        and (out["best_scenario_share_last5"] or 0.0) >= TARGET_BEST_SHARE
        and out["constraint_violations"] == 0)
    out["violations"] = violations[:20]
    regret = [r for c in children for r in learned.regret.get(c.index, [])[last:]]
    gaps = [g for c in children for g in learned.best_gap.get(c.index, [])[last:]]
    clear = [b for b, g in zip(best_tail, gaps) if g >= NEAR_BEST_GAP]
    chose_best = [r for c in children for r, b in zip(learned.results.get(c.index, [])[last:],
                                                        learned.best.get(c.index, [])[last:]) if b]
    chose_other = [r for c in children for r, b in zip(learned.results.get(c.index, [])[last:],
                                                         learned.best.get(c.index, [])[last:]) if not b]
    out["diagnostics"] = {  # supplementary; the targets above are judged on the headline numbers only
        "note": f"affinity units; near best = within {NEAR_BEST_GAP} of the best allowed scenario's affinity; "
                "oracle = always the child's best allowed scenario (hidden knowledge, a reference only)",
        "near_best_share_last5": _mean([float(r <= NEAR_BEST_GAP) for r in regret]),
        "mean_regret_last5": _mean(regret),
        "close_call_share_last5": _mean([float(g < NEAR_BEST_GAP) for g in gaps]),
        "best_share_when_clear_last5": _mean([float(b) for b in clear]),
        "learned_when_best_chosen": {"sessions": len(chose_best),
                                     "time_to_calm_s": _mean([r.time_to_calm_s for r in chose_best]),
                                     "halts": _mean([float(r.halted) for r in chose_best])},
        "learned_when_other_chosen": {"sessions": len(chose_other),
                                      "time_to_calm_s": _mean([r.time_to_calm_s for r in chose_other]),
                                      "halts": _mean([float(r.halted) for r in chose_other])},
        "switches_total": sum(r.switches for rs in learned.results.values() for r in rs),
        "learned_halts_total": sum(r.halted for rs in learned.results.values() for r in rs),
        "learned_halts_before_first_reassessment": sum(
            r.halted and r.halt_time_s is not None and r.halt_time_s < reassess_s
            for rs in learned.results.values() for r in rs),
        "reference_choosers_best_share_last5": {  # same allowed sets as the learner's; hidden knowledge
            chooser: _mean([float(b) for b in hits]) for chooser, hits in learned.reference_best.items()},
        "mean_intensity_last5": {
            p: _mean([r.mean_intensity for c in children for r in w.results.get(c.index, [])[last:]])
            for p, w in worlds.items()},
    }
    out["switches_per_session_last5"] = _mean([float(r.switches) for c in children
                                               for r in learned.results.get(c.index, [])[last:]])
    out["blocked_per_child"] = _mean([float(len(learned.blocked.get(c.index, {}))) for c in children])
    out["sessions_without_allowed_scenario"] = {p: w.skipped for p, w in worlds.items()}
    out["probes"] = dict(probes)
    out["per_session"] = curves
    out["population"] = {"file": population.source,
                         "types": {t.name: sum(c.kind.name == t.name for c in children) for t in population.types},
                         "children_with_exclusion": sum(bool(c.excluded) for c in children)}
    out["model"] = {"reading_interval_s": DT_S, "session_s": SESSION_S, "calm_stop_s": CALM_STOP_S,
                    "halt_wait_s": HALT_WAIT_S, "censored_time_to_calm_s": SESSION_S, "last_sessions": LAST_N}
    return out


# -- the plot -------------------------------------------------------------------------------------


COLOURS = {"learned": (0.13, 0.47, 0.71), "default": (0.84, 0.15, 0.16), "random": (0.5, 0.5, 0.5),
           "oracle": (0.17, 0.63, 0.17)}


def write_plot(result: Mapping[str, Any], path: Path) -> None:
    """Learning curves: mean time to calm per session, and the learner's best-scenario share."""
    curves = result["per_session"]
    sessions = list(range(1, result["sessions"] + 1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _write_plot_cv2(result, path)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy in POLICIES:
        style = {"linestyle": ":", "marker": None} if policy == "oracle" else {"marker": "o"}
        left.plot(sessions, curves[policy]["time_to_calm_s"], color=COLOURS[policy],
                  label="oracle (reference)" if policy == "oracle" else policy, **style)
    left.set_xlabel("session")
    left.set_ylabel(f"mean time to calm, s (never calmed = {SESSION_S:.0f} s)")
    left.set_title(f"{result['children']} synthetic children, seed {result['seed']}")
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(sessions, curves["learned"]["best_scenario_share"], marker="o", color=COLOURS["learned"],
               label="learner chose the best scenario")
    for policy in POLICIES[:3]:
        right.plot(sessions, curves[policy]["halts"], linestyle="--", color=COLOURS[policy], label=f"halts, {policy}")
    right.set_xlabel("session")
    right.set_ylabel("share of sessions")
    right.set_ylim(0, 1.05)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_plot_cv2(result: Mapping[str, Any], path: Path) -> None:
    """The left panel only, drawn with OpenCV when matplotlib is missing."""
    import cv2

    width, height, margin = 800, 480, 60
    canvas = np.full((height, width, 3), 255, np.uint8)
    curves = result["per_session"]
    n = max(1, result["sessions"] - 1)
    cv2.rectangle(canvas, (margin, margin), (width - margin, height - margin), (0, 0, 0), 1)
    for row, policy in enumerate(POLICIES):
        colour = tuple(int(255 * c) for c in reversed(COLOURS[policy]))
        values = [v or 0.0 for v in curves[policy]["time_to_calm_s"]]
        points = [(int(margin + (width - 2 * margin) * k / n),
                   int(height - margin - (height - 2 * margin) * v / SESSION_S)) for k, v in enumerate(values)]
        cv2.polylines(canvas, [np.array(points, np.int32)], False, colour, 2)
        cv2.putText(canvas, policy, (width - margin - 120, margin + 25 + 22 * row), cv2.FONT_HERSHEY_SIMPLEX,
                    0.6, colour, 2)
    cv2.putText(canvas, "mean time to calm (s) per session", (margin, margin - 20), cv2.FONT_HERSHEY_SIMPLEX,
                0.6, (0, 0, 0), 1)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"could not write {path}")


# -- the command ----------------------------------------------------------------------------------


def print_report(result: Mapping[str, Any]) -> None:
    print(f"{result['children']} children x {result['sessions']} sessions, seed {result['seed']}, "
          f"population {result['population']['file']}")
    print(f"last {LAST_N} sessions of each child, means per session:")
    for policy in POLICIES:
        print(f"  {policy:8s} time to calm {result[f'{policy}_time_to_calm_s']:7.1f} s   "
              f"halts {result[f'{policy}_halts']:.3f}")
    ratios = result["ratios"]
    print(f"learned / default: time to calm {ratios['time_to_calm']}, halts {ratios['halts']} "
          f"(target <= {TARGET_RATIO})")
    print(f"best scenario chosen in {result['best_scenario_share_last5']:.0%} of those sessions "
          f"(target >= {TARGET_BEST_SHARE:.0%})")
    diagnostics = result["diagnostics"]
    print(f"  (near best in {diagnostics['near_best_share_last5']:.0%}; best and second best within "
          f"{NEAR_BEST_GAP} in {diagnostics['close_call_share_last5']:.0%} of those sessions; mean intensity "
          + ", ".join(f"{p} {v:.2f}" for p, v in diagnostics["mean_intensity_last5"].items()) + ")")
    references = diagnostics["reference_choosers_best_share_last5"]
    tell_apart = diagnostics["discriminability"]
    print(f"  (knowing each child's type would choose the best in {references['knows_type']:.0%}, knowing its "
          f"feature weights in {references['knows_features']:.0%}; best vs second best: effect size "
          f"{tell_apart['median_abs_effect_size_d']}, {tell_apart['sessions_of_each_needed']} sessions of each "
          "to tell them apart)")
    print(f"constraint violations: {result['constraint_violations']}  (probes: {result['probes']})")
    for line in result["violations"]:
        print(f"  {line}")
    print("meets targets" if result["meets_targets"] else "does NOT meet the targets")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=40, help="synthetic children (default 40)")
    parser.add_argument("--sessions", type=int, default=10, help="sessions per child (default 10)")
    parser.add_argument("--seed", type=int, default=2, help="seed of the children and their responses (default 2)")
    parser.add_argument("--population", type=Path, default=DEFAULT_POPULATION,
                        help="YAML file of child types (default benchmarks/populations/default.yaml)")
    parser.add_argument("--plot", type=Path, help="write the learning curves to this PNG")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.children < 2:
        parser.error("--children must be at least 2 (the population prior needs other children)")
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    if args.seed < 0:
        parser.error("--seed must be 0 or more")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        parser.error(f"--plot {args.plot}: give a file name ending in .png")
    try:
        population = load_population(args.population)
    except PopulationError as error:
        print(f"bench_adaptation: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    result = simulate(population, args.children, args.sessions, args.seed)
    elapsed = time.perf_counter() - started
    print(f"bench_adaptation: {args.children} children x {args.sessions} sessions x {len(POLICIES)} policies "
          "(oracle included) "
          f"in {elapsed:.1f} s", file=sys.stderr)
    if args.plot is not None:
        write_plot(result, args.plot)
        print(f"bench_adaptation: learning curves written to {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
