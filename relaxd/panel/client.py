"""What the panel knows of the chair, and how it learns it.

Two layers:

* Pure, no I/O: ``PanelState.from_status`` turns one ``status`` reply into the values the
  screens draw; ``Timeline`` keeps the last minutes of affect group and intensity.
* ``ChairLink``: the threads that talk to the daemon, so the UI thread never waits on the
  socket. A poller asks for ``status`` every ``poll_interval_s`` on its own connection and
  reconnects with back-off when the daemon goes away; a worker carries out commands, each
  on a fresh connection; STOP gets its own short-timeout connection on its own thread at
  once, never queued behind a pending command; a slow read-only request (a session report)
  also runs on a thread of its own, so no command queues behind it. Results come back as
  ``Outcome`` objects that the UI collects with ``outcomes()``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import structlog

from relaxd.errors import RelaxdError
from relaxd.ipc import CommandError, ControlClient
from relaxd.panel import PanelProtocolError
from relaxd.settings import PanelSettings
from relaxd.vocabulary import CHANNELS, GROUPS

log = structlog.get_logger(__name__)

GROUPS = (*GROUPS, "none")  # what the panel shows: the three groups, or no face
# (key in the status reply's "health", what the operator reads)
HEALTH_PARTS = (("camera", "Camera"), ("outputs", "Outputs"), ("vision", "Vision"),
                ("controller", "Control loop"), ("latch", "E-stop"))
UNREACHABLE = "unreachable"  # Outcome.code when the daemon could not be reached
READ_ONLY = frozenset({"status", "report"})  # with list_*: change nothing, so no status refresh after them


# --------------------------------------------------------------------------- pure state


@dataclass(frozen=True)
class Affect:
    face_present: bool
    group: str  # negative | neutral | positive | none
    label: Optional[str]
    confidence: float  # 0..1
    age_s: Optional[float]  # how old the reading was when the status was taken


@dataclass(frozen=True)
class Alarm:
    id: str
    kind: str
    priority: str  # high | medium
    message: str
    time: str


@dataclass(frozen=True)
class Health:
    key: str
    title: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class PanelState:
    """One status reply, flattened for drawing; ``connected=False`` means no reply (see ``problem``)."""

    connected: bool
    problem: str = ""  # why there is no reply; "" while the first attempt is still under way
    state: str = "unknown"
    reason: str = ""  # why the chair is in its state
    decision: str = ""  # the controller's last decision and why ("intensity raised: ..."), "" before any
    decision_age_s: Optional[float] = None
    last_profile: Optional[str] = None  # the child of the session that ended last, while none runs
    scenario: Optional[str] = None
    phase: Optional[str] = None  # shown when the daemon's status carries it
    profile: Optional[str] = None
    session_id: Optional[int] = None
    intensity: float = 0.0
    levels: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0.0))
    caps: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 1.0))
    affect: Optional[Affect] = None
    alarms: tuple[Alarm, ...] = ()
    health: tuple[Health, ...] = ()
    latched: bool = False
    tripped_by: Optional[str] = None
    simulation: bool = False

    @classmethod
    def offline(cls, problem: str = "") -> "PanelState":
        return cls(connected=False, problem=problem)

    @property
    def group(self) -> str:
        """The affect group to show; "none" without a reading or a face."""
        if self.affect is None or not self.affect.face_present:
            return "none"
        return self.affect.group

    @property
    def top_alarm(self) -> Optional[Alarm]:
        """The alarm the banner shows: the oldest high one, else the oldest (the daemon sends oldest first)."""
        high = [a for a in self.alarms if a.priority == "high"]
        return (high or list(self.alarms) or [None])[0]

    @classmethod
    def from_status(cls, status: Any) -> "PanelState":
        """Read a ``status`` result; raises ``PanelProtocolError`` naming what is missing or wrong."""
        if not isinstance(status, Mapping):
            raise PanelProtocolError(f"the status reply is not an object but {type(status).__name__}; "
                                     "is the daemon a matching relaxd version?")
        try:
            session = status.get("session") or {}
            decision = status.get("last_decision") or {}
            health = status["health"]
            latch = health.get("latch", {})
            return cls(
                connected=True,
                state=str(status["state"]),
                reason=str(status.get("reason") or ""),
                decision=(f"{str(decision['kind']).replace('_', ' ')}: {decision['reason']}" if decision else ""),
                decision_age_s=decision.get("age_s"),
                last_profile=(status.get("last_session") or {}).get("profile"),
                scenario=status.get("scenario"),
                phase=status.get("phase"),
                profile=session.get("profile"),
                session_id=session.get("id"),
                intensity=_fraction(status.get("intensity")),
                levels={name: _fraction(status["levels"].get(name)) for name in CHANNELS},
                caps={name: _fraction(status["caps"].get(name), 1.0) for name in CHANNELS},
                affect=_affect(status.get("affect")),
                alarms=tuple(Alarm(str(a["id"]), str(a.get("kind", "")), str(a.get("priority", "")),
                                   str(a.get("message", "")), str(a.get("time", "")))
                             for a in status.get("alarms") or ()),
                health=tuple(Health(key, title, bool(health[key].get("ok")), _health_detail(key, health[key]))
                             for key, title in HEALTH_PARTS if key in health),
                latched=bool(latch.get("latched")),
                tripped_by=latch.get("tripped_by"),
                simulation=bool(status.get("simulation")),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise PanelProtocolError(f"the status reply lacks or garbles {exc!s}; is the daemon a matching "
                                     "relaxd version?") from exc


def _fraction(value: Any, default: float = 0.0) -> float:
    """A 0..1 level from the reply; a missing value (None) reads as the default."""
    if value is None:
        return default
    return min(1.0, max(0.0, float(value)))


def _affect(raw: Optional[Mapping[str, Any]]) -> Optional[Affect]:
    if raw is None:
        return None
    return Affect(face_present=bool(raw["face_present"]), group=str(raw.get("group") or "none"),
                  label=raw.get("label"), confidence=_fraction(raw.get("confidence")), age_s=raw.get("age_s"))


def _health_detail(key: str, part: Mapping[str, Any]) -> str:
    """A few words on a health part, for the settings screen and the dot's caption."""
    if key == "camera":
        return str(part.get("status", ""))
    if key == "outputs":
        return part.get("reason") or f"{part.get('link_faults', 0)} link faults"
    if key == "vision":
        if part.get("failure"):
            return "failed: restart"
        age = part.get("reading_age_s")
        return "no reading" if age is None else f"reading {age:.1f} s old"
    if key == "controller":
        return "on time" if part.get("loop_on_time") else "late"
    if key == "latch":
        return f"latched by {part.get('tripped_by')}" if part.get("latched") else "not latched"
    return ""


