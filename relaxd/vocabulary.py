"""The words the daemon, the store, the panel and relaxctl share, each defined once.

Each vocabulary is a ``str`` enum: a member equals, hashes, prints and serialises as its
value, so it can stand wherever the plain word did (a JSON reply, a SQLite column, a dict
key), while code that names one is checked by Python instead of by a typo.
"""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """A ``str`` enum that formats as its value (``f"{Group.NEGATIVE}"`` is ``negative``)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Group(Word):
    """What a face shows, as the chair reacts to it; the order is the order of every array."""

    NEGATIVE = "negative"
    NEUTRAL = "neutral"
    POSITIVE = "positive"


class Channel(Word):
    """An output of the chair."""

    LIGHT = "light"
    SOUND = "sound"
    VIBRATION = "vibration"


class Priority(Word):
    """An alert's priority, most urgent first."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class AlertKind(Word):
    """Why a caregiver is called."""

    ADVERSE_REACTION = "adverse_reaction"
    ESTOP = "estop"
    CHILD_LEFT = "child_left"
    CAMERA_LOST = "camera_lost"
    LINK_LOST = "link_lost"
    FAULT = "fault"
    STORE_FAILED = "store_failed"


GROUPS: tuple[str, ...] = tuple(group.value for group in Group)
CHANNELS: tuple[str, ...] = tuple(channel.value for channel in Channel)
PRIORITIES: tuple[str, ...] = tuple(priority.value for priority in Priority)
ALERT_KINDS: tuple[str, ...] = tuple(kind.value for kind in AlertKind)
