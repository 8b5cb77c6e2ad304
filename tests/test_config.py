"""relaxd.config: strict YAML loading into relaxd.settings, errors that name file, line and key."""

from __future__ import annotations

import re
import dataclasses
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from relaxd.config import (
    ConfigValidationError,
    changed_settings,
    flatten_settings,
    load_settings,
    parse_settings,
    render_example,
    settings_to_yaml,
)
from relaxd.errors import ConfigError, RelaxdError
from relaxd.settings import CameraSettings, Settings

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "relaxd.example.yaml"


def parse(text: str) -> Settings:
    return parse_settings(textwrap.dedent(text), "test.yaml")


def issues_of(text: str) -> list[tuple[int, str, str]]:
    """(line, key, message) of every issue the loader finds in ``text``."""
    with pytest.raises(ConfigValidationError) as caught:
        parse(text)
    return [(issue.line, issue.key, issue.message) for issue in caught.value.issues]


def every_field_path(cls: type = Settings, prefix: str = "") -> list[str]:
    paths = []
    for field in dataclasses.fields(cls):
        default = getattr(cls(), field.name)
        if dataclasses.is_dataclass(default):
            paths += every_field_path(type(default), f"{prefix}{field.name}.")
        else:
            paths.append(prefix + field.name)
    return paths


# --------------------------------------------------------------------------- defaults and valid files


@pytest.mark.parametrize("text", ["", "\n", "# nothing but a comment\n", "camera:\n  # fps: 10\n"])
def test_empty_file_or_empty_section_means_defaults(text):
    assert parse(text) == Settings()


def test_missing_sections_and_keys_keep_defaults():
    settings = parse("""
        camera:
          fps: 15
    """)
    assert settings.camera.fps == 15.0
    assert settings.camera.width == CameraSettings().width
    assert settings.detector == Settings().detector


def test_full_valid_file():
    settings = parse("""
        camera:
          source: usb:0
          width: 1280
          height: 720
          fps: 25          # an int is fine for a float field
          realtime: false
          loop: False
          stall_timeout_s: 1.5
          reconnect_initial_s: 0.25
          reconnect_max_s: 30
        detector:
          cascade: /opt/cascades/face.xml
          scale_factor: 1.2
          min_neighbors: 4
          min_face_fraction: 0.2
          detect_width: 480
          roi_margin: 0.5
          full_scan_interval: 45
          cascade_interval: 4
          pick: central
          region_left: 0.2
          region_right: 0.8
          region_top: 0.05
          region_bottom: 0.9
        classifier:
          model: models/emotion.tflite
          threads: 2
        affect:
          method: ema
          window_frames: 30
          threshold: 0.1
          ema_alpha: 0.5
          min_face_share: 0.25
          negative_weight: 2
          negative_labels: [angry, disgust, fear, sad]
          neutral_labels: [neutral]
          positive_labels: [happy, surprise]
        logging:
          level: debug
          format: json
    """)
    assert settings.camera == CameraSettings(
        source="usb:0", width=1280, height=720, fps=25.0, realtime=False, loop=False,
        stall_timeout_s=1.5, reconnect_initial_s=0.25, reconnect_max_s=30.0)
    assert isinstance(settings.camera.fps, float) and isinstance(settings.camera.reconnect_max_s, float)
    assert settings.detector.pick == "central" and settings.detector.cascade == "/opt/cascades/face.xml"
    assert settings.classifier.threads == 2
    assert settings.affect.method == "ema" and settings.affect.ema_alpha == 0.5
    assert settings.affect.negative_weight == 2.0 and settings.affect.positive_labels == ("happy", "surprise")
    assert settings.logging.level == "debug" and settings.logging.format == "json"
    written = ("camera.", "detector.", "classifier.", "affect.", "logging.")
    assert len(changed_settings(settings)) == len([p for p in every_field_path() if p.startswith(written)])


def test_range_bounds_are_inclusive():
    settings = parse("""
        camera:
          fps: 1
          width: 4096
    """)
    assert (settings.camera.fps, settings.camera.width) == (1.0, 4096)


