"""Viola-Jones face detection (OpenCV's Haar cascade), with a fast tracking path.

Two ways in:

* ``detect_all`` / ``find_best``: stateless full scans of one image (photos, the
  evaluator). Small images are upscaled first and large ones downscaled to a camera
  frame's size; a face that fills the image is found
  by retrying on the image with a border added, because the cascade needs some
  context around a face, and last with a more lenient border scan; a photo in which
  all of these find nothing gets the same scans with a second cascade (alt2).
* ``track``: the daemon's per-frame path, on a small grey frame (the camera's own lores
  Y plane where it has one, else the frame downscaled to ``detect_width``). A face being
  followed is confirmed each frame by matching its picture from the last cascade run
  (normalised cross-correlation, a fraction of a millisecond); the cascade runs only
  when that fails, every ``cascade_interval`` frames (in a window around the face, at
  sizes near the last one) and over the whole frame every ``full_scan_interval``
  frames. With no face, the whole frame is scanned again only once the picture has
  changed (or every ``full_scan_interval`` frames), so an empty chair costs almost
  nothing. The cascade, not the CNN, was the cost per frame; now it runs on few frames.

Boxes are (x, y, width, height) in the pixels of the image passed in, inside it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
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
"""While tracking, the search window is shrunk until the last face is about this tall: the
cascade's cost grows with the pixels it visits, and a sharper window gave crops no closer
to full detection's (on the CK+ clip, mean IoU 0.91 at 40 px and 0.95 at 64 px, the same
decision in 92% and 93% of frames, at twice the cost)."""

CONFIRM_FACE_PX = 24
"""The tracked face's picture is kept this many pixels square for the confirmation match."""

CONFIRM_SCORE = 0.7
"""Normalised correlation (TM_CCOEFF_NORMED, -1..1) at which the picture confirms the face;
gain and offset changes of the lighting do not lower it, a turn, a tilt or a hand do."""

CONFIRM_SEARCH = 0.25
"""The confirmation searches this fraction of the face's size around its last position."""

CONFIRM_SCALES = (0.95, 1.0, 1.05)
"""Sizes the confirmation tries, as multiples of the last one, so an approaching face is followed."""

MOTION_SIDE = 4
"""With no face, the frame is compared with the last scanned one at 1/MOTION_SIDE of its size..."""

MOTION_LEVEL = 12
"""...where a pixel changed when it differs by more than this many grey levels..."""

MOTION_SHARE = 0.005
"""...and the frame changed (worth a new scan) when more than this share of pixels did."""


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


