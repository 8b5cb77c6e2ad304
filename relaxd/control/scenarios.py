"""Relaxation scenarios: named programmes of light, sound and vibration phases.

A scenario is a list of phases played in sequence; after the last phase it either holds
that phase or starts again (``loop``). Each phase describes its stimuli at full intensity;
``Scenario.targets_at(t, intensity)`` evaluates them at a time since the scenario started and
scales every level by the one intensity value the controller decides (0..1).

Scenarios live in YAML (``default_scenarios.yaml`` ships with the package and needs no
music files)::

    scenarios:
      calm-sea:
        loop: true
        phases:
          - name: shore
            duration_s: 60
            light: {colour: ["#1E4D8C", "#1F7A8C"], period_s: 24, brightness: 0.3}
            sound: {generate: pink_noise, volume: 0.2}       # or {file: waves.ogg, volume: 0.2}
            vibration: {pattern: wave, period_s: 10, level: 0.2}

Decisions made here:

* Patterns (colour sequence, vibration wave/pulse) restart at each phase's start, so a new
  phase begins gently at the start of its cycle rather than wherever the old one was.
* A colour sequence cross-fades linearly from one colour to the next and back to the first
  over ``period_s``: never a hard switch. Because flicker is a photosensitivity hazard, the
  period is at least ``MIN_LIGHT_PERIOD_S`` seconds per colour.
* The RGB colour is not scaled by intensity; brightness, volume and vibration are.
* Generated sounds (``tones``, ``pink_noise``, ``pulses``, ``silence``) are synthesised by the
  audio actuator; this module only names them. ``pulses`` carries its breathing period.
* Every scenario is described by its ``features`` (vibration or none, sound or none, warm or
  cool light, slow or very slow tempo), derived from its phases rather than written by hand,
  so a therapist's own scenario is described the same way; the learner
  (``relaxd.control.learner``) generalises over them (a child who dislikes vibration
  dislikes it in every scenario).
* A therapist's scenario file (``control.scenarios_file``) adds to the shipped scenarios; a
  name that is already shipped is an error, so "calm-sea" means one programme on every chair.
* Errors name the file, the line, the scenario, the phase and the key, e.g.
  ``scenarios.yaml, line 14: scenario 'calm-sea', phase 2 'open-sea', light.brightness: ...``.
"""

from __future__ import annotations

import colorsys
import difflib
import math
import os
import re
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from relaxd.errors import ConfigError

RGB = tuple[float, float, float]

SOUND_KINDS = ("tones", "pink_noise", "pulses", "silence")  # generated sounds; "file" plays a file
VIBRATION_PATTERNS = ("steady", "wave", "pulse", "off")
MAX_PHASE_S = 24 * 3600.0
MIN_LIGHT_PERIOD_S = 2.0  # per colour of a sequence: slow cross-fades only, no flicker
MAX_PERIOD_S = 3600.0
MIN_VIBRATION_PERIOD_S = 1.0
SOUND_PULSE_PERIOD_S = (2.0, 60.0)  # breathing rate 30/min .. 1/min
DEFAULT_PULSE_PERIOD_S = 10.0  # 6 breaths a minute

_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class SoundTarget:
    """What the audio actuator should play, and how loud."""

    kind: str  # "file" or one of SOUND_KINDS
    file: Optional[str]  # absolute path when kind == "file"
    volume: float  # 0..1, already scaled by intensity
    period_s: float = 0.0  # "pulses": the breathing period; 0 otherwise

    def scaled(self, factor: float) -> "SoundTarget":
        return SoundTarget(self.kind, self.file, self.volume * factor, self.period_s)


SILENCE = SoundTarget("silence", None, 0.0)


@dataclass(frozen=True)
class StimulusTargets:
    """The level every actuator should be at, at one moment (all values 0..1)."""

    light_rgb: RGB
    light_brightness: float
    sound: SoundTarget
    vibration: float  # pattern already evaluated

    @classmethod
    def off(cls) -> "StimulusTargets":
        return cls((0.0, 0.0, 0.0), 0.0, SILENCE, 0.0)

    def scaled(self, factor: float) -> "StimulusTargets":
        """The same stimuli with brightness, volume and vibration multiplied by ``factor``."""
        return StimulusTargets(
            self.light_rgb, self.light_brightness * factor, self.sound.scaled(factor), self.vibration * factor
        )

    def is_off(self) -> bool:
        """True when nothing would be seen, heard or felt."""
        return self.light_brightness == 0.0 and self.sound.volume == 0.0 and self.vibration == 0.0


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class LightSpec:
    colours: tuple[RGB, ...]  # one colour, or a sequence cross-faded over period_s
    brightness: float
    period_s: float = 0.0

    def colour_at(self, t: float) -> RGB:
        """The colour ``t`` seconds into the phase: linear cross-fades round the sequence."""
        if len(self.colours) == 1:
            return self.colours[0]
        position = (t % self.period_s) / self.period_s * len(self.colours)
        index = int(position) % len(self.colours)
        mix = position - int(position)
        start, end = self.colours[index], self.colours[(index + 1) % len(self.colours)]
        return tuple(a + (b - a) * mix for a, b in zip(start, end))  # type: ignore[return-value]


