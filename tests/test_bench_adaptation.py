"""bench_adaptation (issue 15's evidence) runs end to end with tiny parameters and reports what it promises.

No target is asserted here (40 children x 10 sessions is what the benchmark is for); what is
asserted: the JSON's keys and ranges, no constraint violation, determinism, the population
file's validation (exit code 2, the file and the key named), and that the synthetic child
responds to its hidden affinities as documented.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from relaxd.control import Controller, load_scenarios
from relaxd.control.outcome import ChosenBy
from relaxd.settings import ControllerSettings

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HEADLINE = {"learned_time_to_calm_s", "default_time_to_calm_s", "random_time_to_calm_s", "learned_halts",
            "default_halts", "random_halts", "best_scenario_share_last5", "constraint_violations", "children",
            "sessions", "seed"}
SMALL = """\
types:
  - name: only
    share: 1
    likes: {vibration: -1.0, sound: 0.5}
"""


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("bench_adaptation")


def run_json(bench: ModuleType, capsys, *args: str) -> dict:
    assert bench.main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert "policies" in captured.err  # the timing goes to stderr, the JSON alone to stdout
    return json.loads(captured.out)


def test_tiny_run_reports_the_promised_numbers(bench, capsys):
    result = run_json(bench, capsys, "--children", "4", "--sessions", "3", "--seed", "5")
    assert HEADLINE <= set(result)
    assert (result["children"], result["sessions"], result["seed"]) == (4, 3, 5)
    assert result["constraint_violations"] == 0, result["violations"]
    assert result["probes"]["estop"] >= 1 and result["probes"]["operator"] >= 1  # the checks really ran
    for policy in ("learned", "default", "random", "oracle"):
        assert 0.0 <= result[f"{policy}_time_to_calm_s"] <= bench.SESSION_S
        assert 0.0 <= result[f"{policy}_halts"] <= 1.0
        assert len(result["per_session"][policy]["time_to_calm_s"]) == 3
    assert 0.0 <= result["best_scenario_share_last5"] <= 1.0
    assert isinstance(result["meets_targets"], bool)
    assert 0.0 <= result["diagnostics"]["mean_intensity_last5"]["learned"] <= 0.6


def test_the_reference_choosers_and_the_discriminability_are_reported(bench, capsys, tmp_path):
    """Without the per-scenario term, a chooser that knows the child's feature weights always finds the best."""
    population = tmp_path / "plain.yaml"
    population.write_text(SMALL + "    idiosyncrasy: 0.0\n    spread: 0.5\n", encoding="utf-8")
    result = run_json(bench, capsys, "--children", "4", "--sessions", "2", "--seed", "3",
                      "--population", str(population))
    references = result["diagnostics"]["reference_choosers_best_share_last5"]
    assert references["knows_features"] == 1.0
    assert 0.0 <= references["knows_type"] <= 1.0
    tell_apart = result["diagnostics"]["discriminability"]
    assert 0.0 <= tell_apart["best_scored_higher_share"] <= 1.0
    assert tell_apart["median_abs_effect_size_d"] >= 0.0
    assert tell_apart["sessions_of_each_needed"] is None or tell_apart["sessions_of_each_needed"] > 0


def test_same_seed_same_json_other_seed_other_children(bench, capsys):
    args = ("--children", "3", "--sessions", "2", "--seed", "11", "--json")
    assert bench.main(list(args)) == 0
    first = capsys.readouterr().out
    assert bench.main(list(args)) == 0
    assert capsys.readouterr().out == first
    assert bench.main(["--children", "3", "--sessions", "2", "--seed", "12", "--json"]) == 0
    assert capsys.readouterr().out != first


