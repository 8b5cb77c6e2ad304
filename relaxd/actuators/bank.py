"""The actuator bank: the one place that turns requested levels into outputs, safely.

``apply(targets, now)`` moves every output towards ``targets`` no faster than the ramp rates
allow and never above the caps: the global ceiling from the settings (``max_light`` ...) and
the per-child caps from ``set_caps``. Upward ramps are slow so nothing ever jumps at the child;
downward ramps are faster but still smooth.

The safety latch comes first, and it sits at the wire. ``all_off()`` closes the bank's
``OutputGate`` and then writes zeros, with no ramp, from any thread (an e-stop GPIO edge
callback, the watchdog, a link fault) while ``apply()`` may be running in another. Every
single write with a non-zero level, in every backend (a PWM duty cycle, a serial line and each
of its retries), passes the gate first, so once ``all_off()`` has returned nothing can turn an
output on again: not the rest of an ``apply()`` in flight, not a serial command waiting for
its acknowledgement, not a retry. Only ``reset_latch()`` opens the gate, and even then outputs
stay at zero until ``apply()`` ramps them up again from zero.

A write that fails (a lost serial link, a failed pin) turns everything off, latches, and is
reported to ``on_fault(reason)``; ``apply()`` itself never raises for it, so the control loop
carries on and moves the controller into its fault state.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from relaxd.actuators.base import RGB, Actuator, Light, OutputGate, OutputLatchedError, check_level, check_rgb
from relaxd.errors import ConfigError
from relaxd.settings import ActuatorSettings
from relaxd.vocabulary import CHANNELS

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class StimulusLevels:
    """Requested or actual output levels. Every number lies in 0..1.

    ``light_rgb`` is the colour (hue and saturation; each component 0..1) and
    ``light_brightness`` its brightness: the LEDs show their product.
    """

    light_rgb: RGB = (1.0, 1.0, 1.0)
    light_brightness: float = 0.0
    sound_volume: float = 0.0
    vibration: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "light_rgb", check_rgb(self.light_rgb, "light_rgb"))
        for name in ("light_brightness", "sound_volume", "vibration"):
            object.__setattr__(self, name, check_level(getattr(self, name), name))

    def dark(self) -> "StimulusLevels":
        """The same colour with every level at zero."""
        return StimulusLevels(self.light_rgb)


def _approach(current: float, target: float, up_per_s: float, down_per_s: float, dt: float) -> float:
    if target > current:
        return min(target, current + up_per_s * dt)
    return max(target, current - down_per_s * dt)


class ActuatorBank:
    """Caps, ramps and the safety latch in front of the light, sound and vibration outputs.

    Any of the three may be ``None`` (a chair without it). ``resources`` are closed after the
    actuators by ``close()`` (e.g. the ``SerialLink`` they share).
    """

    def __init__(self, light: Optional[Light], sound: Optional[Actuator], vibration: Optional[Actuator],
                 settings: ActuatorSettings, *, resources: Sequence[Any] = (),
                 on_fault: Optional[Callable[[str], None]] = None) -> None:
        self.light, self.sound, self.vibration = light, sound, vibration
        self.settings = settings
        self.on_fault = on_fault
        self._resources = list(resources)
        self._lock = threading.Lock()  # apply(), set_caps() and reset_latch(); all_off() never takes it
        self.gate = OutputGate(settings.all_off_lock_wait_s)
        for actuator in (light, sound, vibration):
            if actuator is not None:
                actuator.gate = self.gate
        self._levels = StimulusLevels()
        self._last_now: Optional[float] = None
        self._child_caps: Dict[str, float] = {channel: 1.0 for channel in CHANNELS}

    @property
    def levels(self) -> StimulusLevels:
        """What the outputs were last driven to."""
        return self._levels

    @property
    def latched(self) -> bool:
        return self.gate.closed

    @property
    def latch_reason(self) -> Optional[str]:
        return self.gate.reason

    @property
    def ceilings(self) -> Dict[str, float]:
        """This chair's ceiling per channel (``actuators.max_*``), whatever a child's caps say."""
        return {"light": self.settings.max_light, "sound": self.settings.max_sound,
                "vibration": self.settings.max_vibration}

    def capped(self, child_caps: Mapping[str, float]) -> Dict[str, float]:
        """The effective cap per channel for these caps of a child: the lower of it and the chair's ceiling."""
        ceilings = self.ceilings
        return {channel: min(ceilings[channel], child_caps[channel]) for channel in CHANNELS}

    @property
    def caps(self) -> Dict[str, float]:
        """The effective cap per channel of the child now in the chair."""
        return self.capped(self._child_caps)

    def set_caps(self, *, light: Optional[float] = None, sound: Optional[float] = None,
                 vibration: Optional[float] = None) -> None:
        """Set this child's caps (0..1); ``None`` leaves a cap as it is. Lower caps ramp down."""
        new = {name: check_level(cap, f"{name} cap") for name, cap in
               (("light", light), ("sound", sound), ("vibration", vibration)) if cap is not None}
        with self._lock:
            self._child_caps.update(new)

    def apply(self, targets: StimulusLevels, now: float) -> StimulusLevels:
        """Move the outputs one step towards ``targets`` at monotonic time ``now``; return the levels set."""
        if not isinstance(targets, StimulusLevels):
            raise TypeError(f"apply() needs StimulusLevels, got {type(targets).__name__}")
        with self._lock:
            if self.gate.closed:
                return self._levels
            step = self._next_levels(targets, self._time_step(now))
            try:
                self._write(step)
            except OutputLatchedError:  # all_off() ran while this update was on its way: it wins
                pass
            except Exception as error:
                reason = f"writing the outputs failed: {error}"
                log.error("actuators: %s", reason)
                if self.all_off(reason) and self.on_fault is not None:
                    self.on_fault(reason)
            if self.gate.closed:  # all_off() ran meanwhile; a write stuck past its wait may have landed after its zeros
                self._write_off()
                self._levels = self._levels.dark()
                return self._levels
            self._levels = step
            return step

    def all_off(self, reason: str = "all_off") -> bool:
        """Every output to zero now, and latch; True if this call latched. Any thread; never waits on a lock."""
        newly = self.gate.close(reason)
        if newly:
            log.info("outputs off (%s)", reason)  # at every start and stop too: the normal way out
        self._write_off()
        self._levels = self._levels.dark()
        return newly

    def reset_latch(self) -> None:
        """Allow ``apply()`` again; outputs stay off until it ramps them up from zero."""
        with self._lock:
            self.gate.open()
            self._last_now = None

    def close(self) -> None:
        """Everything off, then close the actuators and the resources. Safe to call twice."""
        self.all_off("closed")
        for thing in [self.light, self.sound, self.vibration, *self._resources]:
            if thing is None:
                continue
            try:
                thing.close()
            except Exception:
                log.exception("closing %r failed", thing)

    def __enter__(self) -> "ActuatorBank":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _time_step(self, now: float) -> float:
        """Seconds since the last apply(), at most ``max_step_s``: a late call never makes a jump."""
        last, self._last_now = self._last_now, now
        if last is None:
            return 0.0
        return min(max(now - last, 0.0), self.settings.max_step_s)

    def _next_levels(self, targets: StimulusLevels, dt: float) -> StimulusLevels:
        s, caps, current = self.settings, self.caps, self._levels
        brightness = _approach(current.light_brightness, min(targets.light_brightness, caps["light"]),
                               s.light_ramp_up_per_s, s.ramp_down_per_s, dt)
        if current.light_brightness == 0.0:
            rgb = targets.light_rgb  # nothing is lit: take the new colour at once
        else:
            rgb = tuple(_approach(c, t, s.color_ramp_per_s, s.color_ramp_per_s, dt)
                        for c, t in zip(current.light_rgb, targets.light_rgb))
        return StimulusLevels(
            light_rgb=rgb,  # type: ignore[arg-type]
            light_brightness=brightness,
            sound_volume=_approach(current.sound_volume, min(targets.sound_volume, caps["sound"]),
                                   s.sound_ramp_up_per_s, s.ramp_down_per_s, dt),
            vibration=_approach(current.vibration, min(targets.vibration, caps["vibration"]),
                                s.vibration_ramp_up_per_s, s.ramp_down_per_s, dt),
        )

    def _write(self, levels: StimulusLevels) -> None:
        """Drive the outputs whose level changed (a serial write is a round trip)."""
        old = self._levels
        if self.light is not None and (levels.light_rgb, levels.light_brightness) != (old.light_rgb, old.light_brightness):
            self.light.set(levels.light_rgb, levels.light_brightness)
        if self.sound is not None and levels.sound_volume != old.sound_volume:
            self.sound.value = levels.sound_volume
        if self.vibration is not None and levels.vibration != old.vibration:
            self.vibration.value = levels.vibration

    def _write_off(self) -> None:
        for actuator in (self.vibration, self.light, self.sound):
            if actuator is None:
                continue
            try:
                actuator.off()
            except Exception:  # one broken output must not keep the others on
                log.exception("turning %r off failed", actuator)