@dataclass(frozen=True)
class SoundSpec:
    kind: str  # "file" or one of SOUND_KINDS
    volume: float
    file: Optional[str] = None
    period_s: float = 0.0


@dataclass(frozen=True)
class VibrationSpec:
    pattern: str  # one of VIBRATION_PATTERNS
    level: float
    period_s: float = 0.0

    def level_at(self, t: float) -> float:
        """The pattern's level ``t`` seconds into the phase, before intensity scaling.

        ``wave`` rises from 0 to ``level`` and back (a raised cosine) once per period, so it
        starts from rest; ``pulse`` is on for the first half of each period, off for the second.
        """
        if self.pattern == "steady":
            return self.level
        if self.pattern == "wave":
            return self.level * 0.5 * (1.0 - math.cos(2.0 * math.pi * t / self.period_s))
        if self.pattern == "pulse":
            return self.level if (t % self.period_s) < self.period_s / 2.0 else 0.0
        return 0.0


@dataclass(frozen=True)
class Phase:
    name: str
    duration_s: float
    light: LightSpec
    sound: SoundSpec
    vibration: VibrationSpec

    def targets_at(self, t: float) -> StimulusTargets:
        """Full-intensity targets ``t`` seconds into this phase."""
        sound = SoundTarget(self.sound.kind, self.sound.file, self.sound.volume, self.sound.period_s)
        return StimulusTargets(self.light.colour_at(t), self.light.brightness, sound, self.vibration.level_at(t))


@dataclass(frozen=True)
class Scenario:
    """A named programme of phases."""

    name: str
    phases: tuple[Phase, ...]
    loop: bool = False
    description: str = ""

    @property
    def features(self) -> ScenarioFeatures:
        return ScenarioFeatures.of(self.phases)

    @property
    def duration_s(self) -> float:
        """Length of one pass through all phases."""
        return sum(phase.duration_s for phase in self.phases)

    def finished(self, t_s: float) -> bool:
        """True once a non-looping scenario has played all its phases."""
        return not self.loop and t_s >= self.duration_s

    def phase_at(self, t_s: float) -> tuple[int, Phase, float]:
        """(index, phase, seconds into it) at ``t_s`` since the start.

        A phase starts exactly at its boundary. Past the end, a looping scenario wraps round
        and a non-looping one holds its last phase.
        """
        if t_s < 0 or not math.isfinite(t_s):
            raise ValueError(f"scenario time must be a finite number >= 0, got {t_s}")
        if self.loop:
            t_s %= self.duration_s
        start = 0.0
        for index, phase in enumerate(self.phases):
            if t_s < start + phase.duration_s:
                return index, phase, t_s - start
            start += phase.duration_s
        last = self.phases[-1]
        return len(self.phases) - 1, last, t_s - (start - last.duration_s)

    def targets_at(self, t_s: float, intensity: float) -> StimulusTargets:
        """Targets ``t_s`` seconds after the scenario started, scaled by ``intensity`` (0..1)."""
        if not 0.0 <= intensity <= 1.0:
            raise ValueError(f"intensity must be within 0..1, got {intensity}")
        _, phase, t_in_phase = self.phase_at(t_s)
        return phase.targets_at(t_in_phase).scaled(intensity)


# --------------------------------------------------------------------------- features


class Warmth(str, Enum):
    WARM = "warm"
    COOL = "cool"

    def __str__(self) -> str:
        return self.value


class Tempo(str, Enum):
    SLOW = "slow"
    VERY_SLOW = "very slow"

    def __str__(self) -> str:
        return self.value


WARM_HUES_DEG = (300.0, 90.0)  # from magenta through red and orange to yellow-green: warm light


