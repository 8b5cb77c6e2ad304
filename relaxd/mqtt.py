"""A centre's broker: each chair's state, health, alarms and alerts over MQTT, with Home Assistant discovery.

Off by default (``mqtt.enabled``); the client library (paho-mqtt) is the ``mqtt`` extra, so a
chair without a broker carries none of it. One ``MqttBridge`` per daemon:

* **Out**, under ``<topic_prefix>/<chair_id>/``: ``availability`` (``online``, and the broker's
  last will ``offline`` when the daemon dies or loses the link), ``state``, ``health`` and
  ``alarms`` (retained JSON, published on change at most every ``state_interval_s``),
  ``alert`` (every caregiver alert and acknowledgement, QoS 1) and, when configured, ``session``
  (a summary when a session ends: pseudonym and numbers only, never an image).
* **Alerts go through the durable outbox** (the ``mqtt`` channel of the store's outbox, written
  in the same transaction as the alert): the bridge sends the oldest row, waits for the
  broker's PUBACK, and only then marks it delivered; a broker that is down delays alerts, never
  loses or reorders them. A message that went out without its PUBACK is not published again:
  paho resends that same message when the connection is back. Only a daemon restarted in
  between sends it anew, and each carries its ``idempotency_key`` so the receiver can drop it.
* **In**: ``command/<name>`` with a JSON object. Only ``mqtt.commands`` are accepted (``estop``
  and ``ack`` by default: neither starts nor raises stimulation); anything else, malformed or
  not allowed, is ignored with a log line. An e-stop goes straight to the safety latch.
* **Home Assistant**: discovery messages (retained, under ``discovery_prefix``) make the chair
  one device with its state, affect, levels, problem and alarm sensors, an E-stop button and,
  when ``ack`` is allowed, an Acknowledge button.

The control loop never waits on the network: the bridge reads ``Chair.status()`` (safe from any
thread) on its own thread, and paho's network loop runs on another; commands are handed to a
worker thread, so a slow control loop never stalls the MQTT connection either.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import structlog

import relaxd
from relaxd.errors import ConfigError, RelaxdError
from relaxd.settings import MqttSettings
from relaxd.store import SessionStore, StoreError

log = structlog.get_logger(__name__)

ONLINE, OFFLINE = "online", "offline"
ALERT_QOS = 1
PUBACK_WAIT_S = 5.0
CONNECT_FIXES = {  # paho's words for the broker's CONNACK refusals -> what to check
    "not authorized": "check mqtt.username and mqtt.password_file (the broker's password file) and its ACL "
                      "for this chair",
    "bad user name or password": "check mqtt.username and mqtt.password_file",
    "client identifier not valid": "another chair may use the same mqtt.chair_id",
    "server unavailable": "the broker is not ready; it is retried",
    "unsupported protocol version": "the broker must speak MQTT 3.1.1",
}
Command = Callable[[str, dict[str, Any]], Any]


class MqttError(RelaxdError):
    """The MQTT section cannot be used as configured (missing library, unreadable file)."""


@dataclass(frozen=True)
class Topics:
    """Every topic of one chair, under ``<topic_prefix>/<chair_id>``."""

    base: str

    @classmethod
    def of(cls, settings: MqttSettings, chair_id: str) -> "Topics":
        return cls(f"{settings.topic_prefix.strip('/')}/{chair_id}")

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def alarms(self) -> str:
        return f"{self.base}/alarms"

    @property
    def alert(self) -> str:
        return f"{self.base}/alert"

    @property
    def session(self) -> str:
        return f"{self.base}/session"

    def command(self, name: str) -> str:
        return f"{self.base}/command/{name}"


def chair_id_of(settings: MqttSettings) -> str:
    """The configured id, else the host name (as a topic level: no '/', '+', '#')."""
    name = settings.chair_id or socket.gethostname()
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "chair"


def state_payload(status: dict[str, Any]) -> dict[str, Any]:
    """What a supervisor sees of the chair: no ages (they change every call), no pseudonym."""
    affect = status.get("affect") or {}
    levels = status.get("levels") or {}
    return {
        "state": status.get("state"), "reason": status.get("reason"), "scenario": status.get("scenario"),
        "phase": status.get("phase"), "in_session": status.get("session") is not None,
        "affect": {"face": bool(affect.get("face_present")), "group": affect.get("group"),
                   "label": affect.get("label")},
        "intensity": round(float(status.get("intensity") or 0.0), 2),
        "levels": {k: round(float(levels.get(k, 0.0)), 2) for k in ("light", "sound", "vibration")},
        "caps": {k: round(float(v), 2) for k, v in (status.get("caps") or {}).items()},
        "simulation": status.get("simulation"),
    }


def health_payload(status: dict[str, Any]) -> dict[str, Any]:
    parts = {name: bool(part.get("ok")) for name, part in (status.get("health") or {}).items()}
    return {"ok": all(parts.values()), "parts": parts}


def alarms_payload(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: alarm.get(k) for k in ("id", "kind", "priority", "message", "time")}
            for alarm in status.get("alarms") or []]


def discovery_messages(settings: MqttSettings, chair_id: str, topics: Topics) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant MQTT discovery: (config topic, payload) per entity of this chair."""
    device = {"identifiers": [f"relaxd_{chair_id}"], "name": f"Relaxation chair {chair_id}",
              "manufacturer": "relaxd", "model": "relaxation chair", "sw_version": relaxd.__version__}
    common = {"device": device, "availability_topic": topics.availability,
              "payload_available": ONLINE, "payload_not_available": OFFLINE}
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("sensor", "state", {"name": "State", "state_topic": topics.state, "icon": "mdi:seat-recline-extra",
                             "value_template": "{{ value_json.state }}", "json_attributes_topic": topics.state}),
        ("sensor", "affect", {"name": "Affect", "state_topic": topics.state, "icon": "mdi:emoticon-outline",
                              "value_template": "{{ value_json.affect.group if value_json.affect.face else 'no face' }}"}),
        ("binary_sensor", "problem", {"name": "Problem", "state_topic": topics.health, "device_class": "problem",
                                      "value_template": "{{ 'OFF' if value_json.ok else 'ON' }}",
                                      "json_attributes_topic": topics.health}),
        ("binary_sensor", "alarm", {"name": "Alarm", "state_topic": topics.alarms, "device_class": "safety",
                                    "value_template": "{{ 'ON' if value_json | length > 0 else 'OFF' }}"}),
        ("button", "estop", {"name": "Emergency stop", "command_topic": topics.command("estop"),
                             "payload_press": json.dumps({"by": "home-assistant"}), "icon": "mdi:stop-circle"}),
    ]
    for channel in ("light", "sound", "vibration"):
        entities.append(("sensor", channel, {
            "name": channel.capitalize(), "state_topic": topics.state, "unit_of_measurement": "%",
            "value_template": f"{{{{ (value_json.levels.{channel} * 100) | round(0) }}}}",
            "json_attributes_template": f"{{{{ {{'cap': value_json.caps.{channel}}} | tojson }}}}",
            "json_attributes_topic": topics.state}))
    if "ack" in settings.commands:
        entities.append(("button", "acknowledge", {
            "name": "Acknowledge alarms", "command_topic": topics.command("ack"),
            "payload_press": json.dumps({"all": True, "by": "home-assistant"}), "icon": "mdi:bell-check"}))
    prefix = settings.discovery_prefix.strip("/")
    return [(f"{prefix}/{component}/relaxd_{chair_id}/{object_id}/config",
             {**common, **config, "unique_id": f"relaxd_{chair_id}_{object_id}",
              "object_id": f"relaxd_{chair_id}_{object_id}"})
            for component, object_id, config in entities]


