"""Caregiver alerts: store, relay (gpiozero MockFactory) and the webhook outbox against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gpiozero.pins.mock import MockFactory

from relaxd.alerts import ACKNOWLEDGED, RAISED, AlertError, AlertManager, WebhookOutbox
from relaxd.settings import AlertSettings
from relaxd.store import SessionStore

RELAY_PIN = 21


def wait_for(predicate, what, timeout=15.0):
    """Poll until ``predicate()`` holds; a generous limit, only so a bug cannot hang the suite."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A webhook receiver on 127.0.0.1 that follows a script of answers.

    Each POST takes the next answer from ``script`` (``default`` once it is empty):
    ``ok`` (200, message kept), ``fail`` (500), ``drop`` (message kept, connection closed
    without an answer: the ack is lost), ``redirect`` (302), ``hold`` (no answer until
    ``release`` is set, then 200: a receiver slower than the chair's timeout).
    """

    def __init__(self, port=0, script=(), default="ok"):
        self.script = list(script)
        self.default = default
        self.kept = []  # (Idempotency-Key header, payload) of every message the receiver processed
        self.attempts = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                answer = receiver.script.pop(0) if receiver.script else receiver.default
                if answer == "hold":
                    receiver.release.wait(10.0)
                    answer = "ok"
                if answer in ("ok", "drop"):
                    receiver.kept.append((self.headers["Idempotency-Key"], json.loads(body)))
                if answer == "drop":
                    self.close_connection = True
                    return
                status = {"ok": 200, "fail": 500, "redirect": 302}[answer]
                self.send_response(status)
                if answer == "redirect":
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def unique_in_order(self):
        """What a receiver that drops duplicate keys ends up with: alert ids and events."""
        seen, out = set(), []
        for key, payload in self.kept:
            assert payload["idempotency_key"] == key
            if key not in seen:
                seen.add(key)
                out.append((payload["event"], payload["alert"]["id"]))
        return out


@pytest.fixture
def store(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as s:
        yield s


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def webhook_settings(url, **kw):
    kw = {"webhook_timeout_s": 2.0, "webhook_retry_initial_s": 0.01, "webhook_retry_max_s": 0.05, **kw}
    return AlertSettings(webhook_url=url, **kw)


def relay_pin_states(factory):
    return [s.state for s in factory.pin(RELAY_PIN).states]


# -- raising, acknowledging, the panel channel ---------------------------------------------


def test_raise_store_and_acknowledge(store):
    seen = []
    with AlertManager(store, AlertSettings()) as alerts:
        alerts.add_listener(lambda event, alert: seen.append((event, alert.id, alert.acknowledged)))
        alert = alerts.raise_alert("adverse_reaction", "high", "sustained distress", session_id=None,
                                   data={"negative_share": 0.7})
        assert [a.id for a in alerts.active()] == [alert.id]
        assert alerts.active()[0].data == {"negative_share": 0.7}
        acked = alerts.acknowledge(alert.id, by="panel")
        assert acked.acknowledged and acked.acknowledged_by == "panel"
        assert alerts.acknowledge(alert.id, by="someone else").acknowledged_by == "panel"
        assert alerts.active() == []
    assert seen == [(RAISED, alert.id, False), (ACKNOWLEDGED, alert.id, True)]
    assert store.get_alert(alert.id)["acknowledged_by"] == "panel"
    assert store.outbox_rows() == []  # no webhook configured: nothing queued


def test_same_kind_while_unacknowledged_is_one_alert(store):
    with AlertManager(store, AlertSettings()) as alerts:
        first = alerts.raise_alert("camera_lost", "medium", "no frames")
        again = alerts.raise_alert("camera_lost", "medium", "no frames")
        assert again.id == first.id
        alerts.acknowledge(first.id, "panel")
        assert alerts.raise_alert("camera_lost", "medium", "no frames").id != first.id


def test_a_broken_listener_does_not_stop_the_others(store):
    seen = []

    def broken(event, alert):
        raise RuntimeError("panel crashed")

    with AlertManager(store, AlertSettings()) as alerts:
        alerts.add_listener(broken)
        alerts.add_listener(lambda event, alert: seen.append(event))
        alerts.raise_alert("estop", "high", "e-stop pressed")
    assert seen == [RAISED]


@pytest.mark.parametrize("kind, priority, match", [("", "high", "kind"), ("estop", "urgent", "priority")])
def test_bad_alert_requests_are_refused(store, kind, priority, match):
    with AlertManager(store, AlertSettings()) as alerts:
        with pytest.raises(AlertError, match=match):
            alerts.raise_alert(kind, priority, "x")


def test_unknown_alert_cannot_be_acknowledged(store):
    from relaxd.store import RecordNotFoundError

    with AlertManager(store, AlertSettings()) as alerts:
        with pytest.raises(RecordNotFoundError):
            alerts.acknowledge("nope", "panel")


# -- the relay -----------------------------------------------------------------------------


def test_relay_is_on_while_an_urgent_alert_is_unacknowledged(store):
    factory = MockFactory()
    with AlertManager(store, AlertSettings(relay_pin=RELAY_PIN), pin_factory=factory) as alerts:
        medium = alerts.raise_alert("child_left", "medium", "no face for 10 s")
        low = alerts.raise_alert("link_lost", "low", "serial slow")  # below medium: no change
        alerts.acknowledge(medium.id, "panel")  # only the low one left: off
        high1 = alerts.raise_alert("estop", "high", "e-stop pressed")
        high2 = alerts.raise_alert("adverse_reaction", "high", "distress")
        alerts.acknowledge(high1.id, "panel")  # high2 still unacknowledged: stays on
        assert alerts.relay_on
        alerts.acknowledge(high2.id, "panel")
        assert not alerts.relay_on
        alerts.acknowledge(low.id, "panel")
    assert relay_pin_states(factory) == [False, True, False, True, False]


def test_relay_minimum_priority_and_active_low_board(store):
    factory = MockFactory()
    settings = AlertSettings(relay_pin=RELAY_PIN, relay_min_priority="high", relay_active_high=False)
    with AlertManager(store, settings, pin_factory=factory) as alerts:
        alerts.raise_alert("child_left", "medium", "no face")  # not urgent enough
        high = alerts.raise_alert("estop", "high", "e-stop pressed")
        alerts.acknowledge(high.id, "panel")
    # Active-low: off is a high level, on is low.
    assert relay_pin_states(factory) == [False, True, False, True]


def test_relay_sounds_again_after_a_restart_for_unacknowledged_alerts(store):
    with AlertManager(store, AlertSettings()) as alerts:
        alerts.raise_alert("adverse_reaction", "high", "distress")
    factory = MockFactory()
    with AlertManager(store, AlertSettings(relay_pin=RELAY_PIN), pin_factory=factory) as restarted:
        assert restarted.relay_on
    assert relay_pin_states(factory) == [False, True, False]


def test_pulsing_relay_blinks_until_acknowledged(store):
    factory = MockFactory()
    with AlertManager(store, AlertSettings(relay_pin=RELAY_PIN, relay_pulse_s=0.01), pin_factory=factory) as alerts:
        alert = alerts.raise_alert("estop", "high", "e-stop pressed")
        wait_for(lambda: len(relay_pin_states(factory)) >= 5, "the relay to blink")
        alerts.acknowledge(alert.id, "panel")
        states = relay_pin_states(factory)
        assert states[-1] is False
        assert states[:4] == [False, True, False, True]
    assert factory.pin(RELAY_PIN).state is False


def test_relay_on_a_pin_already_in_use_names_the_setting(store):
    from gpiozero import Button

    factory = MockFactory()
    button = Button(RELAY_PIN, pin_factory=factory)  # e.g. the e-stop wired to the same GPIO
    with pytest.raises(AlertError, match="alerts.relay_pin"):
        AlertManager(store, AlertSettings(relay_pin=RELAY_PIN), pin_factory=factory)
    button.close()


# -- the webhook outbox --------------------------------------------------------------------


def test_webhook_url_must_be_http(store):
    with pytest.raises(AlertError, match="webhook_url"):
        AlertManager(store, AlertSettings(webhook_url="ftp://example.org/x"))


def test_backoff_doubles_and_is_capped(store):
    outbox = WebhookOutbox(store, "http://127.0.0.1:9/", retry_initial_s=1.0, retry_max_s=5.0)
    waits = []
    for failures in range(6):
        outbox.failures = failures
        waits.append(outbox.backoff_s())
    assert waits == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_each_message_carries_its_idempotency_key(store, receiver):
    with AlertManager(store, webhook_settings(receiver.url), source="chair-1") as alerts:
        alert = alerts.raise_alert("estop", "high", "e-stop pressed", data={"source": "button"})
        wait_for(lambda: store.outbox_pending() == 0, "delivery")
    (key, payload), = receiver.kept
    assert payload["idempotency_key"] == key and len(key) == 32
    assert payload["event"] == RAISED and payload["source"] == "chair-1"
    assert payload["alert"]["id"] == alert.id and payload["alert"]["data"] == {"source": "button"}


def test_server_errors_then_recovery_deliver_every_alert_once_in_order(store):
    receiver = Receiver(script=["fail"] * 4)
    try:
        with AlertManager(store, webhook_settings(receiver.url)) as alerts:
            raised = [alerts.raise_alert(f"kind{i}", "medium", f"alert {i}").id for i in range(5)]
            alerts.acknowledge(raised[1], "panel")
            wait_for(lambda: store.outbox_pending() == 0, "delivery")
    finally:
        receiver.close()
    expected = [(RAISED, a) for a in raised] + [(ACKNOWLEDGED, raised[1])]
    assert [(p["event"], p["alert"]["id"]) for _, p in receiver.kept] == expected  # no duplicates at all
    assert receiver.attempts == len(expected) + 4
    first = store.outbox_rows()[0]
    assert first["attempts"] == 5 and first["delivered_at"] is not None


def test_a_webhook_slower_than_its_timeout_delays_delivery_never_the_alert(store):
    receiver = Receiver(script=["hold"])
    try:
        with AlertManager(store, webhook_settings(receiver.url, webhook_timeout_s=0.5)) as alerts:
            first = alerts.raise_alert("child_left", "high", "first").id
            wait_for(lambda: receiver.attempts >= 1, "the first POST in flight")
            # The receiver holds the first POST: raising more is not held up behind it.
            later = [alerts.raise_alert(f"kind{i}", "medium", f"alert {i}").id for i in range(3)]
            assert not receiver.release.is_set()
            assert {a.id for a in alerts.active()} == {first, *later}
            # The chair gave up on the held POST after its timeout and resent it with the same key.
            wait_for(lambda: store.outbox_pending() == 0, "delivery by the retry")
            assert store.outbox_rows()[0]["attempts"] == 2
            assert not receiver.release.is_set()
    finally:
        receiver.close()
    assert receiver.unique_in_order() == [(RAISED, a) for a in [first, *later]]


def test_connection_refused_then_server_appears(store):
    port = free_port()
    with AlertManager(store, webhook_settings(f"http://127.0.0.1:{port}/alerts")) as alerts:
        raised = [alerts.raise_alert(f"kind{i}", "low", f"alert {i}").id for i in range(3)]
        wait_for(lambda: store.outbox_rows()[0]["attempts"] >= 2, "failed attempts")
        assert "refused" in store.outbox_rows()[0]["last_error"].lower()
        receiver = Receiver(port=port)
        try:
            wait_for(lambda: store.outbox_pending() == 0, "delivery")
        finally:
            receiver.close()
    assert receiver.unique_in_order() == [(RAISED, a) for a in raised]
    assert len(receiver.kept) == 3


def test_pending_messages_survive_a_restart(tmp_path):
    path = tmp_path / "relaxd.db"
    receiver = Receiver(script=["ok", "ok"], default="fail")
    try:
        store = SessionStore(path)
        alerts = AlertManager(store, webhook_settings(receiver.url))
        raised = [alerts.raise_alert(f"kind{i}", "high", f"alert {i}").id for i in range(4)]
        wait_for(lambda: store.outbox_rows()[2]["attempts"] >= 1, "the third message to fail")
        alerts.close()
        store.close()  # the daemon stops with two messages still queued

        receiver.default = "ok"
        store = SessionStore(path)
        assert store.outbox_pending() == 2
        with AlertManager(store, webhook_settings(receiver.url)) as restarted:
            wait_for(lambda: store.outbox_pending() == 0, "delivery after the restart")
            later = restarted.raise_alert("kind9", "low", "after restart").id
            wait_for(lambda: store.outbox_pending() == 0, "delivery of the new alert")
        store.close()
    finally:
        receiver.close()
    assert [p["alert"]["id"] for _, p in receiver.kept] == raised + [later]


def test_a_lost_answer_is_resent_with_the_same_key(store):
    receiver = Receiver(script=["drop"])
    try:
        with AlertManager(store, webhook_settings(receiver.url)) as alerts:
            raised = [alerts.raise_alert(f"kind{i}", "high", f"alert {i}").id for i in range(3)]
            wait_for(lambda: store.outbox_pending() == 0, "delivery")
    finally:
        receiver.close()
    keys = [key for key, _ in receiver.kept]
    assert len(keys) == 4 and keys[0] == keys[1]  # the first message arrived twice, with one key
    assert receiver.unique_in_order() == [(RAISED, a) for a in raised]


def test_a_redirect_is_not_a_delivery(store):
    receiver = Receiver(script=["redirect"])
    try:
        alerts = AlertManager(store, AlertSettings())  # no webhook thread: drive the outbox by hand
        outbox = WebhookOutbox(store, receiver.url, timeout_s=2.0)
        store.insert_alert(alert_id="a1", time="2024-05-01T10:00:00+00:00", kind="estop", priority="high",
                           message="e-stop", session_id=None, data={},
                           outbox=[("webhook", "k1", {"event": RAISED, "idempotency_key": "k1", "alert": {"id": "a1"}})])
        assert outbox.deliver_one() is False
        assert "302" in store.outbox_rows()[0]["last_error"]
        assert outbox.deliver_one() is True
        assert outbox.deliver_one() is None
        alerts.close()
    finally:
        receiver.close()
    assert receiver.attempts == 2
