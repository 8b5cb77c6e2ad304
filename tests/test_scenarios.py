"""Scenarios: the shipped set, targets at phase boundaries and intensities, and validation errors."""

from __future__ import annotations

import math
import textwrap

import pytest

from relaxd.control import StimulusTargets, load_scenarios, scenarios_from_yaml
from relaxd.control.scenarios import ScenarioFeatures, Tempo, Warmth
from relaxd.errors import ConfigError

# Two short phases, easy to reason about: 10 s blue steady light, then 20 s of a two-colour
# cross-fade with wave vibration and breathing pulses.
TWO_PHASES = """\
scenarios:
  test:
    loop: {loop}
    phases:
      - name: one
        duration_s: 10
        light: {{colour: "#0000FF", brightness: 0.5}}
        sound: {{generate: tones, volume: 0.4}}
        vibration: {{pattern: steady, level: 0.2}}
      - name: two
        duration_s: 20
        light: {{colour: ["#FF0000", "#00FF00"], period_s: 8, brightness: 0.25}}
        sound: {{generate: pulses, period_s: 10, volume: 0.3}}
        vibration: {{pattern: wave, period_s: 4, level: 0.6}}
"""


def two_phases(loop: bool = False):
    return scenarios_from_yaml(TWO_PHASES.format(loop=str(loop).lower()), source="test.yaml")["test"]


# --------------------------------------------------------------------------- the shipped set


def test_default_scenarios_load_and_give_non_zero_targets():
    scenarios = load_scenarios(None)
    assert {"calm-sea", "forest-breath", "sunset"} <= set(scenarios)
    for scenario in scenarios.values():
        assert scenario.description
        for index, phase in enumerate(scenario.phases):
            start = sum(p.duration_s for p in scenario.phases[:index])
            # A quarter into the phase: every wave or pulse pattern is away from its zero.
            targets = scenario.targets_at(start + 2.5, 1.0)
            assert targets.light_brightness > 0 and max(targets.light_rgb) > 0, (scenario.name, phase.name)
            assert (targets.sound.volume > 0) == scenario.features.sound, (scenario.name, phase.name)
            assert targets.sound.kind != "file"  # works without music files


def test_the_shipped_scenarios_differ_in_what_children_differ_in():
    scenarios = load_scenarios(None)
    features = {name: scenario.features for name, scenario in scenarios.items()}
    assert len(scenarios) >= 8
    assert {f.vibration for f in features.values()} == {True, False}
    assert {f.sound for f in features.values()} == {True, False}
    assert {f.warmth for f in features.values()} == set(Warmth)
    assert {f.tempo for f in features.values()} == set(Tempo)
    # For a child who can bear neither: light only.
    assert any(not f.vibration and not f.sound for f in features.values())
    assert features["quiet-glow"].describe() == "warm light, no sound, no vibration, very slow"
    assert features["calm-sea"].vector() == (1.0, 1.0, 0.0, 1.0)
    assert features["forest-breath"].warmth is Warmth.COOL  # greens are cool, by hue
    assert len({f.vector() for f in features.values()}) == len(features), "two scenarios a child cannot tell apart"


def test_features_are_derived_from_the_phases():
    (scenario,) = scenarios_from_yaml("""
scenarios:
  mine:
    phases:
      - name: a
        duration_s: 10
        light: {colour: "#2040FF", brightness: 0.3}
        sound: {generate: silence}
        vibration: {pattern: steady, level: 0.0}
""").values()
    assert scenario.features == ScenarioFeatures(vibration=False, sound=False, warmth=Warmth.COOL,
                                                 tempo=Tempo.VERY_SLOW)  # nothing cycles; level 0 is no vibration


def test_default_scenarios_use_conservative_levels_for_children():
    for scenario in load_scenarios(None).values():
        for phase in scenario.phases:
            assert phase.light.brightness <= 0.5, (scenario.name, phase.name)
            assert phase.sound.volume <= 0.3, (scenario.name, phase.name)
            assert phase.vibration.level <= 0.3, (scenario.name, phase.name)


def test_forest_breath_pulses_at_a_breathing_rate():
    breathe = next(p for p in load_scenarios(None)["forest-breath"].phases if p.sound.kind == "pulses")
    assert 60.0 / breathe.sound.period_s == pytest.approx(6.0)  # breaths a minute
    assert breathe.vibration.pattern == "pulse" and breathe.vibration.period_s == breathe.sound.period_s


