"""``relaxd run``: the chair, wired.

Threads, each with one job (Frigate-style):

- capture (``FrameGrabber``): keeps only the newest camera frame;
- vision: newest frame -> face -> emotion -> ``AffectReading`` into a small bounded queue
  (drops the oldest, never blocks); an exception ends it, faults the controller and fails
  the systemd health check, so systemd restarts the daemon;
- control loop (the calling thread): readings -> ``Controller`` -> ``ActuatorBank``;
  kicks the watchdog; hands events, alerts and per-second summaries to the recorder. It
  never waits on I/O: not on the store, not on a serial acknowledgement;
- recorder (``SessionRecorder``): the one thread that writes the session record;
- watchdog and systemd health gate: their own threads;
- control socket (``relaxd.ipc``): a thread per client. Commands that touch the controller
  are queued to the control loop, which runs them at the top of its next cycle; the
  socket's ``estop`` trips the latch directly on the client's thread.

Safety never waits on vision: the e-stop button's GPIO edge callback, the watchdog,
signal and crash hooks all trip the ``SafetyLatch``, whose kill callable writes zero to
every output directly. The control loop only notices the latch afterwards, to move the
controller into its latched state and record it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import structlog

from relaxd.actuators import ActuatorBank, StimulusLevels, build_bank
from relaxd.affect import AffectReading
from relaxd.alerts import AlertManager
from relaxd.capture import FrameGrabber
from relaxd.control import ChildProfile, Controller, Event, EventKind, State, load_scenarios
from relaxd.control.controller import ScenarioSwitcher
from relaxd.control.outcome import ChosenBy
from relaxd.errors import CommandTimeoutError
from relaxd.commands import ChairCommands, finite
from relaxd.ipc import ControlServer, resolve_socket_path
from relaxd.safety import (EStopButton, HealthGate, LatchEvent, SafetyLatch, SystemdNotifier, Watchdog,
                           install_crash_hooks, install_signal_handlers)
from relaxd.settings import Settings
from relaxd.recorder import SessionHandle, SessionRecorder
from relaxd.store import AffectSecondAccumulator, Profile, SessionStore, now_iso

if TYPE_CHECKING:
    from relaxd.mqtt import MqttBridge
from relaxd.vision.pipeline import VisionPipeline
from relaxd.vocabulary import AlertKind, Priority

log = structlog.get_logger(__name__)

CONTROL_PERIOD_S = 0.05
"""The control loop runs at 20 Hz: fast enough for smooth ramps, far inside the watchdog deadline."""

SESSION_ENDS = frozenset({EventKind.STOPPED, EventKind.SCENARIO_FINISHED, EventKind.ESTOP, EventKind.FAULT})
"""Controller events that end its session: the session record is closed with the event's kind as reason."""

RECORDER_DRAIN_S = 3.0
"""At exit the recorder gets this long to write what is queued (a locked store must not hold up a stop)."""

READING_QUEUE = 64
REPORT_EVENTS = 500
"""The exit report keeps the newest events only (the store keeps them all), so weeks of uptime stay small."""


@dataclass(frozen=True)
class ControlView:
    """What the control loop owns, published by it each cycle so other threads read a consistent copy."""

    time: float
    state: str
    scenario: Optional[str]
    phase: Optional[str]
    intensity: float
    session: Optional[SessionHandle]
    transition: Optional[dict[str, Any]]  # the last event that changed the state
    reading: Optional[AffectReading]  # the newest affect reading
    decision: Optional[dict[str, Any]]  # the controller's last event of any kind (a raise, a lower...)
    last_session: Optional[dict[str, Any]]  # the session that ended last, until the next one starts


def to_levels(targets: Any) -> StimulusLevels:
    """The controller's ``StimulusTargets`` as the actuator bank's ``StimulusLevels``."""
    return StimulusLevels(light_rgb=targets.light_rgb, light_brightness=targets.light_brightness,
                          sound_volume=targets.sound.volume, vibration=targets.vibration)


