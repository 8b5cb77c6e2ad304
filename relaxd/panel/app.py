"""``relaxd-panel``: the window, the event loop and the command line of the touchscreen panel.

    relaxd-panel [--socket PATH | --config FILE] [--pin DIGITS] [--size WxH] [--fullscreen]

The UI thread only draws and handles touches: the chair's status arrives from the
``ChairLink``'s poller thread, commands go out through its worker, STOP through a thread of
its own. Every screen is drawn at the official display's 800x480 ("logical pixels"); a
window of another size gets a scaled copy with the aspect kept, and touches are mapped
back. Touches arrive as FINGERDOWN (touchscreen) or MOUSEBUTTONDOWN (mouse); SDL also
turns each finger into a synthetic mouse click, which is ignored so a tap acts once.

Which socket: as ``relaxctl`` (``--socket``, ``$RELAXD_SOCKET``, ``ipc.socket`` of
``--config``, the default). The settings PIN: ``--pin``, else ``panel.pin`` of
``--config``, else the default ``1234`` (change it on every chair). Escape or closing the
window quits; the chair is not affected either way.

There is no camera preview: the control socket carries no frames, on purpose (no image of
the child leaves the daemon).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import pygame
import structlog

from relaxd.errors import RelaxdError
from relaxd.panel import PanelConfigError
from relaxd.panel.client import UNREACHABLE, ChairLink, Outcome, PanelState, Sample
from relaxd.panel.screens import (SIZE, AlarmsScreen, CapsScreen, Chrome, DisconnectedScreen, HomeScreen,
                                  NameScreen, Screen, SessionsScreen, SettingsScreen, StartScreen)
from relaxd.panel.widgets import BACKGROUND, BAD_RED, GO_GREEN, TEXT, Colour, Painter
from relaxd.settings import DEFAULT_PANEL_PIN, PanelSettings

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_USAGE = 2


def check_pin(pin: str) -> str:
    if not (pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 8):
        kind = "digits" if pin.isascii() and pin.isdigit() else "characters, not all digits 0-9"
        raise PanelConfigError(f"the panel PIN must be 4 to 8 digits (got {len(pin)} {kind}): "
                               "set panel.pin in the config or pass --pin")
    return pin


def parse_size(text: str) -> tuple[int, int]:
    """'800x480' -> (800, 480); at least 400x240 so the touch targets stay touchable."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise PanelConfigError(f"--size {text!r} is not WIDTHxHEIGHT, e.g. 800x480") from None
    if width < 400 or height < 240 or width > 7680 or height > 4320:
        raise PanelConfigError(f"--size {text!r}: choose between 400x240 and 7680x4320 (the panel is drawn "
                               "at 800x480 and scaled)")
    return width, height