def session_summary(store: SessionStore, session_id: int, chair_id: str) -> tuple[str, dict[str, Any]]:
    """(key, payload) of a finished session for the ``session`` topic: the pseudonym and numbers, never an image."""
    import uuid

    data = store.session_data(session_id)
    session, profile = data["session"], data["profile"] or {}
    affect = data["affect"]
    faces = [a for a in affect if a["dominant_group"] != "none"]
    shares = {group: (sum(a["dominant_group"] == group for a in faces) / len(faces) if faces else None)
              for group in ("negative", "neutral", "positive")}
    key = uuid.uuid4().hex
    return key, {"event": "session.ended", "idempotency_key": key, "source": chair_id, "session": {
        "id": session["id"], "profile": profile.get("pseudonym"), "scenario": session["scenario"],
        "started_at": session["started_at"], "ended_at": session["ended_at"], "end_reason": session["end_reason"],
        "seconds_recorded": len(affect), "share_of_face_seconds": shares,
        "alerts": [a["kind"] for a in data["alerts"]],
        "scenarios": [{k: o[k] for k in ("scenario", "chosen_by", "time_to_calm_s", "negative_share", "halted")}
                      for o in data["scenarios"]]}}


def _read_password(settings: MqttSettings) -> Optional[str]:
    if not settings.password_file:
        return None
    path = Path(settings.password_file).expanduser()
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise MqttError(f"mqtt.password_file {path} cannot be read ({error}): create it with the broker "
                        "password (mode 0600, owned by the relaxd user)") from None


