"""Precise exception classes under one base, gpiozero-style.

Every error a user can cause (bad config, bad model, bad video) is a subclass of
``RelaxdError`` and its message names the thing at fault and what to do about it.
The CLI turns these into a one-line message and a non-zero exit code.
"""

from __future__ import annotations


class RelaxdError(Exception):
    """Base class of every error relaxd raises on purpose."""


class CommandTimeoutError(RelaxdError):
    """An operator command was not carried out by the control loop in time (or the daemon is stopping)."""


class ConfigError(RelaxdError):
    """The configuration file is missing, malformed, or has a bad key or value."""


class ModelError(RelaxdError):
    """The model file or its metadata is missing, corrupt, or they disagree."""


class RuntimeMissingError(ModelError):
    """No TFLite interpreter package is installed."""


class DetectorError(RelaxdError):
    """The Haar cascade cannot be found or loaded."""


class CaptureError(RelaxdError):
    """A frame source cannot be opened or has failed."""

