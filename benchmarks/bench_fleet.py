"""A centre's fleet on one broker: alert latency to a subscriber and the CPU that MQTT adds to each chair.

Starts a real Mosquitto on 127.0.0.1 (password file, one user per chair, an ACL pattern that
lets each chair write only its own topics), a supervisor subscribed to every chair's alerts,
and ``--chairs`` chair processes. Each chair process is relaxd's own alert path without the
camera: a real SQLite store, the real ``AlertManager`` and the real ``MqttBridge`` publishing a
running session's status (levels that move, as in a session) every ``state_interval_s``, and an
alert decided every ``--alert-interval`` seconds (with random phase). Each process first runs
the same load for ``--seconds`` without MQTT, then ``--seconds`` with it, and reports the CPU
time of both: the difference is what MQTT adds to a daemon, as a share of one core.

Latency is from the chair's decision (the alert raised: stored with its outbox row, in one
transaction) to the supervisor's client receiving it, on the same clock (one machine).

Run: ``.venv/bin/python benchmarks/bench_fleet.py [--chairs 20] [--seconds 30] [--json]``.
Needs ``mosquitto`` (Debian package) and paho-mqtt (``pip install 'relaxd[mqtt]'``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

STATE_INTERVAL_S = 1.0
FLEET_ACL = "pattern readwrite relaxd/%u/#\npattern write homeassistant/#\n\nuser supervisor\ntopic read relaxd/#\n"


def chair_status(t: float, alarms: list[dict[str, Any]]) -> dict[str, Any]:
    """A running session's status as ``Chair.status()`` gives it, its levels moving with time."""
    wave = 0.5 * (1.0 - math.cos(2.0 * math.pi * t / 12.0))
    return {"state": "running", "reason": "positive for 5.0 s", "scenario": "calm-sea", "phase": "open-sea",
            "session": {"id": 1, "profile": "kid"}, "intensity": 0.4,
            "levels": {"light": round(0.4 * wave, 3), "light_rgb": [0.1, 0.3, 0.5], "sound": 0.09,
                       "vibration": round(0.1 * wave, 3)},
            "caps": {"light": 1.0, "sound": 1.0, "vibration": 1.0},
            "affect": {"face_present": True, "group": "neutral", "label": "neutral", "confidence": 0.8},
            "alarms": alarms, "health": {part: {"ok": True} for part in ("camera", "vision", "controller")},
            "simulation": True}


