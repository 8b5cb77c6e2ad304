"""gpiozero mock pins shaped like the chair's wiring."""

from __future__ import annotations

from gpiozero.pins.mock import MockPin, MockPWMPin


class NCContactPin(MockPin):
    """A GPIO wired to GND through a closed normally-closed contact: the pull-up cannot lift it.

    ``drive_high()`` is the contact opening (button pressed or wire cut), ``drive_low()``
    the contact closing again.
    """

    def _set_pull(self, value):
        super()._set_pull(value)
        self.drive_low()


class ChairPin(NCContactPin, MockPWMPin):
    """One pin class for a whole mock chair: PWM-capable outputs, and inputs that sit
    on a closed normally-closed contact (only inputs set a pull, so outputs are unaffected)."""
