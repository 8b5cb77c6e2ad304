"""``relaxd-panel``: the operator's touchscreen beside the chair (official 7" display, 800x480).

Its own process, a client of the daemon's control socket and nothing else: a panel that
crashes, hangs or is never started changes nothing for the chair. The parts:

* ``client``: what the panel knows of the chair (pure state built from ``status`` replies,
  the affect timeline) and the threads that talk to the daemon, so the UI never waits.
* ``widgets``: buttons with hit tests, bars, the alarm banner, the PIN keypad.
* ``screens``: home, start, caps, sessions (report pictures), settings (behind a PIN) and
  "disconnected", each drawn from the state; the red STOP is part of the frame around
  every one of them.
* ``app``: the window, the event loop and the ``relaxd-panel`` command line.

No camera preview: the socket protocol carries no frames, on purpose, because no image
of the child may leave the daemon.
"""

import os

from relaxd.errors import RelaxdError

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # the panel's modules import pygame after this


class PanelError(RelaxdError):
    """Base class of the panel's errors."""


class PanelProtocolError(PanelError):
    """The daemon answered ``status`` with something this panel cannot read (version mismatch?)."""


class PanelConfigError(PanelError):
    """A panel option is wrong (PIN, window size); the message names the option and the fix."""
