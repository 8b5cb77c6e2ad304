"""The control socket and ``relaxctl``, end to end against a running ``Chair`` in simulation.

The camera plays a generated faceless clip: with no face the affect rules never halt or
lower, so every state a test expects is the one the command produced. The outputs are
the simulated ones; the store is a real SQLite file; the model a real (tiny) TFLite one.
"""

from __future__ import annotations

import dataclasses
import grp
import json
from datetime import datetime
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from chairkit import call, faceless_clip, outputs_of, short_dir, wait_for

from relaxd.commands import ChairCommands
from relaxd.control import State
from relaxd.daemon import Chair
from relaxd.ipc import (RESERVED_READ_S, RESERVED_SLOTS, BAD_ARGS, BAD_JSON, BAD_REQUEST, BUSY, LINE_TOO_LONG, NOT_FOUND, REJECTED, TIMEOUT,
                        UNKNOWN_COMMAND, UNSUPPORTED_VERSION, CommandError, ControlClient, ControlServer, IpcError,
                        SocketInUseError)
from relaxd.relaxctl import main as relaxctl
from relaxd.settings import (ActuatorSettings, ClassifierSettings, ControllerSettings, IpcSettings, Settings,
                             StoreSettings)

MAX_LINE = 4096


# --------------------------------------------------------------------------- helpers






def chair_settings(folder: Path, model: Path, clip: Path, socket_path: Path) -> Settings:
    settings = Settings(
        classifier=ClassifierSettings(model=str(model)),
        store=StoreSettings(path=str(folder / "relaxd.db")),
        control=ControllerSettings(calibration_s=0.5, no_face_pause_s=60.0, child_left_s=600.0),
        actuators=ActuatorSettings(light_ramp_up_per_s=10.0, sound_ramp_up_per_s=10.0, vibration_ramp_up_per_s=10.0),
        ipc=IpcSettings(socket=str(socket_path), max_line_bytes=MAX_LINE, command_timeout_s=2.0),
    )
    return dataclasses.replace(settings, camera=dataclasses.replace(settings.camera, source=str(clip)))




def refused(path: Path, cmd: str, **args) -> CommandError:
    with pytest.raises(CommandError) as caught:
        call(path, cmd, **args)
    return caught.value


