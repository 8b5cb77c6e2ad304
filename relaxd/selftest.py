"""``relaxd selftest``: walk each actuator through a short visible/audible/tactile check.

Each output is driven directly (caps still apply: levels stay gentle), read back, and
switched off again, so a technician standing at the chair sees red, green and blue, hears
the sound and feels the motor, and the report says which outputs answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from relaxd.actuators import build_bank
from relaxd.errors import RelaxdError
from relaxd.settings import Settings

CHECK_LEVEL = 0.3


@dataclass(frozen=True)
class CheckResult:
    output: str
    step: str
    ok: bool
    detail: str


def check_output(name: str, step: str, drive: Callable[[], float], expected: float) -> CheckResult:
    try:
        read_back = drive()
    except RelaxdError as error:
        return CheckResult(name, step, False, str(error))
    ok = abs(read_back - expected) < 0.02
    return CheckResult(name, step, ok, f"set {expected:.2f}, reads {read_back:.2f}")


def run_selftest(settings: Settings, hold_s: float = 1.0, pin_factory=None) -> list[CheckResult]:
    """Drive every configured output in turn for ``hold_s``; return one result per step."""
    bank = build_bank(settings.actuators, pin_factory=pin_factory)
    results: list[CheckResult] = []
    try:
        if bank.light is not None:
            light = bank.light
            for colour, rgb in (("red", (1.0, 0.0, 0.0)), ("green", (0.0, 1.0, 0.0)), ("blue", (0.0, 0.0, 1.0))):
                def drive(rgb=rgb) -> float:
                    light.set(rgb, CHECK_LEVEL)
                    time.sleep(hold_s)
                    return light.value
                results.append(check_output("light", colour, drive, CHECK_LEVEL))
            light.off()
        for name, output in (("sound", bank.sound), ("vibration", bank.vibration)):
            if output is None:
                continue
            def drive(output=output) -> float:
                output.value = CHECK_LEVEL
                time.sleep(hold_s)
                return output.value
            results.append(check_output(name, "on", drive, CHECK_LEVEL))
            output.off()
            results.append(check_output(name, "off", lambda output=output: output.value, 0.0))
    finally:
        bank.all_off("selftest done")
        bank.close()
    return results