def _check_files(settings: MqttSettings) -> None:
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(settings, key)
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"mqtt.{key} {value} not found: point it at the PEM file, or leave it empty")


class MqttBridge:
    """Publishes one chair to the broker and takes the allowed commands from it (see the module docstring)."""

    def __init__(self, settings: MqttSettings, *, status: Callable[[], dict[str, Any]], command: Command,
                 store: SessionStore) -> None:
        try:
            import paho.mqtt.client as paho
        except ImportError:
            raise MqttError("mqtt.enabled needs the paho-mqtt library: pip install 'relaxd[mqtt]', "
                            "or set mqtt.enabled: false") from None
        _check_files(settings)
        self.settings = settings
        self.chair_id = chair_id_of(settings)
        self.topics = Topics.of(settings, self.chair_id)
        self._status, self._command, self._store = status, command, store
        self._paho = paho
        self._client = self._make_client(paho, _read_password(settings))
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._republish = threading.Event()
        self._commands: "queue.Queue[Optional[tuple[str, dict[str, Any]]]]" = queue.Queue(maxsize=32)
        self._threads: list[threading.Thread] = []
        self._published: dict[str, str] = {}  # topic -> last retained payload sent
        self._inflight: Optional[tuple[int, Any]] = None  # (outbox seq, paho's message info) awaiting PUBACK
        self.error: Optional[str] = None  # the last connection problem, in words
        self.failures = 0
        self.delivered = 0
        self._pending: Optional[int] = None  # undelivered MQTT outbox rows, counted by the publisher thread

    def _make_client(self, paho: Any, password: Optional[str]) -> Any:
        settings = self.settings
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"relaxd-{self.chair_id}",
                             protocol=paho.MQTTv311, clean_session=True)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        if settings.username:
            client.username_pw_set(settings.username, password)
        if settings.tls:
            try:
                client.tls_set(ca_certs=settings.ca_file or None, certfile=settings.cert_file or None,
                               keyfile=settings.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError, ValueError) as error:
                raise ConfigError(f"mqtt TLS files cannot be used ({error}): check mqtt.ca_file, cert_file "
                                  "and key_file") from None
        client.reconnect_delay_set(max(1, int(settings.retry_initial_s)), max(1, int(settings.retry_max_s)))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "MqttBridge":
        """Connect in the background: the chair runs whether or not the broker answers."""
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()
        for target, name in ((self._run, "mqtt-publish"), (self._serve_commands, "mqtt-commands")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("mqtt.starting", broker=f"{self.settings.host}:{self.settings.port}", topics=self.topics.base,
                 tls=self.settings.tls)
        return self

    def stop(self) -> None:
        """Say ``offline`` (retained) and disconnect; undelivered alerts stay in the outbox."""
        self._stopping.set()
        self._wake.set()
        try:
            self._commands.put_nowait(None)
        except queue.Full:
            pass
        for thread in self._threads:
            thread.join(PUBACK_WAIT_S + 2.0)
        if self._connected.is_set():
            info = self._client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()

    def notify(self) -> None:
        """An outbox row was committed: send it now rather than at the next look."""
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def health(self) -> dict[str, Any]:
        """For ``Chair.status()``: from memory, never from the store (status must not wait on it)."""
        return {"ok": self.connected, "connected": self.connected, "broker": f"{self.settings.host}:{self.settings.port}",
                "error": self.error, "pending_alerts": self._pending, "delivered": self.delivered}

    def _count_pending(self) -> None:
        try:
            self._pending = self._store.outbox_pending("mqtt")
        except StoreError:
            self._pending = None

    # ------------------------------------------------------------------ paho callbacks (its network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if reason.is_failure:
            words = str(reason)
            fix = CONNECT_FIXES.get(words.lower(), "see the broker's log")
            self.error = f"the broker {self.settings.host}:{self.settings.port} refused the connection ({words}): {fix}"
            log.error("mqtt.refused", broker=f"{self.settings.host}:{self.settings.port}", why=self.error)
            return
        self.error = None
        self._connected.set()
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        if self.settings.discovery:
            for topic, payload in discovery_messages(self.settings, self.chair_id, self.topics):
                client.publish(topic, json.dumps(payload), qos=1, retain=True)
        client.subscribe(self.topics.command("+"), qos=1)
        self._republish.set()
        self._wake.set()
        log.info("mqtt.connected", broker=f"{self.settings.host}:{self.settings.port}")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self.error = (f"cannot connect to the broker {self.settings.host}:{self.settings.port} "
                      "(refused, unreachable or the TLS handshake failed: check mqtt.host, port, tls and ca_file)")
        log.error("mqtt.connect_failed", why=self.error)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stopping.is_set():
            self.error = f"the broker connection was lost ({reason}); reconnecting"
            log.warning("mqtt.disconnected", why=str(reason))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            self._take_command(message)
        except Exception:  # never into paho's loop: it would end the connection's thread
            log.exception("mqtt.command_failed", topic=getattr(message, "topic", None))

    def _take_command(self, message: Any) -> None:
        if message.retain:  # a command left on the broker would run again at every reconnect
            log.warning("mqtt.command_refused", topic=message.topic,
                        why="retained command ignored: publish commands without the retain flag")
            return
        name = message.topic.rsplit("/", 1)[-1]
        if name not in self.settings.commands:
            log.warning("mqtt.command_refused", topic=message.topic,
                        why=f"{name!r} is not in mqtt.commands ({', '.join(self.settings.commands)})")
            return
        if not message.payload:  # what clearing a retained message delivers; a command is a JSON object
            log.warning("mqtt.command_malformed", topic=message.topic, why="empty payload: send a JSON object")
            return
        try:
            args = json.loads(message.payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            log.warning("mqtt.command_malformed", topic=message.topic, why=f"not a JSON object: {error}")
            return
        if not isinstance(args, dict):
            log.warning("mqtt.command_malformed", topic=message.topic, why="the payload must be a JSON object")
            return
        if name == "estop":  # straight to the latch, never behind the queue
            self._run_command(name, args)
            return
        try:
            self._commands.put_nowait((name, args))
        except queue.Full:
            log.warning("mqtt.command_dropped", topic=message.topic, why="too many commands waiting")

    # ------------------------------------------------------------------ our threads

    def _serve_commands(self) -> None:
        while True:
            item = self._commands.get()
            if item is None or self._stopping.is_set():
                return
            try:
                self._run_command(*item)
            except Exception:  # a bug in one command must not end the command thread
                log.exception("mqtt.command_failed", command=item[0])

    def _run_command(self, name: str, args: dict[str, Any]) -> None:
        by = f"mqtt:{args.get('by')}" if isinstance(args.get("by"), str) and args.get("by") else "mqtt"
        try:
            if name == "estop":
                self._command("estop", {"by": by[:64]})
            elif name == "ack":
                self._acknowledge(args, by[:64])
            elif name == "start":
                self._command("start", {k: args[k] for k in ("profile", "scenario") if k in args})
            else:
                self._command(name, {})
            log.warning("mqtt.command", command=name, by=by)
        except RelaxdError as error:  # CommandError and friends: refused, with the reason
            log.warning("mqtt.command_failed", command=name, why=str(error))

    def _acknowledge(self, args: dict[str, Any], by: str) -> None:
        if args.get("all") is True:
            ids = [alarm["id"] for alarm in self._status().get("alarms") or []]
        elif isinstance(args.get("id"), str) and args["id"]:
            ids = [args["id"]]
        else:
            log.warning("mqtt.command_malformed", command="ack", why='give {"id": "<alarm id>"} or {"all": true}')
            return
        for alarm_id in ids:
            self._command("ack", {"id": alarm_id, "by": by})

    def _run(self) -> None:
        """``_publish_and_deliver`` until stopped; an unexpected error is logged and retried, never fatal."""
        while not self._stopping.is_set():
            try:
                self._publish_and_deliver()
            except Exception:
                log.exception("mqtt.publisher_failed")
                self._stopping.wait(self.settings.retry_initial_s)

    def _publish_and_deliver(self) -> None:
        """Publish state on change and send the outbox, oldest first, while connected."""
        backoff = 0.0
        next_state = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._connected.is_set() and now >= next_state:
                self._publish_state()
                next_state = now + self.settings.state_interval_s
            if self._connected.is_set() and backoff <= 0.0:
                sent = self._deliver_one()
                if sent is True:
                    continue  # the next row at once
                if sent is False:
                    backoff = min(self.settings.retry_max_s,
                                  self.settings.retry_initial_s * 2 ** min(self.failures - 1, 20))
            self._count_pending()
            wait = max(0.0, min(next_state - time.monotonic(), backoff or self.settings.state_interval_s))
            started = time.monotonic()
            self._wake.wait(wait if self._connected.is_set() else 0.5)
            self._wake.clear()
            backoff = max(0.0, backoff - (time.monotonic() - started))

    def _publish_state(self) -> None:
        try:
            status = self._status()
        except Exception:  # the chair is stopping or broken: its status shows that next time
            log.exception("mqtt.status_failed")
            return
        force = self._republish.is_set()
        self._republish.clear()
        for topic, payload in ((self.topics.state, state_payload(status)), (self.topics.health, health_payload(status)),
                               (self.topics.alarms, alarms_payload(status))):
            text = json.dumps(payload, sort_keys=True)
            if force or self._published.get(topic) != text:
                self._client.publish(topic, text, qos=1, retain=True)
                self._published[topic] = text

    def _deliver_one(self) -> Optional[bool]:
        """The oldest outbox row, published with QoS 1 and marked delivered on the broker's PUBACK."""
        try:
            entry = self._store.next_outbox("mqtt")
        except StoreError as error:
            log.warning("mqtt.store_failed", why=str(error))
            self.failures += 1
            return False
        if entry is None:
            return None
        event = str(entry.payload.get("event", ""))
        topic = self.topics.session if event.startswith("session.") else self.topics.alert
        error = None
        try:
            if self._inflight is not None and self._inflight[0] == entry.seq:
                info = self._inflight[1]  # paho resends it itself after a reconnect: never twice from here
            else:
                info = self._client.publish(topic, json.dumps(entry.payload), qos=ALERT_QOS)
                if info.rc == self._paho.MQTT_ERR_NO_CONN:
                    # The link dropped just now: paho keeps a QoS 1 message in its queue and sends
                    # it on reconnect, but leaves rc at NO_CONN. It is queued, so count it as such.
                    info.rc = self._paho.MQTT_ERR_SUCCESS
                self._inflight = (entry.seq, info)
            info.wait_for_publish(PUBACK_WAIT_S)
            if not info.is_published():
                error = f"no PUBACK within {PUBACK_WAIT_S:g} s (rc {info.rc})"
        except (RuntimeError, ValueError) as exc:  # paho: not connected, queue full
            error = f"{type(exc).__name__}: {exc}"
        try:
            if error is None:
                self._inflight = None
                self._store.mark_outbox_delivered(entry.seq)
                self.failures = 0
                self.delivered += 1
                return True
            self._store.mark_outbox_failed(entry.seq, error)
        except StoreError as store_error:
            log.warning("mqtt.store_failed", why=str(store_error))
        self.failures += 1
        log.warning("mqtt.alert_not_delivered", seq=entry.seq, key=entry.key, why=error)
        return False
