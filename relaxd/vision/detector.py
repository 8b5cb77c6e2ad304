"""Viola-Jones face detection (OpenCV's Haar cascade), with a fast tracking path.

Two ways in:

* ``detect_all`` / ``find_best``: stateless full scans of one image (photos, the
  evaluator). Small images are upscaled first and large ones downscaled to a camera
  frame's size; a face that fills the image is found
  by retrying on the image with a border added, because the cascade needs some
  context around a face, and last with a more lenient border scan; a photo in which
  all of these find nothing gets the same scans with a second cascade (alt2).
* ``track``: the daemon's per-frame path. The frame is downscaled to
  ``detect_width``; while a face is being followed only a window around the last face
  is searched, at sizes near the last one, and the whole frame is rescanned every
  ``full_scan_interval`` frames or as soon as the window loses the face. This is
  what lets a Raspberry Pi keep up with the camera: detection, not the CNN, is the
  cost per frame.

Boxes are (x, y, width, height) in the pixels of the image passed in, inside it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import structlog

from relaxd.errors import DetectorError
from relaxd.settings import DetectorSettings
from relaxd.vision.preprocess import Box, crop_face, margin_square, to_gray

log = structlog.get_logger(__name__)

CASCADE_NAME = "haarcascade_frontalface_default.xml"
PHOTO_FALLBACK_CASCADE_NAME = "haarcascade_frontalface_alt2.xml"
"""A second frontal cascade (same install as the default) tried on a photo in which the
default finds no face at all. On FER2013 val it finds a face in 107 more of 3,589 photos
(3.0 points), 64 of them then classified right. Photos only: on camera frames it would
add a full scan to every frame without a face."""
SYSTEM_CASCADE_DIRS = (
    Path("/usr/share/opencv4/haarcascades"),  # Raspberry Pi OS / Debian: opencv-data
    Path("/usr/share/opencv/haarcascades"),
)
HAAR_WINDOW = 24
"""The frontal-face cascade's base window: no face smaller than this can be found."""

MIN_SCAN_SIDE = 192
"""Images whose shorter side is below this (48x48 FER crops) are upscaled to it first."""

MAX_SCAN_SIDE = 480
"""Images whose shorter side is above this (phone photos) are downscaled to it first, the
camera's frame height. At full resolution the cascade also finds large spurious faces: in
the astronaut photo scaled to 2048 px, a box bigger than her face, which "largest" picks."""

PAD_FRACTION = 0.3
"""Border added on every side, as a fraction of the image size, for a face that fills it."""

FILLING_FACE = 0.4
"""A face that only shows up with a border fills the image: it is at least this share of
its shorter side, so the border retry skips smaller sizes (and their cost)."""

LENIENT_NEIGHBORS = 2
"""A photo in which neither scan found a face gets a last border scan that accepts a face
backed by this many overlapping detections. Photos are handed in because they show a
face, and the border scan only considers faces filling 40% of the photo; on FER2013 val
it finds a face in 5 more photos in 100. The price: a plain bright disk filling a picture
can pass for a face (1 synthetic disk in 6 in the tests), so a photo of no face may get a
box. The camera path never uses it."""

TRACK_SIZES = (0.7, 1.4)
"""While tracking, faces between these multiples of the last face's size are searched."""

TRACK_FACE_PX = 40
"""While tracking, the search window is shrunk until the last face is about this tall."""


def cascade_candidates(cascade: str, name: str = CASCADE_NAME) -> list[Path]:
    """Where to look for the cascade: the configured file alone, else OpenCV's ``name``, else the system's."""
    if cascade:
        return [Path(cascade).expanduser()]
    candidates = []
    data = getattr(cv2, "data", None)
    if data is not None and getattr(data, "haarcascades", ""):
        candidates.append(Path(data.haarcascades) / name)
    candidates += [folder / name for folder in SYSTEM_CASCADE_DIRS]
    return candidates


def load_photo_fallback() -> Optional["cv2.CascadeClassifier"]:
    """The photo fallback cascade, or None (logged) where this install lacks it."""
    try:
        return load_cascade("", PHOTO_FALLBACK_CASCADE_NAME)
    except DetectorError as error:
        log.info("photo fallback cascade not available; photos use the default cascade only", reason=str(error))
        return None


def load_cascade(cascade: str = "", name: str = CASCADE_NAME) -> "cv2.CascadeClassifier":
    """The first cascade that exists and loads; ``DetectorError`` naming every path tried."""
    if not hasattr(cv2, "CascadeClassifier"):
        raise DetectorError(
            f"this OpenCV ({cv2.__version__}) has no CascadeClassifier: "
            "install opencv-python-headless>=4.8,<5"
        )
    tried = []
    for path in cascade_candidates(cascade, name):
        if path.is_file():
            classifier = cv2.CascadeClassifier()
            try:
                loaded = classifier.load(str(path))
            except cv2.error:
                loaded = False
            if loaded and not classifier.empty():
                return classifier
            tried.append(f"{path} (not a valid cascade XML)")
        else:
            tried.append(f"{path} (not found)")
    raise DetectorError(
        f"no usable Haar cascade; tried: {', '.join(tried)}. Set detector.cascade to a "
        f"{name}, or install opencv-python-headless<5 (which ships it in cv2.data) "
        "or the opencv-data package on Raspberry Pi OS"
    )