def exchange(path: Path, payload: bytes, replies: int) -> tuple[list[dict], bytes]:
    """Send raw bytes, read ``replies`` reply lines, then whatever follows until EOF or a pause."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(str(path))
        try:
            sock.sendall(payload)
        except BrokenPipeError:  # the server refused this client at once; its reply is still readable
            pass
        reader = sock.makefile("rb")
        answers = [json.loads(reader.readline()) for _ in range(replies)]
        sock.settimeout(0.5)
        try:
            rest = reader.read()
        except socket.timeout:  # the connection stayed open (no EOF within the pause)
            rest = b"<open>"
        except ConnectionResetError:  # closed by the server while our later bytes were unread
            rest = b""
        return answers, rest


def request(cmd: str, request_id=1, **fields) -> bytes:
    return json.dumps({"v": 1, "id": request_id, "cmd": cmd, **fields}).encode() + b"\n"






def to_idle(path: Path) -> None:
    """Bring the chair back to idle and unlatched, whatever the previous test left."""
    status = call(path, "status")
    if status["health"]["latch"]["latched"] or status["state"] == "estopped":
        wait_for(lambda: call(path, "status")["state"] == "estopped")
        call(path, "reset", by="test")
    if call(path, "status")["state"] == "fault":
        call(path, "reset", by="test")
    if call(path, "status")["state"] != "idle":
        call(path, "stop")
    assert call(path, "status")["state"] == "idle"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return faceless_clip(tmp_path_factory.mktemp("clip") / "faceless.avi")


@pytest.fixture(scope="module")
def running(tmp_path_factory, tiny_model, clip):
    """A chair running in a thread with its control socket; yields (chair, socket path)."""
    folder = short_dir()
    path = folder / "relaxd.sock"
    chair = Chair(chair_settings(tmp_path_factory.mktemp("store"), tiny_model, clip, path))
    thread = threading.Thread(target=chair.run, daemon=True)
    thread.start()
    assert wait_for(lambda: chair.ipc is not None and path.exists()), "the control socket never appeared"
    assert wait_for(lambda: call(path, "status")["affect"] is not None), "no affect reading arrived"
    yield chair, path
    chair.request_stop("test done")
    thread.join(10)
    assert not thread.is_alive()
    assert not path.exists(), "the daemon must remove its socket on exit"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def chair_at_idle(running):
    chair, path = running
    to_idle(path)
    return chair, path


# --------------------------------------------------------------------------- the chair's commands


def test_status_reports_state_outputs_affect_alarms_and_health(chair_at_idle):
    chair, path = chair_at_idle
    status = call(path, "status")
    assert status["state"] == "idle" and status["session"] is None
    assert set(status["levels"]) == {"light", "light_rgb", "sound", "vibration"}
    assert status["caps"] == chair.bank.caps
    assert status["affect"]["face_present"] is False and status["affect"]["age_s"] >= 0.0
    assert isinstance(status["alarms"], list)
    assert set(status["health"]) == {"camera", "vision", "controller", "outputs", "store", "latch"}
    latch = status["health"]["latch"]
    assert latch["ok"] and not latch["latched"] and latch["tripped_by"] is None
    assert status["health"]["store"] == {"ok": True, "backlog": 0, "outage_s": 0.0, "error": None, "dropped": {},
                                         "rejected": {}}
    assert status["health"]["controller"]["ok"] and status["health"]["vision"]["frames"] > 0
    assert status["simulation"] is True


def test_start_pause_resume_stop_drive_the_controller(chair_at_idle):
    chair, path = chair_at_idle
    started = call(path, "start", profile="kid-ipc", scenario="calm-sea")
    assert started["state"] == "starting" and started["scenario"] == "calm-sea" and started["session_id"]
    assert refused(path, "start", profile="kid-ipc").code == REJECTED  # one session at a time
    status = call(path, "status")
    assert status["session"] == {"id": started["session_id"], "profile": "kid-ipc"}
    assert status["reason"] == "operator started 'calm-sea'"
    assert call(path, "pause") == {"state": "paused", "changed": True}
    assert call(path, "pause") == {"state": "paused", "changed": False}  # a second pause records nothing
    status = call(path, "status")
    assert status["reason"] == "operator paused"
    assert status["last_decision"]["kind"] == "paused" and status["last_decision"]["reason"] == "operator paused"
    assert 0.0 <= status["last_decision"]["age_s"] < 5.0
    assert call(path, "resume")["state"] in ("starting", "running")
    assert call(path, "stop") == {"state": "idle", "changed": True}
    assert call(path, "stop") == {"state": "idle", "changed": False}  # stopping an idle chair changes nothing
    assert call(path, "pause") == {"state": "idle", "changed": False}  # and so does pausing it
    status = call(path, "status")
    assert status["session"] is None, "the session ended"
    assert status["last_session"] == {"id": started["session_id"], "profile": "kid-ipc", "end_reason": "stopped"}
    assert refused(path, "start", profile="kid-ipc", scenario="no-such-scenario").code == REJECTED
    assert refused(path, "start").code == BAD_ARGS
    assert refused(path, "start", profile=" ").code == BAD_ARGS
    sessions = call(path, "list_sessions", profile="kid-ipc")
    assert [s["id"] for s in sessions][:1] == [started["session_id"]] and sessions[0]["profile"] == "kid-ipc"


def test_estop_cuts_the_outputs_before_replying_then_reset_and_ack(chair_at_idle):
    chair, path = chair_at_idle
    call(path, "start", profile="kid-estop", scenario="calm-sea")
    assert wait_for(lambda: outputs_of(chair)["light"] > 0.0), "the light never came on"
    reply = call(path, "estop", by="test")
    assert outputs_of(chair) == {"light": 0.0, "sound": 0.0, "vibration": 0.0}, "outputs must be off at the reply"
    assert reply["latched"] and reply["newly_latched"] and reply["tripped_by"] == "test"
    assert wait_for(lambda: chair.controller.state == State.ESTOPPED)
    time.sleep(0.2)  # a few control cycles: nothing may come back on
    assert outputs_of(chair) == {"light": 0.0, "sound": 0.0, "vibration": 0.0}
    status = call(path, "status")
    assert status["state"] == "estopped" and status["health"]["latch"]["latched"]
    assert refused(path, "start", profile="kid-estop").code == REJECTED
    assert call(path, "estop")["newly_latched"] is False  # a second press is harmless

    assert call(path, "reset", by="test") == {"state": "idle", "latched": False}
    assert not chair.latch.latched and not chair.bank.latched
    assert outputs_of(chair)["light"] == 0.0, "a reset never restarts stimulation by itself"
    assert refused(path, "reset").code == REJECTED  # nothing latched any more

    (record,) = [row for row in call(path, "list_sessions") if row["profile"] == "kid-estop"]
    assert record["end_reason"] == "estop", "the e-stop ended the session: its record says so"

    (alarm,) = [a for a in call(path, "status")["alarms"] if a["kind"] == "estop"]
    assert refused(path, "ack", id=alarm["id"][:3]).code == BAD_ARGS  # too short to be sure
    acked = call(path, "ack", id=alarm["id"][:6].upper(), by="nurse")  # a prefix names it, as in git
    assert acked["id"] == alarm["id"]
    assert acked["acknowledged_by"] == "nurse" and acked["acknowledged_at"]
    assert alarm["id"] not in [a["id"] for a in call(path, "status")["alarms"]]
    assert refused(path, "ack", id="no-such-alarm").code == NOT_FOUND
    assert refused(path, "ack").code == BAD_ARGS


def test_a_fault_ends_the_session_and_only_a_deliberate_reset_returns_to_idle(chair_at_idle):
    chair, path = chair_at_idle
    call(path, "start", profile="kid-fault", scenario="calm-sea")
    assert wait_for(lambda: outputs_of(chair)["light"] > 0.0), "the light never came on"
    chair.call_in_control_loop(lambda now: (None, chair.controller.fault(now, "vision stalled (test)")), 2.0)
    assert wait_for(lambda: outputs_of(chair)["light"] == 0.0), "a fault must switch the outputs off"
    status = call(path, "status")
    assert status["state"] == "fault" and not status["health"]["latch"]["latched"]
    (record,) = [row for row in call(path, "list_sessions") if row["profile"] == "kid-fault"]
    assert record["end_reason"] == "fault" and record["ended_at"]
    assert "reset" in refused(path, "start", profile="kid-fault").message

    assert call(path, "reset", by="test") == {"state": "idle", "latched": False}
    time.sleep(0.2)
    assert outputs_of(chair)["light"] == 0.0, "a reset never restarts stimulation by itself"
    assert refused(path, "reset").code == REJECTED  # nothing to reset any more
    call(path, "start", profile="kid-fault", scenario="calm-sea")
    assert call(path, "status")["state"] == "starting"
    call(path, "stop")
    (latest, *_) = [row for row in call(path, "list_sessions") if row["profile"] == "kid-fault"]
    assert latest["end_reason"] == "stopped"


def test_set_caps_applies_and_is_saved_to_the_running_profile(chair_at_idle):
    chair, path = chair_at_idle
    call(path, "start", profile="kid-caps")
    result = call(path, "set_caps", light=0.5, vibration=0.25)
    assert result["persisted"] and result["profile"] == "kid-caps"
    assert result["caps"]["light"] == 0.5 and result["caps"]["vibration"] == 0.25
    assert chair.bank.caps["light"] == 0.5
    (profile,) = [p for p in call(path, "list_profiles") if p["pseudonym"] == "kid-caps"]
    assert (profile["light_cap"], profile["sound_cap"], profile["vibration_cap"]) == (0.5, 1.0, 0.25)
    # what the chair gives, as status shows it: the sound cap is held at the chair's ceiling (max_sound 0.8)
    assert profile["effective_caps"] == chair.bank.caps == {"light": 0.5, "sound": 0.8, "vibration": 0.25}
    assert call(path, "set_caps", light=0.9)["caps"]["light"] == 0.9  # raising within 0..1 is allowed
    assert refused(path, "set_caps", light=1.5).code == BAD_ARGS
    assert refused(path, "set_caps", sound="loud").code == BAD_ARGS
    assert refused(path, "set_caps").code == BAD_ARGS
    call(path, "stop")
    assert call(path, "set_caps", sound=0.3)["persisted"] is False  # no session: not saved to any profile


def test_lists_of_profiles_scenarios_and_sessions(chair_at_idle):
    chair, path = chair_at_idle
    scenarios = {row["name"]: row for row in call(path, "list_scenarios")}
    assert scenarios["calm-sea"]["default"] is True and not scenarios["quiet-glow"]["default"]
    assert scenarios["quiet-glow"]["features"] == "warm light, no sound, no vibration, very slow"
    assert scenarios["calm-sea"]["description"].startswith("Blue and teal")
    assert list(scenarios) == chair.controller.scenario_names  # in name order
    call(path, "start", profile="kid-list")
    call(path, "stop")
    assert "kid-list" in [p["pseudonym"] for p in call(path, "list_profiles")]
    (newest,) = call(path, "list_sessions", limit=1)
    assert newest["profile"] == "kid-list"
    assert refused(path, "list_sessions", limit=0).code == BAD_ARGS
    assert refused(path, "list_sessions", profile="nobody").code == NOT_FOUND
    assert refused(path, "list_profiles", extra=1).code == BAD_ARGS


def test_a_profile_is_erased_on_request_but_never_mid_session(chair_at_idle, capsys):
    chair, path = chair_at_idle
    call(path, "start", profile="kid-list")  # another child, whose report must stay
    call(path, "stop")
    call(path, "start", profile="kid-erase")
    assert refused(path, "delete_profile", profile="kid-erase", with_sessions=True).code == REJECTED
    call(path, "stop")
    refusal = refused(path, "delete_profile", profile="kid-erase")
    assert refusal.code == BAD_ARGS and "1 recorded session" in str(refusal), "sessions go only when asked"
    assert refused(path, "delete_profile", profile="kid-erase", with_sessions="yes").code == BAD_ARGS
    assert refused(path, "delete_profile", profile="nobody").code == NOT_FOUND
    report = call(path, "report", session="latest")
    kept = call(path, "report", session=call(path, "list_sessions", profile="kid-list", limit=1)[0]["id"])
    assert relaxctl(["--socket", str(path), "delete-profile", "kid-erase", "--with-sessions"]) == 0
    assert printed(capsys)[0] == "deleted profile kid-erase, 1 session(s) and 2 report file(s)\n"
    assert not Path(report["png"]).exists() and not Path(report["csv"]).exists()
    assert Path(kept["png"]).exists(), "another child's report stays"
    assert "kid-erase" not in [p["pseudonym"] for p in call(path, "list_profiles")]
    assert "kid-erase" not in [s["profile"] for s in call(path, "list_sessions", limit=1000)]

    commands = ChairCommands(chair, timeout_s=2.0)  # a deletion in progress (claimed by the control loop)
    commands._erasing = "kid-busy"
    with pytest.raises(CommandError, match="being deleted right now"):
        commands.handle("start", {"profile": "kid-busy"})
    with pytest.raises(CommandError, match="'kid-busy' is being deleted"):
        commands.handle("delete_profile", {"profile": "kid-ctl"})
    assert chair.controller.state.value == "idle"


def test_report_writes_png_and_csv_beside_the_socket_for_latest_and_by_id(chair_at_idle):
    chair, path = chair_at_idle
    session_id = call(path, "start", profile="kid-report", scenario="calm-sea")["session_id"]
    time.sleep(1.2)  # a second or so of records
    call(path, "stop")

    latest = call(path, "report", session="latest")
    assert latest["session"] == session_id
    png, table = Path(latest["png"]), Path(latest["csv"])
    assert png.parent == path.parent / "reports" and table.parent == png.parent
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture = cv2.imread(str(png))
    assert picture is not None and picture.shape[:2] == (800, 1200)
    lines = table.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["second", "negative"] and len(lines) >= 2, "a header and per-second rows"
    assert stat.S_IMODE(os.stat(png.parent).st_mode) == 0o750, "reports are for the socket's group only"
    assert stat.S_IMODE(os.stat(png).st_mode) == 0o640

    by_id = call(path, "report", session=session_id)
    assert by_id == latest, "the same session renders to the same files"
    assert call(path, "report", session=str(session_id))["session"] == session_id

    missing = refused(path, "report", session=999999)
    assert missing.code == NOT_FOUND and "no session 999999" in missing.message and "latest" in missing.message
    huge = refused(path, "report", session=10**30)  # used to answer 'internal' (SQLite's integer overflow)
    assert huge.code == NOT_FOUND and "no session" in huge.message
    assert refused(path, "report", session=-3).code == NOT_FOUND
    assert refused(path, "report", session="yesterday").code == BAD_ARGS
    assert refused(path, "report").code == BAD_ARGS
    assert refused(path, "report", session=True).code == BAD_ARGS


# --------------------------------------------------------------------------- bad clients


def test_malformed_requests_get_error_replies_and_leave_the_chair_alone(chair_at_idle):
    chair, path = chair_at_idle
    events_before = len(chair.report.events)
    payload = b"".join([
        b"\xff\xfe\x00garbage\n",
        b"{not json\n",
        b"[1, 2]\n",
        b"\n",  # blank lines are skipped
        json.dumps({"v": 2, "id": "a", "cmd": "status"}).encode() + b"\n",
        request("self_destruct", request_id="b"),
        request("pause", request_id="c", args={"now": True}),
        request("status", request_id="d", args=[1]),
        json.dumps({"v": 1, "id": "e"}).encode() + b"\n",
        request("status", request_id="f"),
    ])
    answers, rest = exchange(path, payload, replies=9)
    codes = [None if a["ok"] else a["error"]["code"] for a in answers]
    assert codes == [BAD_JSON, BAD_JSON, BAD_REQUEST, UNSUPPORTED_VERSION, UNKNOWN_COMMAND, BAD_ARGS,
                     BAD_REQUEST, BAD_REQUEST, None]
    assert [a["id"] for a in answers] == [None, None, None, "a", "b", "c", "d", "e", "f"]
    assert all(a["v"] == 1 for a in answers) and all(a["error"]["message"] for a in answers if not a["ok"])
    assert rest == b"<open>", "the connection stays usable after bad requests"
    assert chair.controller.state == State.IDLE and not chair.latch.latched
    assert len(chair.report.events) == events_before


def test_an_oversized_line_is_refused_and_that_client_closed(chair_at_idle):
    chair, path = chair_at_idle
    answers, rest = exchange(path, b"x" * (MAX_LINE + 10) + b"\n" + request("status"), replies=1)
    assert answers[0]["error"]["code"] == LINE_TOO_LONG
    assert rest == b"", "the server closes the connection after an oversized line"
    longest = request("status", args={})  # a line of exactly the limit still passes
    padded = longest[:-2] + b" " * (MAX_LINE - len(longest) + 1) + b"}\n"
    assert len(padded) == MAX_LINE + 1
    answers, _ = exchange(path, padded, replies=1)
    assert answers[0]["ok"]
    assert call(path, "status")["state"] == "idle"


def test_clients_that_vanish_mid_command_do_not_disturb_the_chair(chair_at_idle):
    chair, path = chair_at_idle
    # A cut-off line, a read-only command and a start: separate clients are served concurrently,
    # so none of these may depend on another's order.
    for payload in (b'{"v": 1, "id": 1, "cmd": "sta', request("status"), request("start", args={"profile": "kid-gone"})):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(payload)
        # closed at once, without reading the reply
    # The command of the vanished client still ran; its reply went nowhere.
    assert wait_for(lambda: (call(path, "status")["session"] or {}).get("profile") == "kid-gone")
    assert call(path, "status")["state"] == "starting"
    assert wait_for(lambda: chair.ipc.clients == 0), "the vanished clients' threads must end"
    call(path, "stop")


def _jam(path: Path) -> tuple[socket.socket, bool]:
    """A client that sends status requests until both socket buffers are full, and never reads.

    Returns the socket and whether it got stuck (the server blocked writing replies nobody reads).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.setblocking(False)
    line = request("status")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            sock.send(line)
        except BlockingIOError:  # full: still full a moment later means the server stopped reading
            time.sleep(0.2)
            try:
                sock.send(line)
            except BlockingIOError:
                return sock, True
    return sock, False


