"""The relaxation state machine and its scenarios: pure logic, no I/O, no threads.

``scenarios`` reads the programmes (light, sound, vibration phases) and evaluates them at a
time and intensity; ``controller`` decides the intensity from the child's affect readings and
the operator's commands, and reports every change as an ``Event``.
"""

from relaxd.control.controller import (
    STIMULATING,
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
)
from relaxd.control.scenarios import (
    SOUND_KINDS,
    VIBRATION_PATTERNS,
    LightSpec,
    Phase,
    Scenario,
    SoundSpec,
    SoundTarget,
    StimulusTargets,
    VibrationSpec,
    load_scenarios,
    scenarios_from_yaml,
)

__all__ = [
    "SOUND_KINDS",
    "STIMULATING",
    "VIBRATION_PATTERNS",
    "ChildProfile",
    "CommandRejected",
    "ControlError",
    "Controller",
    "Event",
    "EventKind",
    "LightSpec",
    "Output",
    "Phase",
    "Priority",
    "ProfileError",
    "Scenario",
    "SoundSpec",
    "SoundTarget",
    "State",
    "StimulusTargets",
    "VibrationSpec",
    "load_scenarios",
    "scenarios_from_yaml",
]
