"""Touch widgets drawn with pygame: a painter, buttons with hit tests, bars, a banner, a PIN keypad.

All sizes are the panel's logical pixels (800x480, the official 7" display; ``app`` scales
for other windows). Every touch target is at least ``MIN_TOUCH`` pixels on each side, so a
finger in a hurry hits what it aims at. Fonts are pygame's built-in default font, so
nothing needs installing on the Pi.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import pygame

from relaxd.panel import PanelError

Colour = tuple[int, int, int]

MIN_TOUCH = 60

BACKGROUND: Colour = (18, 22, 30)
SURFACE: Colour = (34, 40, 52)
BUTTON: Colour = (52, 62, 80)
BUTTON_DISABLED: Colour = (38, 42, 50)
SELECTED: Colour = (40, 110, 170)
TEXT: Colour = (235, 238, 242)
MUTED: Colour = (150, 158, 172)
DISABLED_TEXT: Colour = (92, 98, 110)
STOP_RED: Colour = (214, 0, 0)  # the STOP button and nothing else, so a test can find it by colour
OK_GREEN: Colour = (60, 190, 95)
WARN_AMBER: Colour = (235, 170, 30)
BAD_RED: Colour = (235, 70, 60)
ALARM_HIGH: Colour = (170, 30, 40)
ALARM_MEDIUM: Colour = (170, 110, 10)
GO_GREEN: Colour = (30, 130, 70)

GROUP_COLOURS: dict[str, Colour] = {
    "negative": (225, 85, 60),
    "neutral": (110, 140, 175),
    "positive": (70, 190, 110),
    "none": (70, 74, 84),
}
STATE_COLOURS: dict[str, Colour] = {
    "idle": MUTED, "starting": OK_GREEN, "running": OK_GREEN, "paused": WARN_AMBER,
    "halted": (240, 130, 40), "estopped": BAD_RED, "fault": (220, 80, 220),
}
CHANNEL_COLOURS: dict[str, Colour] = {"light": (245, 205, 80), "sound": (90, 170, 245), "vibration": (190, 120, 240)}


class PanelLayoutError(PanelError):
    """A widget was laid out too small to touch: a bug in a screen's layout."""


@functools.lru_cache(maxsize=None)
def font(size: int) -> pygame.font.Font:
    """pygame's built-in font at ``size`` px, loaded once (a handful of sizes are used)."""
    return pygame.font.Font(None, size)


@functools.lru_cache(maxsize=1024)
def _rendered(text: str, size: int, colour: Colour) -> pygame.Surface:
    """Rendered text, cached: most labels are the same from one frame to the next (a Pi 4 notices)."""
    return font(size).render(text, True, colour)


class Painter:
    """Draws on one frame's surface and remembers the text it drew (for the tests, and for debugging)."""

    def __init__(self, surface: pygame.Surface) -> None:
        self.surface = surface
        self.labels: list[str] = []

    @staticmethod
    def font(size: int) -> pygame.font.Font:
        return font(size)

    def text(self, text: str, pos: tuple[int, int], size: int = 28, colour: Colour = TEXT,
             anchor: str = "topleft") -> pygame.Rect:
        """Draw one line; ``anchor`` is a pygame.Rect attribute (``center``, ``midleft``...) placed at ``pos``."""
        image = _rendered(text, size, tuple(colour))
        rect = image.get_rect(**{anchor: pos})
        self.surface.blit(image, rect)
        self.labels.append(text)
        return rect

    def wrapped(self, text: str, rect: pygame.Rect, size: int = 26, colour: Colour = TEXT) -> int:
        """Draw ``text`` word-wrapped into ``rect``'s width, from its top; returns the y below the last line."""
        y = rect.top
        for line in wrap(self.font(size), text, rect.width):
            if y + self.font(size).get_linesize() > rect.bottom:
                break
            self.text(line, (rect.left, y), size, colour)
            y += self.font(size).get_linesize()
        return y

    def box(self, rect: pygame.Rect, colour: Colour, radius: int = 8) -> None:
        pygame.draw.rect(self.surface, colour, rect, border_radius=radius)


