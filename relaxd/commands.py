"""The chair's command table: what each control-socket command does to a running ``Chair``.

``relaxd.ipc.ControlServer`` frames requests and replies; ``ChairCommands.handle`` is its
dispatch. Commands that touch the controller (not thread-safe) run on the control-loop
thread through ``Chair.call_in_control_loop``; ``estop`` trips the safety latch directly
on the socket thread, never behind a queue. ``report`` reads only the store (thread-safe),
so it also runs on the socket thread: rendering a picture never delays the control loop.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import structlog

from relaxd.alerts import AlertError
from relaxd.control import CommandRejected, ProfileError, State
from relaxd.errors import CommandTimeoutError, RelaxdError
from relaxd.learning import child_rules, plan_start
from relaxd.ipc import (BAD_ARGS, FAILED, NOT_FOUND, REJECTED, TIMEOUT, UNKNOWN_COMMAND, CommandError,
                        resolve_socket_path)
from relaxd.report import LATEST, ReportError, UnknownSessionError, render_session_report, resolve_session
from relaxd.safety import ResetRefusedError
from relaxd.store import InvalidRecordError, RecordNotFoundError
from relaxd.vocabulary import CHANNELS

if TYPE_CHECKING:
    from relaxd.daemon import Chair

log = structlog.get_logger(__name__)

REPORTS_DIR = "reports"  # beside the control socket, in the daemon's runtime folder
REPORTS_DIR_MODE = 0o750  # the daemon writes; the socket's group (relaxctl, the panel) reads
REPORT_FILE_MODE = 0o640
ALERT_PREFIX_MIN = 4  # an alarm id may be shortened to this many characters, as long as one alarm matches


class _Args:
    """A request's arguments, read with checks that name the argument and the fix."""

    def __init__(self, cmd: str, args: Mapping[str, Any]) -> None:
        self.cmd, self._args = cmd, args

    def text(self, name: str, *, required: bool = False, default: Optional[str] = None,
             max_len: int = 128) -> Optional[str]:
        value = self._args.get(name)
        if value is None:
            if required:
                raise CommandError(BAD_ARGS, f"{self.cmd} needs the argument {name!r}")
            return default
        if not isinstance(value, str) or not value.strip() or len(value) > max_len:
            raise CommandError(BAD_ARGS, f"{self.cmd}: {name!r} must be a non-empty string of at most "
                                         f"{max_len} characters, got {value!r}")
        return value.strip()

    def number(self, name: str, low: float, high: float) -> Optional[float]:
        value = self._args.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise CommandError(BAD_ARGS, f"{self.cmd}: {name!r} must be a number from {low:g} to {high:g}, "
                                         f"got {value!r}")
        return float(value)

    def id_or_word(self, name: str, word: str) -> int | str:
        """A required record id (a whole number), or ``word`` (such as "latest")."""
        value = self._args.get(name)
        if value is None:
            raise CommandError(BAD_ARGS, f"{self.cmd} needs the argument {name!r}: an id or {word!r}")
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise CommandError(BAD_ARGS, f"{self.cmd}: {name!r} must be an id (a whole number) or {word!r}, "
                                         f"got {value!r}")
        return value

    def flag(self, name: str) -> bool:
        value = self._args.get(name, False)
        if not isinstance(value, bool):
            raise CommandError(BAD_ARGS, f"{self.cmd}: {name!r} must be true or false, got {value!r}")
        return value

    def integer(self, name: str, low: int, high: int, default: int) -> int:
        value = self._args.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CommandError(BAD_ARGS, f"{self.cmd}: {name!r} must be a whole number from {low} to {high}, "
                                         f"got {value!r}")
        return value


@dataclass(frozen=True)
class _Command:
    run: Callable[["ChairCommands", _Args], Any]
    args: tuple[str, ...] = ()


