"""The ``relaxd`` command: global options, a table of subcommands, and exit codes.

Adding a subcommand is adding one ``Command`` to ``COMMANDS``: its name, a help line,
an optional function that adds its arguments, and a handler ``(args) -> exit code``.
Before the handler runs, ``main`` has read ``--config`` (or taken the defaults) into
``args.settings`` and configured logging. Handlers import heavy modules (OpenCV,
TFLite) inside their body, so ``relaxd check-config`` stays fast on a Pi.

Exit codes: 0 success; 1 the command failed; 2 usage or configuration error (any
``RelaxdError`` becomes one ``relaxd: error: ...`` message, no traceback); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import structlog

from relaxd import __version__
from relaxd.config import changed_settings, load_settings, render_example
from relaxd.errors import ConfigError, RelaxdError
from relaxd.logs import FORMATS, LEVELS, configure_logging
from relaxd.settings import Settings

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """One ``relaxd <name>`` subcommand."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


# --------------------------------------------------------------------------- commands


def _add_check_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", type=Path,
                        help="the YAML file to check (default: the global --config file)")


def check_scenarios(settings: Settings) -> None:
    """What the daemon checks at start beyond the file itself: the scenarios load, the default is one."""
    from relaxd.control import load_scenarios

    scenarios = load_scenarios(settings.control.scenarios_file or None)
    if settings.control.default_scenario not in scenarios:
        raise ConfigError(f"control.default_scenario {settings.control.default_scenario!r} is not a loaded "
                          f"scenario; choose one of {sorted(scenarios)}")


def check_config(args: argparse.Namespace) -> int:
    """Validate a config file; print ``FILE: OK`` and the settings that differ from the defaults."""
    path = args.file or args.config
    if path is None:
        raise ConfigError("check-config needs a file: relaxd check-config FILE (or relaxd --config FILE check-config)")
    settings = load_settings(path)
    check_scenarios(settings)
    changed = changed_settings(settings)
    print(f"{path}: OK")
    if not changed:
        print("  every setting at its default")
    else:
        print(f"  {len(changed)} setting(s) differ from the defaults:")
        for key, value in changed.items():
            print(f"    {key} = {value!r}")
    return EXIT_OK


def example_config(args: argparse.Namespace) -> int:
    """Print the documented example config (every key at its default)."""
    sys.stdout.write(render_example())
    return EXIT_OK


def _add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="video file to replay, or 'demo' for the generated demo clip")
    parser.add_argument("--model", type=Path, help="model .tflite (default: classifier.model, else the shipped one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (frames, fps, stage_ms, labels, timeline)")
    parser.add_argument("--annotate", type=Path, metavar="OUT.mp4", help="write the clip with face box and label drawn")
    parser.add_argument("--csv", type=Path, metavar="OUT.csv", help="write one row per frame")


def replay_command(args: argparse.Namespace) -> int:
    """Run the daemon's vision path over a clip as fast as possible and summarise it."""
    import dataclasses
    import json

    from relaxd.demo import ensure_demo_clip
    from relaxd.replay import replay

    settings: Settings = args.settings
    if args.model is not None:
        settings = dataclasses.replace(
            settings, classifier=dataclasses.replace(settings.classifier, model=str(args.model)))
    video = ensure_demo_clip(demo_cache_dir()) if args.video == "demo" else Path(args.video)
    summary = replay(video, settings, annotate_to=args.annotate, csv_to=args.csv)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(summary.describe())
    return EXIT_OK