def run_chair(index: int, port: int, seconds: float, alert_interval: float, folder: Path) -> dict[str, Any]:
    """One chair process: the same alert load without, then with MQTT; CPU seconds of each."""
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    from relaxd.alerts import AlertManager
    from relaxd.mqtt import MqttBridge
    from relaxd.settings import AlertSettings, MqttSettings
    from relaxd.store import SessionStore

    name = f"chair-{index}"
    (folder / f"{name}.pw").write_text(name + "-pw", encoding="utf-8")
    rng = random.Random(index)
    cpu: dict[str, float] = {}
    raised = 0
    for phase in ("without_mqtt", "with_mqtt"):
        store = SessionStore(folder / f"{name}-{phase}.db")
        alerts = AlertManager(store, AlertSettings(), source=name, mqtt=phase == "with_mqtt")
        bridge = None
        if phase == "with_mqtt":
            settings = MqttSettings(enabled=True, host="127.0.0.1", port=port, username=name,
                                    password_file=str(folder / f"{name}.pw"), chair_id=name, discovery=True,
                                    state_interval_s=STATE_INTERVAL_S, retry_initial_s=0.2, retry_max_s=2.0)
            started_at = time.monotonic()
            bridge = MqttBridge(settings, store=store, command=lambda cmd, args: None,
                                status=lambda: chair_status(time.monotonic() - started_at,
                                                            [a.to_dict() for a in alerts.active()]))
            alerts.add_outbox_listener(bridge.notify)
            bridge.start()
            deadline = time.monotonic() + 10.0
            while not bridge.connected and time.monotonic() < deadline:
                time.sleep(0.02)
        cpu0, wall0 = time.process_time(), time.monotonic()
        next_alert = wall0 + rng.uniform(0.0, alert_interval)
        while time.monotonic() - wall0 < seconds:
            time.sleep(max(0.0, min(next_alert, wall0 + seconds) - time.monotonic()))
            if time.monotonic() >= next_alert and time.monotonic() - wall0 < seconds:
                alert = alerts.raise_alert(f"bench-{phase}-{raised}", "high", "bench", data={"decided": time.time()})
                alerts.acknowledge(alert.id, "bench")  # one active alert at a time, as a caregiver would
                raised += phase == "with_mqtt"
                next_alert += alert_interval
        cpu[phase] = time.process_time() - cpu0
        if bridge is not None:
            deadline = time.monotonic() + 10.0
            while store.outbox_pending("mqtt") and time.monotonic() < deadline:
                time.sleep(0.05)
            bridge.stop()
        alerts.close()
        store.close()
    return {"chair": name, "cpu_without_mqtt_s": round(cpu["without_mqtt"], 4),
            "cpu_with_mqtt_s": round(cpu["with_mqtt"], 4), "seconds": seconds, "alerts_raised": raised}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chairs", type=int, default=20, help="chair processes (default 20)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per phase (default 30)")
    parser.add_argument("--alert-interval", type=float, default=2.0, help="seconds between a chair's alerts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--run-chair", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_chair is not None:
        print(json.dumps(run_chair(args.run_chair, args.port, args.seconds, args.alert_interval, args.folder)))
        return 0
    if args.chairs < 1 or args.seconds <= 0 or args.alert_interval <= 0:
        parser.error("--chairs must be at least 1, --seconds and --alert-interval positive")
    from brokerkit import Mosquitto, Subscriber, mosquitto_binary

    if mosquitto_binary() is None:
        parser.error("mosquitto is not installed: apt-get install mosquitto")
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        parser.error("paho-mqtt is not installed: pip install 'relaxd[mqtt]'")

    with tempfile.TemporaryDirectory(prefix="relaxd-fleet-") as name:
        folder = Path(name)
        users = {f"chair-{i}": f"chair-{i}-pw" for i in range(args.chairs)} | {"supervisor": "supervisor-pw"}
        broker = Mosquitto(folder, users=users, acl=FLEET_ACL).start()
        supervisor = Subscriber(broker, topics=("relaxd/+/alert",), password="supervisor-pw")
        try:
            command = [sys.executable, __file__, "--port", str(broker.port), "--folder", str(folder),
                       "--seconds", str(args.seconds), "--alert-interval", str(args.alert_interval)]
            chairs = [subprocess.Popen([*command, "--run-chair", str(i)], stdout=subprocess.PIPE, text=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"}) for i in range(args.chairs)]
            rows = []
            for chair in chairs:
                out, _ = chair.communicate(timeout=2 * args.seconds + 120)
                if chair.returncode != 0:
                    raise SystemExit(f"a chair process failed (exit {chair.returncode}); see its output above")
                rows.append(json.loads(out.strip().splitlines()[-1]))
            supervisor.drain(1.0)
        finally:
            supervisor.close()
            broker.stop()

    raised = [(topic, payload, arrived) for (topic, payload, _), arrived in zip(supervisor.seen, supervisor.received_at)
              if isinstance(payload, dict) and payload.get("event") == "alert.raised"]
    latencies = [1000.0 * (arrived - payload["alert"]["data"]["decided"]) for _, payload, arrived in raised]
    keys = [payload["idempotency_key"] for _, payload, _ in raised]
    added = [(r["cpu_with_mqtt_s"] - r["cpu_without_mqtt_s"]) / r["seconds"] for r in rows]
    result = {
        "chairs": args.chairs, "seconds_per_phase": args.seconds, "alert_interval_s": args.alert_interval,
        "alerts_raised": sum(r["alerts_raised"] for r in rows), "alerts_received": len(raised),
        "duplicates": len(keys) - len(set(keys)),
        "latency_ms": {"p50": round(statistics.median(latencies), 2), "p99": round(percentile(latencies, 0.99), 2),
                       "max": round(max(latencies), 2)} if latencies else None,
        "added_cpu_share_of_one_core": {"mean": round(statistics.mean(added), 4), "max": round(max(added), 4)},
        "cores_here": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    lat = result["latency_ms"] or {}
    print(f"{args.chairs} chairs, {args.seconds:g} s each phase, an alert every {args.alert_interval:g} s per chair")
    print(f"alerts: {result['alerts_received']} of {result['alerts_raised']} received, {result['duplicates']} duplicates")
    print(f"latency decision -> subscriber: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, max {lat.get('max')} ms")
    cpu = result["added_cpu_share_of_one_core"]
    print(f"CPU added per chair by MQTT: mean {100 * cpu['mean']:.2f}% of one core, max {100 * cpu['max']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
