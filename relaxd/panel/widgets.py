"""Touch widgets drawn with pygame: a painter, buttons with hit tests, bars, a banner, a PIN keypad.

All sizes are the panel's logical pixels (800x480, the official 7" display; ``app`` scales
for other windows). Every touch target is at least ``MIN_TOUCH`` pixels on each side, so a
finger in a hurry hits what it aims at. Fonts are pygame's built-in default font, so
nothing needs installing on the Pi.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

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


@dataclass(frozen=True)
class Drawn:
    """One line of text as drawn: where it landed and the box it had to stay in."""

    text: str
    rect: pygame.Rect
    bounds: pygame.Rect


class Painter:
    """Draws on one frame's surface and remembers the text it drew, where, and what did not fit.

    Every line of text has a box it must stay in: the surface, or the box of the innermost
    ``within`` block, or the one given to ``text``. ``problems()`` lists the lines that left
    their box, overlap another line, or were cut off (wrapped text longer than its box), so
    a test can render every screen in the states that lengthen text and fail on any of them.
    """

    def __init__(self, surface: pygame.Surface) -> None:
        self.surface = surface
        self.labels: list[str] = []
        self.drawn: list[Drawn] = []
        self.cut: list[str] = []  # texts that did not fit their box, whole
        self.shortened: list[str] = []  # texts ended with an ellipsis on purpose (shown whole elsewhere)
        self._bounds = [surface.get_rect()]

    @staticmethod
    def font(size: int) -> pygame.font.Font:
        return font(size)

    @contextmanager
    def within(self, rect: pygame.Rect) -> Iterator[None]:
        """Text drawn in this block must stay inside ``rect``."""
        self._bounds.append(pygame.Rect(rect))
        try:
            yield
        finally:
            self._bounds.pop()

    def text(self, text: str, pos: tuple[int, int], size: int = 28, colour: Colour = TEXT,
             anchor: str = "topleft", bounds: Optional[pygame.Rect] = None) -> pygame.Rect:
        """Draw one line; ``anchor`` is a pygame.Rect attribute (``center``, ``midleft``...) placed at ``pos``."""
        image = _rendered(text, size, tuple(colour))
        rect = image.get_rect(**{anchor: pos})
        self.surface.blit(image, rect)
        self.labels.append(text)
        if text.strip():
            self.drawn.append(Drawn(text, rect, pygame.Rect(bounds) if bounds is not None else self._bounds[-1]))
        return rect

    def wrapped(self, text: str, rect: pygame.Rect, size: int = 26, colour: Colour = TEXT, *,
                shorten: bool = False) -> int:
        """Draw ``text`` word-wrapped into ``rect``, from its top; returns the y below the last line.

        Text longer than the box is cut at the last line that fits and noted in ``cut``, or with
        ``shorten`` ends that line with an ellipsis (for text shown whole elsewhere) and is noted in
        ``shortened``.
        """
        y = rect.top
        line_height = self.font(size).get_linesize()
        lines = wrap(self.font(size), text, rect.width)
        fitting = rect.height // line_height
        if len(lines) > fitting:
            if shorten and fitting:
                lines = lines[:fitting - 1] + [fit(self.font(size), " ".join(lines[fitting - 1:]) + " …", rect.width)]
                self.shortened.append(text)
            else:
                lines = lines[:fitting]
                self.cut.append(text)
        for line in lines:
            self.text(line, (rect.left, y), size, colour, bounds=rect)
            y += line_height
        return y

    def fitted(self, text: str, rect: pygame.Rect, sizes: tuple[int, ...] = (26, 22, 20),
               colour: Colour = TEXT, *, centred: bool = False, shorten: bool = False) -> int:
        """Draw ``text`` in ``rect`` at the largest of ``sizes`` whose wrapped lines fit (the smallest wraps
        and cuts, or shortens, if none does), from the top or ``centred`` vertically. Returns the y below
        the last line."""
        for size in sizes:
            height = len(wrap(self.font(size), text, rect.width)) * self.font(size).get_linesize()
            if height <= rect.height or size == sizes[-1]:
                break
        top = rect.top + max(0, (rect.height - height) // 2) if centred else rect.top
        return self.wrapped(text, pygame.Rect(rect.left, top, rect.width, rect.bottom - top), size, colour,
                            shorten=shorten)

    def box(self, rect: pygame.Rect, colour: Colour, radius: int = 8) -> None:
        pygame.draw.rect(self.surface, colour, rect, border_radius=radius)

    def problems(self) -> list[str]:
        """What a reader would miss: text outside its box or the surface, lines on top of each other, cut text."""
        found = [f"cut off: {text!r}" for text in self.cut]
        screen = self.surface.get_rect()
        for item in self.drawn:
            if not screen.contains(item.rect):
                found.append(f"off the screen: {item.text!r} at {tuple(item.rect)}")
            elif not item.bounds.contains(item.rect):
                found.append(f"outside its box {tuple(item.bounds)}: {item.text!r} at {tuple(item.rect)}")
        for index, first in enumerate(self.drawn):
            for second in self.drawn[index + 1:]:
                if first.rect.colliderect(second.rect):
                    found.append(f"overlap: {first.text!r} at {tuple(first.rect)} and {second.text!r} at "
                                 f"{tuple(second.rect)}")
        return found


def wrap(font: pygame.font.Font, text: str, width: int) -> list[str]:
    """Split ``text`` into lines no wider than ``width`` pixels; a word wider than a line (a long
    pseudonym, a path) is broken between characters rather than left to run out of its box."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if font.size(candidate)[0] <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = word
            while font.size(line)[0] > width and len(line) > 1:
                cut = len(line) - 1
                while cut > 1 and font.size(line[:cut])[0] > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
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
    wrap: bool = False  # a name of any length: wrapped, left-aligned, smaller if need be
    drawn: bool = True  # False: a touch area over something drawn otherwise (the alarm banner, a picture)

    def __post_init__(self) -> None:
        self.rect = pygame.Rect(self.rect)
        if self.rect.width < MIN_TOUCH or self.rect.height < MIN_TOUCH:
            raise PanelLayoutError(f"button {self.label!r} is {self.rect.width}x{self.rect.height} px; touch "
                                   f"targets need at least {MIN_TOUCH}x{MIN_TOUCH}")

    def hit(self, pos: tuple[int, int]) -> bool:
        return self.enabled and self.rect.collidepoint(pos)

    def press(self, pos: tuple[int, int]) -> None:
        """A touch at ``pos`` (logical pixels) on this button."""
        self.action()

    def draw(self, painter: Painter) -> None:
        if not self.drawn:
            return
        painter.box(self.rect, self.colour if self.enabled else BUTTON_DISABLED, radius=10)
        colour = self.text_colour if self.enabled else DISABLED_TEXT
        if self.wrap:
            painter.fitted(self.label, self.rect.inflate(-16, -6), sizes=(self.text_size, 24, 20), colour=colour,
                           centred=True)
            return
        lines = self.label.split("\n")
        height = painter.font(self.text_size).get_linesize()
        top = self.rect.centery - height * (len(lines) - 1) // 2
        for index, line in enumerate(lines):
            painter.text(line, (self.rect.centerx, top + index * height), self.text_size, colour, "center",
                         bounds=self.rect)


@dataclass
class TouchArea(Button):
    """A touch target over something drawn otherwise (a picture): ``on_touch`` gets where it was touched."""

    on_touch: Callable[[tuple[int, int]], None] = lambda pos: None
    drawn: bool = False

    def press(self, pos: tuple[int, int]) -> None:
        self.on_touch(pos)


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
