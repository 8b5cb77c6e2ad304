"""Issue 18: a chair on a real Mosquitto (started here on 127.0.0.1, password file and ACL).

The chair is the real ``Chair`` in simulation (faceless clip, tiny model, real SQLite store),
its bridge the real paho client; a supervisor's dashboard is another paho client.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from brokerkit import USERS, Mosquitto, Subscriber, mosquitto_binary
from chairkit import faceless_clip, wait_for

pytest.importorskip("paho.mqtt.client")
if mosquitto_binary() is None:
    pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)", allow_module_level=True)

from relaxd.config import ConfigValidationError, load_settings  # noqa: E402
from relaxd.daemon import Chair  # noqa: E402
from relaxd.mqtt import discovery_messages, state_payload, Topics  # noqa: E402
from relaxd.settings import (ClassifierSettings, ControllerSettings, IpcSettings, MqttSettings, Settings,  # noqa: E402
                             StoreSettings)
from relaxd.vocabulary import Priority  # noqa: E402

BASE = "relaxd/chair-a"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return faceless_clip(tmp_path_factory.mktemp("clip") / "faceless.avi")


@pytest.fixture
def broker(tmp_path):
    folder = tmp_path / "broker"
    folder.mkdir()
    mosquitto = Mosquitto(folder).start()
    yield mosquitto
    mosquitto.stop()


def mqtt_settings(broker: Mosquitto, tmp_path: Path, **overrides) -> MqttSettings:
    password = tmp_path / "mqtt-password"
    password.write_text(USERS["chair-a"] + "\n", encoding="utf-8")
    values = dict(enabled=True, host="127.0.0.1", port=broker.port, username="chair-a", password_file=str(password),
                  chair_id="chair-a", retry_initial_s=0.1, retry_max_s=0.5, state_interval_s=0.2, keepalive_s=5)
    return MqttSettings(**{**values, **overrides})


def run_chair(tmp_path: Path, model: Path, clip: Path, mqtt: MqttSettings) -> tuple[Chair, threading.Thread]:
    settings = Settings(classifier=ClassifierSettings(model=str(model)),
                        store=StoreSettings(path=str(tmp_path / "relaxd.db")),
                        control=ControllerSettings(calibration_s=0.5, no_face_pause_s=60.0, child_left_s=600.0),
                        ipc=IpcSettings(socket=""), mqtt=mqtt)
    settings = dataclasses.replace(settings, camera=dataclasses.replace(settings.camera, source=str(clip)))
    chair = Chair(settings)
    thread = threading.Thread(target=chair.run, daemon=True)
    thread.start()
    assert wait_for(lambda: chair.report.readings > 0), "the chair never ran"
    return chair, thread


def stop_chair(chair: Chair, thread: threading.Thread) -> None:
    chair.request_stop("test")
    thread.join(15)
    assert not thread.is_alive()


def raise_alert(chair: Chair, kind: str, message: str) -> None:
    chair._alert(kind, Priority.HIGH, message)  # as the control loop raises one


def alerts_of(subscriber: Subscriber) -> list[dict]:
    return [payload for topic, payload, _ in subscriber.seen if topic == f"{BASE}/alert"]


def test_state_alerts_discovery_and_a_session_summary_reach_a_supervisor(broker, tmp_path, tiny_model, clip):
    dashboard = Subscriber(broker, topics=("relaxd/#", "homeassistant/#"))
    chair, thread = run_chair(tmp_path, tiny_model, clip, mqtt_settings(broker, tmp_path, session_summary=True))
    try:
        dashboard.wait_for(lambda t, p: t == f"{BASE}/availability" and p == "online")
        _, state, retained = dashboard.wait_for(lambda t, p: t == f"{BASE}/state" and p["state"] == "idle")
        assert state["levels"] == {"light": 0.0, "sound": 0.0, "vibration": 0.0}
        dashboard.wait_for(lambda t, p: t == f"{BASE}/health" and "camera" in p["parts"])
        _, estop_button, _ = dashboard.wait_for(lambda t, p: t.startswith("homeassistant/button/relaxd_chair-a/estop"))
        assert estop_button["command_topic"] == f"{BASE}/command/estop"
        assert estop_button["availability_topic"] == f"{BASE}/availability"
        assert estop_button["device"]["identifiers"] == ["relaxd_chair-a"]

        raise_alert(chair, "adverse_reaction", "negative for 6.0 s")
        _, alert, retained = dashboard.wait_for(lambda t, p: t == f"{BASE}/alert")
        assert not retained and alert["event"] == "alert.raised" and alert["alert"]["kind"] == "adverse_reaction"
        assert alert["idempotency_key"] and alert["source"]
        dashboard.wait_for(lambda t, p: t == f"{BASE}/alarms" and [a["kind"] for a in p] == ["adverse_reaction"])

        chair.call_in_control_loop(lambda now: (chair.start_session("kid-mqtt", "calm-sea", now), []), 5.0)
        dashboard.wait_for(lambda t, p: t == f"{BASE}/state" and p["in_session"] and p["scenario"] == "calm-sea")
        chair.call_in_control_loop(lambda now: (None, chair.controller.stop(now)), 5.0)
        _, summary, _ = dashboard.wait_for(lambda t, p: t == f"{BASE}/session", timeout=15)
        assert summary["event"] == "session.ended" and summary["session"]["profile"] == "kid-mqtt"
        assert summary["session"]["scenario"] == "calm-sea" and summary["session"]["end_reason"] == "stopped"
        text = json.dumps(summary)
        assert "image" not in text and "frame" not in text
        assert all("kid-mqtt" not in json.dumps(p) for t, p, _ in dashboard.seen if t == f"{BASE}/state")
    finally:
        stop_chair(chair, thread)
        dashboard.close()
    later = Subscriber(broker, client_id="later")  # a dashboard opened after the chair went away
    try:
        later.wait_for(lambda t, p: t == f"{BASE}/availability" and p == "offline")
    finally:
        later.close()


def test_a_broker_restart_mid_session_delivers_every_alert_once_and_in_order(broker, tmp_path, tiny_model, clip):
    nurse = Subscriber(broker, topics=(f"{BASE}/alert",), client_id="nurse-phone", persistent=True)
    chair, thread = run_chair(tmp_path, tiny_model, clip, mqtt_settings(broker, tmp_path))
    try:
        chair.call_in_control_loop(lambda now: (chair.start_session("kid-restart", "calm-sea", now), []), 5.0)
        assert wait_for(lambda: chair.mqtt.connected)
        raise_alert(chair, "a1", "before the outage")
        nurse.wait_for(lambda t, p: p["alert"]["kind"] == "a1")
        broker.stop()
        assert wait_for(lambda: not chair.mqtt.connected)
        for kind in ("a2", "a3", "a4"):
            raise_alert(chair, kind, "while the broker is down")
        time.sleep(1.0)
        status = chair.status()  # the chair runs on unaffected
        assert status["health"]["controller"]["ok"] and status["state"] == "starting" or status["state"] == "running"
        assert status["health"]["mqtt"]["connected"] is False and status["health"]["mqtt"]["pending_alerts"] == 3
        broker.start()
        assert wait_for(lambda: chair.mqtt.connected, timeout=15)
        raise_alert(chair, "a5", "after the outage")
        nurse.wait_for(lambda t, p: p["alert"]["kind"] == "a5", timeout=15)
        nurse.drain(1.0)
        # Each once, in the order raised. The broker may hand the nurse's phone a message again that
        # it had not seen acknowledged before its own restart (QoS 1 between broker and phone): such a
        # redelivery carries the DUP flag and the same idempotency key, and is left out here.
        firsts = [p["alert"]["kind"] for (t, p, _), dup in zip(nurse.seen, nurse.dup_flags)
                  if t == f"{BASE}/alert" and not dup]
        assert firsts == ["a1", "a2", "a3", "a4", "a5"], firsts
        keys = [p["idempotency_key"] for p in alerts_of(nurse)]
        assert len(set(keys)) == 5  # the chair sent no alert under two keys
        assert chair.store.outbox_pending("mqtt") == 0
    finally:
        stop_chair(chair, thread)
        nurse.close()


@pytest.mark.parametrize("problem", ["password", "tls"])
def test_wrong_credentials_or_a_refused_tls_handshake_say_why_and_the_chair_runs_on(problem, broker, tmp_path,
                                                                                    tiny_model, clip):
    settings = mqtt_settings(broker, tmp_path)
    if problem == "password":
        Path(settings.password_file).write_text("not-the-password", encoding="utf-8")
    else:
        settings = dataclasses.replace(settings, tls=True)  # the broker's listener speaks plain MQTT
    chair, thread = run_chair(tmp_path, tiny_model, clip, settings)
    try:
        assert wait_for(lambda: chair.mqtt.error is not None, timeout=15), "no error was reported"
        expected = "refused the connection (Not authorized): check mqtt.username and mqtt.password_file" \
            if problem == "password" else "the TLS handshake failed"
        assert expected in chair.mqtt.error, chair.mqtt.error
        frames = chair.report.frames
        raise_alert(chair, "still-works", "the chair's own alert path")
        assert wait_for(lambda: chair.report.frames > frames + 5) and chair.watchdog.healthy
        assert any(a.kind == "still-works" for a in chair.alerts.active())
        assert chair.status()["health"]["mqtt"]["error"] == chair.mqtt.error
    finally:
        stop_chair(chair, thread)


def test_tls_with_the_centres_ca_connects_and_another_ca_is_refused(tmp_path, tiny_model, clip):
    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the test certificates")
    folder = tmp_path / "tls-broker"
    folder.mkdir()
    broker = Mosquitto(folder, tls=True).start()
    dashboard = Subscriber(broker)  # on the plain listener
    try:
        good = mqtt_settings(broker, tmp_path, port=broker.tls_port, tls=True, ca_file=str(broker.ca_file))
        chair, thread = run_chair(tmp_path, tiny_model, clip, good)
        try:
            assert wait_for(lambda: chair.mqtt.connected, timeout=10), chair.mqtt.error
            dashboard.wait_for(lambda t, p: t == f"{BASE}/state")
        finally:
            stop_chair(chair, thread)
        wrong = dataclasses.replace(good, ca_file=str(folder / "other-ca.crt"))
        (tmp_path / "other").mkdir()
        chair, thread = run_chair(tmp_path / "other", tiny_model, clip, wrong)
        try:
            assert wait_for(lambda: chair.mqtt.error is not None, timeout=10)
            assert "the TLS handshake failed" in chair.mqtt.error and not chair.mqtt.connected
            assert chair.watchdog.healthy
        finally:
            stop_chair(chair, thread)
    finally:
        dashboard.close()
        broker.stop()


def test_a_remote_estop_trips_the_latch_and_bad_commands_are_ignored_with_a_log_line(broker, tmp_path, tiny_model,
                                                                                      clip, capsys):
    supervisor, viewer = Subscriber(broker), Subscriber(broker, "viewer", client_id="viewer")
    # A retained e-stop left on the broker would replay at every reconnect of the chair: ignored.
    supervisor.client.publish(f"{BASE}/command/estop", json.dumps({"by": "long ago"}), qos=1,
                              retain=True).wait_for_publish(5)
    chair, thread = run_chair(tmp_path, tiny_model, clip, mqtt_settings(broker, tmp_path))
    try:
        assert wait_for(lambda: chair.mqtt.connected)
        chair.call_in_control_loop(lambda now: (chair.start_session("kid-remote", "calm-sea", now), []), 5.0)
        supervisor.publish(f"{BASE}/command/start", {"profile": "someone"})  # not allowed by default
        supervisor.publish(f"{BASE}/command/resume", {})  # raises stimulation: not allowed by default
        supervisor.publish(f"{BASE}/command/estop", "{not json")
        supervisor.publish(f"{BASE}/command/estop", "[1, 2]")
        supervisor.publish(f"{BASE}/command/ack", {"nothing": "useful"})
        viewer.publish(f"{BASE}/command/estop", {"by": "viewer"})  # the ACL does not let it write: dropped
        time.sleep(1.0)
        assert not chair.latch.latched, "a malformed or unauthorised command tripped the latch"
        assert chair.session is not None and chair.session.pseudonym == "kid-remote"
        logged = capsys.readouterr()
        text = logged.out + logged.err
        assert text.count("mqtt.command_refused") >= 3 and text.count("mqtt.command_malformed") >= 3, text[-2000:]
        assert "retained command ignored" in text
        supervisor.client.publish(f"{BASE}/command/estop", b"", qos=1, retain=True).wait_for_publish(5)  # clear it
        time.sleep(0.3)

        supervisor.publish(f"{BASE}/command/estop", {"by": "nurse-station"})
        assert wait_for(lambda: chair.latch.latched, timeout=5)
        assert chair.latch.tripped_by.startswith("mqtt:nurse-station")
        assert wait_for(lambda: chair.controller.state.value == "estopped")
        assert all(value == 0.0 for value in (chair.bank.levels.light_brightness, chair.bank.levels.sound_volume,
                                               chair.bank.levels.vibration))
        raise_alert(chair, "remote-ack", "acknowledge me")
        supervisor.publish(f"{BASE}/command/ack", {"all": True, "by": "nurse"})
        assert wait_for(lambda: not any(a.kind == "remote-ack" for a in chair.alerts.active()))
    finally:
        stop_chair(chair, thread)
        supervisor.close()
        viewer.close()


# --------------------------------------------------------------------------- configuration and payloads


def test_the_mqtt_section_is_validated_with_file_and_line(tmp_path):
    config = tmp_path / "chair.yaml"
    config.write_text("mqtt:\n  enabled: true\n  commands: [estop, ack, dance]\n  cert_file: /x.pem\n", encoding="utf-8")
    with pytest.raises(ConfigValidationError) as error:
        load_settings(config)
    text = str(error.value)
    assert "chair.yaml:3" in text and "'dance' is not an MQTT command" in text
    assert "needs both cert_file and key_file" in text


def test_a_missing_password_file_or_library_is_a_clear_error_at_start(tmp_path, tiny_model, clip, broker):
    from relaxd.mqtt import MqttError

    settings = dataclasses.replace(mqtt_settings(broker, tmp_path), password_file=str(tmp_path / "absent"))
    with pytest.raises(MqttError, match=r"mqtt.password_file .*absent cannot be read.*create it"):
        run_chair(tmp_path, tiny_model, clip, settings)


def test_discovery_offers_an_acknowledge_button_only_when_ack_is_allowed():
    topics = Topics("relaxd/c1")
    with_ack = {t.split("/")[-2] for t, _ in discovery_messages(MqttSettings(), "c1", topics)}
    without = {t.split("/")[-2] for t, _ in discovery_messages(MqttSettings(commands=("estop",)), "c1", topics)}
    assert with_ack - without == {"acknowledge"}
    assert {"state", "affect", "problem", "alarm", "estop", "light", "sound", "vibration"} <= without
    assert state_payload({"session": {"id": 3, "profile": "kid-x"}, "levels": {}})["in_session"] is True


def test_the_centres_example_acl_keeps_each_chair_to_its_own_topics(tmp_path, tiny_model, clip):
    """deploy/centre/acl as shipped: a chair announces itself, dashboards read it, another chair cannot command it."""
    acl = (Path(__file__).resolve().parents[1] / "deploy" / "centre" / "acl").read_text(encoding="utf-8")
    users = {"chair-a": USERS["chair-a"], "chair-b": "chair-b-secret", "supervisor": USERS["supervisor"],
             "homeassistant": "ha-secret"}
    folder = tmp_path / "centre"
    folder.mkdir()
    broker = Mosquitto(folder, users=users, acl=acl).start()
    home = Subscriber(broker, "homeassistant", topics=("relaxd/#", "homeassistant/#"), client_id="ha",
                      password="ha-secret")
    intruder = Subscriber(broker, "chair-b", topics=("relaxd/chair-b/#",), client_id="chair-b",
                          password="chair-b-secret")
    chair, thread = run_chair(tmp_path, tiny_model, clip, mqtt_settings(broker, tmp_path))
    try:
        home.wait_for(lambda t, p: t == f"{BASE}/state")
        home.wait_for(lambda t, p: t == "homeassistant/button/relaxd_chair-a/estop/config")
        intruder.publish(f"{BASE}/command/estop", {"by": "chair-b"})
        time.sleep(1.0)
        assert not chair.latch.latched, "another chair's login commanded this chair"
        home.publish(f"{BASE}/command/estop", {"by": "home-assistant"})
        assert wait_for(lambda: chair.latch.latched, timeout=5)
    finally:
        stop_chair(chair, thread)
        for client in (home, intruder):
            client.close()
        broker.stop()


def test_a_killed_daemon_shows_as_offline_through_the_brokers_last_will(broker, tmp_path):
    """SIGKILL leaves no chance to say goodbye: the broker must publish the will after the keep-alive."""
    import signal
    import subprocess
    import sys

    settings = mqtt_settings(broker, tmp_path, keepalive_s=5)
    script = (
        "import sys, time\n"
        "from relaxd.mqtt import MqttBridge\n"
        "from relaxd.settings import MqttSettings\n"
        "from relaxd.store import SessionStore\n"
        f"settings = MqttSettings(**{dataclasses.asdict(settings)!r})\n"
        f"store = SessionStore({str(tmp_path / 'killed.db')!r})\n"
        "bridge = MqttBridge(settings, status=lambda: {'state': 'running'}, command=lambda c, a: None, store=store)\n"
        "bridge.start()\n"
        "while not bridge.connected: time.sleep(0.05)\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n")
    dashboard = Subscriber(broker, client_id="watcher")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # its log lines first
            if line.strip() == "up":
                break
        dashboard.wait_for(lambda t, p: t == f"{BASE}/availability" and p == "online")
        process.send_signal(signal.SIGKILL)
        process.wait(5)
        started = time.monotonic()
        dashboard.wait_for(lambda t, p: t == f"{BASE}/availability" and p == "offline", timeout=15)
        assert time.monotonic() - started < 1.5 * settings.keepalive_s + 3.0
    finally:
        if process.poll() is None:
            process.kill()
        dashboard.close()