# -- building the bank from the settings ---------------------------------------------------------


def build_bank(settings: ActuatorSettings, *, pin_factory: Optional[Any] = None,
               on_fault: Optional[Callable[[str], None]] = None) -> ActuatorBank:
    """Open the outputs the settings choose and put them behind an ``ActuatorBank``.

    A lost serial link latches the bank off and then calls ``on_fault(reason)``. If any output
    fails to open, the ones already open are closed again and the error is raised.
    """
    from relaxd.actuators.simulated import SimulatedActuator, SimulatedLight, SimulatedSound

    s = settings
    opened: List[Any] = []
    link = None

    def serial_link() -> Any:
        nonlocal link
        if link is None:
            from relaxd.actuators.serial_link import SerialLink
            for key, message in s.problems():  # settings built in code skip the config loader's check
                raise ConfigError(f"actuators.{key} {message}")
            link = SerialLink(s.serial_port, s.serial_baud, ack_timeout_s=s.serial_ack_timeout_s,
                              retries=s.serial_retries, heartbeat_s=s.serial_heartbeat_s,
                              link_timeout_s=s.serial_link_timeout_s,
                              handshake_timeout_s=s.serial_handshake_timeout_s, deadman_ms=s.serial_deadman_ms)
            link.open()
            opened.append(link)
        return link

    def make_light() -> Light:
        if s.light_backend == "gpio":
            from relaxd.actuators.gpio import GpioLight
            return GpioLight(s.light_red_pin, s.light_green_pin, s.light_blue_pin,
                             frequency=s.light_pwm_hz, pin_factory=pin_factory)
        if s.light_backend == "serial":
            from relaxd.actuators.serial_link import SerialLight
            return SerialLight(serial_link(), wait_for_ack=False)
        return SimulatedLight(history_len=s.history_len)

    def make_vibration() -> Actuator:
        if s.vibration_backend == "gpio":
            from relaxd.actuators.gpio import GpioVibration
            return GpioVibration(s.vibration_pin, frequency=s.vibration_pwm_hz, pin_factory=pin_factory)
        if s.vibration_backend == "serial":
            from relaxd.actuators.serial_link import SerialVibration
            return SerialVibration(serial_link(), wait_for_ack=False)
        return SimulatedActuator("vibration", history_len=s.history_len)

    def make_sound() -> Actuator:
        if s.sound_backend == "pygame":
            from relaxd.actuators.audio import AudioOutput
            from relaxd.actuators.sound_synth import synthesize
            if s.sound_source == "file":
                return AudioOutput(s.sound_file, sample_rate=s.sample_rate)
            return AudioOutput(synthesize(s.sound_source, sample_rate=s.sample_rate, tone_hz=s.tone_hz,
                                          pulse_hz=s.pulse_hz), sample_rate=s.sample_rate)
        return SimulatedSound("sound", history_len=s.history_len)

    try:
        light = make_light()
        opened.append(light)
        sound = make_sound()
        opened.append(sound)
        vibration = make_vibration()
    except BaseException:
        for thing in reversed(opened):  # an actuator before the link it uses
            thing.close()
        raise
    bank = ActuatorBank(light, sound, vibration, settings, resources=[link] if link is not None else [],
                        on_fault=on_fault)

    def link_lost(reason: str) -> None:
        bank.all_off(f"serial link lost: {reason}")
        if on_fault is not None:
            on_fault(reason)

    if link is not None:
        link.gate = bank.gate
        bank.gate.add_on_close(link.drop_energising)
        link.on_fault = link_lost
    return bank