def test_clients_that_never_read_their_replies_stall_only_themselves(chair_at_idle):
    chair, path = chair_at_idle
    call(path, "start", profile="kid-jam")
    jammers = [_jam(path) for _ in range(3)]
    try:
        assert all(stuck for _, stuck in jammers), "each jammer must have filled both buffers"
        assert wait_for(lambda: chair.ipc.clients >= 3)
        # Everyone else is still served at once, the loop keeps its cycle, and STOP works.
        started = time.monotonic()
        for _ in range(20):
            assert call(path, "status")["session"]["profile"] == "kid-jam"
        assert time.monotonic() - started < 5.0
        assert call(path, "estop", by="test")["latched"] is True
        assert wait_for(lambda: call(path, "status")["state"] == "estopped")
        assert call(path, "status")["health"]["latch"]["tripped_by"] == "test"
        assert all(level == 0 for level in outputs_of(chair).values())
    finally:
        for sock, _ in jammers:
            sock.close()
    assert wait_for(lambda: chair.ipc.clients == 0), "a jammed client's thread must end once it goes"


def test_ten_clients_at_once(chair_at_idle):
    chair, path = chair_at_idle
    barrier = threading.Barrier(10)
    results: list = [None] * 10

    def client(index: int) -> None:
        try:
            with ControlClient(path, timeout_s=10.0) as conn:
                barrier.wait(timeout=10)
                results[index] = [conn.call("status")["state"], len(conn.call("list_scenarios")),
                                  conn.call("set_caps", sound=0.8)["persisted"]]
        except Exception as error:  # shown by the assertion below
            results[index] = repr(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    scenarios = len(chair.controller.scenario_names)
    assert results == [["idle", scenarios, False]] * 10


# --------------------------------------------------------------------------- the socket file


def test_the_socket_is_group_readable_only(running):
    chair, path = running
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660


def echo_server(path: Path, **limits) -> ControlServer:
    return ControlServer(path, lambda cmd, args: {"cmd": cmd, "args": args}, IpcSettings(socket=str(path), **limits))


def group_the_daemon_may_give() -> grp.struct_group | None:
    """A group other than our own that this process may hand the socket to (root: any)."""
    ours = os.getegid()
    candidates = [g for g in grp.getgrall() if g.gr_gid != ours]
    if os.geteuid() != 0:
        candidates = [g for g in candidates if g.gr_gid in os.getgroups()]
    return candidates[0] if candidates else None


def group_the_daemon_may_not_give() -> grp.struct_group | None:
    if os.geteuid() == 0:
        return None  # root may give any group
    allowed = {os.getegid(), *os.getgroups()}
    return next((g for g in grp.getgrall() if g.gr_gid not in allowed), None)


def socket_group(group_name: str) -> int:
    folder = short_dir()
    path = folder / "s.sock"
    try:
        with echo_server(path, group=group_name):
            assert call(path, "status")["cmd"] == "status", "the server must run whatever happened to the group"
            return os.stat(path).st_gid
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_socket_is_handed_to_the_configured_group():
    group = group_the_daemon_may_give()
    if group is None:
        pytest.skip("this user is in no second group to hand the socket to")
    assert socket_group(group.gr_name) == group.gr_gid


def test_a_missing_or_forbidden_group_leaves_the_socket_with_the_daemons_group(monkeypatch):
    assert socket_group("relaxd-no-such-group") == os.getegid()
    forbidden = group_the_daemon_may_not_give()
    if forbidden is None:  # root may give any group: refuse as the kernel refuses other users
        forbidden = group_the_daemon_may_give()
        assert forbidden is not None

        def refuse(*_args):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("relaxd.ipc.os.chown", refuse)
    assert socket_group(forbidden.gr_name) == os.getegid()


def test_a_stale_socket_is_replaced_and_a_live_one_refused():
    folder = short_dir()
    path = folder / "s.sock"
    try:
        crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        crashed.bind(str(path))  # what a crashed daemon leaves: a socket file nobody listens on
        crashed.close()
        assert relaxctl(["--socket", str(path), "status"]) == 2
        with echo_server(path):
            assert call(path, "hello", x=1) == {"cmd": "hello", "args": {"x": 1}}
            with pytest.raises(SocketInUseError, match="already running"):
                echo_server(path).start()
            assert call(path, "hello") == {"cmd": "hello", "args": {}}, "the refused server must not remove it"
        assert not path.exists()
        path.write_text("not a socket")
        with pytest.raises(IpcError, match="not a socket"):
            echo_server(path).start()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_clients_beyond_the_limit_are_told_busy():
    folder = short_dir()
    path = folder / "s.sock"
    try:
        with echo_server(path, max_clients=2) as server:
            with ControlClient(path) as first, ControlClient(path) as second:
                first.call("a")
                second.call("b")
                answers, rest = exchange(path, request("c"), replies=1)
                assert answers[0]["error"]["code"] == BUSY and rest == b""
                assert refused(path, "c").code == BUSY  # what a client is told
            assert wait_for(lambda: server.clients == 0)
            assert call(path, "d") == {"cmd": "d", "args": {}}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_commands_time_out_without_a_control_loop_but_estop_does_not_wait(tmp_path, tiny_model, clip, running):
    """A chair that is not running: queued commands are dropped; estop acts on the socket thread."""
    _, live_path = running
    chair = Chair(chair_settings(tmp_path, tiny_model, clip, live_path))
    commands = ChairCommands(chair, timeout_s=0.2)
    with pytest.raises(CommandError) as caught:
        commands.handle("start", {"profile": "kid-late"})
    assert caught.value.code == TIMEOUT
    chair.control_step(time.monotonic())  # the loop runs later: the dropped command must not
    assert chair.controller.state == State.IDLE and chair.store.find_profile("kid-late") is None

    assert commands.handle("estop", {"by": "test"})["latched"] and chair.latch.latched
    assert chair.bank.latched

    with pytest.raises(SocketInUseError):  # a second daemon on the live socket is refused at start
        chair.run(duration_s=5)
    assert call(live_path, "status")["state"] in {s.value for s in State}, "the first daemon keeps its socket"


# --------------------------------------------------------------------------- relaxctl


def printed(capsys) -> tuple[str, str]:
    """relaxctl's stdout and stderr, without the log lines the in-process daemon prints meanwhile."""
    captured = capsys.readouterr()
    log_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
    return tuple("".join(line for line in text.splitlines(keepends=True) if not log_line.match(line))
                 for text in (captured.out, captured.err))


def test_relaxctl_prints_readable_and_json_results_with_exit_codes(chair_at_idle, capsys, tmp_path):
    chair, path = chair_at_idle
    sock = ["--socket", str(path)]
    assert relaxctl([*sock, "status"]) == 0
    out, _ = printed(capsys)
    assert out.startswith("state     idle") and "health    camera" in out and "e-stop    not latched" in out

    assert relaxctl([*sock, "--json", "list-scenarios"]) == 0
    assert {"calm-sea": True, "sunset": False} == {row["name"]: row["default"] for row in json.loads(printed(capsys)[0])
                                                   if row["name"] in ("calm-sea", "sunset")}

    assert relaxctl([*sock, "start", "kid-ctl", "--scenario", "calm-sea"]) == 0
    assert printed(capsys)[0].startswith("started session")
    assert relaxctl([*sock, "set-caps", "--light", "0.4"]) == 0
    assert "saved to profile kid-ctl" in printed(capsys)[0]
    assert relaxctl([*sock, "profiles"]) == 0
    table = printed(capsys)[0].splitlines()
    assert table[0].split()[:4] == ["pseudonym", "light", "sound", "vibration"]
    (row,) = [row for row in table if row.startswith("kid-ctl ")]
    assert row.split()[1:4] == ["0.40", "0.80*", "0.80*"], "the caps the chair applies, as status shows them"
    assert table[-1].startswith("* held lower by this chair's ceiling")
    assert relaxctl([*sock, "sessions", "--limit", "1"]) == 0
    table = printed(capsys)[0].splitlines()
    assert table[0].split()[:4] == ["id", "profile", "scenario", "started"] and "how it ended" in table[0]
    zone = datetime.now().astimezone().strftime("%Z")
    assert f" {zone} " in table[1] and table[1].rstrip().endswith("not ended"), "local time with its zone"
    assert relaxctl([*sock, "stop"]) == 0
    assert printed(capsys)[0] == "state idle\n"
    assert relaxctl([*sock, "report", "latest"]) == 0
    out = printed(capsys)[0]
    assert out.startswith("report of session") and ".png" in out and ".csv" in out

    assert relaxctl([*sock, "pause"]) == 0  # pause, resume, stop: nothing to do at idle, said so
    assert printed(capsys)[0] == "state idle (nothing to pause)\n"
    assert relaxctl([*sock, "--json", "resume"]) == 0
    assert json.loads(printed(capsys)[0]) == {"state": "idle", "changed": False}
    assert relaxctl([*sock, "set-caps"]) == 1
    out, err = printed(capsys)
    # the last line: a stale log handler of an earlier test may print its own complaint before it
    assert out == "" and err.strip().splitlines()[-1].startswith(
        "relaxctl: set-caps refused: set-caps needs at least one of --light")

    assert relaxctl(["--socket", str(tmp_path / "none.sock"), "status"]) == 2
    err = printed(capsys)[1]
    assert "no socket at" in err and "Is relaxd running" in err


def test_relaxctl_as_a_separate_process(chair_at_idle):
    chair, path = chair_at_idle
    script = Path(sys.executable).with_name("relaxctl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "relaxd.relaxctl"]
    done = subprocess.run([*command, "--socket", str(path), "--json", "status"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "idle"
    gone = subprocess.run([*command, "--socket", str(path) + ".missing", "status"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 2 and "cannot connect to relaxd" in gone.stderr


def test_estop_and_status_get_through_a_server_full_of_idle_clients():
    """The fault injector's finding: 16 idle connections made STOP fail with busy for 600 s."""
    folder = short_dir()
    path = folder / "s.sock"
    idle = []
    try:
        with echo_server(path, max_clients=3, idle_timeout_s=600.0) as server:
            for _ in range(3):
                idle.append(ControlClient(path).connect())
            assert wait_for(lambda: server.clients == 3)
            assert call(path, "estop", by="test") == {"cmd": "estop", "args": {"by": "test"}}
            assert call(path, "status") == {"cmd": "status", "args": {}}
            assert refused(path, "start", profile="kid").code == BUSY  # only the safety commands jump the queue
            # Idle connections on the reserved lane itself hold it for RESERVED_READ_S only.
            squatters = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(RESERVED_SLOTS)]
            for squatter in squatters:
                squatter.connect(str(path))
            assert wait_for(lambda: _estop_answered(path), timeout=RESERVED_READ_S * 4)
            for squatter in squatters:
                squatter.close()
    finally:
        for client in idle:
            client.close()
        shutil.rmtree(folder, ignore_errors=True)


def _estop_answered(path: Path) -> bool:
    try:
        return call(path, "estop") == {"cmd": "estop", "args": {}}
    except CommandError:
        return False


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_request_id_that_is_not_finite_gets_an_error_reply(constant):
    folder = short_dir()
    path = folder / "s.sock"
    try:
        with echo_server(path):
            line = b'{"v": 1, "id": ' + constant.encode() + b', "cmd": "status"}\n'
            answers, _ = exchange(path, line, replies=1)
            assert answers[0]["ok"] is False and answers[0]["error"]["code"] == "bad_json"
            assert constant in answers[0]["error"]["message"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("argv", [
    ["--timeout", "-1", "status"], ["--timeout", "0", "status"], ["--timeout", "nan", "status"],
    ["--timeout", "inf", "status"], ["--timeout", "soon", "status"],
    ["set-caps", "--light", "1.5"], ["set-caps", "--sound", "nan"], ["set-caps", "--vibration", "-0.1"],
    ["list-sessions", "--limit", "0"], ["list-sessions", "--limit", "2.5"],
])
def test_bad_option_values_get_a_usage_error_not_a_traceback(argv, capsys):
    assert relaxctl(["--socket", "/nonexistent/relaxd.sock", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "give" in err and argv[argv.index(next(a for a in argv if a.startswith("--")) ) + 1] in err


# --------------------------------------------------------------------------- the learner through the socket


def test_start_without_a_scenario_plays_what_suggest_shows_and_records_its_outcome(chair_at_idle, capsys):
    chair, path = chair_at_idle
    suggested = call(path, "suggest", profile="kid-learn")
    assert suggested["chosen_by"] == "learner" and suggested["new_child"] is True
    assert suggested["scenario"] in suggested["allowed"] and suggested["why"]
    started = call(path, "start", profile="kid-learn")
    assert (started["scenario"], started["chosen_by"], started["why"]) == \
        (suggested["scenario"], "learner", suggested["why"])
    assert call(path, "status")["reason"].startswith(f"started '{started['scenario']}', chosen by the learner")
    call(path, "stop")
    profile = chair.store.find_profile("kid-learn")
    assert wait_for(lambda: chair.store.scenario_outcomes(profile_id=profile.id)), "no outcome was recorded"
    (outcome,) = chair.store.scenario_outcomes(profile_id=profile.id)
    assert (outcome.session_id, outcome.scenario, outcome.chosen_by) == (started["session_id"], started["scenario"],
                                                                       "learner")
    assert outcome.ended_early  # stopped before any calm face (the clip has none)
    assert relaxctl(["--socket", str(path), "suggest", "kid-learn"]) == 0
    assert "kid-learn: the learner suggests" in capsys.readouterr().out


def test_a_halt_blocks_the_scenario_until_a_therapist_approves_it(chair_at_idle):
    from types import MappingProxyType

    from relaxd.affect import AffectReading

    chair, path = chair_at_idle
    call(path, "start", profile="kid-halt", scenario="sunset")
    assert wait_for(lambda: call(path, "status")["state"] == "running")
    scores = MappingProxyType({"negative": 0.97, "neutral": 0.02, "positive": 0.01})
    chair._readings.append(AffectReading(time.monotonic(), True, "negative", "fear", 0.97, scores, 15, 15))
    assert wait_for(lambda: call(path, "status")["state"] == "halted")
    call(path, "stop")
    assert wait_for(lambda: "sunset" in call(path, "suggest", profile="kid-halt")["blocked"])
    waiting = [(row["profile"], row["scenario"]) for row in call(path, "list_blocked")]
    assert ("kid-halt", "sunset") in waiting  # what the panel's approvals list shows behind the PIN
    for _ in range(20):  # whatever the draw, never the blocked one
        assert call(path, "suggest", profile="kid-halt")["scenario"] != "sunset"
    assert call(path, "approve_scenario", profile="kid-halt", scenario="sunset", by="dr-test")["changed"] is True
    assert "sunset" not in call(path, "suggest", profile="kid-halt")["blocked"]
    assert call(path, "approve_scenario", profile="kid-halt", scenario="sunset")["changed"] is False


def test_an_excluded_scenario_is_never_suggested_nor_started(chair_at_idle):
    chair, path = chair_at_idle
    call(path, "start", profile="kid-excl", scenario="calm-sea")
    call(path, "stop")
    everything = set(chair.controller.scenario_names)
    for name in sorted(everything - {"meadow"}):
        call(path, "exclude_scenario", profile="kid-excl", scenario=name, by="dr-test")
    assert call(path, "suggest", profile="kid-excl")["scenario"] == "meadow"  # the one left
    error = refused(path, "start", profile="kid-excl", scenario="calm-sea")
    assert error.code == REJECTED and "excluded for 'kid-excl'" in error.message and "include-scenario" in error.message
    call(path, "exclude_scenario", profile="kid-excl", scenario="meadow")
    error = refused(path, "start", profile="kid-excl")
    assert error.code == REJECTED and "every scenario is excluded or blocked" in error.message
    assert call(path, "status")["state"] == "idle"
    assert call(path, "include_scenario", profile="kid-excl", scenario="calm-sea")["changed"] is True
    assert call(path, "suggest", profile="kid-excl")["scenario"] == "calm-sea"
    assert refused(path, "exclude_scenario", profile="kid-excl", scenario="nope").code == NOT_FOUND
    assert refused(path, "exclude_scenario", profile="nobody", scenario="calm-sea").code == NOT_FOUND
