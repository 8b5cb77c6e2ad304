"""Benchmark clips made from real photos: one face that moves, turns, tilts, changes size and
light, and leaves and comes back.

No real video is at hand here, so the vision benchmarks build their clips: a real face (the
astronaut photo the demo uses, or CK+ faces upscaled from 48x48, the expression changing every
two seconds) pasted on a room-like backdrop and moved along keyframes. Each clip stresses one
thing the fast path must survive; ``demo`` is the daemon's own demo clip. They are written as
MJPG ``.avi`` to a temporary folder: CK+ crops are derived images and are never committed, and
no child's image is involved.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from relaxd.demo import SPRITE_FACE, astronaut_sprite, ensure_demo_clip, room_background

FPS = 15.0
SIZE = (640, 480)
CKPLUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus"
CKPLUS_SUBJECTS = ("S011", "S132", "S055")
"""CK+ subjects with five or six posed expressions each (a face that changes while it moves)."""
EXPRESSION_SECONDS = 2.0


@dataclass(frozen=True)
class Pose:
    """Where the face is at a moment of the clip (fractions of the frame; angles in degrees)."""

    t: float  # seconds
    x: float = 0.5  # face centre
    y: float = 0.5
    size: float = 0.3  # face height as a fraction of the frame height
    roll: float = 0.0  # head tilt
    turn: float = 0.0  # 0..1: the face narrowing as a head turning away does (0.3: to 70% of its width)
    gain: float = 1.0  # exposure
    side_light: float = 0.0  # -1..1: brighter on the right (positive) or the left
    present: bool = True

    def towards(self, other: "Pose", t: float) -> "Pose":
        """The pose at time ``t`` between this keyframe and ``other``, eased in and out."""
        linear = (t - self.t) / (other.t - self.t) if other.t > self.t else 1.0
        eased = 0.5 - 0.5 * math.cos(math.pi * min(1.0, max(0.0, linear)))
        values = {f.name: getattr(self, f.name) + (getattr(other, f.name) - getattr(self, f.name)) * eased
                  for f in fields(self) if f.name not in ("t", "present")}
        return Pose(t=t, present=self.present and other.present, **values)


# Each clip: its sprite ("astronaut" or "ckplus") and keyframes.
CLIPS: dict[str, tuple[str, tuple[Pose, ...]]] = {
    "move": ("astronaut", (
        Pose(0, 0.5, 0.5, 0.25), Pose(3, 0.22, 0.35, 0.25), Pose(6, 0.78, 0.4, 0.25),
        Pose(9, 0.7, 0.7, 0.25), Pose(12, 0.3, 0.6, 0.25), Pose(15, 0.5, 0.5, 0.25))),
    "turn": ("astronaut", (
        Pose(0, 0.5, 0.5, 0.3), Pose(2, 0.48, 0.5, 0.3, turn=0.35), Pose(4, 0.5, 0.5, 0.3),
        Pose(6, 0.53, 0.5, 0.3, turn=0.4), Pose(8, 0.5, 0.5, 0.3), Pose(10, 0.5, 0.48, 0.3, turn=0.25))),
    "tilt": ("astronaut", (
        Pose(0, 0.5, 0.5, 0.3), Pose(2, 0.5, 0.5, 0.3, roll=20), Pose(4, 0.5, 0.5, 0.3, roll=-20),
        Pose(6, 0.45, 0.5, 0.3, roll=12), Pose(8, 0.55, 0.5, 0.3, roll=-12), Pose(10, 0.5, 0.5, 0.3))),
    "size": ("astronaut", (
        Pose(0, 0.5, 0.5, 0.15), Pose(3, 0.5, 0.5, 0.6), Pose(5, 0.45, 0.5, 0.75), Pose(8, 0.55, 0.5, 0.2),
        Pose(10, 0.5, 0.5, 0.12), Pose(12, 0.5, 0.5, 0.4))),
    "light": ("astronaut", (
        Pose(0, 0.5, 0.5, 0.3), Pose(2, 0.5, 0.5, 0.3, gain=0.45), Pose(4, 0.5, 0.5, 0.3, gain=1.35),
        Pose(6, 0.5, 0.5, 0.3, side_light=0.5), Pose(8, 0.5, 0.5, 0.3, side_light=-0.5, gain=0.7),
        Pose(10, 0.5, 0.5, 0.3))),
    "leave": ("astronaut", (
        Pose(0, 0.5, 0.5, 0.3), Pose(2, 1.3, 0.5, 0.3), Pose(2.01, 1.3, 0.5, 0.3, present=False),
        Pose(4, -0.3, 0.5, 0.3, present=False), Pose(4.01, -0.3, 0.5, 0.3), Pose(6, 0.5, 0.5, 0.3),
        Pose(7, 0.5, 1.4, 0.3), Pose(8, 0.5, 0.5, 0.3), Pose(10, 0.5, 0.5, 0.3))),
    "ckplus": ("ckplus", (
        Pose(0, 0.5, 0.5, 0.35), Pose(3, 0.35, 0.45, 0.3, roll=10), Pose(6, 0.65, 0.55, 0.4, roll=-8),
        Pose(9, 0.5, 0.5, 0.25, gain=0.7, side_light=0.3), Pose(12, 0.4, 0.5, 0.45, turn=0.2),
        Pose(15, 0.5, 0.5, 0.35))),
}


@dataclass
class Sprite:
    """A picture to paste (BGR float32), its soft alpha, and the face box inside it."""

    image: np.ndarray
    alpha: np.ndarray
    face: tuple[int, int, int, int]


def astronaut() -> list[Sprite]:
    image, alpha = astronaut_sprite()
    return [Sprite(image, alpha[:, :, 0], SPRITE_FACE)]


def ckplus_faces(root: Path = CKPLUS) -> list[Sprite]:
    """The chosen subjects' posed expressions, one per sequence, upscaled to 192 px with a soft edge."""
    sprites = []
    for subject in CKPLUS_SUBJECTS:
        last_frames: dict[str, Path] = {}
        for path in sorted(root.glob(f"*/{subject}_*.png")):
            last_frames[path.name.split("_")[1]] = path  # the sequence's last frame: its peak expression
        for path in last_frames.values():
            gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if gray is None:
                continue
            big = cv2.resize(gray, (192, 192), interpolation=cv2.INTER_CUBIC)
            alpha = np.zeros((192, 192), np.float32)
            cv2.rectangle(alpha, (8, 8), (183, 183), 1.0, -1)
            sprites.append(Sprite(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR).astype(np.float32),
                                  cv2.GaussianBlur(alpha, (0, 0), 4), (16, 16, 160, 160)))
    return sprites


