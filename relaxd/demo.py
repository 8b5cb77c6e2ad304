"""A synthetic demo clip: the daemon's stand-in camera when no camera is attached.

The clip is made from scikit-image's public-domain ``astronaut`` photo (an adult; no
child's image is involved): her head and shoulders move smoothly over a plausible
room-like background, come close to the camera until the face fills most of the
frame, leave for about a second and come back, while the lighting drifts and the
sensor adds noise. The same seed always gives the same frames, so benchmarks and
tests that replay it are repeatable.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from relaxd.errors import RelaxdError
from relaxd.vision.preprocess import Box

CLIP_VERSION = 1
"""Bump when the clip's content changes, so cached clips are regenerated."""

FOURCCS = {".avi": "MJPG", ".mp4": "mp4v"}
"""Codecs by file suffix. MJPG .avi is the default: OpenCV writes and reads it on every
platform, with or without FFmpeg."""

# Head and shoulders cut from the 512x512 astronaut photo, and her face box inside it
# (what OpenCV's frontal-face cascade finds there).
SPRITE_RECT = (40, 0, 360, 512)  # x, y, width, height in the photo
SPRITE_FACE = (137, 66, 95, 95)  # x, y, width, height in the sprite
SPRITE_HEAD = ((188, 110), (80, 97))  # ellipse (centre, half axes) around head and hair
SPRITE_BODY = ((170, 500), (176, 330))  # ellipse around the shoulders and the suit

# The scene as keyframes: (fraction of the clip, face centre x, y as fractions of the
# frame, face size as a fraction of the frame height, person present).
KEYFRAMES = (
    (0.00, 0.50, 0.48, 0.22, True),
    (0.14, 0.33, 0.40, 0.19, True),
    (0.28, 0.66, 0.55, 0.30, True),
    (0.40, 0.50, 0.52, 0.62, True),
    (0.48, 0.52, 0.50, 0.92, True),  # close to the camera: the face fills most of the frame
    (0.56, 0.45, 0.50, 0.35, True),
    (0.64, 0.70, 0.45, 0.24, True),
    (0.69, 1.30, 0.45, 0.24, True),  # walks out to the right...
    (0.70, 1.30, 0.45, 0.24, False),
    (0.80, -0.30, 0.45, 0.22, False),  # ...is away for a tenth of the clip...
    (0.81, -0.30, 0.45, 0.22, True),
    (0.87, 0.40, 0.48, 0.22, True),  # ...and comes back from the left
    (1.00, 0.58, 0.52, 0.16, True),
)


def _require_skimage():
    try:
        from skimage import data
    except ImportError:
        raise RelaxdError(
            "the demo clip needs scikit-image's sample photo: pip install relaxd[demo]"
        ) from None
    return data


def astronaut_sprite() -> tuple[np.ndarray, np.ndarray]:
    """The head-and-shoulders cut-out (BGR float32) and its soft person-shaped alpha."""
    photo = cv2.cvtColor(_require_skimage().astronaut(), cv2.COLOR_RGB2BGR)
    x, y, w, h = SPRITE_RECT
    sprite = photo[y : y + h, x : x + w].astype(np.float32)
    alpha = np.zeros((h, w), np.float32)
    for centre, axes in (SPRITE_HEAD, SPRITE_BODY):
        cv2.ellipse(alpha, centre, axes, 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 4)
    return sprite, alpha[:, :, np.newaxis]