@dataclass
class TrackCounts:
    """How ``track`` answered, per frame: confirmed by the picture, by the cascade, or skipped (no change)."""

    confirmed: int = 0
    cascade: int = 0
    skipped: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class FaceDetector:
    """Haar-cascade face detection for photos (stateless) and camera frames (tracking)."""

    def __init__(self, settings: DetectorSettings = DetectorSettings()) -> None:
        for key, message in settings.problems():  # settings built in code skip the config's check
            raise DetectorError(f"detector.{key}: {message}")
        self.settings = settings
        self._cascade = load_cascade(settings.cascade)
        self._last: Optional[Box] = None  # last face, in frame pixels, may reach past the frame
        self._last_shape: tuple[int, ...] = ()
        self._since_full = 0
        self._since_cascade = 0
        self._picture: Optional[np.ndarray] = None  # the face at the last cascade run, for confirmation
        self._empty_view: Optional[np.ndarray] = None  # the last frame scanned in vain, for the motion gate
        self.counts = TrackCounts()

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
        self._since_cascade = 0
        self._picture = None
        self._empty_view = None

    def _search_window(self, frame: np.ndarray, last: Box) -> list[Box]:
        """Faces of about the last face's size in a window around it, in full-frame pixels.

        The window is cut from the full-resolution frame (border replicated at the edges),
        made grey and shrunk so that the last face is about ``TRACK_FACE_PX`` tall; only
        the window is converted, whatever the camera's resolution.
        """
        wx, wy, _, _ = margin_square(last, self.settings.roi_margin)
        window = to_gray(crop_face(frame, last, self.settings.roi_margin))
        side = max(last[2], last[3])
        factor = 1.0
        if side > TRACK_FACE_PX:
            size = int(round(window.shape[0] * TRACK_FACE_PX / side))
            factor = size / window.shape[0]
            window = cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA)
        low, high = TRACK_SIZES
        min_side = max(HAAR_WINDOW, int(low * side * factor))
        max_side = max(min_side + 1, int(np.ceil(high * side * factor)))
        return [_scaled(box, 1.0 / factor, (wx * factor, wy * factor)) for box in self._scan(window, min_side, max_side)]

    def _in_region(self, boxes: list[Box], shape: tuple[int, ...]) -> list[Box]:
        """The boxes whose centre lies inside the configured region of a frame of ``shape``."""
        s = self.settings
        height, width = shape[:2]
        return [b for b in boxes if s.region_left * width <= b[0] + b[2] / 2.0 <= s.region_right * width
                and s.region_top * height <= b[1] + b[3] / 2.0 <= s.region_bottom * height]

    def small_gray(self, frame: np.ndarray) -> np.ndarray:
        """The frame in grey at ``detect_width`` (what a camera's lores stream gives for free)."""
        gray = to_gray(frame)
        height, width = gray.shape[:2]
        target = self.settings.detect_width
        if width <= target:
            return gray
        return cv2.resize(gray, (target, max(1, int(round(height * target / width)))), interpolation=cv2.INTER_AREA)

    @staticmethod
    def _take_picture(frame: np.ndarray, box: Optional[Box]) -> Optional[np.ndarray]:
        """The face's picture for confirmation, or None when the box reaches past the frame."""
        if box is None or clip_box(box, frame.shape) != box:
            return None
        x, y, w, h = box
        face = to_gray(frame[y : y + h, x : x + w])
        return cv2.resize(face, (CONFIRM_FACE_PX, CONFIRM_FACE_PX), interpolation=cv2.INTER_AREA)

    @staticmethod
    def _confirm(frame: np.ndarray, last: Box, picture: np.ndarray) -> Optional[Box]:
        """The tracked face found again by its picture near ``last``, or None (the cascade decides then).

        The match runs with the face at ``CONFIRM_FACE_PX``; its peak is refined to a
        fraction of a pixel there, so the box moves in steps finer than a full-resolution pixel.
        """
        x, y, w, h = last
        pad = int(np.ceil(CONFIRM_SEARCH * max(w, h))) + 1
        area = clip_box((x - pad, y - pad, w + 2 * pad, h + 2 * pad), frame.shape)
        if area is None:
            return None
        factor = CONFIRM_FACE_PX / max(w, h)
        ax, ay, aw, ah = area
        size = (max(1, int(round(aw * factor))), max(1, int(round(ah * factor))))
        view = cv2.resize(to_gray(frame[ay : ay + ah, ax : ax + aw]), size, interpolation=cv2.INTER_AREA)
        scale_x, scale_y = aw / size[0], ah / size[1]
        best_score, best_box = CONFIRM_SCORE, None
        for scale in CONFIRM_SCALES:
            side = int(round(CONFIRM_FACE_PX * scale))
            if side > min(size):
                continue
            template = picture if side == CONFIRM_FACE_PX else cv2.resize(picture, (side, side))
            scores = cv2.matchTemplate(view, template, cv2.TM_CCOEFF_NORMED)
            _, score, _, (mx, my) = cv2.minMaxLoc(scores)
            if score >= best_score:
                best_score = score
                px, py = mx + _peak_offset(scores[my, :], mx), my + _peak_offset(scores[:, mx], my)
                best_box = (int(round(ax + px * scale_x)), int(round(ay + py * scale_y)),
                            int(round(w * scale)), int(round(h * scale)))
        return best_box

    def _unchanged_since_empty_scan(self, small: np.ndarray) -> bool:
        """No face last time and the picture has not changed since that scan: a new scan would find none."""
        tiny = cv2.resize(small, (max(1, small.shape[1] // MOTION_SIDE), max(1, small.shape[0] // MOTION_SIDE)),
                          interpolation=cv2.INTER_AREA)
        reference, self._empty_view = self._empty_view, tiny
        if reference is None or reference.shape != tiny.shape or self._since_full >= self.settings.full_scan_interval:
            return False
        changed = np.count_nonzero(cv2.absdiff(tiny, reference) > MOTION_LEVEL)
        if changed > MOTION_SHARE * tiny.size:
            return False
        self._empty_view = reference  # compare with the frame that was scanned, so slow drift adds up
        return True

    def track(self, frame: np.ndarray, small: Optional[np.ndarray] = None) -> Optional[Box]:
        """The child's face in the next camera frame, or None; keeps state between calls.

        ``small`` is the frame already in grey and small (a camera's lores Y plane), any
        width up to the frame's with the frame's aspect ratio; without it the frame is
        converted and downscaled here. Only faces whose centre lies in the configured
        region (``region_*``) count.
        """
        if frame.shape[:2] != self._last_shape:  # first frame, or the camera changed its size
            self.reset()
            self._last_shape = frame.shape[:2]
        self._since_full += 1
        self._since_cascade += 1
        if (self._last is not None and self._picture is not None
                and self._since_cascade < self.settings.cascade_interval
                and self._since_full < self.settings.full_scan_interval):
            confirmed = self._confirm(frame, self._last, self._picture)
            if confirmed is not None and self._in_region([confirmed], frame.shape):
                self.counts.confirmed += 1
                self._last = confirmed
                return clip_box(confirmed, frame.shape)
        # Only the scans need the whole frame small and grey: a confirmed frame never makes it.
        if small is None or small.ndim != 2 or small.shape[1] > frame.shape[1]:
            small = self.small_gray(frame)
        if self._last is None and self._unchanged_since_empty_scan(small):
            self.counts.skipped += 1
            return None
        best = self._cascade_track(frame, small)
        self._picture = self._take_picture(frame, best)
        self._since_cascade = 0
        if best is not None:
            self._empty_view = None
        self._last = best
        return None if best is None else clip_box(best, frame.shape)

    def _cascade_track(self, frame: np.ndarray, small: np.ndarray) -> Optional[Box]:
        """The cascade's answer for this frame: around the last face, else (or periodically) everywhere."""
        self.counts.cascade += 1
        factor = small.shape[1] / frame.shape[1]

        def found(boxes: list[Box], in_small: bool = False) -> list[Box]:
            boxes = [_scaled(box, 1.0 / factor) for box in boxes] if in_small else boxes
            return self._in_region(boxes, frame.shape)

        candidates: list[Box] = []
        if self._last is not None:
            candidates = found(self._search_window(frame, self._last))
        if not candidates:
            candidates = found(self._scan(small, self._min_side(small)), in_small=True)
            self._since_full = 0
        elif self._since_full >= self.settings.full_scan_interval:
            # Rescan for faces that could take over: a bigger one, or the same one if the
            # track drifted. Faces much smaller than the tracked one (people in the
            # background) are left out, which also keeps the rescan cheap.
            tracked = pick_face(candidates, frame.shape, self.settings.pick)
            rival = max(self._min_side(small), int(TRACK_SIZES[0] * max(tracked[2:]) * factor))
            candidates += found(self._scan(small, rival), in_small=True)
            self._since_full = 0
        if not candidates:
            candidates = found(self._scan_padded(small), in_small=True)
        return pick_face(candidates, frame.shape, self.settings.pick)


def _peak_offset(scores: np.ndarray, at: int) -> float:
    """Sub-pixel position of a correlation peak along one axis, from a parabola through three scores."""
    if at <= 0 or at >= len(scores) - 1:
        return 0.0
    left, centre, right = float(scores[at - 1]), float(scores[at]), float(scores[at + 1])
    curvature = left - 2.0 * centre + right
    return 0.0 if curvature >= 0 else max(-0.5, min(0.5, 0.5 * (left - right) / curvature))