class ChairCommands:
    """The command table of a running ``Chair``; ``handle`` is the server's dispatch."""

    def __init__(self, chair: "Chair", timeout_s: float) -> None:
        self.chair = chair
        self.timeout_s = timeout_s
        self._reporting = threading.Lock()  # one render at a time: same temporary names, and a Pi's CPU
        self._erasing: Optional[str] = None  # the profile being deleted: no session of it may start

    def handle(self, cmd: str, args: dict[str, Any]) -> Any:
        command = COMMANDS.get(cmd)
        if command is None:
            raise CommandError(UNKNOWN_COMMAND, f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}")
        unknown = set(args) - set(command.args)
        if unknown:
            allowed = ", ".join(command.args) or "none"
            raise CommandError(BAD_ARGS, f"{cmd}: unknown argument(s) {sorted(unknown)}; allowed: {allowed}")
        try:
            return command.run(self, _Args(cmd, args))
        except (CommandRejected, ResetRefusedError) as exc:
            raise CommandError(REJECTED, str(exc)) from exc
        except RecordNotFoundError as exc:
            raise CommandError(NOT_FOUND, str(exc)) from exc
        except (ProfileError, InvalidRecordError, AlertError) as exc:
            raise CommandError(BAD_ARGS, str(exc)) from exc
        except CommandTimeoutError as exc:
            raise CommandError(TIMEOUT, str(exc)) from exc
        except CommandError:
            raise
        except RelaxdError as exc:
            raise CommandError(FAILED, str(exc)) from exc

    def _in_loop(self, command: Callable[[float], Any]) -> Any:
        return self.chair.call_in_control_loop(command, self.timeout_s)

    def _state(self) -> str:
        return self.chair.controller.state.value

    # -- commands -------------------------------------------------------------------------

    def status(self, args: _Args) -> dict[str, Any]:
        return self.chair.status()

    def start(self, args: _Args) -> dict[str, Any]:
        """Start a session: the named scenario (the operator's choice wins over the learner's), else
        the profile's preferred one, else the learner's choice (what ``suggest`` shows)."""
        profile = args.text("profile", required=True, max_len=64)
        scenario = args.text("scenario")
        chair, store = self.chair, self._store()
        stored = store.find_profile(profile)  # here, so the control loop never reads the store
        if scenario is not None and scenario in child_rules(store, stored).excluded:
            raise CommandRejected(f"{scenario!r} is excluded for {profile!r} by a therapist: choose another, or "
                                  f"include it again first (relaxctl include-scenario {profile} {scenario})")
        plan = None if scenario is not None else plan_start(store, chair.controller.scenarios,
                                                             chair.settings.control, profile, stored)

        def start(now: float) -> tuple[Any, list]:
            # Checked before start_session, which creates the profile and sets caps first.
            if chair.controller.state != State.IDLE:
                raise CommandRejected(f"cannot start a session while {chair.controller.state}; "
                                      "stop it (or reset the emergency stop or fault) first")
            if self._erasing is not None and self._erasing == profile:
                raise CommandRejected(f"profile {profile!r} is being deleted right now")
            if scenario is not None and scenario not in chair.controller.scenario_names:
                raise CommandRejected(f"no scenario named {scenario!r}; choose one of {chair.controller.scenario_names}")
            if plan is None:
                handle = chair.start_session(profile, scenario, now, stored)
            else:
                handle = chair.start_session(profile, plan.scenario, now, stored, chosen_by=plan.chosen_by,
                                             why=plan.why, switcher=plan.switcher)
            chosen = chair.controller.chosen_by
            return ({"state": self._state(), "profile": profile, "scenario": chair.controller.scenario,
                     "chosen_by": chosen.value if chosen else None, "why": plan.why if plan else ""}, handle), []

        result, handle = self._in_loop(start)
        # The recorder writes the session's row; a store slow to answer delays only this reply's id.
        return {**result, "session_id": handle.wait_recorded(self.timeout_s)}

    def _operator(self, action: str) -> dict[str, Any]:
        def run(now: float) -> tuple[dict[str, Any], list]:
            events = getattr(self.chair.controller, action)(now)
            return {"state": self._state(), "changed": bool(events)}, events

        return self._in_loop(run)

    def pause(self, args: _Args) -> dict[str, Any]:
        return self._operator("pause")

    def resume(self, args: _Args) -> dict[str, Any]:
        return self._operator("resume")

    def stop(self, args: _Args) -> dict[str, Any]:
        return self._operator("stop")

    def estop(self, args: _Args) -> dict[str, Any]:
        """Straight to the latch on this thread: outputs are off before the reply is sent."""
        latch = self.chair.latch
        newly = latch.trip(args.text("by", default="socket", max_len=64), "emergency stop over the control socket")
        levels = self.chair.bank.levels
        return {"latched": latch.latched, "newly_latched": newly, "tripped_by": latch.tripped_by,
                "levels": {"light": levels.light_brightness, "sound": levels.sound_volume,
                           "vibration": levels.vibration}}

    def reset(self, args: _Args) -> dict[str, Any]:
        """Reset the emergency stop, or a fault: to idle, never restarting stimulation."""
        by = args.text("by", default="socket", max_len=64)
        chair = self.chair

        def reset(now: float) -> tuple[dict[str, Any], list]:
            why = chair.restart_needed  # e.g. a lost link: the outputs stay latched off until a restart
            if why is not None:
                raise CommandRejected(f"{why}; then restart the daemon: sudo systemctl restart relaxd")
            if chair.controller.state == State.FAULT and not chair.latch.latched:
                events = chair.controller.clear_fault(now)
                log.info("fault reset", by=by)
                return {"state": self._state(), "latched": False}, events
            if not chair.latch.latched and chair.controller.state != State.ESTOPPED:
                raise CommandRejected("neither the emergency stop is latched nor a fault active: nothing to reset")
            chair.latch.reset(by)  # ResetRefusedError while the button is still pressed
            chair.bank.reset_latch()
            if chair.latch.latched:  # tripped again meanwhile: the trip wins
                chair.bank.all_off("e-stop tripped during reset")
                raise CommandRejected("the emergency stop tripped again during the reset; check the chair, "
                                      "then reset again")
            events = chair.controller.reset_estop(now)
            return {"state": self._state(), "latched": False}, events

        return self._in_loop(reset)

    def ack(self, args: _Args) -> dict[str, Any]:
        alert_id = self._alert_id(args.text("id", required=True, max_len=64))
        by = args.text("by", default="socket", max_len=64)
        if self.chair.alerts is None:
            raise CommandError(FAILED, "alerts are not running")
        return self.chair.alerts.acknowledge(alert_id, by).to_dict()

    def _alert_id(self, given: str) -> str:
        """The alarm a full id or an unambiguous prefix of at least ``ALERT_PREFIX_MIN`` characters names (as git
        takes commit ids): nobody should have to type 32 hex digits at a chair."""
        if len(given) < ALERT_PREFIX_MIN:
            raise CommandError(BAD_ARGS, f"alarm id {given!r} is too short: give at least {ALERT_PREFIX_MIN} of its "
                                         "characters (relaxctl status lists the alarms)")
        matches = self._store().alert_ids_starting(given)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CommandError(NOT_FOUND, f"no alarm id starts with {given!r} (relaxctl status lists the alarms)")
        raise CommandError(BAD_ARGS, f"{given!r} starts {len(matches)}{'+' if len(matches) >= 10 else ''} alarm ids "
                                     f"({', '.join(m[:12] for m in matches[:3])}...): give more characters")

    def set_caps(self, args: _Args) -> dict[str, Any]:
        caps = {name: args.number(name, 0.0, 1.0) for name in CHANNELS}
        caps = {name: value for name, value in caps.items() if value is not None}
        if not caps:
            raise CommandError(BAD_ARGS, "set-caps needs at least one of --light, --sound, --vibration (each 0 to 1)")
        chair = self.chair

        def set_caps(now: float) -> tuple[Any, list]:
            chair.bank.set_caps(**caps)
            return (chair.bank.caps, chair.session), []

        effective, session = self._in_loop(set_caps)
        profile = None  # saved here, off the control loop
        if session is not None and session.wait_recorded(self.timeout_s) is not None and session.profile_id is not None:
            fields = {f"{name}_cap": value for name, value in caps.items()}
            profile = self._store().update_profile(session.profile_id, **fields).pseudonym
        return {"caps": effective, "profile": profile, "persisted": profile is not None}

    def list_profiles(self, args: _Args) -> list[dict[str, Any]]:
        """Each profile with the caps it asks for and, as ``effective_caps``, what this chair gives it
        (the lower of those and the chair's ceilings, as ``status`` shows during a session)."""
        bank = self.chair.bank
        return [{**asdict(profile),
                 "effective_caps": bank.capped({channel: getattr(profile, f"{channel}_cap") for channel in CHANNELS})}
                for profile in self._store().list_profiles()]

    def delete_profile(self, args: _Args) -> dict[str, Any]:
        """Erase a child's profile (and, when asked, every session of it); never the one in session.

        The control loop only checks and claims the profile (no session of it may start until
        the deletion ends); the deletion itself runs here, a session per transaction, so the
        control loop never waits for it. Reports of those sessions drawn beside the socket go too.
        """
        pseudonym = args.text("profile", required=True, max_len=64)
        with_sessions = args.flag("with_sessions")
        by = args.text("by", default="socket", max_len=64)
        chair, store = self.chair, self._store()

        if self._erasing is not None:  # checked again in the control loop, where it is claimed
            raise CommandRejected(f"profile {self._erasing!r} is being deleted: try again when that is done")
        profile = store.find_profile(pseudonym)
        if profile is None:
            raise RecordNotFoundError(f"no profile named {pseudonym!r} (relaxctl list-profiles lists them)")

        def claim(now: float) -> tuple[int, list]:
            if self._erasing is not None:
                raise CommandRejected(f"profile {self._erasing!r} is being deleted: try again when that is done")
            if chair.session is not None and chair.session.pseudonym == profile.pseudonym:
                raise CommandRejected(f"{pseudonym!r} is in a session now: end it first (stop)")
            self._erasing = profile.pseudonym
            return profile.id, []

        profile_id = self._in_loop(claim)
        try:
            session_ids = store.delete_profile(profile_id, with_sessions=with_sessions)
        finally:
            self._erasing = None
        reports = self._delete_reports(session_ids)
        log.warning("profile deleted", profile=pseudonym, sessions=len(session_ids), reports=reports, by=by)
        return {"profile": pseudonym, "sessions_deleted": len(session_ids), "reports_deleted": reports}

    def _delete_reports(self, session_ids: list[int]) -> int:
        """Delete the report files of these sessions from the reports folder; how many went."""
        socket_path = resolve_socket_path(self.chair.settings.ipc.socket)
        folder = None if socket_path is None else socket_path.parent / REPORTS_DIR
        if folder is None or not folder.is_dir():
            return 0
        files = [f for session_id in session_ids for f in folder.glob(f"session-{session_id}-*")]
        for file in files:
            file.unlink(missing_ok=True)
        return len(files)

    def list_scenarios(self, args: _Args) -> list[dict[str, Any]]:
        default = self.chair.settings.control.default_scenario
        scenarios = self.chair.controller.scenarios
        return [{"name": name, "default": name == default, "features": scenarios[name].features.describe(),
                 "description": scenarios[name].description} for name in self.chair.controller.scenario_names]

    def suggest(self, args: _Args) -> dict[str, Any]:
        """What ``start`` without a scenario would play for this child, who chose it and why, with the
        learner's estimate per scenario and the therapist's exclusions and blocks."""
        pseudonym = args.text("profile", required=True, max_len=64)
        store, chair = self._store(), self.chair
        profile = store.find_profile(pseudonym)
        plan = plan_start(store, chair.controller.scenarios, chair.settings.control, pseudonym, profile)
        return {"profile": pseudonym, "new_child": profile is None, **plan.to_dict()}

    def _scenario_rule(self, args: _Args, rule: str, *, clear: bool) -> dict[str, Any]:
        pseudonym = args.text("profile", required=True, max_len=64)
        scenario = args.text("scenario", required=True, max_len=64)
        by = args.text("by", default="socket", max_len=64)
        if scenario not in self.chair.controller.scenarios:
            raise CommandError(NOT_FOUND, f"no scenario named {scenario!r}; choose one of "
                                          f"{self.chair.controller.scenario_names}")
        store = self._store()
        profile = store.find_profile(pseudonym)
        if profile is None:
            raise RecordNotFoundError(f"no profile named {pseudonym!r} (relaxctl list-profiles lists them)")
        if clear:
            changed = store.clear_scenario_rule(profile.id, scenario, rule)
        else:
            store.set_scenario_rule(profile.id, scenario, rule, reason=f"by {by}", set_by=by)
            changed = True
        log.warning("scenario rule", profile=pseudonym, scenario=scenario, rule=rule, cleared=clear,
                    changed=changed, by=by)
        return {"profile": pseudonym, "scenario": scenario, "rule": rule, "cleared": clear, "changed": changed}

    def list_blocked(self, args: _Args) -> list[dict[str, Any]]:
        """Scenarios blocked after a halt, every child, newest first: what waits for a therapist."""
        return [{"profile": pseudonym, "scenario": rule.scenario, "reason": rule.reason, "set_at": rule.set_at}
                for pseudonym, rule in self._store().blocked_scenarios()]

    def approve_scenario(self, args: _Args) -> dict[str, Any]:
        """A therapist approves a scenario blocked after a halt: the learner may choose it again."""
        return self._scenario_rule(args, "blocked", clear=True)

    def exclude_scenario(self, args: _Args) -> dict[str, Any]:
        """A therapist excludes a scenario for a child: never chosen, nor startable, until included."""
        return self._scenario_rule(args, "excluded", clear=False)

    def include_scenario(self, args: _Args) -> dict[str, Any]:
        return self._scenario_rule(args, "excluded", clear=True)

    def list_sessions(self, args: _Args) -> list[dict[str, Any]]:
        store = self._store()
        limit = args.integer("limit", 1, 1000, 20)
        pseudonym = args.text("profile", max_len=64)
        names = {p.id: p.pseudonym for p in store.list_profiles()}
        profile_id = None
        if pseudonym is not None:
            found = store.find_profile(pseudonym)
            if found is None:
                raise CommandError(NOT_FOUND, f"no profile named {pseudonym!r} (relaxctl list-profiles lists them)")
            profile_id = found.id
        return [{**asdict(s), "profile": names.get(s.profile_id)}
                for s in store.list_sessions(profile_id=profile_id, limit=limit)]

    def report(self, args: _Args) -> dict[str, Any]:
        """The session's report picture and table, written beside the socket; replies their paths."""
        spec = args.id_or_word("session", LATEST)
        store = self._store()
        try:
            session_id = resolve_session(store, spec)
        except UnknownSessionError as exc:
            raise CommandError(NOT_FOUND, str(exc)) from exc
        except ReportError as exc:
            raise CommandError(BAD_ARGS, str(exc)) from exc
        folder = self._reports_dir()
        try:
            with self._reporting:
                png, table = render_session_report(store, session_id, folder)
                for path in (png, table):
                    os.chmod(path, REPORT_FILE_MODE)
        except UnknownSessionError as exc:
            raise CommandError(NOT_FOUND, str(exc)) from exc
        except (ReportError, OSError) as exc:  # matplotlib missing, folder not writable
            raise CommandError(FAILED, str(exc)) from exc
        log.info("ipc.report", session=session_id, png=str(png))
        return {"session": session_id, "png": str(png), "csv": str(table)}

    def _reports_dir(self) -> Path:
        """``reports/`` beside the socket: mode 0750 and the socket's group, so relaxctl and the panel may read."""
        socket_path = resolve_socket_path(self.chair.settings.ipc.socket)
        if socket_path is None:
            raise CommandError(FAILED, "ipc.socket is empty: there is no runtime folder to write reports into")
        folder = socket_path.parent / REPORTS_DIR
        try:
            folder.mkdir(mode=REPORTS_DIR_MODE, exist_ok=True)
            info = os.stat(folder)
            if info.st_uid == os.geteuid():  # ours: mkdir's mode was cut by the umask, and the group is the daemon's
                os.chmod(folder, REPORTS_DIR_MODE)
                group = os.stat(socket_path).st_gid if socket_path.exists() else info.st_gid
                if group != info.st_gid:
                    os.chown(folder, -1, group)
        except PermissionError as exc:
            if not folder.is_dir():
                raise CommandError(FAILED, f"cannot create the reports folder {folder} ({exc}): the folder of "
                                           "ipc.socket must be writable by the relaxd user") from exc
            log.info("ipc.reports_group_not_set", folder=str(folder), error=str(exc))
        except OSError as exc:
            raise CommandError(FAILED, f"cannot create the reports folder {folder} ({exc}): the folder of "
                                       "ipc.socket must be writable by the relaxd user") from exc
        return folder

    def _store(self) -> Any:
        """The store, once the rows the control loop queued so far are written (read your writes).

        Waits up to the command timeout on this socket thread, never on the control loop; a
        store that stays unavailable answers with what it has.
        """
        if self.chair.store is None:
            raise CommandError(FAILED, "the session store is not open")
        if self.chair.recorder is not None:
            self.chair.recorder.drain(self.timeout_s)
        return self.chair.store