def is_warm(colour: RGB) -> bool:
    """A colour's hue lies between magenta and yellow-green (a grey counts as cool)."""
    hue, saturation, _ = colorsys.rgb_to_hsv(*colour)
    degrees = hue * 360.0
    return saturation > 0.1 and (degrees >= WARM_HUES_DEG[0] or degrees < WARM_HUES_DEG[1])


VERY_SLOW_PERIOD_S = 20.0  # mean cycle of the light, vibration and sound pulses at or above this: very slow


@dataclass(frozen=True)
class ScenarioFeatures:
    """What a scenario offers, in the terms children differ in; derived from its phases."""

    vibration: bool  # some phase vibrates
    sound: bool  # some phase is audible
    warmth: Warmth  # warm (most colours red, orange, yellow or magenta) or cool (green, blue, violet)
    tempo: Tempo  # slow or very slow cycles (light cross-fades, vibration waves, sound pulses)

    @classmethod
    def of(cls, phases: tuple["Phase", ...]) -> "ScenarioFeatures":
        colours = [colour for phase in phases for colour in phase.light.colours]
        warm = sum(is_warm(colour) for colour in colours)
        periods = [p for phase in phases
                   for p in (phase.light.period_s, phase.vibration.period_s, phase.sound.period_s) if p > 0]
        mean_period = sum(periods) / len(periods) if periods else math.inf  # nothing cycles: very slow
        return cls(
            vibration=any(phase.vibration.pattern != "off" and phase.vibration.level > 0 for phase in phases),
            sound=any(phase.sound.kind != "silence" and phase.sound.volume > 0 for phase in phases),
            warmth=Warmth.WARM if 2 * warm > len(colours) else Warmth.COOL,
            tempo=Tempo.VERY_SLOW if mean_period >= VERY_SLOW_PERIOD_S else Tempo.SLOW,
        )

    def vector(self) -> tuple[float, float, float, float]:
        """(vibration, sound, warm, very slow) as 0/1, for the learner."""
        return (float(self.vibration), float(self.sound), float(self.warmth is Warmth.WARM),
                float(self.tempo is Tempo.VERY_SLOW))

    def describe(self) -> str:
        """E.g. "warm light, sound, no vibration, very slow"."""
        return (f"{self.warmth} light, {'sound' if self.sound else 'no sound'}, "
                f"{'vibration' if self.vibration else 'no vibration'}, {self.tempo}")

    def to_dict(self) -> dict[str, Any]:
        return {"vibration": self.vibration, "sound": self.sound, "light": self.warmth.value,
                "tempo": self.tempo.value}


# --------------------------------------------------------------------------- loading


def load_scenarios(path: Union[str, os.PathLike, None] = None) -> dict[str, Scenario]:
    """The shipped scenarios, plus those of a therapist's file when ``path`` is given."""
    text = resources.files("relaxd.control").joinpath("default_scenarios.yaml").read_text(encoding="utf-8")
    shipped = scenarios_from_yaml(text, source="default_scenarios.yaml")
    if path is None:
        return shipped
    own = read_scenario_file(path)
    clash = sorted(set(own) & set(shipped))
    if clash:
        raise ConfigError(f"scenario file {path}: {', '.join(repr(n) for n in clash)} "
                          f"{'is' if len(clash) == 1 else 'are'} already shipped with relaxd; give your own "
                          "scenario another name (shipped ones cannot be redefined)")
    return {**shipped, **own}