def demo_cache_dir() -> Path:
    """Where the generated demo clip is kept (it is synthetic: no child's image)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "relaxd"


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", metavar="PSEUDONYM",
                        help="start a session for this child profile at once (created if new); "
                             "in simulation the default is 'demo'")
    parser.add_argument("--scenario", help="scenario for that session (default: the profile's, else control.default_scenario)")
    parser.add_argument("--no-session", action="store_true", help="start idle, even in simulation")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until SIGTERM/Ctrl-C)")


def run_command(args: argparse.Namespace) -> int:
    """Run the chair: capture, vision, affect, controller, actuators, safety, alerts, store."""
    from relaxd.daemon import Chair, is_simulation, resolve_demo_source

    settings = resolve_demo_source(args.settings, demo_cache_dir())
    simulation = is_simulation(args.settings)
    if simulation:
        a = settings.actuators
        camera = repr(args.settings.camera.source)
        if args.settings.camera.source == "demo":
            clip = Path(settings.camera.source)
            camera = (f"'demo' (a generated clip of a sample photo, {clip.stat().st_size / 1e6:.1f} MB, kept in "
                      f"{clip.parent} for the next run; delete it any time)")
        print(f"relaxd: simulation: camera {camera}, outputs light={a.light_backend} "
              f"sound={a.sound_backend} vibration={a.vibration_backend}", file=sys.stderr)
    profile = None if args.no_session else (args.profile or ("demo" if simulation else None))
    chair = Chair(settings)
    report = chair.run(duration_s=args.duration, profile=profile, scenario=args.scenario)
    print(report.describe())
    if report.stuck_threads:
        leave_past_stuck_threads(report.stuck_threads, EXIT_OK)
    return EXIT_OK


def leave_past_stuck_threads(threads: Sequence[str], code: int) -> NoReturn:
    """Exit now, skipping interpreter finalisation, because a thread is stuck in native code.

    Python finalising while a thread is inside an OpenCV or camera call aborts the process
    (exit 134), which systemd would count as a crash and alert the caregiver about. The
    outputs are off and closed and the record is written by now; nothing is left to finalise.
    """
    print(f"relaxd: {', '.join(threads)} still blocked in a camera or vision call after the outputs went off; "
          "exiting without waiting for it", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def safe_state_command(args: argparse.Namespace) -> int:
    """Drive every configured output off; for systemd's ExecStopPost after a crash."""
    from relaxd.safety import SafetyError, safe_state

    try:
        lines = safe_state(args.settings)
    except SafetyError as error:
        print(f"relaxd safe-state: {error}", file=sys.stderr)
        return EXIT_FAILURE
    for line in lines:
        print(line)
    return EXIT_OK


def _add_selftest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hold", type=float, default=1.0, metavar="S", help="seconds each output stays on")


def selftest_command(args: argparse.Namespace) -> int:
    """Walk each actuator through a short check and report what responded."""
    from relaxd.selftest import run_selftest

    results = run_selftest(args.settings, hold_s=args.hold)
    for result in results:
        print(f"{'OK  ' if result.ok else 'FAIL'} {result.output:<9} {result.step:<6} {result.detail}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", metavar="SESSION", help="a session id, or 'latest'")
    parser.add_argument("--out-dir", type=Path, default=Path("."), metavar="DIR",
                        help="folder for session-<id>-<pseudonym>.png and .csv (default: the current folder)")
    parser.add_argument("--db", type=Path, metavar="PATH", help="the session store (default: store.path from the config)")


def report_command(args: argparse.Namespace) -> int:
    """Write a session's report for the therapist: a PNG picture and a per-second CSV."""
    from relaxd.report import open_store_for_report, render_session_report, resolve_session

    settings: Settings = args.settings
    with open_store_for_report(args.db or settings.store.path, settings.store.busy_timeout_s) as store:
        session_id = resolve_session(store, args.session)
        png, table = render_session_report(store, session_id, args.out_dir)
    print(f"session {session_id}: wrote {png} and {table}")
    return EXIT_OK


COMMANDS: list[Command] = [
    Command("check-config", "validate a config file and show what it changes", check_config,
            _add_check_config_arguments),
    Command("example-config", "print a documented config file with every key at its default", example_config),
    Command("replay", "run the vision path over a video file as fast as possible and summarise it",
            replay_command, _add_replay_arguments),
    Command("run", "run the chair (in simulation when there is no Pi hardware)", run_command, _add_run_arguments),
    Command("safe-state", "switch every configured output off (systemd ExecStopPost)", safe_state_command),
    Command("selftest", "walk each actuator through a short check", selftest_command, _add_selftest_arguments),
    Command("report", "write a session's report (PNG picture and per-second CSV) for the therapist",
            report_command, _add_report_arguments),
]


# --------------------------------------------------------------------------- frame


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """The full parser: global options, then one subparser per entry of ``commands`` (default ``COMMANDS``)."""
    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(
        prog="relaxd", description="Emotion-aware relaxation chair daemon and its tools.")
    parser.add_argument("--version", action="version", version=f"relaxd {__version__}")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML config file (default: built-in defaults; see deploy/relaxd.example.yaml)")
    parser.add_argument("--log-level", choices=list(LEVELS),
                        help="override logging.level from the config")
    parser.add_argument("--log-format", choices=FORMATS,
                        help="override logging.format from the config (auto: console on a terminal, JSON otherwise)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        command_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.add_arguments is not None:
            command.add_arguments(command_parser)
        command_parser.set_defaults(handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relaxd`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors: argparse already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        args.settings = load_settings(args.config) if args.config else Settings()
        configure_logging(args.log_level or args.settings.logging.level,
                          args.log_format or args.settings.logging.format)
        log.debug("starting", command=args.command, version=__version__,
                  config=str(args.config) if args.config else None)
        return args.handler(args)
    except RelaxdError as error:
        print(f"relaxd: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("relaxd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
