"""The preprocessing contract: how a face becomes the model's input tensor.

This module is the one place that says how a face crop is made and normalised. The
daemon (``relaxd.vision.classifier``) and the training tool (``relaxd_train``) both
call it, and every model's metadata records the ``PreprocessSpec`` it was trained
with, so training and inference cannot drift apart.

Steps, in order:

1. grayscale (the models are trained on FER2013-style grayscale faces);
2. crop a square around the detected face box, grown by ``crop_margin`` of the box
   size on every side (edges replicated where the square leaves the frame);
3. resize to ``input_size`` x ``input_size`` (area interpolation when shrinking);
4. normalise to float32: ``unit`` maps 0..255 to 0..1, ``symmetric`` to -1..1.

Images that already are face crops (training sets, FER2013) skip step 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from relaxd.errors import ModelError

NORMALISATIONS = ("unit", "symmetric")

Box = tuple[int, int, int, int]
"""A face box as (x, y, width, height) in frame pixels, OpenCV's convention."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Parameters of the contract; stored in each model's metadata JSON."""

    input_size: int = 48
    crop_margin: float = 0.1
    normalisation: str = "unit"

    def __post_init__(self) -> None:
        if not 8 <= self.input_size <= 512:
            raise ModelError(f"preprocess.input_size must be 8..512, got {self.input_size}")
        if not 0.0 <= self.crop_margin <= 1.0:
            raise ModelError(f"preprocess.crop_margin must be 0..1, got {self.crop_margin}")
        if self.normalisation not in NORMALISATIONS:
            raise ModelError(
                f"preprocess.normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PreprocessSpec":
        unknown = set(data) - {"input_size", "crop_margin", "normalisation"}
        if unknown:
            raise ModelError(f"unknown preprocess keys {sorted(unknown)} in model metadata")
        try:
            return cls(
                input_size=int(data["input_size"]),
                crop_margin=float(data["crop_margin"]),
                normalisation=str(data["normalisation"]),
            )
        except KeyError as missing:
            raise ModelError(f"model metadata 'preprocess' lacks the key {missing}") from None


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a 2-D uint8 grayscale view of a BGR, BGRA or grayscale image."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a grayscale or BGR image, got shape {image.shape}")


def margin_square(box: Box, margin: float) -> Box:
    """Grow a face box to a square with ``margin`` of its size added on every side."""
    x, y, w, h = box
    side = max(w, h)
    grown = int(round(side * (1.0 + 2.0 * margin)))
    cx, cy = x + w / 2.0, y + h / 2.0
    return int(round(cx - grown / 2.0)), int(round(cy - grown / 2.0)), grown, grown


def crop_face(gray: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """Cut the margin-grown square around ``box`` out of a grayscale frame.

    Where the square leaves the frame (a face at the edge, or one that fills the
    photo) the border pixels are replicated, so the face keeps its place and scale.
    """
    x, y, side, _ = margin_square(box, margin)
    height, width = gray.shape[:2]
    pad_left, pad_top = max(0, -x), max(0, -y)
    pad_right, pad_bottom = max(0, x + side - width), max(0, y + side - height)
    inside = gray[max(0, y) : min(height, y + side), max(0, x) : min(width, x + side)]
    if pad_left or pad_top or pad_right or pad_bottom:
        inside = cv2.copyMakeBorder(
            inside, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REPLICATE
        )
    return inside


def normalise(face: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize a grayscale face to the model's size and scale it to float32 (H, W, 1)."""
    size = spec.input_size
    if face.shape[0] != size or face.shape[1] != size:
        shrinking = face.shape[0] > size
        face = cv2.resize(
            face, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    pixels = face.astype(np.float32)
    if spec.normalisation == "unit":
        pixels *= 1.0 / 255.0
    else:
        pixels = pixels * (1.0 / 127.5) - 1.0
    return pixels[:, :, np.newaxis]


def face_to_input(frame: np.ndarray, box: Box, spec: PreprocessSpec) -> np.ndarray:
    """The daemon's path: a camera frame and a detected box to one model input."""
    return normalise(crop_face(to_gray(frame), box, spec.crop_margin), spec)


def image_to_input(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The training path: an image that already is a face crop to one model input."""
    return normalise(to_gray(image), spec)