def read_scenario_file(path: Union[str, os.PathLike]) -> dict[str, Scenario]:
    """Read and validate one scenario file (only its own scenarios)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"scenario file {path} not found: point control.scenarios_file at an existing YAML file, "
            "or leave it empty for the shipped scenarios"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"scenario file {path} cannot be read as UTF-8 text: {error}") from None
    return scenarios_from_yaml(text, source=str(path), base_dir=path.parent)


def scenarios_from_yaml(text: str, source: str = "<string>", base_dir: Optional[Path] = None) -> dict[str, Scenario]:
    """Parse scenario YAML; relative sound files are resolved against ``base_dir``."""
    try:
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as error:  # a duplicate or odd key, found while loading
        raise ConfigError(f"{source}, {error}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{where}: not valid YAML: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    root = _Fields.root(document, source)
    root.reject_unknown(("scenarios",))
    entries = root.section("scenarios", "the scenario names")
    if not entries.value:
        raise entries.error("scenarios", "defines no scenario; add at least one")
    return {
        name: _scenario(name, entries, base_dir or Path.cwd())
        for name in entries.value
    }


def _scenario(name: Any, entries: "_Fields", base_dir: Path) -> Scenario:
    if not isinstance(name, str) or not name.strip():
        raise entries.error(str(name), "a scenario name must be a non-empty string")
    fields = entries.section(name, "a mapping with 'phases'", where=f"scenario '{name}', ")
    fields.reject_unknown(("description", "loop", "phases"))
    loop = fields.boolean("loop", default=False)
    description = fields.string("description", default="")
    items = fields.value.get("phases")
    if not isinstance(items, list) or not items:
        raise fields.error("phases", "must be a non-empty list of phases")
    phases = tuple(
        _phase(fields.child(item, "phases"), name, number, base_dir) for number, item in enumerate(items, start=1)
    )
    names = [phase.name for phase in phases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise fields.error("phases", f"phase names must be unique, repeated: {duplicates}")
    return Scenario(
        name=name,
        phases=phases,
        loop=loop,
        description=description,
    )


def _phase(fields: "_Fields", scenario: str, number: int, base_dir: Path) -> Phase:
    fields.where = f"scenario '{scenario}', phase {number}, "
    fields.require_mapping("a mapping with name, duration_s, light, sound and vibration")
    name = fields.string("name")
    fields.where = f"scenario '{scenario}', phase {number} '{name}', "
    fields.reject_unknown(("name", "duration_s", "light", "sound", "vibration"))
    return Phase(
        name=name,
        duration_s=fields.number("duration_s", 0.0, MAX_PHASE_S, above=True),
        light=_light(fields.section("light", "a mapping with colour and brightness")),
        sound=_sound(fields.section("sound", "a mapping with generate or file, and volume"), base_dir),
        vibration=_vibration(fields.section("vibration", "a mapping with pattern and level")),
    )


def _light(fields: "_Fields") -> LightSpec:
    fields.reject_unknown(("colour", "brightness", "period_s"))
    raw = fields.value.get("colour")
    if isinstance(raw, str):
        colours: tuple[RGB, ...] = (_colour(raw, fields, "colour"),)
    elif isinstance(raw, list) and raw:
        colours = tuple(_colour(item, fields, "colour") for item in raw)
    else:
        raise fields.error("colour", 'must be "#RRGGBB" or a non-empty list of them')
    brightness = fields.number("brightness", 0.0, 1.0)
    if len(colours) == 1:
        fields.forbid_unless("period_s", "colour is a list of several colours")
        return LightSpec(colours, brightness)
    low = MIN_LIGHT_PERIOD_S * len(colours)
    return LightSpec(colours, brightness, fields.number("period_s", low, MAX_PERIOD_S))


def _colour(raw: Any, fields: "_Fields", key: str) -> RGB:
    if not isinstance(raw, str) or not _COLOUR.match(raw):
        raise fields.error(key, f'colours are written "#RRGGBB" (quoted, YAML reads # as a comment), got {raw!r}')
    return tuple(int(raw[i:i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]


def _sound(fields: "_Fields", base_dir: Path) -> SoundSpec:
    fields.reject_unknown(("generate", "file", "volume", "period_s"))
    has_file, has_generate = "file" in fields.value, "generate" in fields.value
    if has_file == has_generate:
        raise fields.error("generate", f"give exactly one of 'file' (an audio file) or 'generate' (one of {SOUND_KINDS})")
    if has_file:
        fields.forbid_unless("period_s", "generate is pulses")
        return SoundSpec("file", fields.number("volume", 0.0, 1.0), file=_sound_file(fields, base_dir))
    kind = fields.string("generate", choices=SOUND_KINDS)
    volume = fields.number("volume", 0.0, 1.0, default=0.0 if kind == "silence" else _REQUIRED)
    if kind != "pulses":
        fields.forbid_unless("period_s", "generate is pulses")
        return SoundSpec(kind, volume)
    low, high = SOUND_PULSE_PERIOD_S
    return SoundSpec(kind, volume, period_s=fields.number("period_s", low, high, default=DEFAULT_PULSE_PERIOD_S))


def _sound_file(fields: "_Fields", base_dir: Path) -> str:
    raw = fields.string("file")
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise fields.error("file", f"audio file {path} not found (relative paths are relative to the scenario file)")
    return str(path.resolve())


def _vibration(fields: "_Fields") -> VibrationSpec:
    fields.reject_unknown(("pattern", "level", "period_s"))
    pattern = fields.string("pattern", choices=VIBRATION_PATTERNS)
    if pattern == "off":
        fields.forbid_unless("period_s", "pattern is wave or pulse")
        return VibrationSpec("off", fields.number("level", 0.0, 1.0, default=0.0))
    level = fields.number("level", 0.0, 1.0)
    if pattern == "steady":
        fields.forbid_unless("period_s", "pattern is wave or pulse")
        return VibrationSpec(pattern, level)
    return VibrationSpec(pattern, level, fields.number("period_s", MIN_VIBRATION_PERIOD_S, MAX_PERIOD_S))


# --------------------------------------------------------------------------- YAML with line numbers


class _Map(dict):
    """A YAML mapping that remembers its own line and each key's line (1-based)."""

    line: int = 0
    key_lines: dict


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings are ``_Map`` and whose duplicate keys are an error."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise ConfigError(f"line {line}: mapping keys must be plain names, got {key!r}")
        if key in result:
            raise ConfigError(f"line {line}: key {key!r} appears twice in the same mapping (first at line {result.key_lines[key]})")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)