def room_background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A room-like backdrop: a warm wall gradient with soft, large-scale blotches."""
    width, height = size
    ramp_y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, np.newaxis, np.newaxis]
    ramp_x = np.linspace(0.0, 1.0, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    top, bottom = np.array([185, 200, 210], np.float32), np.array([95, 115, 140], np.float32)
    wall = top + (bottom - top) * ramp_y - 25.0 * ramp_x
    blotches = cv2.resize(rng.normal(0.0, 1.0, (6, 8)).astype(np.float32), (width, height),
                          interpolation=cv2.INTER_CUBIC)
    return np.clip(wall + 12.0 * blotches[:, :, np.newaxis], 0, 255)


def _scene(fraction: float) -> tuple[float, float, float, bool]:
    """Face centre (x, y), size and presence at a point of the clip, smoothly eased."""
    for start, end in zip(KEYFRAMES, KEYFRAMES[1:]):
        if start[0] <= fraction <= end[0]:
            span = end[0] - start[0]
            linear = (fraction - start[0]) / span if span else 0.0
            eased = 0.5 - 0.5 * np.cos(np.pi * linear)
            values = [a + (b - a) * eased for a, b in zip(start[1:4], end[1:4])]
            return values[0], values[1], values[2], start[4] and end[4]
    last = KEYFRAMES[-1]
    return last[1], last[2], last[3], last[4]


def _paste(canvas: np.ndarray, sprite: np.ndarray, alpha: np.ndarray, centre: tuple[float, float],
           face_px: float) -> None:
    """Blend the sprite scaled so that its face is ``face_px`` tall, centred on ``centre``."""
    scale = face_px / SPRITE_FACE[3]
    w, h = max(1, round(sprite.shape[1] * scale)), max(1, round(sprite.shape[0] * scale))
    scaled = cv2.resize(sprite, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mask = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, np.newaxis]
    face_cx = (SPRITE_FACE[0] + SPRITE_FACE[2] / 2) * scale
    face_cy = (SPRITE_FACE[1] + SPRITE_FACE[3] / 2) * scale
    left, top = round(centre[0] - face_cx), round(centre[1] - face_cy)
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, left), max(0, top), min(width, left + w), min(height, top + h)
    if x0 >= x1 or y0 >= y1:
        return
    part = scaled[y0 - top : y1 - top, x0 - left : x1 - left]
    weight = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    region = canvas[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = region + (part - region) * weight


def _fractions(seconds: float, fps: float) -> list[float]:
    """Each frame's position in the clip, 0 for the first and 1 for the last."""
    count = max(1, int(round(seconds * fps)))
    return [index / max(1, count - 1) for index in range(count)]


def expected_faces(seconds: float = 10, fps: float = 15,
                   size: tuple[int, int] = (640, 480)) -> list[Optional[Box]]:
    """Where the face is in each frame (the box OpenCV's cascade would draw), None while away.

    The ground truth for tests and benchmarks; a box may reach past the frame's edge
    when she is close to the camera, and is None once her face centre leaves the frame.
    """
    width, height = size
    boxes: list[Optional[Box]] = []
    for fraction in _fractions(seconds, fps):
        cx, cy, face, present = _scene(fraction)
        side = face * height
        inside = 0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0
        boxes.append(
            (int(round(cx * width - side / 2)), int(round(cy * height - side / 2)),
             int(round(side)), int(round(side))) if present and inside else None
        )
    return boxes


def render_frames(seconds: float = 10, fps: float = 15, size: tuple[int, int] = (640, 480),
                  seed: int = 0) -> Iterator[np.ndarray]:
    """Yield the clip's BGR uint8 frames (in memory; ``make_demo_clip`` writes them)."""
    rng = np.random.default_rng(seed)
    sprite, alpha = astronaut_sprite()
    background = room_background(size, rng)
    width, height = size
    side_light = np.linspace(-1.0, 1.0, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    for fraction in _fractions(seconds, fps):
        cx, cy, face, present = _scene(fraction)
        frame = background.copy()
        if present:
            _paste(frame, sprite, alpha, (cx * width, cy * height), face * height)
        gain = 1.0 + 0.25 * np.sin(2 * np.pi * 1.3 * fraction)  # exposure drifting
        tilt = 0.15 * np.sin(2 * np.pi * 0.7 * fraction + 1.0)  # light coming from one side
        frame = frame * (gain + tilt * side_light)
        frame += rng.normal(0.0, 3.0, frame.shape).astype(np.float32)  # sensor noise
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_demo_clip(path: Path, seconds: float = 10, fps: float = 15,
                   size: tuple[int, int] = (640, 480), seed: int = 0) -> Path:
    """Write the synthetic clip to ``path`` (``.avi``: MJPG, ``.mp4``: mp4v) and return it."""
    path = Path(path)
    fourcc = FOURCCS.get(path.suffix.lower())
    if fourcc is None:
        raise RelaxdError(f"demo clip {path}: name it .avi (MJPG) or .mp4 (mp4v)")
    _require_skimage()  # before creating the file, so a failure leaves nothing behind
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), tuple(size))
    if not writer.isOpened():
        raise RelaxdError(f"cannot write the demo clip {path}: OpenCV refused a {fourcc} video there")
    try:
        for frame in render_frames(seconds, fps, size, seed):
            writer.write(frame)
    finally:
        writer.release()
    return path


def ensure_demo_clip(cache_dir: Path, seed: int = 0) -> Path:
    """The default 10 s demo clip in ``cache_dir``, generated on first use and reused after."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"relaxd-demo-v{CLIP_VERSION}-seed{seed}.avi"
    if path.is_file() and path.stat().st_size > 0:
        return path
    # Write beside the target and rename, so a half-written clip is never picked up.
    handle, temporary = tempfile.mkstemp(suffix=".avi", dir=cache_dir)
    os.close(handle)
    try:
        make_demo_clip(Path(temporary), seed=seed)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path