def test_load_settings_reads_a_file(tmp_path):
    path = tmp_path / "relaxd.yaml"
    path.write_text("classifier:\n  threads: 4\n", encoding="utf-8")
    assert load_settings(path).classifier.threads == 4
    assert load_settings(str(path)).classifier.threads == 4


# --------------------------------------------------------------------------- bad keys and values


def test_unknown_key_names_path_line_and_suggests():
    [(line, key, message)] = issues_of("""
        camera:
          width: 640
          fsp: 30
    """)
    assert (line, key) == (4, "camera.fsp")
    assert "did you mean 'fps'?" in message
    assert "stall_timeout_s" in message  # the known keys are listed


def test_unknown_section_suggests_the_section():
    [(line, key, message)] = issues_of("""
        camra:
          fps: 30
    """)
    assert (line, key) == (2, "camra")
    assert "unknown section" in message and "did you mean 'camera'?" in message


def test_unknown_key_without_close_match_lists_known_keys():
    [(_, key, message)] = issues_of("classifier:\n  zzzz: 1\n")
    assert key == "classifier.zzzz"
    assert "did you mean" not in message and "known keys: model, threads" in message


@pytest.mark.parametrize(("text", "key", "expected_words"), [
    ("camera:\n  width: abc\n", "camera.width", ["an integer from 64 to 4096", "text 'abc'"]),
    ("camera:\n  width: 640.5\n", "camera.width", ["an integer", "number '640.5'"]),
    ("camera:\n  width: true\n", "camera.width", ["an integer", "boolean"]),
    ("camera:\n  fps: '30'\n", "camera.fps", ["a number from 1.0 to 120.0", "text '30'"]),
    ("camera:\n  fps: false\n", "camera.fps", ["a number", "boolean"]),
    ("camera:\n  fps: [30]\n", "camera.fps", ["a number", "a list"]),
    ("camera:\n  realtime: 1\n", "camera.realtime", ["true or false", "integer"]),
    ("camera:\n  realtime: 'true'\n", "camera.realtime", ["true or false", "text"]),
    ("camera:\n  realtime: yes\n", "camera.realtime", ["true or false", "'yes'"]),
    ("camera:\n  source: 0\n", "camera.source", ["expected text", "quote it"]),
    ("camera:\n  source: no\n", "camera.source", ["expected text", "boolean", "quote it"]),
    ("detector:\n  cascade:\n", "detector.cascade", ["expected text", "empty value", 'write ""']),
    ("camera: 5\n", "camera", ["expected a mapping", "integer"]),
    ("camera:\n  - fps\n", "camera", ["expected a mapping", "a list"]),
])
def test_wrong_type_is_an_error(text, key, expected_words):
    [(line, got_key, message)] = issues_of(text)
    assert got_key == key
    assert line == text.count("\n")  # each bad value sits on the text's last line
    for word in expected_words:
        assert word in message


@pytest.mark.parametrize(("text", "key", "allowed"), [
    ("camera:\n  fps: 500\n", "camera.fps", "500 is out of range; allowed: 1.0 to 120.0"),
    ("camera:\n  fps: 0.5\n", "camera.fps", "allowed: 1.0 to 120.0"),
    ("camera:\n  fps: .nan\n", "camera.fps", "allowed: 1.0 to 120.0"),
    ("camera:\n  fps: .inf\n", "camera.fps", "allowed: 1.0 to 120.0"),
    ("classifier:\n  threads: 0\n", "classifier.threads", "0 is out of range; allowed: 1 to 8"),
    ("affect:\n  threshold: -0.1\n", "affect.threshold", "allowed: 0.0 to 1.0"),
])
def test_out_of_range_is_an_error(text, key, allowed):
    [(line, got_key, message)] = issues_of(text)
    assert (line, got_key) == (2, key)
    assert allowed in message


def test_an_empty_detector_region_is_an_error_on_the_key_that_makes_it_empty():
    [(line, key, message)] = issues_of("""
        detector:
          region_right: 0.3
          region_left: 0.6
    """)
    assert (line, key) == (4, "detector.region_left")
    assert "0.6 must be below region_right (0.3)" in message
    [(line, key, _)] = issues_of("detector:\n  region_top: 1.0\n")  # against the default bottom, 1.0
    assert (line, key) == (2, "detector.region_top")


