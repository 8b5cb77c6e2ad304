"""Property-based tests (hypothesis): whatever arrives, nothing crashes and nothing energises.

- the config loader: any document gives Settings or a ConfigError naming the problem;
- the socket protocol: any request line gets one precise reply (never ``internal``) from a
  running chair, and after an e-stop no sequence of commands short of ``reset`` turns an
  output on;
- the serial protocol: any line decodes or raises FrameError; the compiled firmware survives
  any line and moves no pin for one that is not a valid command;
- the affect aggregator: readings stay well-formed, and a window the decision reads as
  negative throughout is never read as anything else.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relaxd.affect import AffectAggregator
from relaxd.config import parse_settings
from relaxd.errors import ConfigError
from relaxd.settings import AffectSettings, Settings
from relaxd.vision.decision import NEGATIVE
from relaxd.vision.model_meta import FER2013_GROUPS, FER2013_LABELS, GROUPS, ModelMetadata
from relaxd.vision.preprocess import PreprocessSpec

# --------------------------------------------------------------------------- the config loader

SECTIONS = {name: [f.name for f in __import__("dataclasses").fields(type(getattr(Settings(), name)))]
            for name in [f.name for f in __import__("dataclasses").fields(Settings)]}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=8)


@st.composite
def config_documents(draw):
    sections = draw(st.lists(st.sampled_from(sorted(SECTIONS)) | st.text(max_size=10), max_size=5))
    document = {}
    for section in sections:
        keys = SECTIONS.get(section, [])
        chosen = draw(st.lists(st.sampled_from(keys) if keys else st.text(max_size=10), max_size=4))
        document[section] = {key: draw(values) for key in chosen} if draw(st.booleans()) else draw(values)
    return yaml.safe_dump(document, allow_unicode=True)


@settings(max_examples=300, deadline=None)
@given(config_documents())
def test_any_config_document_loads_or_is_refused_with_a_config_error(text):
    try:
        loaded = parse_settings(text, "chair.yaml")
    except ConfigError as error:
        assert "chair.yaml" in str(error)  # the message names the file (and the line)
    else:
        assert isinstance(loaded, Settings)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_loads_or_is_refused_with_a_config_error(text):
    try:
        parse_settings(text, "chair.yaml")
    except ConfigError:
        pass


# --------------------------------------------------------------------------- the serial protocol

@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_any_line_from_the_wire_decodes_or_raises_frame_error(line):
    from relaxd.actuators.serial_link import FrameError, decode

    try:
        frame = decode(line)
    except FrameError:
        return
    assert 0 <= frame.seq <= 65535 and frame.word


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 65535), st.sampled_from(["HELLO", "LIGHT", "VIB", "OFF", "HB", "ACK", "NAK", "BOOT"]),
       st.lists(st.integers(0, 1000) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz/.0123456789", min_size=1,
                                                 max_size=8), max_size=4))
def test_every_encoded_frame_decodes_to_itself(seq, word, args):
    from relaxd.actuators.serial_link import decode, encode

    frame = decode(encode(seq, word, *args))
    assert (frame.seq, frame.word, frame.args) == (seq, word, tuple(str(a) for a in args))


@pytest.fixture(scope="module")
def firmware():
    firmwarekit = pytest.importorskip("firmwarekit")
    try:
        board = firmwarekit.FirmwareMcu(manual_clock=True)
    except firmwarekit.FirmwareBuildError as error:
        pytest.skip(str(error))
    board.read_line()  # BOOT
    yield board
    board.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.binary(max_size=140))
def test_the_firmware_survives_any_line_and_moves_no_pin_for_garbage(firmware, line):
    from relaxd.actuators.serial_link import FrameError, decode, encode

    try:  # a line that happens to be a valid command may change the pins: not garbage
        decode(line.split(b"\n")[0])
        assume(False)
    except FrameError:
        pass
    before = firmware.pins()
    firmware.write(line + b"\n")
    firmware.write(encode(4242, "HB"))  # then a heartbeat: its ACK marks the end of the answers
    for _ in range(20):
        frame = decode(firmware.read_line())  # every line the board sends is well-formed
        if (frame.seq, frame.word) == (4242, "ACK"):
            break
        assert frame.word in ("NAK", "ACK"), frame
    else:
        pytest.fail("the board stopped answering")
    assert firmware.pins() == before


# --------------------------------------------------------------------------- the affect aggregator

FER = ModelMetadata("test-fer", "1", FER2013_LABELS, FER2013_GROUPS, PreprocessSpec(), "float32")
vectors = st.lists(st.floats(0.0, 1.0), min_size=7, max_size=7).filter(lambda v: sum(v) > 1e-6)
frames = st.lists(st.none() | vectors, min_size=1, max_size=60)
affect_settings = st.builds(AffectSettings, method=st.sampled_from(["threshold", "majority", "ema"]),
                            window_frames=st.integers(1, 40), threshold=st.floats(0.0, 1.0),
                            ema_alpha=st.floats(0.01, 1.0), min_face_share=st.floats(0.0, 1.0))


@settings(max_examples=400, deadline=None)
@given(affect_settings, frames)
def test_readings_are_always_well_formed(affect, sequence):
    aggregator = AffectAggregator(affect, FER)
    for index, frame in enumerate(sequence):
        reading = aggregator.update(index * 0.1, None if frame is None else np.array(frame))
        assert reading.frames <= affect.window_frames and reading.face_frames <= reading.frames
        if reading.face_present:
            assert reading.group in GROUPS and reading.label in FER2013_LABELS
            assert reading.label in FER2013_GROUPS[reading.group]
            assert 0.0 <= reading.confidence <= 1.0 + 1e-9
            assert sum(reading.group_scores.values()) == pytest.approx(1.0)
        else:
            assert reading.group == "none" and reading.label is None
        json.dumps(reading.to_dict())  # the socket and the event log can always carry it


@settings(max_examples=400, deadline=None)
@given(affect_settings.filter(lambda a: a.method != "ema"), frames)
def test_a_window_decided_negative_throughout_reads_negative(affect, sequence):
    aggregator = AffectAggregator(affect, FER)
    decision = aggregator.decision
    negative_only = [f for f in sequence if f is not None and decision.decide_one(np.array(f) / sum(f)) == NEGATIVE]
    assume(negative_only)
    reading = None
    for index, frame in enumerate(negative_only):
        reading = aggregator.update(index * 0.1, np.array(frame))
    assert reading is not None and reading.group == "negative"


# --------------------------------------------------------------------------- the socket protocol

COMMAND_NAMES = ["status", "start", "pause", "resume", "stop", "estop", "reset", "ack", "set_caps",
                 "list_profiles", "delete_profile", "list_scenarios", "list_sessions", "report"]
ARG_NAMES = ["profile", "scenario", "by", "id", "light", "sound", "vibration", "with_sessions", "limit", "session"]
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
requests = st.fixed_dictionaries(
    {"cmd": st.sampled_from(COMMAND_NAMES) | st.text(max_size=12)},
    optional={"id": json_values,
              "args": st.dictionaries(st.sampled_from(ARG_NAMES) | st.text(max_size=6), json_values, max_size=4)
              | json_values},
)
lines = requests.map(lambda r: json.dumps(r).encode() + b"\n") | st.binary(max_size=200).map(lambda b: b + b"\n")


@pytest.fixture(scope="module")
def live_chair(tmp_path_factory, tiny_model):
    from chairkit import faceless_clip, short_dir
    from relaxd.daemon import Chair
    from relaxd.settings import ClassifierSettings, ControllerSettings, IpcSettings, StoreSettings

    folder = tmp_path_factory.mktemp("properties")
    clip = faceless_clip(folder / "empty-room.avi")
    socket_path = short_dir() / "relaxd.sock"
    base = Settings()
    chair_settings = __import__("dataclasses").replace(
        base, classifier=ClassifierSettings(model=str(tiny_model)), store=StoreSettings(path=str(folder / "s.db")),
        control=ControllerSettings(calibration_s=0.2), ipc=IpcSettings(socket=str(socket_path)),
        camera=__import__("dataclasses").replace(base.camera, source=str(clip)))
    chair = Chair(chair_settings)
    thread = threading.Thread(target=chair.run, daemon=True)
    thread.start()
    from chairkit import wait_for
    assert wait_for(lambda: chair.ipc is not None, 30.0), "the chair did not open its socket"
    yield chair, thread
    chair.request_stop("test over")
    thread.join(15)


def outputs_are_off(chair) -> bool:
    bank = chair.bank
    light = bank.light.history[-1][1] if bank.light.history else (0.0, 0.0, 0.0)
    vibration = bank.vibration.history[-1][1] if bank.vibration.history else 0.0
    sound = bank.sound.history[-1][1] if bank.sound.history else 0.0
    return max(light) == 0.0 and vibration == 0.0 and sound == 0.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines, min_size=1, max_size=6))
def test_any_request_gets_one_precise_reply_and_the_chair_lives(live_chair, batch):
    chair, thread = live_chair
    for line in batch:
        reply = json.loads(chair.ipc.respond(line))
        assert isinstance(reply.get("ok"), bool)
        if not reply["ok"]:
            assert reply["error"]["code"] != "internal", (line, reply)
    assert thread.is_alive()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines.filter(lambda line: b"reset" not in line), min_size=1, max_size=6))
def test_after_an_estop_no_command_short_of_reset_energises_an_output(live_chair, batch):
    chair, _ = live_chair
    chair.ipc.respond(json.dumps({"cmd": "estop", "args": {"by": "property test"}}).encode() + b"\n")
    try:
        for line in batch:
            chair.ipc.respond(line)
            time.sleep(0.01)  # let the control loop run with whatever the command changed
            assert outputs_are_off(chair), line
    finally:
        chair.ipc.respond(json.dumps({"cmd": "reset", "args": {"by": "property test"}}).encode() + b"\n")