def test_load_scenarios_adds_a_therapists_file_to_the_shipped_ones(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(TWO_PHASES.format(loop="true"), encoding="utf-8")
    scenarios = load_scenarios(path)
    scenario = scenarios["test"]
    assert scenario.loop and [p.name for p in scenario.phases] == ["one", "two"]
    assert scenario.duration_s == 30
    assert set(load_scenarios(None)) < set(scenarios)


def test_a_therapists_scenario_cannot_redefine_a_shipped_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(TWO_PHASES.format(loop="true").replace("  test:", "  calm-sea:"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mine.yaml: 'calm-sea' is already shipped.*another name"):
        load_scenarios(path)


# --------------------------------------------------------------------------- targets_at


def test_targets_at_phase_boundary_switches_exactly_at_the_boundary():
    scenario = two_phases()
    assert scenario.phase_at(9.999)[:1] == (0,)
    index, phase, into = scenario.phase_at(10.0)
    assert (index, phase.name, into) == (1, "two", 0.0)
    before, after = scenario.targets_at(9.999, 1.0), scenario.targets_at(10.0, 1.0)
    assert before.light_rgb == (0.0, 0.0, 1.0) and before.sound.kind == "tones"
    assert after.light_rgb == (1.0, 0.0, 0.0) and after.sound.kind == "pulses"
    assert after.sound.period_s == 10.0
    assert after.vibration == 0.0  # a wave starts at rest at the start of its phase


def test_non_looping_scenario_holds_its_last_phase():
    scenario = two_phases(loop=False)
    assert scenario.finished(30.0) and not scenario.finished(29.9)
    index, phase, into = scenario.phase_at(100.0)
    assert (index, phase.name) == (1, "two") and into == pytest.approx(90.0)


def test_looping_scenario_wraps_round():
    scenario = two_phases(loop=True)
    assert not scenario.finished(1000.0)
    assert scenario.phase_at(30.0)[1].name == "one"
    assert scenario.phase_at(45.0)[1].name == "two"
    assert scenario.targets_at(31.0, 0.7) == scenario.targets_at(1.0, 0.7)


def test_intensity_scales_every_level_but_not_the_colour():
    scenario = two_phases()
    full = scenario.targets_at(11.0, 1.0)
    half = scenario.targets_at(11.0, 0.5)
    assert half.light_rgb == full.light_rgb
    assert half.light_brightness == pytest.approx(full.light_brightness / 2)
    assert half.sound.volume == pytest.approx(full.sound.volume / 2)
    assert half.vibration == pytest.approx(full.vibration / 2)
    assert scenario.targets_at(11.0, 0.0).is_off()
    assert full.light_brightness == 0.25 and full.sound.volume == 0.3


def test_colour_sequence_cross_fades_round_the_list():
    light = two_phases().phases[1].light  # red -> green -> red over 8 s
    assert light.colour_at(0.0) == (1.0, 0.0, 0.0)
    assert light.colour_at(2.0) == pytest.approx((0.5, 0.5, 0.0))
    assert light.colour_at(4.0) == pytest.approx((0.0, 1.0, 0.0))
    assert light.colour_at(6.0) == pytest.approx((0.5, 0.5, 0.0))
    assert light.colour_at(8.0) == pytest.approx((1.0, 0.0, 0.0))


@pytest.mark.parametrize(
    "vibration, expected",  # level at t = 0, 1, 2, 3 s, period 4 s, level 0.6
    [
        ({"pattern": "steady", "level": 0.6}, [0.6, 0.6, 0.6, 0.6]),
        ({"pattern": "wave", "level": 0.6, "period_s": 4}, [0.0, 0.3, 0.6, 0.3]),
        ({"pattern": "pulse", "level": 0.6, "period_s": 4}, [0.6, 0.6, 0.0, 0.0]),
        ({"pattern": "off"}, [0.0, 0.0, 0.0, 0.0]),
    ],
)
def test_vibration_patterns_are_evaluated_at_t(vibration, expected):
    from relaxd.control import VibrationSpec

    spec = VibrationSpec(vibration["pattern"], vibration.get("level", 0.0), vibration.get("period_s", 0.0))
    assert [spec.level_at(t) for t in (0.0, 1.0, 2.0, 3.0)] == pytest.approx(expected)


def test_targets_at_rejects_bad_time_and_intensity():
    scenario = two_phases()
    with pytest.raises(ValueError, match="intensity"):
        scenario.targets_at(1.0, 1.5)
    with pytest.raises(ValueError, match="time"):
        scenario.targets_at(-1.0, 0.5)
    with pytest.raises(ValueError, match="time"):
        scenario.targets_at(math.nan, 0.5)


def test_stimulus_targets_off_is_off():
    assert StimulusTargets.off().is_off()


def test_sound_file_is_resolved_next_to_the_scenario_file(tmp_path):
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "waves.ogg").write_bytes(b"OggS")
    text = TWO_PHASES.format(loop="false").replace(
        "{generate: tones, volume: 0.4}", "{file: music/waves.ogg, volume: 0.4}"
    )
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    sound = load_scenarios(path)["test"].targets_at(0.0, 1.0).sound
    assert sound.kind == "file" and sound.file == str((tmp_path / "music" / "waves.ogg").resolve())
    assert sound.volume == 0.4


# --------------------------------------------------------------------------- validation


def phase_yaml(**blocks: str) -> str:
    """A one-phase scenario 'sea' whose phase 'wave' has the given blocks replaced."""
    parts = {
        "duration_s": "10",
        "light": '{colour: "#102030", brightness: 0.3}',
        "sound": "{generate: pink_noise, volume: 0.2}",
        "vibration": "{pattern: wave, period_s: 5, level: 0.2}",
    }
    parts.update(blocks)
    lines = "".join(f"        {key}: {value}\n" for key, value in parts.items() if value is not None)
    return f"scenarios:\n  sea:\n    phases:\n      - name: wave\n{lines}"


@pytest.mark.parametrize(
    "blocks, key, line, problem",
    [
        ({"light": '{colour: "#102030", brightness: 1.5}'}, "light.brightness", 6, "0..1"),
        ({"light": '{colour: "#1020", brightness: 0.3}'}, "light.colour", 6, "#RRGGBB"),
        ({"light": '{colour: ["#102030", "#203040"], brightness: 0.3}'}, "light.period_s", 6, "missing"),
        ({"light": '{colour: ["#102030", "#203040"], period_s: 1, brightness: 0.3}'}, "light.period_s", 6, "4..3600"),
        ({"light": '{color: "#102030", brightness: 0.3}'}, "light.color", 6, "did you mean 'colour'"),
        ({"sound": "{generate: birdsong, volume: 0.2}"}, "sound.generate", 7, "pink_noise"),
        ({"sound": "{volume: 0.2}"}, "sound.generate", 7, "exactly one of 'file'"),
        ({"sound": "{file: nowhere.ogg, volume: 0.2}"}, "sound.file", 7, "not found"),
        ({"sound": "{generate: tones}"}, "sound.volume", 7, "missing"),
        ({"vibration": "{pattern: off}"}, "vibration.pattern", 8, 'write "off" in quotes'),
        ({"vibration": "{pattern: wave, level: 0.2}"}, "vibration.period_s", 8, "missing"),
        ({"vibration": "{pattern: steady, level: 0.2, period_s: 3}"}, "vibration.period_s", 8, "only applies"),
        ({"vibration": None}, "vibration", 4, "missing"),
        ({"duration_s": "0"}, "duration_s", 5, "greater than 0"),
        ({"duration_s": '"10"'}, "duration_s", 5, "must be a number"),
        ({"duration_s": "true"}, "duration_s", 5, "must be a number"),
        ({"light": "bright"}, "light", 6, "must be a mapping"),
    ],
)
def test_validation_errors_name_file_line_scenario_phase_and_key(blocks, key, line, problem):
    with pytest.raises(ConfigError) as caught:
        scenarios_from_yaml(phase_yaml(**blocks), source="my.yaml")
    message = str(caught.value)
    assert message.startswith(f"my.yaml, line {line}: scenario 'sea', phase 1 'wave', {key}:"), message
    assert problem in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "line 1: the file: must be a mapping with the key 'scenarios'"),
        ("scenarios: {}\n", "defines no scenario"),
        ("senarios: {}\n", "did you mean 'scenarios'"),
        ("scenarios:\n  sea:\n    phases: []\n", "line 3: scenario 'sea', phases: must be a non-empty list"),
        ("scenarios:\n  sea:\n    loop: yes please\n    phases: []\n", "scenario 'sea', loop: must be true or false"),
        ("scenarios:\n  sea:\n    phases:\n      - just-a-name\n", "line 3: scenario 'sea', phase 1: must be a mapping"),
        ("scenarios:\n  sea: {phases: []}\n  sea: {phases: []}\n", "line 3: key 'sea' appears twice"),
        ("scenarios:\n  sea: [unclosed\n", "not valid YAML"),
    ],
)
def test_file_level_errors_are_clear(text, expected):
    with pytest.raises(ConfigError, match="my.yaml") as caught:
        scenarios_from_yaml(text, source="my.yaml")
    assert expected in str(caught.value)


def test_duplicate_phase_names_are_rejected():
    text = phase_yaml() + (
        "      - name: wave\n        duration_s: 5\n"
        '        light: {colour: "#000000", brightness: 0}\n'
        "        sound: {generate: silence}\n"
        '        vibration: {pattern: "off"}\n'
    )
    with pytest.raises(ConfigError, match=r"scenario 'sea', phases: phase names must be unique.*'wave'"):
        scenarios_from_yaml(text, source="my.yaml")


def test_missing_scenario_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="not found.*leave it empty for the shipped scenarios"):
        load_scenarios(tmp_path / "absent.yaml")


def test_flicker_is_impossible_a_colour_holds_at_least_two_seconds():
    text = phase_yaml(light='{colour: ["#FF0000", "#0000FF", "#00FF00"], period_s: 5, brightness: 0.3}')
    with pytest.raises(ConfigError, match=r"light.period_s: must be within 6\.\.3600"):
        scenarios_from_yaml(textwrap.dedent(text), source="my.yaml")
