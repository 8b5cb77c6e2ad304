"""A real Mosquitto on 127.0.0.1 for the MQTT tests, with a password file and an ACL per chair.

Users: ``chair-a`` (its own topics and Home Assistant discovery), ``supervisor`` (reads every
chair, sends commands), ``viewer`` (reads only: its commands are dropped by the broker).
Persistence is on, so a subscriber's QoS 1 session survives a broker restart, as a centre's
broker would keep it.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

USERS = {"chair-a": "chair-a-secret", "supervisor": "supervisor-secret", "viewer": "viewer-secret"}
ACL = """\
user chair-a
topic readwrite relaxd/chair-a/#
topic write homeassistant/#

user supervisor
topic read relaxd/#
topic write relaxd/+/command/#
topic read homeassistant/#

user viewer
topic read relaxd/#
"""


def mosquitto_binary() -> Optional[str]:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """One broker process; ``stop()`` and ``start()`` again keep its port and its persisted sessions."""

    def __init__(self, folder: Path, users: Optional[dict[str, str]] = None, acl: str = ACL,
                 tls: bool = False) -> None:
        self.folder = folder
        self.port = free_port()
        self.tls_port = free_port() if tls else None  # a second listener, TLS with make_certificates()
        self.process: Optional[subprocess.Popen] = None
        passwd = folder / "passwd"
        passwd.write_text("".join(f"{user}:{password}\n" for user, password in (users or USERS).items()),
                          encoding="utf-8")
        subprocess.run([_passwd_tool(), "-U", str(passwd)], check=True, capture_output=True)  # hash them all
        (folder / "acl").write_text(acl, encoding="utf-8")
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            f"acl_file {folder / 'acl'}\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "user root\n"  # ignored unless started as root, where it would drop to 'mosquitto' and lose the files
            f"log_dest file {folder / 'mosquitto.log'}\n"
            "log_type all\n", encoding="utf-8")
        if tls:
            self.ca_file = make_certificates(folder)
            with self.config.open("a", encoding="utf-8") as config:
                config.write(f"listener {self.tls_port} 127.0.0.1\ncafile {self.ca_file}\n"
                             f"certfile {folder / 'broker.crt'}\nkeyfile {folder / 'broker.key'}\n")

    def start(self) -> "Mosquitto":
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode(errors='replace')} "
                                   f"{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: it saves the persisted sessions
            self.process.wait(10)
        self.process = None

    def log(self) -> str:
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def make_certificates(folder: Path) -> Path:
    """A test CA and a broker certificate for 127.0.0.1 signed by it (openssl); also ``other-ca.crt``,
    a CA that signed nothing here. Returns the CA's certificate."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                "-days", "2", "-subj", f"/CN=relaxd test {ca}")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
            "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "broker.crt", "-days", "2", "-extfile", "san.ext")
    return folder / "ca.crt"


def _passwd_tool() -> str:
    return shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


class Subscriber:
    """A paho client as a supervisor's dashboard: every message it gets, in order, as (topic, payload)."""

    def __init__(self, broker: Mosquitto, user: str = "supervisor", *, topics: tuple[str, ...] = ("relaxd/#",),
                 client_id: str = "dashboard", persistent: bool = False, password: Optional[str] = None) -> None:
        import paho.mqtt.client as paho

        self.messages: "queue.Queue[tuple[str, Any, bool]]" = queue.Queue()
        self.seen: list[tuple[str, Any, bool]] = []
        self.received_at: list[float] = []  # wall clock of each arrival, in arrival order
        self.dup_flags: list[bool] = []  # the broker's DUP flag of each arrival (a redelivery)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                                  clean_session=not persistent)
        self.client.username_pw_set(user, password or USERS[user])
        self.client.reconnect_delay_set(0.1, 0.5)
        self.topics = topics

        def on_connect(client, userdata, flags, reason, properties=None):
            if not reason.is_failure:
                for topic in self.topics:
                    client.subscribe(topic, qos=1)

        def on_message(client, userdata, message):
            self.received_at.append(time.time())
            self.dup_flags.append(bool(message.dup))
            try:
                payload: Any = json.loads(message.payload.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                payload = message.payload.decode("utf-8", errors="replace")
            self.messages.put((message.topic, payload, bool(message.retain)))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=5)
        self.client.loop_start()

    def wait_for(self, predicate, timeout: float = 10.0) -> tuple[str, Any, bool]:
        """The first message (seen before or arriving) for which ``predicate(topic, payload)`` holds."""
        for item in self.seen:
            if predicate(item[0], item[1]):
                return item
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.messages.get(timeout=0.05)
            except queue.Empty:
                continue
            self.seen.append(item)
            if predicate(item[0], item[1]):
                return item
        raise AssertionError(f"no matching message in {timeout:g} s; got {[t for t, _, _ in self.seen][-20:]}")

    def drain(self, seconds: float = 0.3) -> list[tuple[str, Any, bool]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.seen.append(self.messages.get(timeout=0.05))
            except queue.Empty:
                pass
        return self.seen

    def publish(self, topic: str, payload: Any) -> None:
        text = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        self.client.publish(topic, text, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
