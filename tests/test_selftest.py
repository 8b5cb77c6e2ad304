"""``relaxd selftest`` and ``relaxd safe-state``: the technician's checks at the chair."""

from __future__ import annotations

from gpiozero.pins.mock import MockFactory, MockPWMPin

from relaxd import cli
from relaxd.selftest import run_selftest
from relaxd.settings import ActuatorSettings, Settings


def test_selftest_walks_every_simulated_output_and_reports_each():
    results = run_selftest(Settings(), hold_s=0.01)
    assert [(r.output, r.step) for r in results] == [
        ("light", "red"), ("light", "green"), ("light", "blue"),
        ("sound", "on"), ("sound", "off"), ("vibration", "on"), ("vibration", "off")]
    assert all(r.ok for r in results), results


def test_selftest_drives_the_gpio_pins_and_leaves_them_off():
    factory = MockFactory(pin_class=MockPWMPin)
    settings = Settings(actuators=ActuatorSettings(light_backend="gpio", vibration_backend="gpio"))
    results = run_selftest(settings, hold_s=0.01, pin_factory=factory)
    assert all(r.ok for r in results), results
    red, green, blue, motor = (factory.pin(n) for n in (17, 27, 22, 12))
    for pin in (red, green, blue, motor):
        assert max(state.state for state in pin.states) > 0, f"{pin} never came on"
        assert pin.state == 0, f"{pin} left on"
    first_on = [min(s.timestamp for s in pin.states if s.state > 0) for pin in (red, green, blue)]
    assert first_on == sorted(first_on), "colours must come in the order red, green, blue"


def test_selftest_command_prints_one_line_per_step(capsys):
    assert cli.main(["selftest", "--hold", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7 and all(line.startswith("OK") for line in lines)


def test_safe_state_in_simulation_says_there_is_nothing_to_switch_off(capsys):
    assert cli.main(["safe-state"]) == 0
    assert "nothing to turn off" in capsys.readouterr().out
