"""Caregiver alerts: raised by the daemon, stored, shown, buzzed and sent, until acknowledged.

An alert is stored in the session store first (the source of truth: unacknowledged alerts
stay active across restarts), then fanned out to the channels that are configured:

* **panel**: ``active()`` and listener callbacks ``fn(event, alert)`` (the socket and the
  touchscreen panel use these);
* **relay**: a GPIO output (buzzer or nurse-call relay) that is on while an
  unacknowledged alert of ``relay_min_priority`` or higher exists;
* **webhook**: a JSON POST per alert and per acknowledgement, through a durable outbox.

The webhook outbox is a table in the same SQLite file. The alert row and its outbox row
are written in one transaction, so neither exists without the other. A single delivery
thread sends the oldest undelivered row, one at a time, and marks it delivered only on a
2xx answer; anything else (an error status, a redirect, a refused connection, a timeout)
is retried with exponential back-off up to ``webhook_retry_max_s``, and the rows behind
it wait, so the receiver sees messages in order. Rows survive restarts and are resent
by the next daemon. When an answer is lost after the receiver processed a message, the
message is sent again: every message carries an idempotency key (the ``Idempotency-Key``
header and the ``idempotency_key`` field) so the receiver can drop the duplicate.
With no ``webhook_url`` nothing is queued (a later-enabled webhook starts clean).

While an alert of a kind is unacknowledged for a session, raising the same kind again
returns the existing alert instead of a new one: a camera that keeps failing produces one
alert, not one a second.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

import structlog

from relaxd.errors import RelaxdError
from relaxd.settings import AlertSettings
from relaxd.store import OutboxEntry, OutboxMessage, SessionStore, StoreError, now_iso
from relaxd.vocabulary import PRIORITIES, AlertKind

log = structlog.get_logger(__name__)

_RANK = {priority: rank for rank, priority in enumerate(PRIORITIES)}  # high=0 is the most urgent

RAISED = "alert.raised"
ACKNOWLEDGED = "alert.acknowledged"


class AlertError(RelaxdError):
    """An alert channel is misconfigured or an alert request is invalid."""


@dataclass(frozen=True)
class Alert:
    id: str
    time: str  # wall clock, ISO 8601 UTC
    kind: str
    priority: str  # "high" | "medium" | "low"
    message: str
    session_id: Optional[int] = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    acknowledged_at: Optional[str] = None
    acknowledged_by: Optional[str] = None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "kind": self.kind,
            "priority": self.priority,
            "message": self.message,
            "session_id": self.session_id,
            "data": dict(self.data),
            "acknowledged_at": self.acknowledged_at,
            "acknowledged_by": self.acknowledged_by,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Alert":
        return cls(
            id=row["id"], time=row["time"], kind=row["kind"], priority=row["priority"],
            message=row["message"], session_id=row["session_id"],
            data=MappingProxyType(dict(row["data"])), acknowledged_at=row["acknowledged_at"],
            acknowledged_by=row["acknowledged_by"],
        )


Listener = Callable[[str, Alert], None]


class AlertManager:
    """Raises, stores, fans out and acknowledges caregiver alerts. Thread-safe.

    ``pin_factory`` is passed to gpiozero (a ``MockFactory`` in tests). The webhook
    delivery thread starts here and stops in ``close()``.
    """

    def __init__(self, store: SessionStore, settings: AlertSettings, *, pin_factory: Any = None,
                 source: Optional[str] = None, mqtt: bool = False) -> None:
        self._store = store
        self._mqtt = mqtt  # queue each message for relaxd.mqtt too (its bridge delivers them)
        self._outbox_listeners: list[Callable[[], None]] = []
        self._settings = settings
        self._source = source or socket.gethostname()  # tells the receiver which chair
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._relay: Optional[RelayChannel] = None
        self._webhook: Optional[WebhookOutbox] = None
        # The unacknowledged alerts, kept in memory so status never reads (or waits on) the store.
        self._active: dict[str, Alert] = {r["id"]: Alert.from_row(r)
                                          for r in store.list_alerts(unacknowledged_only=True)}
        self._active_lock = threading.Lock()  # never held across a store call
        if settings.webhook_url:
            self._webhook = WebhookOutbox(
                store, settings.webhook_url, timeout_s=settings.webhook_timeout_s,
                retry_initial_s=settings.webhook_retry_initial_s, retry_max_s=settings.webhook_retry_max_s,
            )
        if settings.relay_pin >= 0:
            self._relay = RelayChannel(
                settings.relay_pin, active_high=settings.relay_active_high,
                min_priority=settings.relay_min_priority, pulse_s=settings.relay_pulse_s,
                pin_factory=pin_factory,
            )
        self._update_relay()  # alerts left unacknowledged before a restart still sound
        if self._webhook is not None:
            self._webhook.start()  # resends what a previous run left in the outbox

    def add_outbox_listener(self, notify: Callable[[], None]) -> None:
        """Call ``notify()`` after each outbox row is committed (an MQTT bridge wakes up to send it)."""
        self._outbox_listeners.append(notify)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event, alert)`` on every raise/acknowledge (event: ``alert.raised`` / ``alert.acknowledged``)."""
        with self._lock:
            self._listeners.append(listener)

    def raise_alert(self, kind: str, priority: str, message: str, *, session_id: Optional[int] = None,
                    data: Optional[Mapping[str, Any]] = None) -> Alert:
        """Sound an alert and record it; returns it (or the same-kind alert still active)."""
        alert, new = self.announce(kind, priority, message, session_id=session_id, data=data)
        if new:
            self.record(alert)
        return alert

    def announce(self, kind: str, priority: str, message: str, *, session_id: Optional[int] = None,
                 data: Optional[Mapping[str, Any]] = None) -> tuple[Alert, bool]:
        """Make an alert active and sound it (relay, listeners) at once, without the store.

        Returns ``(alert, True)``, or the same-kind alert of this session still active and False.
        The caller then has ``record`` store it, from a thread that may wait: a locked or full
        store delays the record and the webhook, never the buzzer.
        """
        if not kind:
            raise AlertError("an alert needs a kind, e.g. 'adverse_reaction'")
        if priority not in _RANK:
            raise AlertError(f"alert priority must be one of {PRIORITIES}, got {priority!r}")
        with self._active_lock:
            for existing in self._active.values():
                if existing.kind == kind and existing.session_id == session_id:
                    log.info("alert.repeat", alert_id=existing.id, kind=kind)
                    return existing, False
            alert = Alert(
                id=uuid.uuid4().hex, time=now_iso(), kind=kind, priority=priority, message=message,
                session_id=session_id, data=MappingProxyType(dict(data or {})),
            )
            self._active[alert.id] = alert
        log.warning("alert.raised", alert_id=alert.id, kind=kind, priority=priority, message=message)
        self._update_relay()
        self._notify_listeners(RAISED, alert)
        return alert, True

    def record(self, alert: Alert) -> None:
        """Store an announced alert with its webhook outbox row (raises StoreError: retry it)."""
        with self._lock:
            self._store.insert_alert(
                alert_id=alert.id, time=alert.time, kind=alert.kind, priority=alert.priority,
                message=alert.message, session_id=alert.session_id, data=dict(alert.data),
                outbox=self._messages(RAISED, alert),
            )
        self._notify_outbox()

    def acknowledge(self, alert_id: str, by: str) -> Alert:
        """Mark an alert seen by a caregiver (``by``: who, e.g. 'panel' or a name). Idempotent."""
        if not by:
            raise AlertError("acknowledge needs who acknowledged ('by'), e.g. 'panel'")
        with self._lock:
            current = Alert.from_row(self._store.get_alert(alert_id))
            if current.acknowledged:
                return current
            stamp = now_iso()
            acked = replace(current, acknowledged_at=stamp, acknowledged_by=by)
            if self._store.acknowledge_alert(alert_id, by, time=stamp, outbox=self._messages(ACKNOWLEDGED, acked)):
                with self._active_lock:
                    self._active.pop(alert_id, None)
                log.info("alert.acknowledged", alert_id=alert_id, by=by)
                self._fan_out(ACKNOWLEDGED, acked)
            return Alert.from_row(self._store.get_alert(alert_id))

    def active(self) -> list[Alert]:
        """Unacknowledged alerts, oldest first (from memory: never waits on the store)."""
        with self._active_lock:
            return sorted(self._active.values(), key=lambda alert: alert.time)

    @property
    def relay_on(self) -> bool:
        return self._relay is not None and self._relay.is_on

    @property
    def webhook(self) -> Optional["WebhookOutbox"]:
        return self._webhook

    def close(self) -> None:
        """Stop the delivery thread (undelivered rows stay queued) and release the relay."""
        if self._webhook is not None:
            self._webhook.stop()
        if self._relay is not None:
            self._relay.close()

    def __enter__(self) -> "AlertManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _messages(self, event: str, alert: Alert) -> list[OutboxMessage]:
        """One outbox entry ``(channel, key, payload)`` per configured channel (webhook, MQTT)."""
        channels = [c for c, on in (("webhook", self._webhook is not None), ("mqtt", self._mqtt)) if on]
        messages = []
        for channel in channels:
            key = uuid.uuid4().hex
            messages.append((channel, key, {"event": event, "idempotency_key": key, "source": self._source,
                                            "alert": alert.to_dict()}))
        return messages

    def _notify_outbox(self) -> None:
        if self._webhook is not None:
            self._webhook.notify()
        for notify in list(self._outbox_listeners):
            notify()

    def _fan_out(self, event: str, alert: Alert) -> None:
        self._update_relay()
        self._notify_outbox()
        self._notify_listeners(event, alert)

    def _notify_listeners(self, event: str, alert: Alert) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, alert)
            except Exception:  # a broken panel callback must not stop the other channels
                log.exception("alert.listener_failed", alert_id=alert.id, listener=repr(listener))

    def _update_relay(self) -> None:
        if self._relay is not None:
            self._relay.update(self.active())