def pose_at(keyframes: tuple[Pose, ...], t: float) -> Pose:
    for start, end in zip(keyframes, keyframes[1:]):
        if start.t <= t <= end.t:
            return start.towards(end, t)
    return keyframes[-1]


def paste(canvas: np.ndarray, sprite: Sprite, pose: Pose) -> None:
    """Blend ``sprite`` into ``canvas`` with its face centred at the pose, scaled, narrowed and tilted."""
    height, width = canvas.shape[:2]
    fx, fy, fw, fh = sprite.face
    scale = pose.size * height / fh
    centre = (fx + fw / 2.0, fy + fh / 2.0)
    rotation = cv2.getRotationMatrix2D(centre, pose.roll, 1.0)
    squeeze = np.array([[scale * (1.0 - pose.turn), 0.0], [0.0, scale]])
    matrix = squeeze @ rotation[:, :2]
    offset = np.array([pose.x * width, pose.y * height]) - matrix @ np.array(centre)
    affine = np.hstack([matrix, offset[:, np.newaxis]]).astype(np.float32)
    picture = cv2.warpAffine(sprite.image, affine, (width, height), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(sprite.alpha, affine, (width, height), flags=cv2.INTER_LINEAR)[:, :, np.newaxis]
    canvas += (picture - canvas) * alpha


def render(name: str, seed: int = 0, ckplus_root: Path = CKPLUS) -> Iterator[np.ndarray]:
    """The clip's BGR uint8 frames."""
    kind, keyframes = CLIPS[name]
    sprites = astronaut() if kind == "astronaut" else ckplus_faces(ckplus_root)
    if not sprites:
        raise FileNotFoundError(f"no CK+ faces of {', '.join(CKPLUS_SUBJECTS)} in {ckplus_root}")
    rng = np.random.default_rng(seed)
    backdrop = room_background(SIZE, rng)
    ramp = np.linspace(-1.0, 1.0, SIZE[0], dtype=np.float32)[np.newaxis, :, np.newaxis]
    for index in range(int(round(keyframes[-1].t * FPS)) + 1):
        t = index / FPS
        pose = pose_at(keyframes, t)
        frame = backdrop.copy()
        if pose.present:
            paste(frame, sprites[int(t // EXPRESSION_SECONDS) % len(sprites)], pose)
        frame *= pose.gain * (1.0 + 0.5 * pose.side_light * ramp)
        frame += rng.normal(0.0, 3.0, frame.shape).astype(np.float32)  # sensor noise
        yield np.clip(frame, 0, 255).astype(np.uint8)


def available(ckplus_root: Path = CKPLUS) -> list[str]:
    """The clips that can be made here (``ckplus`` needs ../shared/data/ckplus), then the demo clip."""
    names = [name for name, (kind, _) in CLIPS.items() if kind != "ckplus" or ckplus_root.is_dir()]
    return names + ["demo"]


def ensure_clip(name: str, folder: Path | None = None, ckplus_root: Path = CKPLUS) -> Path:
    """The clip ``name`` as an MJPG .avi in ``folder`` (a temporary one by default), made once."""
    folder = Path(folder or Path(tempfile.gettempdir()) / "relaxd-bench")
    folder.mkdir(parents=True, exist_ok=True)
    if name == "demo":
        return ensure_demo_clip(folder)
    path = folder / f"clip-{name}.avi"
    if path.is_file() and path.stat().st_size > 0:
        return path
    partial = path.with_suffix(".partial.avi")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    try:
        for frame in render(name, ckplus_root=ckplus_root):
            writer.write(frame)
    finally:
        writer.release()
    partial.replace(path)
    return path