_REQUIRED: Any = object()


class _Fields:
    """One YAML mapping under validation; every error names file, line, place and key."""

    def __init__(self, value: Any, source: str, where: str, prefix: str, line: int) -> None:
        self.value = value
        self.source = source
        self.where = where  # e.g. "scenario 'calm-sea', phase 2 'open-sea', "
        self.prefix = prefix  # e.g. "light." for keys inside the light block
        self.line = line

    @classmethod
    def root(cls, document: Any, source: str) -> "_Fields":
        fields = cls(document, source, "", "", getattr(document, "line", 1))
        fields.require_mapping("a mapping with the key 'scenarios'")
        return fields

    def error(self, key: str, problem: str) -> ConfigError:
        lines = getattr(self.value, "key_lines", {})
        line = lines.get(key, self.line)
        return ConfigError(f"{self.source}, line {line}: {self.where}{self.prefix}{key}: {problem}")

    def require_mapping(self, expected: str) -> None:
        if not isinstance(self.value, dict):
            place = f"{self.where}{self.prefix.rstrip('.')}".rstrip(", ") or "the file"
            raise ConfigError(f"{self.source}, line {self.line}: {place}: must be {expected}, got {self.value!r}")

    def child(self, value: Any, key: str) -> "_Fields":
        """An item of the list under ``key``; the caller sets its ``where``."""
        line = getattr(value, "line", getattr(self.value, "key_lines", {}).get(key, self.line))
        return _Fields(value, self.source, self.where, "", line)

    def section(self, key: str, expected: str, where: Optional[str] = None) -> "_Fields":
        """The mapping under ``key``; ``where`` starts a new place (a scenario) instead of a key path."""
        if key not in self.value:
            raise self.error(key, f"is missing; expected {expected}")
        value = self.value[key]
        line = getattr(self.value, "key_lines", {}).get(key, self.line)
        if where is not None:
            nested = _Fields(value, self.source, where, "", line)
        else:
            nested = _Fields(value, self.source, self.where, f"{self.prefix}{key}.", line)
        nested.require_mapping(expected)
        return nested

    def reject_unknown(self, allowed: tuple[str, ...]) -> None:
        for key in self.value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(allowed)}"
                raise self.error(str(key), f"unknown key{hint}")

    def forbid_unless(self, key: str, condition: str) -> None:
        if key in self.value:
            raise self.error(key, f"only applies when {condition}; remove it")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.value:
            return self.value[key]
        if default is _REQUIRED:
            raise self.error(key, "is missing")
        return default

    def number(self, key: str, low: float, high: float, default: Any = _REQUIRED, above: bool = False) -> float:
        """A finite number within ``low..high`` (``above``: strictly greater than ``low``)."""
        value = self._get(key, default)
        bounds = f"greater than {low:g} and at most {high:g}" if above else f"within {low:g}..{high:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"must be a number {bounds}, got {value!r}")
        if value < low or value > high or (above and value == low):
            raise self.error(key, f"must be {bounds}, got {value:g}")
        return float(value)

    def string(self, key: str, choices: Optional[tuple[str, ...]] = None, default: Any = _REQUIRED) -> str:
        value = self._get(key, default)
        if isinstance(value, bool) and choices and "off" in choices:
            raise self.error(key, f'must be one of {choices}; write "off" in quotes (YAML reads a bare off as false)')
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {choices}, got {value!r}")
        if default is _REQUIRED and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value