def test_bad_choice_lists_choices_and_suggests():
    [(line, key, message)] = issues_of("""
        detector:
          pick: larges
    """)
    assert (line, key) == (3, "detector.pick")
    assert "choose one of: largest, central" in message
    assert "did you mean 'largest'?" in message


def test_duplicate_key_is_an_error():
    [(line, key, message)] = issues_of("""
        logging:
          level: info
          level: debug
    """)
    assert (line, key) == (4, "logging.level")
    assert "duplicate key (first set on line 3)" in message


def test_unsafe_yaml_tag_is_refused():
    [(line, key, message)] = issues_of("camera:\n  source: !!python/name:os.system ''\n")
    assert (line, key) == (2, "camera.source")
    assert "cannot read value" in message


def test_all_errors_reported_at_once_with_their_lines():
    text = """\
        camera:
          fsp: 30
          width: abc
          fps: 500
        detector:
          pick: larges
        camra: {}
        classifier: 5
    """
    with pytest.raises(ConfigValidationError) as caught:
        parse(text)
    error = caught.value
    assert [(issue.line, issue.key) for issue in error.issues] == [
        (2, "camera.fsp"), (3, "camera.width"), (4, "camera.fps"),
        (6, "detector.pick"), (7, "camra"), (8, "classifier"),
    ]
    message = str(error)
    assert message.startswith("test.yaml: 6 configuration errors:")
    for expected in ["test.yaml:2: camera.fsp:", "test.yaml:3: camera.width:", "test.yaml:4: camera.fps:",
                     "test.yaml:6: detector.pick:", "test.yaml:7: camra:", "test.yaml:8: classifier:"]:
        assert expected in message
    assert isinstance(error, ConfigError) and isinstance(error, RelaxdError)


def test_single_error_message_is_one_line():
    with pytest.raises(ConfigError) as caught:
        parse_settings("camera:\n  fps: 500\n", "chair.yaml")
    assert str(caught.value) == "chair.yaml:2: camera.fps: 500 is out of range; allowed: 1.0 to 120.0"


# --------------------------------------------------------------------------- broken files


def test_invalid_yaml_names_its_line():
    text = "camera:\n  fps: 30\n  width: [640,\n  height: 480\n"
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, "broken.yaml")
    message = str(caught.value)
    assert message.startswith("broken.yaml:5: not valid YAML")
    assert "flow sequence" in message


def test_bad_indentation_names_its_line():
    with pytest.raises(ConfigError, match=r"^broken.yaml:3: not valid YAML"):
        parse_settings("camera:\n  fps: 30\n width: 640\n", "broken.yaml")


def test_forbidden_character_names_its_line():
    with pytest.raises(ConfigError, match=r"^broken.yaml:3: not valid YAML: unacceptable character #x0001"):
        parse_settings("camera:\n  fps: 30\n\x01\n", "broken.yaml")


def test_several_documents_are_refused():
    with pytest.raises(ConfigError, match=r"^two.yaml:2: not valid YAML.*single document"):
        parse_settings("camera: {}\n---\ndetector: {}\n", "two.yaml")


@pytest.mark.parametrize(("text", "kind"), [("- camera\n- detector\n", "a list"), ("just text\n", "text")])
def test_top_level_must_be_a_mapping(text, kind):
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, "flat.yaml")
    message = str(caught.value)
    assert message.startswith("flat.yaml:1: the top level must be a mapping of sections")
    assert "camera:" in message and kind in message


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as caught:
        load_settings(missing)
    assert str(missing) in str(caught.value)


