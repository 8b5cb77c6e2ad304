"""CPU share of the whole daemon in simulation at the camera's rate.

Starts the real ``relaxd run`` as its own process: the demo clip played as a live camera at
``--fps`` (15 by default), simulated outputs, a session running (simulation starts one), a
SQLite store and the control socket in a temporary folder. After ``--warmup`` seconds it reads
the process's CPU time (user + system, every thread, from ``/proc/PID/stat``) at the start and
the end of ``--seconds`` of wall time: CPU seconds per wall second is the share of one core.
Target (issue 16): <= 15% of one core at 15 frames/s over a minute (about two thirds of a
Raspberry Pi 4 core, which is 4-6x slower per thread). Linux only (``/proc``).

Run: ``.venv/bin/python benchmarks/bench_cpu.py [--seconds 60] [--fps 15] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_SHARE = 0.15


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def write_config(folder: Path, fps: float) -> Path:
    config = folder / "relaxd.yaml"
    config.write_text(
        "camera:\n  source: demo\n"
        f"  fps: {fps}\n"
        f"store:\n  path: {folder / 'bench.db'}\n"
        f"ipc:\n  socket: {folder / 'relaxd.sock'}\n"
        "logging:\n  level: warning\n",
        encoding="utf-8")
    return config


def measure(seconds: float, warmup: float, fps: float) -> dict[str, Any]:
    relaxd = Path(sys.executable).with_name("relaxd")
    with tempfile.TemporaryDirectory(prefix="relaxd-cpu-") as name:
        folder = Path(name)
        config = write_config(folder, fps)
        command = [str(relaxd), "--config", str(config), "run", "--duration", str(warmup + seconds + 30)]
        env = {**os.environ, "SDL_AUDIODRIVER": "dummy", "SDL_VIDEODRIVER": "dummy"}
        daemon = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            time.sleep(warmup)
            if daemon.poll() is not None:
                raise SystemExit(f"relaxd run exited with {daemon.returncode} during the warm-up: "
                                 f"try {' '.join(command)} by hand")
            wall0, cpu0 = time.monotonic(), cpu_seconds(daemon.pid)
            time.sleep(seconds)
            wall1, cpu1 = time.monotonic(), cpu_seconds(daemon.pid)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
    share = (cpu1 - cpu0) / (wall1 - wall0)
    return {"fps": fps, "seconds": round(wall1 - wall0, 1), "cpu_seconds": round(cpu1 - cpu0, 2),
            "cpu_share_of_one_core": round(share, 4), "target": f"<= {TARGET_SHARE}",
            "cores_here": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured wall time (default 60)")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring (model load, demo clip)")
    parser.add_argument("--fps", type=float, default=15.0, help="camera frame rate (default 15)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.fps <= 0:
        parser.error("--seconds and --fps must be positive, --warmup at least 0")
    if not Path("/proc/self/stat").is_file():
        parser.error("this benchmark reads /proc: run it on Linux")
    result = measure(args.seconds, args.warmup, args.fps)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"relaxd run in simulation at {args.fps:g} frames/s: {result['cpu_seconds']:.1f} CPU s in "
              f"{result['seconds']:.0f} s = {100 * result['cpu_share_of_one_core']:.1f}% of one core "
              f"(target <= {100 * TARGET_SHARE:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
