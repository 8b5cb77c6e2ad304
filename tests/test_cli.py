"""The ``relaxd`` command (in-process and as a real process) and its logging setup."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import structlog

from relaxd import __version__, cli
from relaxd.config import render_example
from relaxd.errors import ConfigError, ModelError
from relaxd.logs import LEVELS, configure_logging
from relaxd.settings import LoggingSettings

GOOD = "camera:\n  fps: 15\n  source: usb:0\n"
BAD = "camera:\n  fps: 500\ndetector:\n  pick: larges\n"


@pytest.fixture(autouse=True)
def restore_logging():
    """main() and configure_logging() set process-wide logging; undo it after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD, encoding="utf-8")
    return path


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD, encoding="utf-8")
    return path


def relaxd(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m relaxd`` as a real process, stdin/stdout/stderr on pipes (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "relaxd", *args], capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- in-process


def test_check_config_ok(good_file, capsys):
    assert cli.main(["check-config", str(good_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good_file}: OK"
    assert "2 setting(s) differ from the defaults:" in out[1]
    assert "    camera.fps = 15.0" in out and "    camera.source = 'usb:0'" in out


def test_check_config_of_defaults(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert cli.main(["check-config", str(empty)]) == 0
    assert capsys.readouterr().out == f"{empty}: OK\n  every setting at its default\n"


def test_check_config_bad_file_exits_2_with_every_error(bad_file, capsys):
    assert cli.main(["check-config", str(bad_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"relaxd: error: {bad_file}: 2 configuration errors:")
    assert f"{bad_file}:2: camera.fps: 500 is out of range" in captured.err
    assert f"{bad_file}:4: detector.pick:" in captured.err and "did you mean 'largest'?" in captured.err


def test_check_config_refuses_a_default_scenario_the_daemon_would_refuse(tmp_path, capsys):
    path = tmp_path / "relaxd.yaml"
    path.write_text("control:\n  default_scenario: moon-walk\n", encoding="utf-8")
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "control.default_scenario 'moon-walk' is not a loaded scenario" in err and "calm-sea" in err


def test_check_config_missing_file(tmp_path, capsys):
    assert cli.main(["check-config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relaxd: error: config file ") and "nope.yaml not found" in err


def test_check_config_uses_global_config(good_file, capsys):
    assert cli.main(["--config", str(good_file), "check-config"]) == 0
    assert capsys.readouterr().out.startswith(f"{good_file}: OK")


def test_check_config_without_any_file(capsys):
    assert cli.main(["check-config"]) == 2
    assert "check-config needs a file" in capsys.readouterr().err


def test_bad_global_config_stops_any_command(bad_file, capsys):
    assert cli.main(["--config", str(bad_file), "example-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "camera.fps" in captured.err


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"relaxd {__version__}"


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert "required: COMMAND" in capsys.readouterr().err
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["--log-level", "loud", "check-config"]) == 2


def test_example_config_prints_the_example(capsys):
    assert cli.main(["example-config"]) == 0
    assert capsys.readouterr().out == render_example()


def test_run_with_a_missing_model_fails_with_a_clear_message(tmp_path, capsys):
    config = tmp_path / "chair.yaml"
    config.write_text(f"classifier:\n  model: {tmp_path / 'nowhere.tflite'}\nstore:\n  path: {tmp_path / 'r.db'}\n")
    assert cli.main(["--config", str(config), "run", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "relaxd: error:" in err and "nowhere" in err and "Traceback" not in err


def test_relaxd_error_from_a_command_is_one_line_exit_2(monkeypatch, capsys):
    def broken(args):
        raise ModelError("model models/x.tflite not found: run train-and-export first")

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, cli.Command("broken", "always fails", broken)])
    assert cli.main(["broken"]) == 2
    err = capsys.readouterr().err
    assert err == "relaxd: error: model models/x.tflite not found: run train-and-export first\n"


def test_ctrl_c_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, cli.Command("wait", "waits", interrupted)])
    assert cli.main(["wait"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_commands_receive_settings_and_their_arguments(good_file, monkeypatch):
    seen = {}

    def record(args):
        seen["fps"], seen["name"] = args.settings.camera.fps, args.name
        return 0

    command = cli.Command("record", "records", record, lambda parser: parser.add_argument("name"))
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, command])
    assert cli.main(["--config", str(good_file), "record", "x"]) == 0
    assert seen == {"fps": 15.0, "name": "x"}


# --------------------------------------------------------------------------- as a real process


def test_module_check_config_ok(good_file):
    result = relaxd("check-config", str(good_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good_file}: OK\n")


def test_module_check_config_bad_has_no_traceback(bad_file):
    result = relaxd("check-config", str(bad_file))
    assert result.returncode == 2
    assert result.stderr.startswith("relaxd: error: ")
    assert f"{bad_file}:2: camera.fps" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_script_is_installed(good_file):
    script = Path(sys.executable).with_name("relaxd")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable} (pip install -e .)")
    result = subprocess.run([str(script), "check-config", str(good_file)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good_file}: OK")


def test_logs_are_json_lines_when_stderr_is_not_a_terminal(good_file):
    result = relaxd("--log-level", "debug", "check-config", str(good_file))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    [start] = [record for record in records if record["event"] == "starting"]
    assert start["level"] == "debug" and start["command"] == "check-config"
    assert start["logger"] == "relaxd.cli"
    assert datetime.fromisoformat(start["timestamp"].replace("Z", "+00:00")).tzinfo is not None


def test_log_level_comes_from_the_config_file(tmp_path):
    path = tmp_path / "debug.yaml"
    path.write_text("logging:\n  level: debug\n", encoding="utf-8")
    assert "starting" in relaxd("--config", str(path), "check-config").stderr
    assert relaxd("--config", str(path), "--log-level", "info", "check-config").stderr == ""


def test_console_format_on_request(good_file):
    result = relaxd("--log-level", "debug", "--log-format", "console", "check-config", str(good_file))
    line = result.stderr.splitlines()[0]
    assert "[debug" in line and "starting" in line and "command=check-config" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


# --------------------------------------------------------------------------- logging setup


def read_json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_and_stdlib_share_one_json_stream():
    stream = io.StringIO()  # not a terminal, so "auto" means JSON
    configure_logging("info", "auto", stream=stream)
    structlog.get_logger("relaxd.test").info("face found", faces=1)
    structlog.get_logger("relaxd.test").debug("too detailed")
    logging.getLogger("thirdparty").warning("disk %s full", "/var", extra={"percent": 97})
    logging.getLogger("thirdparty").debug("chatty")
    first, second = read_json_lines(stream)
    assert (first["event"], first["faces"], first["level"], first["logger"]) == ("face found", 1, "info", "relaxd.test")
    assert (second["event"], second["percent"], second["level"]) == ("disk /var full", 97, "warning")


def test_level_filtering_and_reconfiguring():
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    log = structlog.get_logger("relaxd.test")
    log.info("hidden")
    configure_logging("debug", "json", stream=stream)  # replaces its handler, does not add a second
    log.debug("shown")
    assert [record["event"] for record in read_json_lines(stream)] == ["shown"]


def test_exceptions_are_plain_text_in_json():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        raise ValueError("bad frame")
    except ValueError:
        structlog.get_logger("relaxd.test").exception("capture failed")
    [record] = read_json_lines(stream)
    assert "ValueError: bad frame" in record["exception"] and "Traceback" in record["exception"]


def test_console_format_is_not_json():
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    structlog.get_logger("relaxd.test").info("hello", child_calm=True)
    text = stream.getvalue()
    assert "hello" in text and "child_calm=True" in text and "\x1b[" not in text  # no colours off a terminal


def test_bad_level_or_format_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown log level 'loud'"):
        configure_logging("loud")
    with pytest.raises(ConfigError, match="unknown log format 'xml'"):
        configure_logging("info", "xml")


def test_every_configurable_level_is_known():
    metadata = {field.name: field.metadata for field in dataclasses.fields(LoggingSettings)}
    assert set(metadata["level"]["choices"]) <= set(LEVELS)