def test_a_custom_population_file_is_used(bench, capsys, tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    result = run_json(bench, capsys, "--children", "3", "--sessions", "2", "--population", str(path))
    assert result["population"]["file"] == str(path)
    assert result["population"]["types"] == {"only": 3}
    assert result["constraint_violations"] == 0


@pytest.mark.parametrize("text, key", [
    (SMALL.replace("vibration: -1.0", "vibration: lots"), "types[0].likes.vibration"),
    (SMALL.replace("vibration: -1.0", "vibrations: -1.0"), "types[0].likes.vibrations"),
    (SMALL + "    misread: {calm_as_negative: 1.5}\n", "types[0].misread.calm_as_negative"),
    (SMALL.replace("    share: 1\n", ""), "types[0].share"),
    (SMALL + "    noize: 0.2\n", "types[0].noize"),
    ("kinds: []\n", "kinds"),
    ("types: [\n", "line"),
])
def test_a_bad_population_file_names_the_file_and_the_key(bench, capsys, tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert bench.main(["--children", "2", "--sessions", "1", "--population", str(path)]) == 2
    captured = capsys.readouterr()
    assert str(path) in captured.err and key in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_a_missing_population_file_is_exit_code_2(bench, capsys, tmp_path):
    assert bench.main(["--population", str(tmp_path / "nowhere.yaml")]) == 2
    assert "nowhere.yaml" in capsys.readouterr().err


def test_the_shipped_population_file_is_valid(bench):
    population = bench.load_population(bench.DEFAULT_POPULATION)
    assert len(population.types) >= 3
    assert any(t.likes[0] <= -1.0 for t in population.types)  # children who strongly dislike vibration
    assert any(t.likes[1] <= -1.0 for t in population.types)  # ... and sound


@pytest.mark.parametrize("args", [["--children", "1"], ["--sessions", "0"], ["--plot", "curve.jpg"]])
def test_bad_arguments_are_usage_errors(bench, capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_plot_writes_a_png(bench, capsys, tmp_path):
    path = tmp_path / "curve.png"
    run_json(bench, capsys, "--children", "2", "--sessions", "2", "--plot", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_apportion_gives_every_child_a_type(bench):
    assert bench.apportion([0.25, 0.2, 0.1, 0.2, 0.25], 40) == [10, 8, 4, 8, 10]
    assert sum(bench.apportion([1, 1, 1], 4)) == 4


def test_a_liked_scenario_calms_sooner_and_halts_less_than_a_disliked_one(bench):
    population = bench.load_population(bench.DEFAULT_POPULATION)
    scenarios = load_scenarios(None)
    child = bench.make_children(population, scenarios, 2, seed=3)[0]
    settings = ControllerSettings()

    def sessions(affinity: float) -> tuple[float, float]:
        results = [bench.run_session(settings, scenarios, child, dict.fromkeys(scenarios, affinity), 0,
                                     bench.Noise.draw(7, 0, k), "rain-window", ChosenBy.OPERATOR)
                   for k in range(12)]
        return float(np.mean([r.time_to_calm_s for r in results])), float(np.mean([r.halted for r in results]))

    liked, disliked = sessions(1.5), sessions(-1.5)
    assert liked[0] < disliked[0] and liked[1] < disliked[1]


def test_the_estop_probe_finds_every_output_off(bench):
    scenarios = load_scenarios(None)
    controller = Controller(ControllerSettings(), scenarios)
    child = bench.make_children(bench.load_population(bench.DEFAULT_POPULATION), scenarios, 2, seed=3)[0]
    controller.start(child.profile, "calm-sea", 0.0)
    for k in range(1, 41):
        controller.on_reading(bench.reading_at(k * 0.5, "neutral", 0.6), k * 0.5)
        assert controller.tick(k * 0.5).intensity > 0.0
    assert bench.estop_probe(controller, 20.0, np.random.default_rng(0)) == []
    assert controller.tick(20.5).intensity > 0.0  # the probe e-stopped a copy, not the session


def test_a_learner_that_ignores_the_rules_is_caught(bench, capsys, tmp_path, monkeypatch):
    """The constraint check is real: a learner choosing an excluded scenario is counted."""

    class Careless(bench.ScenarioLearner):
        def pick(self, avoid=()):
            return sorted(self.rules.excluded)[0] if self.rules.excluded else super().pick(avoid)

    monkeypatch.setattr(bench, "ScenarioLearner", Careless)
    path = tmp_path / "all-excluded.yaml"
    path.write_text("exclusion_share: 1.0\n" + SMALL)
    result = run_json(bench, capsys, "--children", "2", "--sessions", "1", "--population", str(path))
    assert result["constraint_violations"] >= 2
    assert all("excluded or blocked" in line for line in result["violations"])
