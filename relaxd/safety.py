"""Safety: the emergency-stop latch, the e-stop button, the control-loop watchdog,
systemd notify, signal handling and the ``relaxd safe-state`` command.

Every path here turns outputs off *directly*, on the thread that noticed the problem
(a GPIO edge callback, the socket thread, a signal handler, the watchdog thread), never
through a queue or the vision loop, so a stuck or busy loop cannot delay a stop.

What covers which way the daemon can end:

* e-stop button, panel or socket ``estop``: ``SafetyLatch.trip`` -> kill callables (the
  actuator bank's ``all_off``), then listeners (controller, alerts);
* control loop stuck: ``Watchdog`` (own thread) -> outputs off;
* SIGTERM / SIGINT: ``install_signal_handlers`` so the daemon's cleanup runs (Python's
  default SIGTERM handling ends the process without running ``atexit`` or ``finally``);
* unhandled exception in any thread: ``install_crash_hooks``;
* everything in-process hung: the systemd watchdog (``HealthGate`` stops sending
  WATCHDOG=1) kills the daemon with SIGABRT, which cannot be cleaned up in-process; nor
  can a hard crash, SIGKILL or the OOM killer. Those are covered outside the process:
  ``ExecStopPost=relaxd safe-state`` (``safe_state`` below) drives every output pin off,
  hardware pull-down resistors hold the MOSFET gates low while no process drives them,
  and the microcontroller turns everything off when its heartbeat stops (dead-man timeout).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import structlog

from relaxd.errors import RelaxdError

log = structlog.get_logger(__name__)


class SafetyError(RelaxdError):
    """A safety device cannot be set up, or the safe state could not be reached."""


class ResetRefusedError(SafetyError):
    """The e-stop latch cannot be reset yet (the button is still pressed or its wire is open)."""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------
# The latch


@dataclass(frozen=True)
class LatchEvent:
    kind: str  # "tripped" | "reset"
    who: str  # the trip's source (e.g. "estop_button", "panel") or who reset it
    time: str  # wall clock, ISO 8601 UTC
    detail: str = ""


class SafetyLatch:
    """The emergency-stop latch: once tripped, stays tripped until a deliberate ``reset``.

    ``trip`` may be called from any thread, any number of times. Each call first runs
    every kill callable (outputs off; exceptions are logged and the others still run),
    then, on the first call only, records who tripped it and notifies the listeners.
    Kill callables must be quick and must not wait on the control loop.
    ``reset`` only clears the latch: it starts nothing. The controller, told by a
    listener, goes to idle and waits for an operator's explicit start.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a signal handler may trip while the main thread holds it
        self._kills: tuple[tuple[str, Callable[[], Any]], ...] = ()
        self._listeners: tuple[Callable[[LatchEvent], Any], ...] = ()
        self._interlocks: tuple[tuple[str, Callable[[], bool]], ...] = ()
        self._latched = False
        self._tripped_by: Optional[str] = None
        self._tripped_at: Optional[str] = None
        self._trips = 0

    def add_kill(self, kill: Callable[[], Any], name: Optional[str] = None) -> None:
        """Register an 'all outputs off' callable, run first on every trip."""
        with self._lock:
            self._kills += ((name or getattr(kill, "__qualname__", repr(kill)), kill),)

    def add_listener(self, listener: Callable[[LatchEvent], Any]) -> None:
        """Register ``listener(event)``, told after outputs are off (and on reset)."""
        with self._lock:
            self._listeners += (listener,)

    def add_reset_interlock(self, name: str, is_clear: Callable[[], bool]) -> None:
        """Reset is refused while ``is_clear()`` is False (or raises), e.g. the button still pressed."""
        with self._lock:
            self._interlocks += ((name, is_clear),)

    @property
    def latched(self) -> bool:
        return self._latched

    @property
    def tripped_by(self) -> Optional[str]:
        return self._tripped_by

    @property
    def tripped_at(self) -> Optional[str]:
        return self._tripped_at

    @property
    def trips(self) -> int:
        """How many times ``trip`` was called in all (repeats included)."""
        return self._trips

    def trip(self, source: str, detail: str = "") -> bool:
        """Outputs off now, then latch. True if this call latched it, False if it already was."""
        for name, kill in self._kills:  # a tuple snapshot: no lock between the caller and the outputs
            try:
                kill()
            except Exception:
                log.exception("estop.kill_failed", kill=name, source=source)
        with self._lock:
            self._trips += 1
            if self._latched:
                return False
            self._latched = True
            self._tripped_by, self._tripped_at = source, _now_iso()
            event = LatchEvent("tripped", source, self._tripped_at, detail)
        log.critical("estop.tripped", source=source, detail=detail)
        self._notify(event)
        return True

    def blocking_interlocks(self) -> list[str]:
        """Names of the interlocks that would refuse a reset now."""
        blocking = []
        for name, is_clear in self._interlocks:
            try:
                clear = bool(is_clear())
            except Exception:
                log.exception("estop.interlock_failed", interlock=name)
                clear = False  # unknown = not clear
            if not clear:
                blocking.append(name)
        return blocking

    def reset(self, by: str) -> bool:
        """Clear the latch (an operator's deliberate act). False if it was not latched.

        Raises ``ResetRefusedError`` while an interlock (the e-stop button) is not clear.
        """
        with self._lock:
            if not self._latched:
                return False
            blocking = self.blocking_interlocks()
            if blocking:
                raise ResetRefusedError(
                    f"cannot reset the emergency stop while {', '.join(blocking)} is open: release the "
                    "e-stop button (twist or pull it out), check its wiring, then reset again"
                )
            self._latched = False
            self._tripped_by = self._tripped_at = None
            event = LatchEvent("reset", by, _now_iso())
        log.warning("estop.reset", by=by)
        self._notify(event)
        return True

    def _notify(self, event: LatchEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("estop.listener_failed", listener=repr(listener), latch_event=event.kind)


# ---------------------------------------------------------------------------------------
# The e-stop button


class EStopButton:
    """The hardware e-stop: a normally-closed contact on a GPIO that trips ``latch``.

    Wiring: the NC contact between the GPIO and GND, the Pi's internal pull-up on.
    Released (normal): contact closed, input low. Pressed, or a cut or unplugged wire:
    contact open, the pull-up takes the input high = stop. So a broken wire stops the
    chair instead of silently disabling the button.

    In gpiozero's terms (``Button(pull_up=True)`` is active-low) the button is "pressed"
    while the *contact is closed*, which here means all is well; the circuit opening is
    gpiozero's ``when_released``, and that is what trips the latch. If the circuit is
    already open at start, the latch trips at once. The latch cannot be reset while the
    circuit is open. gpiozero is imported here only (``pin_factory``: MockFactory in tests).
    """

    SOURCE = "estop_button"

    def __init__(self, latch: SafetyLatch, pin: Any, *, pin_factory: Any = None,
                 config_key: str = "safety.estop_pin") -> None:
        try:
            from gpiozero import Button
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:
            raise SafetyError(
                f"the e-stop button ({config_key}) needs gpiozero: pip install 'relaxd[pi]'"
            ) from exc
        try:
            # No bounce_time: the first edge must trip; the latch makes later bounces harmless.
            self._button = Button(pin, pull_up=True, bounce_time=None, pin_factory=pin_factory)
        except (GPIOZeroError, ValueError, OSError, RuntimeError) as exc:
            raise SafetyError(
                f"cannot use GPIO pin {pin!r} for the e-stop ({config_key}): {exc}. Set {config_key} "
                "to the free GPIO (BCM number) the normally-closed e-stop contact is wired to"
            ) from exc
        self._latch = latch
        self.pin = pin
        self._button.when_released = self._on_open  # set before the first look: no edge is missed
        latch.add_reset_interlock(f"the e-stop circuit on GPIO {pin}", lambda: not self.circuit_open)
        if self.circuit_open:
            latch.trip(self.SOURCE, f"e-stop circuit on GPIO {pin} open at start (pressed or wire cut)")

    @property
    def circuit_open(self) -> bool:
        """True while the button is pressed or its wire is broken (stop)."""
        return not self._button.is_pressed

    def _on_open(self) -> None:
        self._latch.trip(self.SOURCE, f"e-stop circuit on GPIO {self.pin} opened")

    def close(self) -> None:
        self._button.close()


# ---------------------------------------------------------------------------------------
# The control-loop watchdog


class Watchdog:
    """Turns outputs off when the control loop stops calling ``kick()`` in time.

    Its own thread checks every ``deadline_s / 4``; when the last kick is older than
    ``deadline_s`` it calls ``on_expire(late_s)`` once for that miss and reports
    unhealthy until kicks resume. Independent of the vision loop and of systemd.
    ``clock`` is injectable, and ``check()`` does one check, so tests need no sleeping.
    """

    def __init__(self, deadline_s: float, on_expire: Callable[[float], Any], *, name: str = "control loop",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not deadline_s > 0:
            raise SafetyError(f"the watchdog deadline must be above 0 s, got {deadline_s!r} "
                              "(safety.watchdog_deadline_s)")
        self.deadline_s = deadline_s
        self.name = name
        self._on_expire = on_expire
        self._clock = clock
        self._last_kick = clock()
        self._healthy = True
        self.misses = 0
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def kick(self) -> None:
        """The control loop is alive (call once per cycle; cheap and lock-free)."""
        self._last_kick = self._clock()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def check(self) -> bool:
        """One check; returns whether the loop is within its deadline."""
        late = self._clock() - self._last_kick
        if late > self.deadline_s:
            if self._healthy:
                self._healthy = False
                self.misses += 1
                log.error("watchdog.expired", loop=self.name, late_s=round(late, 3), deadline_s=self.deadline_s)
                try:
                    self._on_expire(late)
                except Exception:
                    log.exception("watchdog.on_expire_failed", loop=self.name)
        elif not self._healthy:
            self._healthy = True
            log.warning("watchdog.recovered", loop=self.name)
        return self._healthy

    def start(self) -> None:
        if self._thread is None:
            self._last_kick = self._clock()  # one deadline of grace from now
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="relaxd-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.deadline_s + 1.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.deadline_s / 4):
            self.check()


# ---------------------------------------------------------------------------------------
# systemd


class SystemdNotifier:
    """``sd_notify`` in stdlib code: datagrams to ``$NOTIFY_SOCKET``. Does nothing without it.

    Failures to send are logged, never raised: a notify problem must not stop the chair
    (systemd's watchdog will notice the silence).
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _notify_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._socket: Optional[socket.socket] = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines; True if sent."""
        if self._address is None:
            return False
        data = "\n".join(assignments).encode("utf-8")
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.sendto(data, self._address)
            except OSError as exc:
                log.warning("systemd.notify_failed", error=str(exc), message=assignments[0] if assignments else "")
                return False
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        return self.notify("READY=1", *([_status(status)] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(_status(text))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> Optional[float]:
        """systemd's WatchdogSec in seconds (send WATCHDOG=1 at about half of it), or None."""
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None  # the watchdog is meant for another process (e.g. our parent)
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 1e6 if usec > 0 else None

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _notify_address(value: str) -> Optional[str]:
    """A path, or '@name' for Linux's abstract namespace (a leading NUL byte)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        log.warning("systemd.notify_socket_unsupported", notify_socket=value)
    return None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line


class HealthGate:
    """Sends WATCHDOG=1 to systemd only while every registered check says healthy.

    Checks (control loop, camera, microcontroller link) must be quick reads of state the
    parts keep, e.g. ``watchdog.healthy`` or "the camera driver is not stuck in a call". A
    check that raises counts as unhealthy. When the pings stop, systemd kills and restarts
    the daemon after WatchdogSec. The gate runs on its own thread (``start``), pinging at
    half of WatchdogSec; it does nothing when systemd set no watchdog.
    """

    def __init__(self, notifier: SystemdNotifier,
                 checks: Optional[Mapping[str, Callable[[], bool]]] = None) -> None:
        self._notifier = notifier
        self._checks: dict[str, Callable[[], bool]] = dict(checks or {})
        self._last_failing: Optional[tuple[str, ...]] = None
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def add(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def failing(self) -> list[str]:
        failing = []
        for name, check in list(self._checks.items()):
            try:
                healthy = bool(check())
            except Exception:
                log.exception("health.check_failed", check=name)
                healthy = False
            if not healthy:
                failing.append(name)
        return failing

    def tick(self) -> bool:
        """Ping systemd if all is healthy; returns whether it was."""
        failing = tuple(self.failing())
        if failing != self._last_failing:  # log and tell systemd only on changes
            if failing:
                log.error("health.unhealthy", failing=list(failing))
                self._notifier.status("unhealthy: " + ", ".join(failing))
            elif self._last_failing:
                log.warning("health.recovered")
                self._notifier.status("healthy")
            self._last_failing = failing
        if failing:
            return False
        self._notifier.watchdog()
        return True

    def start(self, interval_s: Optional[float] = None) -> bool:
        """Tick every ``interval_s`` (default: half of WatchdogSec); False if there is nothing to do."""
        if interval_s is None:
            watchdog = self._notifier.watchdog_interval()
            if watchdog is None:
                return False
            interval_s = watchdog / 2
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, args=(interval_s,), name="relaxd-health",
                                            daemon=True)
            self._thread.start()
        return True

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _run(self, interval_s: float) -> None:
        while True:
            self.tick()
            if self._stopping.wait(interval_s):
                return


# ---------------------------------------------------------------------------------------
# Signals and crashes


def install_signal_handlers(
    on_stop: Callable[[str], Any],
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> Callable[[], None]:
    """Call ``on_stop(signal_name)`` on SIGTERM/SIGINT instead of dying; returns a restore function.

    Python's default SIGTERM ends the process without ``finally`` blocks or ``atexit``,
    so outputs could stay driven. ``on_stop`` runs on the main thread between bytecodes:
    keep it short (latch trip / outputs off, then set the daemon's stop event) and let
    the main loop's ``finally`` do the rest. SIGKILL and systemd's watchdog SIGABRT cannot
    be handled in-process: ``ExecStopPost=relaxd safe-state``, hardware pull-downs and the
    microcontroller's dead-man timeout cover those. Call from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise SafetyError("install_signal_handlers must be called from the main thread (Python runs "
                          "signal handlers there only)")

    def handler(signum: int, frame: Any) -> None:
        on_stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in signals}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def install_crash_hooks(on_crash: Callable[[str], Any]) -> Callable[[], None]:
    """Call ``on_crash(description)`` (outputs off) on an unhandled exception in any thread.

    The previous hooks still run afterwards (they print the traceback). Returns a restore
    function.
    """
    old_sys, old_thread = sys.excepthook, threading.excepthook

    def guarded(what: str) -> None:
        try:
            on_crash(what)
        except Exception:
            log.exception("safety.crash_hook_failed")

    def sys_hook(exc_type: type, exc: BaseException, tb: Any) -> None:
        guarded(f"unhandled {exc_type.__name__} in the main thread: {exc}")
        old_sys(exc_type, exc, tb)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        guarded(f"unhandled {args.exc_type.__name__} in thread {name}: {args.exc_value}")
        old_thread(args)

    sys.excepthook, threading.excepthook = sys_hook, thread_hook

    def restore() -> None:
        sys.excepthook, threading.excepthook = old_sys, old_thread

    return restore


# ---------------------------------------------------------------------------------------
# relaxd safe-state


@dataclass(frozen=True)
class OutputPin:
    pin: Any  # BCM number or a gpiozero pin name
    active_high: bool = True
    name: str = ""  # the config key, for the report


def configured_output_pins(settings: Any) -> list[OutputPin]:
    """Every GPIO output the config uses (a new output pin in the config belongs here too).

    The e-stop (``safety.estop_pin``) is an input and is never driven. Sections a
    settings object lacks are skipped.
    """
    pins = []
    actuators = getattr(settings, "actuators", None)
    if actuators is not None:
        if actuators.light_backend == "gpio":
            for colour in ("red", "green", "blue"):
                key = f"light_{colour}_pin"
                pins.append(OutputPin(getattr(actuators, key), True, f"actuators.{key}"))
        if actuators.vibration_backend == "gpio":
            pins.append(OutputPin(actuators.vibration_pin, True, "actuators.vibration_pin"))
    alerts = getattr(settings, "alerts", None)
    if alerts is not None and alerts.relay_pin >= 0:
        pins.append(OutputPin(alerts.relay_pin, alerts.relay_active_high, "alerts.relay_pin"))
    return pins


def uses_microcontroller(settings: Any) -> bool:
    actuators = getattr(settings, "actuators", None)
    return actuators is not None and "serial" in (actuators.light_backend, actuators.vibration_backend)


def serial_off(actuators: Any) -> str:
    """Open the microcontroller link, send OFF and wait for its ACK; returns a report line."""
    from relaxd.actuators.serial_link import SerialLink  # lazily: pyserial only where it is used

    link = SerialLink(
        actuators.serial_port, actuators.serial_baud, ack_timeout_s=actuators.serial_ack_timeout_s,
        retries=actuators.serial_retries, heartbeat_s=actuators.serial_heartbeat_s,
        link_timeout_s=actuators.serial_link_timeout_s,
        handshake_timeout_s=actuators.serial_handshake_timeout_s, deadman_ms=actuators.serial_deadman_ms,
    )
    firmware = link.open()
    try:
        link.send("OFF")
    finally:
        link.close()
    return f"OFF acknowledged on {actuators.serial_port} (firmware {firmware})"


def drive_pins_off(pins: Iterable[OutputPin], *, pin_factory: Any = None) -> list[tuple[str, bool]]:
    """Drive each pin to its off level and release it; ``(report line, ok)`` per pin."""
    pins = list(pins)
    if not pins:
        return []
    try:
        from gpiozero import DigitalOutputDevice
    except ImportError:
        return [(f"GPIO {p.pin} ({p.name}): FAILED: gpiozero is not installed (pip install 'relaxd[pi]')", False)
                for p in pins]
    results = []
    for p in pins:
        try:
            device = DigitalOutputDevice(p.pin, active_high=p.active_high, initial_value=False,
                                         pin_factory=pin_factory)
            try:
                device.off()
            finally:
                device.close()  # released; the hardware pull-down holds it off from here
            results.append((f"GPIO {p.pin} ({p.name}): off", True))
        except Exception as exc:  # report and go on: the other pins matter as much
            results.append((f"GPIO {p.pin} ({p.name}): FAILED: {exc}", False))
    return results


def safe_state(settings: Any, *, pin_factory: Any = None,
               mcu_off: Optional[Callable[[], str]] = None) -> list[str]:
    """Turn every configured output off, for ``relaxd safe-state`` (systemd ExecStopPost).

    Works when the daemon is dead: it opens the GPIO pins itself and, when a
    microcontroller drives an output, opens the serial link and sends OFF (``mcu_off``
    replaces that in tests). Returns the report, one line per output; raises
    ``SafetyError`` (its message holds the report) if any output could not be turned off.
    """
    results = drive_pins_off(configured_output_pins(settings), pin_factory=pin_factory)
    if mcu_off is None and uses_microcontroller(settings):
        mcu_off = functools.partial(serial_off, settings.actuators)
    if mcu_off is not None:
        try:
            results.append((f"microcontroller: {mcu_off()}", True))
        except Exception as exc:
            results.append((f"microcontroller: FAILED: {exc} (its dead-man timeout still turns it off)", False))
    if not results:
        results.append(("no GPIO output or microcontroller configured (simulation): nothing to turn off", True))
    report = [line for line, _ in results]
    if not all(ok for _, ok in results):
        raise SafetyError("safe state not fully reached: " + "; ".join(report) +
                          ". Check the wiring, and that no other process holds these pins or the port")
    for line in report:
        log.info("safe_state", result=line)
    return report