@dataclass(frozen=True)
class Sample:
    time: float  # the panel's monotonic clock
    group: str
    intensity: float


class Timeline:
    """The last ``window_s`` seconds of affect group and intensity; restarts with each new session."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[Sample] = deque()
        self._session: Optional[int] = None

    def add(self, now: float, state: PanelState) -> None:
        if not state.connected:
            return  # a gap, not a fake "none"
        if state.session_id is not None and state.session_id != self._session:
            self._samples.clear()
            self._session = state.session_id
        self._samples.append(Sample(now, state.group, state.intensity))
        while self._samples and self._samples[0].time < now - self.window_s:
            self._samples.popleft()

    def samples(self) -> tuple[Sample, ...]:
        return tuple(self._samples)

    @staticmethod
    def runs(samples: tuple[Sample, ...], gap_s: float) -> list[tuple[float, float, str]]:
        """(start, end, group) stretches of one group; a sample reaches to the next unless that is
        more than ``gap_s`` away (the panel was disconnected), so few rectangles are drawn."""
        runs: list[tuple[float, float, str]] = []
        for sample, following in zip(samples, samples[1:] + (None,)):
            end = sample.time + gap_s if following is None else min(following.time, sample.time + gap_s)
            if runs and runs[-1][2] == sample.group and runs[-1][1] >= sample.time:
                runs[-1] = (runs[-1][0], end, sample.group)
            else:
                runs.append((sample.time, end, sample.group))
        return runs


# --------------------------------------------------------------------------- the link


@dataclass(frozen=True)
class Outcome:
    """How a command went, handed to the UI thread."""

    cmd: str
    tag: str  # what the UI asked it for (defaults to cmd)
    ok: bool
    result: Any = None
    code: str = ""  # the protocol's error code, or UNREACHABLE
    message: str = ""


class ChairLink:
    """The panel's threads that talk to the daemon; all public methods return at once."""

    def __init__(self, path: Path, settings: PanelSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._state = PanelState.offline()
        self._retry_at: Optional[float] = None
        self._asked_at = float("-inf")  # when the published state's status was asked for
        self._timeline = Timeline(settings.timeline_s)
        self._commands: queue.Queue[Optional[tuple[str, str, dict[str, Any]]]] = queue.Queue()
        self._outcomes: queue.Queue[Outcome] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, name="panel-poll", daemon=True),
                         threading.Thread(target=self._work, name="panel-commands", daemon=True)]

    def start(self) -> "ChairLink":
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._commands.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(self.settings.request_timeout_s + 1.0)

    # -- what the UI reads ----------------------------------------------------------------

    @property
    def state(self) -> PanelState:
        with self._lock:
            return self._state

    def timeline(self) -> tuple[Sample, ...]:
        with self._lock:
            return self._timeline.samples()

    def retry_in(self) -> Optional[float]:
        """Seconds until the next reconnect attempt; None while connected."""
        with self._lock:
            return None if self._retry_at is None else max(0.0, self._retry_at - self._clock())

    def outcomes(self) -> list[Outcome]:
        """The commands finished since the last call, oldest first."""
        done = []
        while True:
            try:
                done.append(self._outcomes.get_nowait())
            except queue.Empty:
                return done

    # -- what the UI asks -------------------------------------------------------------------

    def send(self, cmd: str, *, tag: Optional[str] = None, **args: Any) -> None:
        """Queue a command; its ``Outcome`` (tagged ``tag``) comes back through ``outcomes()``."""
        self._commands.put((cmd, tag or cmd, args))

    def fetch(self, cmd: str, *, tag: Optional[str] = None, timeout_s: float, **args: Any) -> None:
        """A slow read-only command (a session report) on a thread of its own, waiting up to ``timeout_s``:
        pause or end-session touched meanwhile never queue behind it."""
        threading.Thread(target=self._call, args=(cmd, tag or cmd, args, timeout_s), name=f"panel-{cmd}",
                         daemon=True).start()

    def estop(self, by: str = "panel") -> None:
        """Trip the e-stop now, on a fresh connection and thread of its own: nothing queued can delay it."""
        threading.Thread(target=self._call, args=("estop", "estop", {"by": by}, self.settings.estop_timeout_s),
                         name="panel-estop", daemon=True).start()

    # -- threads ----------------------------------------------------------------------------

    def _poll(self) -> None:
        client: Optional[ControlClient] = None
        backoff = self.settings.reconnect_initial_s
        while not self._stop.is_set():
            asked_at = self._clock()
            try:
                if client is None:
                    client = ControlClient(self.path, timeout_s=self.settings.request_timeout_s).connect()
                state = PanelState.from_status(client.call("status"))
                wait, backoff = self.settings.poll_interval_s, self.settings.reconnect_initial_s
                retry_at = None
            except RelaxdError as exc:  # unreachable, refused (busy), or a reply we cannot read
                if client is not None:
                    client.close()
                    client = None
                if self.state.connected:
                    log.warning("panel.disconnected", socket=str(self.path), error=str(exc))
                state = PanelState.offline(str(exc))
                wait, backoff = backoff, min(backoff * 2.0, self.settings.reconnect_max_s)
                retry_at = self._clock() + wait
            self._publish(state, asked_at, retry_at)
            self._stop.wait(wait)
        if client is not None:
            client.close()

    def _publish(self, state: PanelState, asked_at: float, retry_at: Optional[float] = None) -> None:
        """Make ``state`` the current one, unless a newer status (asked for later) is already there."""
        with self._lock:
            if asked_at < self._asked_at:
                return
            if state.connected and not self._state.connected:
                log.info("panel.connected", socket=str(self.path))
            self._state, self._asked_at, self._retry_at = state, asked_at, retry_at
            self._timeline.add(self._clock(), state)

    def _work(self) -> None:
        while True:
            item = self._commands.get()
            if item is None or self._stop.is_set():
                return
            cmd, tag, args = item
            self._call(cmd, tag, args, self.settings.request_timeout_s)

    def _call(self, cmd: str, tag: str, args: dict[str, Any], timeout_s: float) -> None:
        """One command on a fresh connection (a connection idle for long may have been dropped by the daemon).

        A command that changed something is followed by a fresh status, published before the
        outcome: when the UI sees the outcome, the state it draws already shows its effect.
        """
        try:
            with ControlClient(self.path, timeout_s=timeout_s) as client:
                try:
                    outcome = Outcome(cmd, tag, True, client.call(cmd, **args))
                except CommandError as exc:
                    outcome = Outcome(cmd, tag, False, code=exc.code, message=exc.message)
                if outcome.ok and not cmd.startswith("list_") and cmd not in READ_ONLY:
                    self._refresh(client)
        except RelaxdError as exc:
            outcome = Outcome(cmd, tag, False, code=UNREACHABLE, message=str(exc))
        log.info("panel.command", cmd=cmd, ok=outcome.ok, code=outcome.code or None)
        self._outcomes.put(outcome)

    def _refresh(self, client: ControlClient) -> None:
        asked_at = self._clock()
        try:
            self._publish(PanelState.from_status(client.call("status")), asked_at)
        except RelaxdError as exc:  # the command went through; the poller will catch up
            log.debug("panel.refresh_failed", error=str(exc))