class RelayChannel:
    """A buzzer or nurse-call relay on a GPIO: on while an urgent alert is unacknowledged."""

    def __init__(self, pin: int, *, active_high: bool = True, min_priority: str = "medium",
                 pulse_s: float = 0.0, pin_factory: Any = None) -> None:
        if min_priority not in _RANK:
            raise AlertError(f"alerts.relay_min_priority must be one of {PRIORITIES}, got {min_priority!r}")
        try:
            from gpiozero import DigitalOutputDevice
            from gpiozero.exc import GPIOZeroError
        except ImportError as exc:
            raise AlertError(
                "the alert relay needs gpiozero: pip install 'relaxd[pi]', or set alerts.relay_pin to -1"
            ) from exc
        try:
            self._device = DigitalOutputDevice(pin, active_high=active_high, initial_value=False,
                                               pin_factory=pin_factory)
        except (GPIOZeroError, ValueError) as exc:
            raise AlertError(f"cannot use GPIO{pin} for the alert relay ({exc}): check alerts.relay_pin") from exc
        self._min_rank = _RANK[min_priority]
        self._pulse_s = pulse_s
        self._on = False

    @property
    def is_on(self) -> bool:
        return self._on

    def update(self, alerts: list[Alert]) -> None:
        want = any(not a.acknowledged and _RANK.get(a.priority, 99) <= self._min_rank for a in alerts)
        if want == self._on:
            return
        if not want:
            self._device.off()
        elif self._pulse_s > 0:
            self._device.blink(on_time=self._pulse_s, off_time=self._pulse_s, background=True)
        else:
            self._device.on()
        self._on = want

    def close(self) -> None:
        self._device.off()
        self._device.close()
        self._on = False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery (urllib would resend a POST as a GET without body)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class WebhookOutbox:
    """Sends the store's outbox rows to one URL, oldest first, one at a time."""

    def __init__(self, store: SessionStore, url: str, *, timeout_s: float = 5.0, retry_initial_s: float = 1.0,
                 retry_max_s: float = 300.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise AlertError(f"alerts.webhook_url must be an http:// or https:// URL, got {url!r}")
        self._store = store
        self._url = url
        self._timeout_s = timeout_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = max(retry_max_s, retry_initial_s)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.failures = 0  # consecutive failed attempts; 0 after a delivery

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="relaxd-webhook", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """A new row is queued: wake the thread if it is idle (a back-off wait is not cut short)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self._timeout_s + 2.0)
            self._thread = None

    def backoff_s(self) -> float:
        """Wait before the next attempt after ``failures`` consecutive failures."""
        if self.failures <= 0:
            return 0.0
        return min(self._retry_max_s, self._retry_initial_s * 2.0 ** min(self.failures - 1, 30))

    def deliver_one(self) -> Optional[bool]:
        """Try the oldest pending row once: None if none is pending, else whether it was delivered."""
        entry = self._store.next_outbox()
        if entry is None:
            return None
        error = self._post(entry)
        if error is None:
            self._store.mark_outbox_delivered(entry.seq)
            self.failures = 0
            log.info("webhook.delivered", seq=entry.seq, key=entry.key, attempts=entry.attempts + 1)
            return True
        self._store.mark_outbox_failed(entry.seq, error)
        self.failures += 1
        log.warning("webhook.failed", seq=entry.seq, key=entry.key, error=error,
                    attempts=entry.attempts + 1, retry_in_s=self.backoff_s())
        return False

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking, so a row queued meanwhile is not missed
            try:
                delivered = self.deliver_one()
            except StoreError:
                log.exception("webhook.store_failed")
                self.failures += 1
                delivered = False
            if delivered is None:
                self._wake.wait()
            elif not delivered:
                self._stopping.wait(self.backoff_s())

    def _post(self, entry: OutboxEntry) -> Optional[str]:
        """POST one message; None on a 2xx answer, else what went wrong."""
        request = urllib.request.Request(
            self._url,
            data=json.dumps(entry.payload).encode("utf-8"),
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": entry.key,
                     "User-Agent": "relaxd-alerts"},
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"
