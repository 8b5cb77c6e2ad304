"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A real int8 .tflite (untrained, marked placeholder) with its metadata JSON."""
    pytest.importorskip("tensorflow")
    import modelkit

    calibration = modelkit.smooth_inputs(32, seed=1)
    blob = modelkit.convert(modelkit.tiny_keras_model(calibration), calibration, int8=True)
    return modelkit.write_model(tmp_path_factory.mktemp("model"), blob, "int8", placeholder=True)
