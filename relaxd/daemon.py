"""``relaxd run``: the chair, wired.

Threads, each with one job (Frigate-style):

- capture (``FrameGrabber``): keeps only the newest camera frame;
- vision: newest frame -> face -> emotion -> ``AffectReading`` into a small bounded queue
  (drops the oldest, never blocks);
- control loop (the calling thread): readings -> ``Controller`` -> ``ActuatorBank``;
  kicks the watchdog, records events, alerts and per-second summaries;
- watchdog and systemd health gate: their own threads.

Safety never waits on vision: the e-stop button's GPIO edge callback, the watchdog,
signal and crash hooks all trip the ``SafetyLatch``, whose kill callable writes zero to
every output directly. The control loop only notices the latch afterwards, to move the
controller into its latched state and record it.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import structlog

from relaxd.actuators import ActuatorBank, StimulusLevels, build_bank
from relaxd.affect import AffectReading
from relaxd.alerts import AlertManager
from relaxd.capture import FrameGrabber
from relaxd.control import ChildProfile, Controller, Event, State, load_scenarios
from relaxd.safety import (EStopButton, HealthGate, LatchEvent, SafetyLatch, SystemdNotifier, Watchdog,
                           install_crash_hooks, install_signal_handlers)
from relaxd.settings import Settings
from relaxd.store import AffectSecondAccumulator, SessionStore
from relaxd.vision.pipeline import VisionPipeline

log = structlog.get_logger(__name__)

CONTROL_PERIOD_S = 0.05
"""The control loop runs at 20 Hz: fast enough for smooth ramps, far inside the watchdog deadline."""

READING_QUEUE = 64


def to_levels(targets: Any) -> StimulusLevels:
    """The controller's ``StimulusTargets`` as the actuator bank's ``StimulusLevels``."""
    return StimulusLevels(light_rgb=targets.light_rgb, light_brightness=targets.light_brightness,
                          sound_volume=targets.sound.volume, vibration=targets.vibration)


def resolve_demo_source(settings: Settings, cache_dir: Path) -> Settings:
    """Replace ``camera.source: demo`` by the generated demo clip, played as a live camera."""
    if settings.camera.source != "demo":
        return settings
    from relaxd.demo import ensure_demo_clip

    clip = ensure_demo_clip(cache_dir)
    return dataclasses.replace(settings, camera=dataclasses.replace(settings.camera, source=str(clip)))


def is_simulation(settings: Settings) -> bool:
    a = settings.actuators
    return "simulated" in (a.light_backend, a.sound_backend, a.vibration_backend) or settings.camera.source == "demo"


@dataclass
class RunReport:
    """What a run did; printed at exit."""

    seconds: float = 0.0
    frames: int = 0
    readings: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    final_state: str = ""
    session_id: Optional[int] = None

    def describe(self) -> str:
        lines = [f"ran {self.seconds:.1f} s: {self.frames} frames, {self.readings} affect readings, "
                 f"final state {self.final_state}" + (f", session {self.session_id}" if self.session_id else "")]
        lines += [f"  {e['kind']}: {e['state_from']} -> {e['state_to']} ({e['reason']})" for e in self.events]
        return "\n".join(lines)


class Chair:
    """Capture, vision, affect, controller, actuators, safety, alerts and store, running together."""

    def __init__(self, settings: Settings, *, pin_factory: Any = None, notifier: Optional[SystemdNotifier] = None):
        self.settings = settings
        self.stop_requested = threading.Event()
        self._readings: collections.deque[AffectReading] = collections.deque(maxlen=READING_QUEUE)
        self._camera_problems: collections.deque[str] = collections.deque(maxlen=8)
        self._link_faults = 0
        self._session_id: Optional[int] = None
        self._accumulator: Optional[AffectSecondAccumulator] = None
        self._last_stimulus_second = -1
        self._session_started = 0.0
        self.report = RunReport()
        # What can be rejected (model, cascade, scenarios) loads before any output is opened.
        self.pipeline = VisionPipeline.from_settings(settings)
        self.controller = Controller(settings.control, load_scenarios(settings.control.scenarios_file or None))
        self.latch = SafetyLatch()
        self.bank: ActuatorBank = build_bank(settings.actuators, pin_factory=pin_factory, on_fault=self._link_fault)
        self.latch.add_kill(lambda: self.bank.all_off("e-stop latch"), "actuator bank")
        self.latch.add_listener(self._on_latch)
        self.estop_button: Optional[EStopButton] = None
        self.store: Optional[SessionStore] = None
        self.alerts: Optional[AlertManager] = None
        try:
            if settings.safety.estop_pin >= 0:
                self.estop_button = EStopButton(self.latch, settings.safety.estop_pin, pin_factory=pin_factory)
            self.store = SessionStore(Path(settings.store.path).expanduser(),
                                      busy_timeout_s=settings.store.busy_timeout_s)
            self.store.close_unfinished_sessions()
            self.alerts = AlertManager(self.store, settings.alerts, pin_factory=pin_factory)
        except BaseException:
            self.close()
            raise
        self.grabber = FrameGrabber.from_settings(settings.camera, on_event=self._camera_event)
        self.watchdog = Watchdog(settings.safety.watchdog_deadline_s, self._watchdog_expired)
        self.notifier = notifier or SystemdNotifier()
        self.health = HealthGate(self.notifier, {
            "control loop": lambda: self.watchdog.healthy,
            "camera": lambda: not self.grabber.stalled,
            "outputs": lambda: self._link_faults == 0,
        })

    # ------------------------------------------------------------------ safety callbacks (any thread)

    def _watchdog_expired(self, late_s: float) -> None:
        self.latch.trip("watchdog", f"control loop {late_s:.2f} s late")

    def _alert(self, kind: str, priority: str, message: str, **data: Any) -> None:
        if self.alerts is not None:  # None only while the chair is being built
            self.alerts.raise_alert(kind, priority, message, session_id=self._session_id, data=data)

    def _link_fault(self, reason: str) -> None:
        self._link_faults += 1
        self._alert("link_lost", "high", f"microcontroller link lost: {reason}")

    def _on_latch(self, event: LatchEvent) -> None:
        if event.kind == "tripped":
            self._alert("estop", "high", f"emergency stop by {event.who}", detail=event.detail)

    def _camera_event(self, kind: str, detail: dict[str, Any]) -> None:
        if kind in ("stalled", "lost", "failed", "ended"):
            self._camera_problems.append(kind)

    def request_stop(self, why: str = "stop requested") -> None:
        log.info("stopping", why=why)
        self.stop_requested.set()

    # ------------------------------------------------------------------ vision thread

    def _vision_loop(self) -> None:
        last_index = -1
        while not self.stop_requested.is_set():
            frame = self.grabber.latest(newer_than=last_index, timeout=0.5)
            if frame is None:
                continue
            last_index = frame.index
            result = self.pipeline.process(frame.image, frame.timestamp, frame.index)
            self._readings.append(result.reading)
            self.report.frames += 1

    # ------------------------------------------------------------------ sessions

    def start_session(self, pseudonym: str, scenario: Optional[str], now: float) -> None:
        """Start a session for a child profile (created with default caps if new)."""
        profile = self.store.find_profile(pseudonym) or self.store.create_profile(pseudonym)
        self.bank.set_caps(light=profile.light_cap, sound=profile.sound_cap, vibration=profile.vibration_cap)
        child = ChildProfile(pseudonym, intensity_cap=max(profile.light_cap, profile.sound_cap, profile.vibration_cap),
                             start_intensity=min(0.3, profile.light_cap, profile.sound_cap, profile.vibration_cap),
                             preferred_scenario=profile.preferred_scenario or "")
        events = self.controller.start(child, scenario, now)
        self._session_id = self.store.start_session(profile.id, self.controller.scenario or "")
        self._accumulator = AffectSecondAccumulator(now)
        self._session_started = now
        self.report.session_id = self._session_id
        self._record(events)

    def _end_session(self, reason: str) -> None:
        if self._session_id is not None:
            if self._accumulator is not None:
                row = self._accumulator.flush()
                if row is not None:
                    self.store.add_affect_second(self._session_id, row)
            self.store.end_session(self._session_id, reason)
            self._session_id = None

    def _record(self, events: list[Event] | tuple[Event, ...]) -> None:
        for event in events:
            data = event.to_dict()
            self.report.events.append(data)
            log.info("controller.event", **{k: v for k, v in data.items() if k != "time"})
            self.store.add_event(self._session_id, data["kind"], from_state=data["state_from"],
                                 to_state=data["state_to"], reason=data["reason"], data=data["data"])
            if event.is_alert:
                self._alert(data["kind"], data["priority"], event.reason, **data["data"])

    # ------------------------------------------------------------------ control loop

    def control_step(self, now: float) -> None:
        """One control cycle: latch, camera, readings, controller, outputs, records."""
        if self.latch.latched and self.controller.state != State.ESTOPPED:
            self._record(self.controller.estop(now, self.latch.tripped_by or "latch"))
        while self._camera_problems:
            problem = self._camera_problems.popleft()
            self._alert("camera_lost", "medium", f"camera {problem}: stimulation faded to idle")
            if self.controller.state in (State.STARTING, State.RUNNING, State.PAUSED):
                self._record(self.controller.stop(now))
        while self._readings:
            reading = self._readings.popleft()
            self.report.readings += 1
            self._record(self.controller.on_reading(reading, now))
            if self._accumulator is not None and self._session_id is not None:
                row = self._accumulator.add(reading)
                if row is not None:
                    self.store.add_affect_second(self._session_id, row)
        output = self.controller.tick(now)
        self._record(output.events)
        if not self.latch.latched:
            levels = self.bank.apply(to_levels(output.targets), now)
            self._record_stimulus(levels, now)
        if self._session_id is not None and output.state == State.IDLE:
            self._end_session("finished")
        self.watchdog.kick()

    def _record_stimulus(self, levels: StimulusLevels, now: float) -> None:
        if self._session_id is None:
            return
        second = int(now - self._session_started)
        if second != self._last_stimulus_second:
            self._last_stimulus_second = second
            self.store.add_stimulus_second(self._session_id, second, light=levels.light_brightness,
                                           sound=levels.sound_volume, vibration=levels.vibration)

    # ------------------------------------------------------------------ lifecycle

    def run(self, *, duration_s: Optional[float] = None, profile: Optional[str] = None,
            scenario: Optional[str] = None, clock: Callable[[], float] = time.monotonic) -> RunReport:
        """Run until stopped (signal, ``request_stop``) or ``duration_s``; outputs off on every way out."""
        restore_signals = install_signal_handlers(lambda name: self.request_stop(name)) \
            if threading.current_thread() is threading.main_thread() else (lambda: None)
        restore_hooks = install_crash_hooks(lambda what: self.bank.all_off(f"crash: {what}"))
        started = clock()
        vision = threading.Thread(target=self._vision_loop, name="vision", daemon=True)
        try:
            self.bank.all_off("start")  # safe state at start
            self.bank.reset_latch()
            self.grabber.start()
            vision.start()
            self.watchdog.start()
            self.health.start()
            if profile:
                self.start_session(profile, scenario, clock())
            self.notifier.ready("relaxd running" + (" (simulation)" if is_simulation(self.settings) else ""))
            log.info("running", simulation=is_simulation(self.settings), camera=self.settings.camera.source)
            next_tick = clock()
            while not self.stop_requested.is_set():
                now = clock()
                if duration_s is not None and now - started >= duration_s:
                    break
                self.control_step(now)
                next_tick += CONTROL_PERIOD_S
                self.stop_requested.wait(max(0.0, next_tick - clock()))
        finally:
            self.bank.all_off("exit")
            self.notifier.stopping()
            self.stop_requested.set()
            self.report.seconds = clock() - started
            self.report.final_state = self.controller.state.value
            self._end_session("daemon stopped")
            self.close(vision)
            restore_hooks()
            restore_signals()
        return self.report

    def close(self, vision: Optional[threading.Thread] = None) -> None:
        """Outputs off and closed first, then everything else; safe on a half-built chair."""
        self.bank.all_off("close")
        for stop in ("health", "watchdog", "grabber"):
            if hasattr(self, stop):
                getattr(self, stop).stop()
        if vision is not None and vision.is_alive():
            vision.join(timeout=2.0)
        if self.estop_button is not None:
            self.estop_button.close()
        self.bank.close()
        if self.alerts is not None:
            self.alerts.close()
        if self.store is not None:
            self.store.close()