def test_a_huge_config_is_refused_before_it_is_parsed(tmp_path):
    """A 50 MB file took 171 s and 3.6 GB before it was refused; the size check comes first."""
    path = tmp_path / "huge.yaml"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("camera:\n")
        for i in range(60_000):
            handle.write(f"  # padding line {i:08d} of a file that is far too big for a chair config\n")
    with pytest.raises(ConfigError, match=r"huge\.yaml is \d+\.\d MB.*right file"):
        load_settings(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path)


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("camera:\n  source: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text("camera: {}\n", encoding="utf-8")
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read config file .*secret.yaml: Permission denied"):
        load_settings(path)


def test_path_through_a_file_is_unreadable(tmp_path):
    not_a_dir = tmp_path / "plain.txt"
    not_a_dir.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read config file .*: Not a directory"):
        load_settings(not_a_dir / "relaxd.yaml")


# --------------------------------------------------------------------------- writing and the example


def test_settings_to_yaml_round_trips():
    settings = parse("""
        camera:
          source: "usb:0"
          fps: 12.5
          realtime: false
        detector:
          cascade: "no"
          pick: central
        classifier:
          model: ""
    """)
    text = settings_to_yaml(settings)
    assert parse_settings(text, "dumped.yaml") == settings
    assert parse_settings(settings_to_yaml(settings, comments=False), "plain.yaml") == settings
    assert "#" not in settings_to_yaml(settings, comments=False)


def test_settings_to_yaml_comments_give_allowed_values_and_changed_defaults():
    text = settings_to_yaml(parse("camera:\n  fps: 12.5\n"))
    lines = text.splitlines()
    fps_comment = lines[lines.index("  fps: 12.5") - 1]
    assert fps_comment.startswith("  # requested camera frame rate")
    assert "a number from 1.0 to 120.0" in fps_comment and "default 30.0" in fps_comment
    pick_comment = lines[lines.index("  pick: largest") - 1]
    assert "one of: largest, central" in pick_comment and "default" not in pick_comment


def test_example_file_is_current():
    """The committed example loads, equals the defaults, and has every key, each with a comment."""
    text = EXAMPLE.read_text(encoding="utf-8")
    assert load_settings(EXAMPLE) == Settings()

    data = yaml.safe_load(text)
    present = [f"{section}.{key}" for section, keys in data.items() for key in keys]
    assert present == every_field_path(), "regenerate: relaxd example-config > deploy/relaxd.example.yaml"

    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and not line.endswith(":"):
            assert lines[index - 1].lstrip().startswith("# "), f"key without a comment: {line!r}"


def test_example_file_matches_the_rendered_example():
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), (
        "deploy/relaxd.example.yaml is stale: relaxd example-config > deploy/relaxd.example.yaml")


# --------------------------------------------------------------------------- inspecting


def test_flatten_and_changed_settings():
    flat = flatten_settings(Settings())
    assert list(flat) == every_field_path()
    assert flat["camera.fps"] == 30.0
    assert changed_settings(Settings()) == {}
    assert changed_settings(parse("affect:\n  method: majority\n")) == {"affect.method": "majority"}


@pytest.mark.parametrize("text, key, words", [
    ("actuators:\n  light_backend: serial\n  serial_heartbeat_s: 2.0\n  serial_link_timeout_s: 1.5\n",
     "actuators.serial_heartbeat_s", "serial_link_timeout_s"),
    ("actuators:\n  vibration_backend: serial\n  serial_heartbeat_s: 2.0\n  serial_link_timeout_s: 3.0\n",
     "actuators.serial_heartbeat_s", "serial_deadman_ms"),
    ("ipc:\n  command_timeout_s: 5.0\npanel:\n  request_timeout_s: 3.0\n",
     "panel.request_timeout_s", "ipc.command_timeout_s"),
], ids=["heartbeat-vs-link-timeout", "heartbeat-vs-deadman", "panel-vs-ipc-timeout"])
def test_rules_across_fields_are_config_errors_where_check_config_sees_them(tmp_path, text, key, words):
    """check-config passed files the daemon then rejected (or ran badly with)."""
    path = tmp_path / "relaxd.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}.*{re.escape(words)}"):
        load_settings(path)


def test_the_serial_rules_do_not_apply_without_a_serial_backend(tmp_path):
    path = tmp_path / "relaxd.yaml"
    path.write_text("actuators:\n  serial_heartbeat_s: 2.0\n  serial_link_timeout_s: 1.5\n", encoding="utf-8")
    assert load_settings(path).actuators.serial_heartbeat_s == 2.0