def _scaled(box: Sequence[float], factor: float, offset: tuple[float, float] = (0.0, 0.0)) -> Box:
    """A box moved by ``offset`` and then multiplied by ``factor``."""
    x, y, w, h = box
    return (
        int(round((x + offset[0]) * factor)),
        int(round((y + offset[1]) * factor)),
        int(round(w * factor)),
        int(round(h * factor)),
    )


def clip_box(box: Box, shape: tuple[int, ...]) -> Optional[Box]:
    """The part of a box inside an image of ``shape``; None when nothing is left."""
    height, width = shape[:2]
    x0, y0 = max(0, box[0]), max(0, box[1])
    x1, y1 = min(width, box[0] + box[2]), min(height, box[1] + box[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


def pick_face(boxes: Sequence[Box], shape: tuple[int, ...], pick: str) -> Optional[Box]:
    """The child's face among several: the largest, or the one nearest the image centre."""
    if not len(boxes):
        return None
    if pick == "central":
        cx, cy = shape[1] / 2.0, shape[0] / 2.0
        return min(boxes, key=lambda b: (b[0] + b[2] / 2.0 - cx) ** 2 + (b[1] + b[3] / 2.0 - cy) ** 2)
    return max(boxes, key=lambda b: b[2] * b[3])


class FaceDetector:
    """Haar-cascade face detection for photos (stateless) and camera frames (tracking)."""

    def __init__(self, settings: DetectorSettings = DetectorSettings()) -> None:
        for key, message in settings.problems():  # settings built in code skip the config's check
            raise DetectorError(f"detector.{key}: {message}")
        self.settings = settings
        self._cascade = load_cascade(settings.cascade)
        self._last: Optional[Box] = None  # last face, in downscaled-frame pixels, may leave the frame
        self._last_shape: tuple[int, ...] = ()
        self._since_full = 0

    # -- scanning -----------------------------------------------------------------

    def _scan(self, gray: np.ndarray, min_side: int, max_side: int = 0, min_neighbors: int = 0,
              cascade: Optional["cv2.CascadeClassifier"] = None) -> list[Box]:
        """detectMultiScale with the configured parameters; boxes in ``gray``'s pixels."""
        faces = (self._cascade if cascade is None else cascade).detectMultiScale(
            gray,
            scaleFactor=self.settings.scale_factor,
            minNeighbors=min_neighbors or self.settings.min_neighbors,
            minSize=(min_side, min_side),
            maxSize=(max_side, max_side),  # (0, 0): no upper limit
        )
        return [(int(x), int(y), int(w), int(h)) for x, y, w, h in faces]

    def _min_side(self, gray: np.ndarray) -> int:
        return max(HAAR_WINDOW, int(round(self.settings.min_face_fraction * gray.shape[0])))

    def _scan_padded(self, gray: np.ndarray, min_neighbors: int = 0,
                     cascade: Optional["cv2.CascadeClassifier"] = None) -> list[Box]:
        """Scan the image with a replicated border, for a face that fills it; boxes in ``gray``'s pixels.

        Haar features of a face's outline need some pixels beyond it; replicated edges
        give them back (a constant gray border finds fewer faces).
        """
        height, width = gray.shape[:2]
        min_side = max(self._min_side(gray), int(FILLING_FACE * min(height, width)))
        pad_x, pad_y = int(round(PAD_FRACTION * width)), int(round(PAD_FRACTION * height))
        padded = cv2.copyMakeBorder(gray, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REPLICATE)
        boxes = self._scan(padded, min_side, 0, min_neighbors, cascade)
        return [_scaled(box, 1.0, (-pad_x, -pad_y)) for box in boxes]

    @staticmethod
    def _scan_size(image: np.ndarray) -> tuple[np.ndarray, float]:
        """Grayscale image at the size photos are scanned at, and the factor it was resized by.

        Small images are upscaled so that a face in them can reach the cascade's size;
        large ones are downscaled to a camera frame's size.
        """
        gray = to_gray(image)
        shorter = min(gray.shape[:2])
        if MIN_SCAN_SIDE <= shorter <= MAX_SCAN_SIDE:
            return gray, 1.0
        factor = (MIN_SCAN_SIDE if shorter < MIN_SCAN_SIDE else MAX_SCAN_SIDE) / shorter
        size = (max(1, int(round(gray.shape[1] * factor))), max(1, int(round(gray.shape[0] * factor))))
        interpolation = cv2.INTER_LINEAR if factor > 1 else cv2.INTER_AREA
        return cv2.resize(gray, size, interpolation=interpolation), factor

    # -- photos ------------------------------------------------------------------

    def detect_all(self, frame: np.ndarray) -> list[Box]:
        """Every face in one image of any size (one full scan, no border retry, no state)."""
        gray, factor = self._scan_size(frame)
        boxes = [_scaled(box, 1.0 / factor) for box in self._scan(gray, self._min_side(gray))]
        return [box for box in (clip_box(b, frame.shape) for b in boxes) if box is not None]

    def find_best(self, image: np.ndarray) -> Optional[Box]:
        """The child's face in a photo, or None; also finds a face that fills the photo.

        The default cascade's scans come first; only a photo in which they all find
        nothing is scanned again with the photo fallback cascade.
        """
        gray, factor = self._scan_size(image)
        boxes = self._photo_scans(gray, self._cascade)
        fallback = None if boxes else self._photo_fallback
        if fallback is not None:
            boxes = self._photo_scans(gray, fallback)
        best = pick_face(boxes, gray.shape, self.settings.pick)
        return None if best is None else clip_box(_scaled(best, 1.0 / factor), image.shape)

    def _photo_scans(self, gray: np.ndarray, cascade: "cv2.CascadeClassifier") -> list[Box]:
        """One cascade on a photo: a plain scan, then with a border, then a lenient border scan."""
        boxes = self._scan(gray, self._min_side(gray), cascade=cascade)
        if not boxes:
            boxes = self._scan_padded(gray, cascade=cascade)
        if not boxes and self.settings.min_neighbors > LENIENT_NEIGHBORS:
            boxes = self._scan_padded(gray, LENIENT_NEIGHBORS, cascade)
        return boxes

    @functools.cached_property
    def _photo_fallback(self) -> Optional["cv2.CascadeClassifier"]:
        """Loaded on the first photo that needs it (once, also when it is missing)."""
        return load_photo_fallback()

    # -- camera frames -------------------------------------------------------------

    def reset(self) -> None:
        """Forget the face being tracked (a new session, a new camera)."""
        self._last = None
        self._last_shape = ()
        self._since_full = 0

    def _search_window(self, small: np.ndarray, last: Box) -> list[Box]:
        """Faces of about the last face's size in a window around it (border replicated at the edges).

        The window is shrunk so that the last face is about ``TRACK_FACE_PX`` tall: the
        cascade's cost grows with the pixels it visits, and a face needs little more than
        the cascade's 24 px window to be found again.
        """
        wx, wy, _, _ = margin_square(last, self.settings.roi_margin)
        window = crop_face(small, last, self.settings.roi_margin)
        side = max(last[2], last[3])
        factor = 1.0
        if side > TRACK_FACE_PX:
            size = int(round(window.shape[0] * TRACK_FACE_PX / side))
            factor = size / window.shape[0]
            window = cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA)
        low, high = TRACK_SIZES
        min_side = max(HAAR_WINDOW, int(low * side * factor))
        max_side = max(min_side + 1, int(np.ceil(high * side * factor)))
        boxes = self._scan(window, min_side, max_side)
        return [_scaled(box, 1.0 / factor, (wx * factor, wy * factor)) for box in boxes]

    def _in_region(self, boxes: list[Box], shape: tuple[int, ...]) -> list[Box]:
        """The boxes whose centre lies inside the configured region of a frame of ``shape``."""
        s = self.settings
        height, width = shape[:2]
        return [b for b in boxes if s.region_left * width <= b[0] + b[2] / 2.0 <= s.region_right * width
                and s.region_top * height <= b[1] + b[3] / 2.0 <= s.region_bottom * height]

    def track(self, frame: np.ndarray) -> Optional[Box]:
        """The child's face in the next camera frame, or None; keeps state between calls.

        Only faces whose centre lies in the configured region (``region_*``) count.
        """
        gray = to_gray(frame)
        height, width = gray.shape[:2]
        small, target = gray, self.settings.detect_width
        if width > target:
            size = (target, max(1, int(round(height * target / width))))
            small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        factor = small.shape[1] / width
        if small.shape != self._last_shape:  # first frame, or the camera changed its size
            self.reset()
            self._last_shape = small.shape
        def found(boxes: list[Box]) -> list[Box]:
            return self._in_region(boxes, small.shape)

        candidates: list[Box] = []
        if self._last is not None:
            candidates = found(self._search_window(small, self._last))
        self._since_full += 1
        if not candidates:
            candidates = found(self._scan(small, self._min_side(small)))
            self._since_full = 0
        elif self._since_full >= self.settings.full_scan_interval:
            # Rescan for faces that could take over: a bigger one, or the same one if the
            # track drifted. Faces much smaller than the tracked one (people in the
            # background) are left out, which also keeps the rescan cheap.
            tracked = pick_face(candidates, small.shape, self.settings.pick)
            rival = max(self._min_side(small), int(TRACK_SIZES[0] * max(tracked[2:])))
            candidates += found(self._scan(small, rival))
            self._since_full = 0
        if not candidates:
            candidates = found(self._scan_padded(small))
        best = pick_face(candidates, small.shape, self.settings.pick)
        self._last = best
        if best is None:
            return None
        return clip_box(_scaled(best, 1.0 / factor), gray.shape)
