"""The chair's outputs: light, sound and vibration behind one small gpiozero-style interface.

Every actuator has a ``value`` in 0..1, ``off()`` and ``close()``; a light also has a
``color``. Backends: ``gpio`` (Pi PWM pins via gpiozero), ``audio`` (pygame.mixer),
``serial_link`` (a microcontroller over pyserial, see deploy/PROTOCOL.md) and ``simulated``.
``ActuatorBank`` enforces caps and ramp rates and obeys the safety latch; ``build_bank``
makes one from ``ActuatorSettings``. The hardware libraries (gpiozero, pygame, pyserial)
are imported only when a backend that needs them is opened.
"""

from relaxd.actuators.audio import AudioOutput
from relaxd.actuators.bank import ActuatorBank, StimulusLevels, build_bank
from relaxd.actuators.base import (Actuator, ActuatorClosedError, ActuatorError, AudioError, Light,
                                   LinkError, LinkLostError, NakError, PinError, ProtocolVersionError)
from relaxd.actuators.gpio import GpioLight, GpioSwitch, GpioVibration
from relaxd.actuators.serial_link import SerialLight, SerialLink, SerialVibration
from relaxd.actuators.simulated import SimulatedActuator, SimulatedLight

__all__ = [
    "Actuator", "ActuatorBank", "ActuatorClosedError", "ActuatorError", "AudioError", "AudioOutput",
    "GpioLight", "GpioSwitch", "GpioVibration", "Light", "LinkError", "LinkLostError", "NakError",
    "PinError", "ProtocolVersionError", "SerialLight", "SerialLink", "SerialVibration",
    "SimulatedActuator", "SimulatedLight", "StimulusLevels", "build_bank",
]
