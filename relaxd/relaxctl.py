"""``relaxctl``: talk to a running relaxd over its control socket.

    relaxctl [--socket PATH] [--json] COMMAND [args]

Readable output by default; ``--json`` prints the daemon's result as JSON for scripts.
Exit codes: 0 done; 1 the daemon refused the command (the message says why);
2 cannot reach the daemon (the message says whether it runs, and the socket path or
permission problem), or a usage error.

Which socket: ``--socket``, else ``$RELAXD_SOCKET``, else ``ipc.socket`` of ``--config FILE``,
else the default ``ipc.socket`` or the Pi's ``/run/relaxd/relaxd.sock``, whichever exists.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from relaxd.errors import RelaxdError
from relaxd.ipc import CommandError, ControlClient, DaemonUnreachableError, resolve_socket_path
from relaxd.settings import IpcSettings
from relaxd.store import describe_end_reason, local_time
from relaxd.vocabulary import CHANNELS

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2

PI_SOCKET = Path("/run/relaxd/relaxd.sock")


# --------------------------------------------------------------------------- readable output


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _levels(levels: dict[str, Any]) -> str:
    return "  ".join(f"{name} {_num(levels.get(name))}" for name in CHANNELS)


def show_status(result: dict[str, Any]) -> str:
    lines = [f"state     {result['state']}" + (f" ({result['reason']})" if result.get("reason") else "")]
    decision = result.get("last_decision")
    if decision:
        lines.append(f"decided   {decision['kind'].replace('_', ' ')} {decision['age_s']:.0f} s ago: "
                     f"{decision['reason']}")
    session = result.get("session")
    last = result.get("last_session")
    if session:
        lines.append(f"session   {session['id']}, profile {session['profile']}, scenario {result.get('scenario')}, "
                     f"intensity {_num(result.get('intensity'))}")
    elif last:
        lines.append(f"session   none (the last, {last['id']} for {last['profile']}, ended: "
                     f"{describe_end_reason(last['end_reason'])})")
    else:
        lines.append("session   none")
    lines.append(f"outputs   {_levels(result['levels'])}   (caps {_levels(result['caps'])})")
    affect = result.get("affect")
    if affect is None:
        lines.append("affect    no reading yet")
    elif not affect["face_present"]:
        lines.append(f"affect    no face ({_num(affect.get('age_s'))} s ago)")
    else:
        lines.append(f"affect    {affect['group']} ({affect['label']}, confidence {_num(affect['confidence'])}), "
                     f"{_num(affect.get('age_s'))} s ago")
    latch = result["health"]["latch"]
    lines.append(f"e-stop    LATCHED by {latch['tripped_by']} at {latch['tripped_at']}" if latch["latched"] else
                 "e-stop    not latched")
    alarms = result.get("alarms") or []
    lines.append(f"alarms    {len(alarms)} active" if alarms else "alarms    none")
    lines += [f"  {a['id']}  {a['priority']:<6} {a['kind']}: {a['message']} ({a['time']})" for a in alarms]
    health = ", ".join(f"{name} {'ok' if part['ok'] else 'PROBLEM'}" for name, part in result["health"].items())
    lines.append(f"health    {health}")
    return "\n".join(lines)


def show_table(rows: list[dict[str, Any]], columns: Sequence[str], empty: str) -> str:
    if not rows:
        return empty
    cells = [[("-" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def show_profiles(rows: list[dict[str, Any]]) -> str:
    """Caps as this chair applies them; a cap held lower by the chair's ceiling is starred and explained."""
    limited = False
    table = []
    for row in rows:
        cells = {"pseudonym": row["pseudonym"], "preferred scenario": row.get("preferred_scenario")}
        for channel in CHANNELS:
            asked, given = row[f"{channel}_cap"], row.get("effective_caps", {}).get(channel, row[f"{channel}_cap"])
            cells[channel] = f"{given:.2f}" + ("*" if given < asked else "")
            limited = limited or given < asked
        table.append(cells)
    text = show_table(table, ("pseudonym", *CHANNELS, "preferred scenario"), "no profiles")
    if limited:
        text += ("\n* held lower by this chair's ceiling (actuators.max_light/max_sound/max_vibration); "
                 "the profile asks for more")
    return text


def show_caps(result: dict[str, Any]) -> str:
    where = (f"saved to profile {result['profile']}" if result["persisted"]
             else "no session running: applies until the next session starts with its profile's caps")
    return f"caps {_levels(result['caps'])}; {where}"