COMMANDS: dict[str, _Command] = {
    "status": _Command(ChairCommands.status),
    "start": _Command(ChairCommands.start, ("profile", "scenario")),
    "pause": _Command(ChairCommands.pause),
    "resume": _Command(ChairCommands.resume),
    "stop": _Command(ChairCommands.stop),
    "estop": _Command(ChairCommands.estop, ("by",)),
    "reset": _Command(ChairCommands.reset, ("by",)),
    "ack": _Command(ChairCommands.ack, ("id", "by")),
    "set_caps": _Command(ChairCommands.set_caps, CHANNELS),
    "list_profiles": _Command(ChairCommands.list_profiles),
    "delete_profile": _Command(ChairCommands.delete_profile, ("profile", "with_sessions", "by")),
    "list_scenarios": _Command(ChairCommands.list_scenarios),
    "suggest": _Command(ChairCommands.suggest, ("profile",)),
    "list_blocked": _Command(ChairCommands.list_blocked),
    "approve_scenario": _Command(ChairCommands.approve_scenario, ("profile", "scenario", "by")),
    "exclude_scenario": _Command(ChairCommands.exclude_scenario, ("profile", "scenario", "by")),
    "include_scenario": _Command(ChairCommands.include_scenario, ("profile", "scenario", "by")),
    "list_sessions": _Command(ChairCommands.list_sessions, ("limit", "profile")),
    "report": _Command(ChairCommands.report, ("session",)),
}


def finite(value: float) -> Optional[float]:
    """JSON has no infinity: None for a value that is not a finite number."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
