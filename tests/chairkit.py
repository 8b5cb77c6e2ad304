"""Helpers for tests that run a simulated chair: clips, socket folders, polling, outputs."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from relaxd.ipc import ControlClient


def faceless_clip(path: Path) -> Path:
    """Two seconds of smooth, slowly shifting gradients: nothing a face detector takes for a face."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (160, 120))
    ramp = np.linspace(40, 200, 160, dtype=np.float32)
    for i in range(30):
        frame = np.clip(np.tile(ramp + i, (120, 1)), 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def short_dir(prefix: str = "relaxd-test-") -> Path:
    """A folder with a short path: AF_UNIX socket paths must stay under 108 bytes (tmp_path may be longer)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_for(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition()`` until it holds or ``timeout`` passes; True if it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def call(path: Path, cmd: str, **args):
    """One command over the control socket; its result (or CommandError)."""
    with ControlClient(path, timeout_s=10.0) as client:
        return client.call(cmd, **args)


def outputs_of(chair) -> dict[str, float]:
    """What the simulated outputs were last told (readable after close, unlike ``value``)."""
    bank = chair.bank
    light = bank.light.history[-1][1] if bank.light.history else (0.0, 0.0, 0.0)
    return {"light": max(light),
            "sound": bank.sound.history[-1][1] if bank.sound.history else 0.0,
            "vibration": bank.vibration.history[-1][1] if bank.vibration.history else 0.0}