def show_suggestion(result: dict[str, Any]) -> str:
    """What `start PROFILE` would play, who chose it and why; the therapist's exclusions and blocks."""
    who = {"learner": "the learner suggests", "profile": "the profile prefers",
           "default": "the chair's default is"}.get(result["chosen_by"], result["chosen_by"])
    lines = [f"{result['profile']}{' (new child)' if result.get('new_child') else ''}: {who} "
             f"{result['scenario']}: {result['why']}"]
    if result.get("excluded"):
        lines.append(f"excluded by a therapist: {', '.join(result['excluded'])}")
    for scenario, why in (result.get("blocked") or {}).items():
        lines.append(f"blocked until a therapist approves it (relaxctl approve-scenario): {scenario}: {why}")
    return "\n".join(lines)


def show_rule(result: dict[str, Any]) -> str:
    action = {("blocked", True): "approved: the learner may choose it again",
              ("excluded", False): "excluded: never chosen nor started for this child",
              ("excluded", True): "included again"}[(result["rule"], result["cleared"])]
    return f"{result['scenario']} for {result['profile']}: {action}" + ("" if result["changed"] else " (no change)")


def _operated(result: dict[str, Any], verb: str) -> str:
    return f"state {result['state']}" + ("" if result.get("changed", True) else f" (nothing to {verb})")


SHOW: dict[str, Callable[[Any], str]] = {
    "status": show_status,
    "start": lambda r: f"started session {r['session_id']} for {r['profile']}: scenario {r['scenario']} "
                       f"(state {r['state']}; chosen by {r.get('chosen_by')}{': ' + r['why'] if r.get('why') else ''})",
    "suggest": show_suggestion,
    "list_blocked": lambda rows: show_table(rows, ("profile", "scenario", "reason"), "no scenario is blocked"),
    "approve_scenario": show_rule,
    "exclude_scenario": show_rule,
    "include_scenario": show_rule,
    "pause": lambda r: _operated(r, "pause"),
    "resume": lambda r: _operated(r, "resume"),
    "stop": lambda r: _operated(r, "stop"),
    "estop": lambda r: f"EMERGENCY STOP latched (by {r['tripped_by']}); outputs off",
    "reset": lambda r: f"reset; state {r['state']} (start a session to stimulate again)",
    "ack": lambda r: f"acknowledged {r['id']} ({r['kind']}) by {r['acknowledged_by']}",
    "set_caps": show_caps,
    "list_profiles": lambda rows: show_profiles(rows),
    "list_scenarios": lambda rows: show_table(rows, ("name", "default", "features"), "no scenarios"),
    "list_sessions": lambda rows: show_table([{**row, "started": local_time(row.get("started_at")),
                                               "ended": local_time(row.get("ended_at")),
                                               "how it ended": (describe_end_reason(row.get("end_reason"))
                                                                if row.get("ended_at") else "not ended")}
                                              for row in rows],
                                             ("id", "profile", "scenario", "started", "ended", "how it ended"),
                                             "no sessions"),
    "delete_profile": lambda r: (f"deleted profile {r['profile']}, {r['sessions_deleted']} session(s) and "
                                 f"{r['reports_deleted']} report file(s)"),
    "report": lambda r: f"report of session {r['session']}:\n  picture  {r['png']}\n  table    {r['csv']}",
}


# --------------------------------------------------------------------------- arguments


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name (a container without passwd entry)
        return "relaxctl"