def wrap(font: pygame.font.Font, text: str, width: int) -> list[str]:
    """Split ``text`` into lines no wider than ``width`` pixels (a single overlong word gets its own line)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and font.size(candidate)[0] > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def fit(font: pygame.font.Font, text: str, width: int) -> str:
    """``text`` shortened with an ellipsis until it is at most ``width`` pixels wide."""
    if font.size(text)[0] <= width:
        return text
    while text and font.size(text + "…")[0] > width:
        text = text[:-1]
    return text.rstrip() + "…"


@dataclass
class Button:
    """A rectangle that runs ``action`` when touched (and enabled)."""

    rect: pygame.Rect
    label: str
    action: Callable[[], None]
    colour: Colour = BUTTON
    enabled: bool = True
    text_size: int = 32
    text_colour: Colour = TEXT

    def __post_init__(self) -> None:
        self.rect = pygame.Rect(self.rect)
        if self.rect.width < MIN_TOUCH or self.rect.height < MIN_TOUCH:
            raise PanelLayoutError(f"button {self.label!r} is {self.rect.width}x{self.rect.height} px; touch "
                                   f"targets need at least {MIN_TOUCH}x{MIN_TOUCH}")

    def hit(self, pos: tuple[int, int]) -> bool:
        return self.enabled and self.rect.collidepoint(pos)

    def draw(self, painter: Painter) -> None:
        painter.box(self.rect, self.colour if self.enabled else BUTTON_DISABLED, radius=10)
        colour = self.text_colour if self.enabled else DISABLED_TEXT
        lines = self.label.split("\n")
        height = painter.font(self.text_size).get_linesize()
        top = self.rect.centery - height * (len(lines) - 1) // 2
        for index, line in enumerate(lines):
            painter.text(line, (self.rect.centerx, top + index * height), self.text_size, colour, "center")


@dataclass
class Bar:
    """A horizontal level 0..1, with an optional cap marker (the most the level may reach)."""

    rect: pygame.Rect
    colour: Colour

    def draw(self, painter: Painter, value: float, cap: Optional[float] = None) -> None:
        rect = pygame.Rect(self.rect)
        painter.box(rect, SURFACE, radius=4)
        filled = rect.copy()
        filled.width = round(rect.width * min(1.0, max(0.0, value)))
        if filled.width:
            painter.box(filled, self.colour, radius=4)
        if cap is not None and cap < 1.0:
            x = rect.left + round(rect.width * max(0.0, cap))
            pygame.draw.line(painter.surface, TEXT, (x, rect.top - 4), (x, rect.bottom + 3), 3)


@dataclass
class Banner:
    """A full-width coloured strip with one line of text (the alarm banner)."""

    rect: pygame.Rect

    def draw(self, painter: Painter, text: str, colour: Colour, text_width: Optional[int] = None) -> None:
        painter.box(self.rect, colour, radius=0)
        line = fit(painter.font(28), text, text_width or self.rect.width - 24)
        painter.text(line, (self.rect.left + 12, self.rect.centery), 28, TEXT, "midleft")


def draw_dot(painter: Painter, centre: tuple[int, int], ok: bool, caption: str) -> int:
    """A health dot: green when ok, red when not, with its caption to the right; returns the caption's right end."""
    pygame.draw.circle(painter.surface, OK_GREEN if ok else BAD_RED, centre, 9)
    return painter.text(caption, (centre[0] + 16, centre[1]), 24, TEXT if ok else BAD_RED, "midleft").right


class Keypad:
    """A 3x4 PIN keypad (1-9, Clear, 0, OK); ``on_submit`` gets the digits when OK is touched."""

    KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "Clear", "0", "OK")

    def __init__(self, origin: tuple[int, int], on_submit: Callable[[str], None], *,
                 key_size: tuple[int, int] = (100, 66), gap: int = 8, max_digits: int = 8) -> None:
        self.on_submit = on_submit
        self.max_digits = max_digits
        self.entered = ""
        width, height = key_size
        self.buttons: list[Button] = []
        for index, key in enumerate(self.KEYS):
            row, col = divmod(index, 3)
            rect = pygame.Rect(origin[0] + col * (width + gap), origin[1] + row * (height + gap), width, height)
            self.buttons.append(Button(rect, key, lambda key=key: self.press(key), GO_GREEN if key == "OK" else BUTTON))

    @property
    def rect(self) -> pygame.Rect:
        return self.buttons[0].rect.unionall([b.rect for b in self.buttons[1:]])

    def press(self, key: str) -> None:
        if key == "Clear":
            self.entered = ""
        elif key == "OK":
            entered, self.entered = self.entered, ""
            self.on_submit(entered)
        elif len(self.entered) < self.max_digits:
            self.entered += key

    def draw(self, painter: Painter) -> None:
        for button in self.buttons:
            button.draw(painter)
