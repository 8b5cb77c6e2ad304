"""Fixtures shared by several test modules."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "relaxnet-fer2013.tflite"


def _tensorflow_available() -> bool:
    if os.environ.get("RELAXD_TESTS_WITHOUT_TF"):  # to check the daemon tier as a Pi-only install runs it
        return False
    return importlib.util.find_spec("tensorflow") is not None


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A real int8 .tflite (untrained, marked placeholder) with its metadata JSON.

    Without TensorFlow (a runtime-only install) the daemon, socket and panel tests still run:
    they get a copy of the shipped model instead, which needs only the TFLite runtime.
    """
    if not _tensorflow_available():
        folder = tmp_path_factory.mktemp("model")
        for suffix in (".tflite", ".json"):
            shutil.copy(SHIPPED_MODEL.with_suffix(suffix), folder / f"tiny{suffix}")
        return folder / "tiny.tflite"
    import modelkit

    calibration = modelkit.smooth_inputs(32, seed=1)
    blob = modelkit.convert(modelkit.tiny_keras_model(calibration), calibration, int8=True)
    return modelkit.write_model(tmp_path_factory.mktemp("model"), blob, "int8", placeholder=True)


def pytest_unconfigure(config):
    """Let threads that are still finishing (a chair's capture or vision thread inside OpenCV or
    TFLite) end before Python exits: a thread still in such a call when the interpreter finalises
    is unwound through OpenCV's catch-all and aborts the process ("FATAL: exception not rethrown")."""
    import sys
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread():
            thread.join(timeout=5.0)
            if thread.is_alive():
                print(f"\nthread {thread.name!r} still running at exit", file=sys.stderr)