def _bounded(kind: Callable[[str], Any], low: float, high: float, what: str) -> Callable[[str], Any]:
    """An argparse type: a finite number in [low, high], else a message that says what is allowed."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what}") from None
        if not low <= value <= high:  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {what}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaxctl", description="Control a running relaxd over its socket.",
                                     epilog="exit codes: 0 done, 1 refused by relaxd, 2 cannot reach relaxd")
    parser.add_argument("--socket", type=Path, metavar="PATH", help="the control socket (default: from --config, else relaxd's default)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="take the socket path from this relaxd config")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser.add_argument("--timeout", type=_bounded(float, 0.1, 600.0, "seconds from 0.1 to 600"), default=5.0,
                        metavar="S", help="wait this long for an answer (0.1 to 600 s, default 5)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, aliases=list(aliases))
        p.set_defaults(cmd=name.replace("-", "_"))
        return p

    command("status", "state, session, outputs, affect, alarms and health")
    start = command("start", "start a session for a child profile (created if new)")
    start.add_argument("profile", help="the child's pseudonym (never the real name)")
    start.add_argument("--scenario", help="default: the profile's preferred one, else the learner's choice "
                                          "(relaxctl suggest shows it and why)")
    command("suggest", "the scenario a start without --scenario would play for a child, and why"
            ).add_argument("profile", help="the child's pseudonym")
    command("list-blocked", "scenarios blocked after a halt, waiting for a therapist's approval",
            aliases=["list_blocked", "blocked"])
    for name, help in (("approve-scenario", "a therapist approves a scenario blocked after a halt for a child"),
                       ("exclude-scenario", "a therapist excludes a scenario for a child (never chosen nor started)"),
                       ("include-scenario", "undo exclude-scenario")):
        rule = command(name, help, aliases=[name.replace("-", "_")])
        rule.add_argument("profile", help="the child's pseudonym")
        rule.add_argument("scenario", help="the scenario's name (relaxctl list-scenarios)")
        rule.add_argument("--by", default=_who(), help="who (default: your user name)")
    command("pause", "pause the session (low intensity, programme held)")
    command("resume", "resume a paused or halted session")
    command("stop", "end the session with a fade-out")
    for name, help in (("estop", "EMERGENCY STOP: every output off at once, latched"),
                       ("reset", "reset the emergency stop or a fault (starts nothing)")):
        command(name, help).add_argument("--by", default=_who(), help="who (default: your user name)")
    ack = command("ack", "acknowledge an alarm")
    ack.add_argument("id", help="the alarm id, or its first few characters (relaxctl status lists them)")
    ack.add_argument("--by", default=_who(), help="who acknowledged (default: your user name)")
    caps = command("set-caps", "set the child's caps (0..1); saved to the profile while a session runs",
                   aliases=["set_caps"])
    for name in CHANNELS:
        caps.add_argument(f"--{name}", type=_bounded(float, 0.0, 1.0, "a cap from 0 to 1"), metavar="X",
                          help=f"{name} cap, 0..1")
    command("list-profiles", "child profiles", aliases=["list_profiles", "profiles"])
    delete = command("delete-profile", "erase a child's profile (and with --with-sessions its sessions)",
                     aliases=["delete_profile"])
    delete.add_argument("profile", help="the child's pseudonym")
    delete.add_argument("--with-sessions", action="store_true",
                        help="also erase every recorded session of it (keep the reports you need first)")
    delete.add_argument("--by", default=_who(), help="who (default: your user name)")
    command("list-scenarios", "scenarios the daemon loaded", aliases=["list_scenarios", "scenarios"])
    sessions = command("list-sessions", "recorded sessions, newest first", aliases=["list_sessions", "sessions"])
    sessions.add_argument("--limit", type=_bounded(int, 1, 10000, "a whole number from 1 to 10000"), default=20, help="at most this many (default 20)")
    sessions.add_argument("--profile", help="only this profile's sessions")
    report = command("report", "draw a session's report (PNG picture, CSV table) beside the socket")
    report.add_argument("session", help="a session id (see list-sessions) or 'latest'")
    return parser


ARGS: dict[str, tuple[str, ...]] = {
    "start": ("profile", "scenario"), "estop": ("by",), "reset": ("by",), "ack": ("id", "by"),
    "set_caps": CHANNELS, "list_sessions": ("limit", "profile"),
    "delete_profile": ("profile", "with_sessions", "by"),
    "report": ("session",), "suggest": ("profile",),
    **{name: ("profile", "scenario", "by") for name in ("approve_scenario", "exclude_scenario", "include_scenario")},
}


def socket_path(args: argparse.Namespace) -> Path:
    """The socket to use (see the module docstring for the order)."""
    if args.socket is not None:
        return args.socket
    if os.environ.get("RELAXD_SOCKET"):
        return Path(os.environ["RELAXD_SOCKET"])
    if args.config is not None:
        from relaxd.config import load_settings

        configured = resolve_socket_path(load_settings(args.config).ipc.socket)
        if configured is None:
            raise DaemonUnreachableError(f"{args.config} sets no ipc.socket: that relaxd has no control socket")
        return configured
    default = resolve_socket_path(IpcSettings().socket)
    candidates = [p for p in (default, PI_SOCKET) if p is not None]
    return next((p for p in candidates if p.exists()), candidates[0])


# --------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``relaxctl`` console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_UNREACHABLE
    request = {name: getattr(args, name) for name in ARGS.get(args.cmd, ())}
    try:
        path = socket_path(args)
        with ControlClient(path, timeout_s=args.timeout) as client:
            result = client.call(args.cmd, **request)
    except CommandError as error:
        if args.json:
            print(json.dumps({"error": {"code": error.code, "message": error.message}}))
        print(f"relaxctl: {args.cmd.replace('_', '-')} refused: {error.message}", file=sys.stderr)
        return EXIT_REFUSED
    except RelaxdError as error:  # unreachable daemon, bad socket setting or config file
        print(f"relaxctl: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(result, indent=2) if args.json else SHOW[args.cmd](result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