SCENARIO_SOUNDS = {"tones": "tone", "pink_noise": "pink", "pulses": "pulse"}
"""Scenario sound kinds and the generator that makes each (``relaxd.actuators.sound_synth``)."""


@functools.lru_cache(maxsize=16)
def generated_sound(kind: str, period_s: float, sample_rate: int, tone_hz: float) -> Any:
    from relaxd.actuators.sound_synth import synthesize

    pulse_hz = 1.0 / period_s if period_s > 0 else 0.1
    return synthesize(SCENARIO_SOUNDS[kind], sample_rate=sample_rate, tone_hz=tone_hz, pulse_hz=pulse_hz)


def scenario_sound_source(sound: Any, actuators: Any) -> Any:
    """What the sound output should play for a scenario phase: a file, a generated loop, or None (keep)."""
    if sound.kind == "file":
        return sound.file
    if sound.kind in SCENARIO_SOUNDS:
        return generated_sound(sound.kind, sound.period_s, actuators.sample_rate, actuators.tone_hz)
    return None  # silence: the volume is 0, whatever plays


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
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=REPORT_EVENTS))
    final_state: str = ""  # the controller's state when the run stopped
    session: Optional[SessionHandle] = None
    closed_session: bool = False  # a session was still open at exit and was ended by it
    unwritten: dict[str, int] = field(default_factory=dict)  # rows the store never got, by kind
    stuck_threads: list[str] = field(default_factory=list)  # still inside a camera/vision call at exit

    @property
    def session_id(self) -> Optional[int]:
        return self.session.id if self.session is not None else None

    def describe(self) -> str:
        lines = [f"ran {self.seconds:.1f} s: {self.frames} frames, {self.readings} affect readings; "
                 f"stopped while {self.final_state}, outputs off"]
        if self.session_id is not None:
            lines.append(f"  session {self.session_id} " + ("ended by this stop (daemon stopped)" if self.closed_session
                                                            else "had ended before"))
        if self.unwritten:
            lines.append(f"  not recorded (the store was unavailable): {self.unwritten}")
        lines += [f"  {e['kind']}: {e['state_from']} -> {e['state_to']} ({e['reason']})" for e in self.events]
        return "\n".join(lines)