class PanelApp:
    """The panel: a window, the screens, and the link to the daemon."""

    def __init__(self, socket_path: Path, settings: PanelSettings, *, size: tuple[int, int] = SIZE,
                 fullscreen: bool = False, pin: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.socket_path = Path(socket_path)
        self._clock = clock
        pin = check_pin(settings.pin if pin is None else pin)
        pygame.display.init()  # not pygame.init(): that would open the audio mixer too
        pygame.font.init()
        self.window = pygame.display.set_mode((0, 0) if fullscreen else size,
                                              pygame.FULLSCREEN if fullscreen else 0)
        pygame.display.set_caption("relaxd panel")
        self.canvas = self.window if self.window.get_size() == SIZE else pygame.Surface(SIZE)
        self._place()
        if pin == DEFAULT_PANEL_PIN:
            log.warning("panel.default_pin", pin=pin, fix="set panel.pin in the chair's config (or pass --pin): "
                        "with the default anyone can reset the e-stop")
        self.link = ChairLink(self.socket_path, settings, clock=clock).start()
        start = StartScreen()
        self.screens: dict[str, Screen] = {s.name: s for s in (HomeScreen(), start, NameScreen(start), AlarmsScreen(), CapsScreen(),
                                                                 SessionsScreen(), SettingsScreen(pin))}
        self.disconnected = DisconnectedScreen()
        self.chrome = Chrome(self.stop_pressed)
        self.current = "home"
        self.labels: list[str] = []  # the text drawn in the last frame
        self.frame: Optional[Painter] = None  # the last frame's painter: where its text went, what did not fit
        self.shown: Screen = self.disconnected  # the screen drawn in the last frame
        self._state = self.link.state
        self._notice: Optional[tuple[str, Colour, float]] = None
        # A STOP that did not reach the chair stays on screen until a STOP does (or the chair shows it latched).
        self._stop_failure: Optional[str] = None
        self._frames = pygame.time.Clock()
        self._running = True

    # -- Host: what the screens use ------------------------------------------------------

    @property
    def state(self) -> PanelState:
        return self._state  # one snapshot per frame, so a frame never mixes two replies

    def timeline(self) -> tuple[Sample, ...]:
        return self.link.timeline()

    def now(self) -> float:
        return self._clock()

    def retry_in(self) -> Optional[float]:
        return self.link.retry_in()

    def send(self, cmd: str, *, tag: Optional[str] = None, **args: object) -> None:
        self.link.send(cmd, tag=tag, **args)

    def fetch(self, cmd: str, *, tag: Optional[str] = None, timeout_s: float, **args: object) -> None:
        self.link.fetch(cmd, tag=tag, timeout_s=timeout_s, **args)

    def go(self, name: str) -> None:
        if name == self.current:
            return
        self.screens[self.current].on_leave(self)
        self.current = name
        self.screens[name].on_enter(self)

    def notice(self, text: str, colour: Colour = TEXT) -> None:
        self._notice = (text, colour, self._clock() + self.settings.notice_s)

    # -- touches ----------------------------------------------------------------------------

    def stop_pressed(self) -> None:
        """STOP: straight to the daemon on its own connection, whatever else is pending."""
        self.link.estop("panel")
        if self._state.connected:
            self.notice("STOP sent…", BAD_RED)
        else:
            self._stop_failure = "STOP cannot reach the chair (not connected): press the chair's own emergency button"

    def tap(self, pos: tuple[int, int]) -> None:
        """A touch at ``pos`` in logical pixels: STOP and the frame first, then the screen's buttons."""
        for button in self.chrome.buttons + self.shown.buttons:
            if button.hit(pos):
                button.press(pos)
                return

    def to_logical(self, pos: tuple[float, float]) -> Optional[tuple[int, int]]:
        """A window position in logical pixels; None outside the drawn area (the letterbox bars)."""
        x = (pos[0] - self._offset[0]) / self._scale
        y = (pos[1] - self._offset[1]) / self._scale
        if 0 <= x < SIZE[0] and 0 <= y < SIZE[1]:
            return int(x), int(y)
        return None

    def to_window(self, rect: pygame.Rect) -> pygame.Rect:
        """Where a logical rectangle lies in the window."""
        return pygame.Rect(round(rect.left * self._scale) + self._offset[0], round(rect.top * self._scale) +
                           self._offset[1], round(rect.width * self._scale), round(rect.height * self._scale))

    def handle(self, event: pygame.event.Event) -> None:
        if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
            self._running = False
            return
        if event.type == pygame.FINGERDOWN:
            width, height = self.window.get_size()
            pos = self.to_logical((event.x * width, event.y * height))
        elif event.type == pygame.MOUSEBUTTONDOWN and event.button == 1 and not getattr(event, "touch", False):
            pos = self.to_logical(event.pos)
        else:
            return
        if pos is not None:
            self.tap(pos)

    def handle_outcome(self, outcome: Outcome) -> None:
        if outcome.cmd == "estop":
            if outcome.ok:
                self._stop_failure = None
                self.notice("EMERGENCY STOP: all outputs off (latched; reset in Settings)", BAD_RED)
            else:
                why = "not connected" if outcome.code == UNREACHABLE else outcome.message
                self._stop_failure = f"STOP did not reach the chair ({why}): press the chair's own emergency button"
            return
        if not outcome.ok:
            why = "not connected" if outcome.code == UNREACHABLE else outcome.message
            self.notice(f"{outcome.cmd} failed: {why}", BAD_RED)
        elif outcome.cmd == "ack":
            self.notice(f"Alarm {outcome.result.get('kind', '')} acknowledged", GO_GREEN)
        for screen in self.screens.values():
            screen.on_outcome(outcome, self)

    # -- the loop ---------------------------------------------------------------------------

    def step(self) -> bool:
        """One frame: touches, finished commands, drawing. False once the panel should quit."""
        self._state = self.link.state
        for event in pygame.event.get():
            self.handle(event)
        for outcome in self.link.outcomes():
            self.handle_outcome(outcome)
        self.draw()
        return self._running

    def draw(self) -> None:
        self._state = self.link.state
        painter = Painter(self.canvas)
        self.canvas.fill(BACKGROUND)
        self.shown = self.screens[self.current] if self._state.connected else self.disconnected
        self.shown.draw(painter, self)
        notice = None
        if self._stop_failure is not None and self._state.latched:
            self._stop_failure = None  # the chair is stopped after all (its own button, another client)
        if self._stop_failure is not None:
            notice = (self._stop_failure, BAD_RED)
        elif self._notice is not None and self._notice[2] > self._clock():
            notice = self._notice[:2]
        self.chrome.draw(painter, self, self.current, notice)
        self.labels, self.frame = painter.labels, painter
        if self.canvas is not self.window:
            self.window.fill((0, 0, 0))
            scaled = pygame.transform.smoothscale(self.canvas, (round(SIZE[0] * self._scale),
                                                                round(SIZE[1] * self._scale)))
            self.window.blit(scaled, self._offset)
        pygame.display.flip()

    def run(self) -> None:
        while self.step():
            self._frames.tick(self.settings.fps)

    def save(self, path: Path) -> None:
        """A screenshot of the window (the tests keep one per screen)."""
        pygame.image.save(self.window, str(path))

    def close(self) -> None:
        self.link.close()
        pygame.display.quit()

    def _place(self) -> None:
        width, height = self.window.get_size()
        self._scale = min(width / SIZE[0], height / SIZE[1])
        self._offset = (round((width - SIZE[0] * self._scale) / 2), round((height - SIZE[1] * self._scale) / 2))


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaxd-panel", description="The relaxd touchscreen operator panel.",
                                     epilog="The settings PIN defaults to 1234: set panel.pin in the config or "
                                            "pass --pin, and change it on every chair.")
    parser.add_argument("--socket", type=Path, metavar="PATH", help="the daemon's control socket")
    parser.add_argument("--config", type=Path, metavar="FILE", help="relaxd config: its ipc.socket and panel section")
    parser.add_argument("--pin", help="the settings PIN, 4 to 8 digits (overrides panel.pin)")
    parser.add_argument("--size", default="800x480", help="window size WIDTHxHEIGHT (default 800x480)")
    parser.add_argument("--fullscreen", action="store_true", help="fill the screen (the Pi's 7\" display)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``relaxd-panel`` console script; returns the exit code."""
    from relaxd.logs import configure_logging
    from relaxd.relaxctl import socket_path

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        settings = PanelSettings()
        if args.config is not None:
            from relaxd.config import load_settings

            # The panel section appears in Settings once the lead wires it in; until then, its defaults.
            settings = load_settings(args.config).panel
        pin = check_pin(settings.pin if args.pin is None else args.pin)
        size = parse_size(args.size)
        path = socket_path(args)
    except RelaxdError as error:
        print(f"relaxd-panel: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level)
    try:
        app = PanelApp(path, settings, size=size, fullscreen=args.fullscreen, pin=pin)
    except pygame.error as error:
        print(f"relaxd-panel: cannot open the display ({error}); on the Pi run it in the desktop session "
              "or set SDL_VIDEODRIVER=kmsdrm", file=sys.stderr)
        return EXIT_USAGE
    try:
        app.run()
    finally:
        app.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