class Chair:
    """Capture, vision, affect, controller, actuators, safety, alerts and store, running together."""

    def __init__(self, settings: Settings, *, pin_factory: Any = None, notifier: Optional[SystemdNotifier] = None):
        self.settings = settings
        self.stop_requested = threading.Event()
        self._readings: collections.deque[AffectReading] = collections.deque(maxlen=READING_QUEUE)
        self._camera_problems: collections.deque[str] = collections.deque(maxlen=8)
        self._link_problems: collections.deque[str] = collections.deque(maxlen=8)
        self._link_faults = 0
        self._vision_problems: collections.deque[str] = collections.deque(maxlen=1)
        self._vision_failure: Optional[str] = None  # why the vision thread ended, if it did
        self._sound_key: Optional[tuple] = None
        self._phase: Optional[str] = None
        self._session: Optional[SessionHandle] = None
        self._store_fault_raised = False
        self._unwritten: dict[str, int] = {}
        self._accumulator: Optional[AffectSecondAccumulator] = None
        self._last_stimulus_second = -1
        self._session_started = 0.0
        self.report = RunReport()
        # Operator commands for the control-loop thread: (command(now) -> (result, events), future).
        self._commands: queue.SimpleQueue[tuple[Callable[[float], Any], Future]] = queue.SimpleQueue()
        self._view: Optional[ControlView] = None
        self._last_transition: Optional[dict[str, Any]] = None
        self._last_decision: Optional[dict[str, Any]] = None
        self._last_session: Optional[dict[str, Any]] = None
        self._last_reading: Optional[AffectReading] = None
        self.ipc: Optional[ControlServer] = None
        # One command table for the socket and MQTT: its guards (a profile being erased) hold for both.
        self.commands = ChairCommands(self, settings.ipc.command_timeout_s)
        self.mqtt: Optional["MqttBridge"] = None
        # What can be rejected (model, cascade, scenarios) loads before any output is opened.
        self.pipeline = VisionPipeline.from_settings(settings)
        self.controller = Controller(settings.control, load_scenarios(settings.control.scenarios_file or None))
        self.latch = SafetyLatch()
        self.estop_button: Optional[EStopButton] = None
        self.alerts: Optional[AlertManager] = None  # None only while the chair is being built
        self.recorder: Optional[SessionRecorder] = None
        # Each part is closed, in reverse order, by ``close()``; a part that fails to open
        # closes the ones opened before it (outputs last, so they go off first and stay off).
        with ExitStack() as parts:
            self.bank: ActuatorBank = build_bank(settings.actuators, pin_factory=pin_factory, on_fault=self._link_fault)
            parts.callback(self.bank.close)
            self.latch.add_kill(lambda: self.bank.all_off("e-stop latch"), "actuator bank")
            self.latch.add_listener(self._on_latch)
            if settings.safety.estop_pin >= 0:
                self.estop_button = EStopButton(self.latch, settings.safety.estop_pin, pin_factory=pin_factory)
                parts.callback(self.estop_button.close)
            self.store = SessionStore(Path(settings.store.path).expanduser(), busy_timeout_s=settings.store.busy_timeout_s)
            parts.callback(self.store.close)
            self.store.close_unfinished_sessions()
            self.alerts = AlertManager(self.store, settings.alerts, pin_factory=pin_factory,
                                       mqtt=settings.mqtt.enabled)
            parts.callback(self.alerts.close)
            self.recorder = SessionRecorder(self.store).start()
            parts.callback(self._close_recorder)
            if settings.mqtt.enabled:  # started in run(); stopped before the recorder closes
                from relaxd.mqtt import MqttBridge

                self.mqtt = MqttBridge(settings.mqtt, status=self.status, store=self.store, command=self.commands.handle)
                self.alerts.add_outbox_listener(self.mqtt.notify)
                parts.callback(self.mqtt.stop)
            self.grabber = FrameGrabber.from_settings(settings.camera, on_event=self._camera_event,
                                                       small_width=settings.detector.detect_width)
            parts.callback(self._stop_grabber)
            self.watchdog = Watchdog(settings.safety.watchdog_deadline_s, self._watchdog_expired)
            parts.callback(self.watchdog.stop)
            self.notifier = notifier or SystemdNotifier()
            self.health = HealthGate(self.notifier, {
                "control loop": lambda: self.watchdog.healthy,
                # Hung, not merely stalled: an unplugged camera is reconnected in-process with
                # back-off; only a driver call that never returns needs systemd's restart.
                "camera": lambda: not self.grabber.hung,
                "outputs": lambda: not self.link_lost,
                "vision": lambda: self._vision_failure is None,
            })
            parts.callback(self.health.stop)
            self._parts = parts.pop_all()

    # ------------------------------------------------------------------ safety callbacks (any thread)

    def _watchdog_expired(self, late_s: float) -> None:
        self.latch.trip("watchdog", f"control loop {late_s:.2f} s late")

    def _alert(self, kind: str, priority: str, message: str, **data: Any) -> None:
        """Sound a caregiver alert now (relay, panel) and queue its record; any thread, never waits."""
        if self.alerts is None or self.recorder is None:  # None only while the chair is being built
            log.error("alert.before_start", kind=kind, message=message)
            return
        alerts, session = self.alerts, self._session
        alert, new = alerts.announce(kind, priority, message, session_id=session.id if session else None, data=data)
        if new:
            self.recorder.submit(f"alert {kind}", lambda store: alerts.record(alert))

    def _link_fault(self, reason: str) -> None:
        self._link_faults += 1
        self._link_problems.append(reason)
        self._alert(AlertKind.LINK_LOST, Priority.HIGH, f"microcontroller link lost: {reason}")

    def _on_latch(self, event: LatchEvent) -> None:
        if event.kind == "tripped":
            self._alert(AlertKind.ESTOP, Priority.HIGH, f"emergency stop by {event.who}", detail=event.detail)

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
            try:
                result = self.pipeline.process(frame.image, frame.timestamp, frame.index, frame.small_gray)
            except Exception as error:  # a broken runtime or a frame OpenCV rejects: it would only repeat
                log.exception("vision.failed", frame=frame.index)
                self._vision_failure = f"{type(error).__name__}: {error}"
                self._vision_problems.append(self._vision_failure)
                return
            self._readings.append(result.reading)
            self.report.frames += 1

    # ------------------------------------------------------------------ sessions

    def start_session(self, pseudonym: str, scenario: Optional[str], now: float,
                      profile: Optional[Profile] = None, *, chosen_by: ChosenBy = ChosenBy.OPERATOR,
                      why: str = "", switcher: Optional[ScenarioSwitcher] = None) -> SessionHandle:
        """Start a session for a child profile (created with default caps if new); control loop.

        ``profile`` is the child's stored profile, read by the caller off the control loop
        (None: a new child). The controller may refuse (wrong state, unknown scenario): it is
        asked first, so a refused start creates no profile and changes no cap. The profile and
        session rows are written by the recorder; the handle gets the session's id then.
        """
        caps = (profile.light_cap, profile.sound_cap, profile.vibration_cap) if profile else (1.0, 1.0, 1.0)
        child = ChildProfile(pseudonym, intensity_cap=max(caps), start_intensity=min(0.3, *caps),
                             preferred_scenario=(profile.preferred_scenario if profile else "") or "")
        events = self.controller.start(child, scenario, now, chosen_by=chosen_by, why=why, switcher=switcher)
        self.bank.set_caps(light=caps[0], sound=caps[1], vibration=caps[2])
        handle = SessionHandle(pseudonym)
        scenario_name, started_at = self.controller.scenario or "", now_iso()

        def write(store: SessionStore) -> None:
            found = store.find_profile(pseudonym) or store.create_profile(pseudonym)
            handle.profile_id = found.id
            handle.id = store.start_session(found.id, scenario_name, started_at=started_at)
            handle.recorded.set()

        self.recorder.submit("session start", write)
        self._session = handle
        self._accumulator = AffectSecondAccumulator(now)
        self._session_started = now
        self.report.session = handle
        self._record(events)
        return handle

    def _end_session(self, reason: str) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        self._last_session = {"id": session.id, "profile": session.pseudonym, "end_reason": reason}
        row = self._accumulator.flush() if self._accumulator is not None else None
        ended_at = now_iso()

        def write(store: SessionStore) -> None:
            if session.id is None:
                return  # its start was never written (the store was down all along)
            if row is not None:
                store.add_affect_second(session.id, row)
            store.end_session(session.id, reason, ended_at=ended_at)
            if self.mqtt is not None and self.settings.mqtt.session_summary:
                from relaxd.mqtt import session_summary

                store.enqueue_message("mqtt", *session_summary(store, session.id, self.mqtt.chair_id),
                                      session_id=session.id)  # erased with the session
                self.mqtt.notify()

        self.recorder.submit("session end", write)

    def _record(self, events: list[Event] | tuple[Event, ...]) -> None:
        for event in events:
            data = event.to_dict()
            self.report.events.append(data)
            if data["state_from"] != data["state_to"]:
                self._last_transition = {k: data[k] for k in ("kind", "state_from", "state_to", "reason")}
            self._last_decision = {k: data[k] for k in ("time", "kind", "reason")}
            log.info("controller.event", **{k: v for k, v in data.items() if k != "time"})
            self._submit_event(data)
            if event.kind is EventKind.SCENARIO_ENDED:
                self._submit_outcome(data["data"])
            if event.kind is EventKind.ADVERSE_REACTION:
                for key in ("scenario", "previous_scenario"):
                    if key in data["data"]:
                        self._submit_block(data["data"][key], event.reason)
            if event.is_alert:
                self._alert(data["kind"], data["priority"], event.reason, **data["data"])
            if event.kind in SESSION_ENDS:
                self._end_session(data["kind"])

    def _submit_event(self, data: dict[str, Any]) -> None:
        session, at = self._session, now_iso()

        def write(store: SessionStore) -> None:
            store.add_event(session.id if session else None, data["kind"], from_state=data["state_from"],
                            to_state=data["state_to"], reason=data["reason"], data=data["data"], time=at)

        self.recorder.submit("event", write)

    def _submit_outcome(self, outcome: dict[str, Any]) -> None:
        """A scenario's outcome for the learner, with the child's session."""
        session = self._session

        def write(store: SessionStore) -> None:
            if session is not None and session.id is not None and session.profile_id is not None:
                store.add_scenario_outcome(session.id, session.profile_id, outcome)

        self.recorder.submit("scenario outcome", write)

    def _submit_block(self, scenario: str, reason: str) -> None:
        """A halt: the learner does not choose this scenario for this child until a therapist approves it."""
        session = self._session

        def write(store: SessionStore) -> None:
            if session is not None and session.profile_id is not None:
                store.set_scenario_rule(session.profile_id, scenario, "blocked", set_by="relaxd",
                                        reason=f"halted in session {session.id}: {reason}")

        self.recorder.submit("scenario block", write)

    def _submit_row(self, kind: str, write_row: Callable[[SessionStore, int], None]) -> None:
        """Queue a per-second row of the open session."""
        session = self._session
        if session is None:
            return

        def write(store: SessionStore) -> None:
            if session.id is not None:
                write_row(store, session.id)

        self.recorder.submit(kind, write)

    # ------------------------------------------------------------------ control loop

    def control_step(self, now: float) -> None:
        """One control cycle: latch, camera, readings, controller, outputs, records."""
        if self.latch.latched and self.controller.state != State.ESTOPPED:
            self._record(self.controller.estop(now, self.latch.tripped_by or "latch"))
        self._serve_commands(now)  # after the latch check, so a command sees the e-stop state
        while self._camera_problems:
            problem = self._camera_problems.popleft()
            self._alert(AlertKind.CAMERA_LOST, Priority.MEDIUM, f"camera {problem}: stimulation faded to idle")
            if self.controller.state in (State.STARTING, State.RUNNING, State.PAUSED):
                self._record(self.controller.stop(now, f"camera {problem}", by_operator=False))
        while self._link_problems:  # the bank is already latched off; the controller says why
            self._record(self.controller.fault(now, f"microcontroller link lost: {self._link_problems.popleft()}"))
        while self._vision_problems:  # no more readings will come: stop now, not at the reading timeout
            self._record(self.controller.fault(now, f"vision failed: {self._vision_problems.popleft()}"))
        self._check_recorder(now)
        while self._readings:
            reading = self._readings.popleft()
            self.report.readings += 1
            self._record(self.controller.on_reading(reading, now))
            if self._accumulator is not None and self._session is not None:
                row = self._accumulator.add(reading)
                if row is not None:
                    self._submit_row("affect second", lambda store, sid, row=row: store.add_affect_second(sid, row))
        output = self.controller.tick(now)
        self._phase = output.phase
        self._record(output.events)
        self._follow_scenario_sound(output.targets.sound)
        if not self.latch.latched:
            levels = self.bank.apply(to_levels(output.targets), now)
            self._record_stimulus(levels, now)
        self.watchdog.kick()

    def _check_recorder(self, now: float) -> None:
        """A store unavailable too long (or rows dropped) faults the open session: it cannot be recorded."""
        health = self.recorder.health()
        if health.ok:
            self._store_fault_raised = False
            return
        if self.recorder.should_fault and not self._store_fault_raised and self._session is not None:
            self._store_fault_raised = True
            why = (f"rows dropped: {health.dropped}" if health.dropped
                   else f"unavailable for {health.outage_s:.0f} s: {health.error}")
            self._alert(AlertKind.STORE_FAILED, Priority.HIGH, f"the session store failed ({why}); stimulation stopped")
            self._record(self.controller.fault(now, f"the session record cannot be written ({why})"))

    def _follow_scenario_sound(self, sound: Any) -> None:
        """Switch the sound output when the scenario's phase asks for another sound."""
        key = (sound.kind, sound.file, sound.period_s)
        output = self.bank.sound
        if key == self._sound_key or sound.volume <= 0.0 or not hasattr(output, "set_source"):
            return
        source = scenario_sound_source(sound, self.settings.actuators)
        if source is not None:
            output.set_source(source)
            self._sound_key = key

    def _record_stimulus(self, levels: StimulusLevels, now: float) -> None:
        if self._session is None:
            return
        second = int(now - self._session_started)
        if second != self._last_stimulus_second:
            self._last_stimulus_second = second
            self._submit_row("stimulus second", lambda store, sid: store.add_stimulus_second(
                sid, second, light=levels.light_brightness, sound=levels.sound_volume, vibration=levels.vibration))

    # ------------------------------------------------------------------ operator commands and status

    @property
    def link_lost(self) -> bool:
        """The microcontroller link was lost; only a restart of the daemon opens it again."""
        return self._link_faults > 0

    @property
    def restart_needed(self) -> Optional[str]:
        """What only a restart of the daemon can mend (and what to do first), or None."""
        if self.link_lost:
            return ("the microcontroller link is lost and the outputs are latched off; "
                    "fix the link (cable, power, firmware)")
        if self._vision_failure is not None:
            return f"the vision loop failed ({self._vision_failure}); its traceback is in the journal (journalctl -u relaxd)"
        return None

    @property
    def session(self) -> Optional[SessionHandle]:
        """The open session, or None (owned by the control loop: read it there)."""
        return self._session

    @property
    def session_id(self) -> Optional[int]:
        """The open session's store id, or None (also while its row is still being written)."""
        return self._session.id if self._session is not None else None

    def call_in_control_loop(self, command: Callable[[float], tuple[Any, Any]], timeout_s: float) -> Any:
        """Run ``command(now)`` on the control-loop thread (the controller is not thread-safe); any thread.

        ``command`` returns ``(result, events)``: the loop records the controller events and this
        returns the result (or raises what the command raised). A command the loop has not taken
        within ``timeout_s`` is dropped, never run late: ``CommandTimeoutError``.
        """
        future: Future = Future()
        self._commands.put((command, future))
        try:
            return future.result(timeout_s)
        except TimeoutError:
            if future.cancel():
                raise CommandTimeoutError(f"the control loop did not take the command within {timeout_s:g} s "
                                          "(ipc.command_timeout_s); it was not carried out") from None
        try:
            return future.result(timeout_s)  # taken: it is running now
        except TimeoutError:
            raise CommandTimeoutError(f"the command is still running after {2 * timeout_s:g} s; "
                                      "check the status before repeating it") from None

    def _serve_commands(self, now: float) -> None:
        """Run the commands queued since the last cycle, then publish the view ``status()`` reads."""
        if self._readings:
            self._last_reading = self._readings[-1]  # the newest, consumed later in this cycle
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                break
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up waiting
            try:
                result, events = command(now)
                self._record(events)
            except Exception as error:  # handed to the caller's thread
                future.set_exception(error)
            else:
                future.set_result(result)
        self._view = self._control_view(now)

    def _control_view(self, now: float) -> ControlView:
        return ControlView(now, self.controller.state.value, self.controller.scenario, self._phase,
                           self.controller.intensity, self._session, self._last_transition, self._last_reading,
                           self._last_decision, None if self._session is not None else self._last_session)

    def _fail_pending_commands(self) -> None:
        while True:
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(CommandTimeoutError("relaxd is stopping; the command was not carried out"))

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for the control socket and the panel; safe from any thread.

        The controller's side is the view the control loop published last (at most one cycle
        old); health is read live, so a stuck control loop shows as such instead of hanging.
        """
        view = self._view or self._control_view(time.monotonic())  # before the loop runs: no race yet
        reading, levels, latch, camera = view.reading, self.bank.levels, self.latch, self.grabber.stats()
        reading_age = None if reading is None else max(0.0, view.time - reading.time)
        session = None if view.session is None else {"id": view.session.id, "profile": view.session.pseudonym}
        return {
            "state": view.state,
            "reason": view.transition["reason"] if view.transition else "",
            "last_transition": view.transition,
            "last_decision": None if view.decision is None else {
                "kind": view.decision["kind"], "reason": view.decision["reason"],
                "age_s": max(0.0, view.time - view.decision["time"])},
            "last_session": view.last_session,
            "scenario": view.scenario,
            "phase": view.phase,
            "session": session,
            "intensity": view.intensity,
            "levels": {"light": levels.light_brightness, "light_rgb": list(levels.light_rgb),
                       "sound": levels.sound_volume, "vibration": levels.vibration},
            "caps": self.bank.caps,
            "affect": None if reading is None else {**reading.to_dict(), "age_s": reading_age},
            "alarms": [alert.to_dict() for alert in self.alerts.active()] if self.alerts is not None else [],
            "health": {
                "camera": {"ok": camera.status.value == "streaming" and not self.grabber.stalled,
                           "status": camera.status.value, "frame_age_s": finite(camera.frame_age_s),
                           "reconnects": camera.reconnects},
                "vision": {"ok": (self._vision_failure is None and reading_age is not None
                                  and reading_age < self.settings.control.reading_timeout_s),
                           "frames": self.report.frames, "reading_age_s": reading_age,
                           "failure": self._vision_failure},
                "controller": {"ok": self.watchdog.healthy and view.state != State.FAULT.value,
                               "loop_on_time": self.watchdog.healthy, "state": view.state},
                "outputs": {"ok": not self.link_lost and not (self.bank.latched and not latch.latched),
                            "link_faults": self._link_faults, "latched_off": self.bank.latched,
                            "reason": self.bank.latch_reason},
                "store": self.recorder.health().to_dict() if self.recorder is not None else {"ok": False},
                "latch": {"ok": not latch.latched, "latched": latch.latched, "tripped_by": latch.tripped_by,
                          "tripped_at": latch.tripped_at, "trips": latch.trips},
                **({"mqtt": self.mqtt.health()} if self.mqtt is not None else {}),
            },
            "simulation": is_simulation(self.settings),
        }

    def _start_ipc(self) -> None:
        path = resolve_socket_path(self.settings.ipc.socket)
        if path is None:
            log.info("ipc.disabled", why="ipc.socket is empty")
            return
        self.ipc = ControlServer(path, self.commands.handle, self.settings.ipc).start()

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
            self._start_ipc()
            if self.mqtt is not None:
                self.mqtt.start()
            self.grabber.start()
            vision.start()
            self.watchdog.start()
            self.health.start()
            if profile:  # before the loop runs: reading the store here holds nothing up
                self.start_session(profile, scenario, clock(), self.store.find_profile(profile))
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
            if self.ipc is not None:
                self.ipc.stop()
            self._fail_pending_commands()
            self.report.seconds = clock() - started
            self.report.final_state = self.controller.state.value
            self.report.closed_session = self._session is not None
            self._end_session("daemon_stopped")
            self.close(vision)
            self.report.unwritten = self._unwritten
            restore_hooks()
            restore_signals()
        return self.report

    def close(self, vision: Optional[threading.Thread] = None) -> None:
        """Outputs off first, then every part in the reverse order of opening. Safe to call twice."""
        self.bank.all_off("close")
        if vision is not None and vision.is_alive():
            vision.join(timeout=2.0)
            if vision.is_alive():
                self.report.stuck_threads.append(vision.name)
        self._parts.close()

    def _stop_grabber(self) -> None:
        if not self.grabber.stop():
            self.report.stuck_threads.append("relaxd-capture")

    def _close_recorder(self) -> None:
        """Give the recorder ``RECORDER_DRAIN_S`` to write what is queued; keep what it could not."""
        self._unwritten = self.recorder.close(RECORDER_DRAIN_S)
