"""Labelled face data sets in the forms people have them.

Supported layouts (picked automatically by ``load_split``):

- the FER2013 CSV: columns ``emotion,pixels,Usage`` (Usage Training/PublicTest/PrivateTest);
- class folders: ``DIR/<class>/*.png|jpg``;
- split folders: ``DIR/{train,val,test}/<class>/*``.

Class folder names are mapped through ``CLASS_ALIASES`` onto the canonical FER2013
labels, so ``joy/``, ``happiness/`` and ``happy/`` are the same class. Every image
goes through ``relaxd.vision.preprocess.image_to_input``: the daemon's own contract.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from relaxd.vision.model_meta import FER2013_LABELS
from relaxd.vision.preprocess import PreprocessSpec, image_to_input

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "publictest"),
               "test": ("test", "privatetest")}
CSV_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}

CLASS_ALIASES = {
    "angry": "angry", "anger": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "neutral": "neutral", "natural": "neutral", "calm": "neutral",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
}


class DataError(Exception):
    """A data set cannot be read: the message names the path and what to fix."""


@dataclass
class Dataset:
    """Preprocessed images (N, S, S, 1) float32, integer labels, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    source: str
    paths: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(count) for name, count in zip(self.label_names, counts)}


def canonical_class(name: str, where: Path | str) -> str:
    key = name.strip().lower()
    if key not in CLASS_ALIASES:
        raise DataError(
            f"unknown class folder {name!r} in {where}: expected one of "
            f"{sorted(set(CLASS_ALIASES.values()))} or an alias ({', '.join(sorted(CLASS_ALIASES))})"
        )
    return CLASS_ALIASES[key]


def find_split_dir(root: Path, split: str) -> Path | None:
    """The folder of ``split`` under ``root`` in the split layout, if there is one."""
    for child in sorted(root.iterdir()) if root.is_dir() else ():
        if child.is_dir() and child.name.lower() in SPLIT_NAMES[split]:
            return child
    return None


def load_split(path: Path | str, split: str, spec: PreprocessSpec,
               labels: tuple[str, ...] = FER2013_LABELS) -> Dataset:
    """Load one split (train/val/test) from a CSV, a split-folder root or a class folder."""
    path = Path(path)
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r}: use train, val or test")
    if not path.exists():
        raise DataError(f"data set {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"data set {path} is a file but not a FER2013 CSV (emotion,pixels,Usage)")
        return load_fer_csv(path, split, spec, labels)
    split_dir = find_split_dir(path, split)
    if split_dir is not None:
        return load_class_folders(split_dir, spec, labels)
    if any(find_split_dir(path, other) for other in SPLIT_NAMES):
        raise DataError(f"data set {path} has split folders but no {split!r} split ({'/'.join(SPLIT_NAMES[split])})")
    return load_class_folders(path, spec, labels)


def load_class_folders(root: Path, spec: PreprocessSpec,
                       labels: tuple[str, ...] = FER2013_LABELS) -> Dataset:
    """``root/<class>/*`` with class-name aliases; every unreadable file is an error."""
    class_dirs = [child for child in sorted(root.iterdir()) if child.is_dir()]
    if not class_dirs:
        raise DataError(f"no class folders in {root}: expected {root}/<class>/<image files>")
    images: list[np.ndarray] = []
    targets: list[int] = []
    paths: list[str] = []
    for class_dir in class_dirs:
        label = canonical_class(class_dir.name, root)
        if label not in labels:
            raise DataError(f"class {label!r} ({class_dir}) is not among the model's labels {labels}")
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for file in files:
            image = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
            if image is None or image.size == 0:
                raise DataError(f"cannot read image {file}: remove it or replace it with a valid image")
            images.append(image_to_input(image, spec))
            targets.append(labels.index(label))
            paths.append(str(file))
    return Dataset(np.stack(images), np.asarray(targets, dtype=np.int64), tuple(labels), str(root),
                   tuple(paths))


def load_fer_csv(path: Path, split: str, spec: PreprocessSpec,
                 labels: tuple[str, ...] = FER2013_LABELS) -> Dataset:
    """The original FER2013 CSV: 48x48 pixel strings, emotion index 0..6 in FER order."""
    usage = CSV_USAGE[split]
    images: list[np.ndarray] = []
    targets: list[int] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"emotion", "pixels"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path} lacks the column(s) {sorted(missing)}: expected emotion,pixels,Usage")
        for line, row in enumerate(reader, start=2):
            if row.get("Usage", usage) != usage:
                continue
            try:
                emotion = int(row["emotion"])
                pixels = np.array(row["pixels"].split(), dtype=np.uint8)
                side = int(round(np.sqrt(pixels.size)))
                face = pixels.reshape(side, side)
            except (ValueError, TypeError):
                raise DataError(f"{path} line {line}: bad emotion or pixels field") from None
            if not 0 <= emotion < len(FER2013_LABELS):
                raise DataError(f"{path} line {line}: emotion {emotion} is not 0..6")
            name = FER2013_LABELS[emotion]
            if name not in labels:
                continue
            images.append(image_to_input(face, spec))
            targets.append(labels.index(name))
    if not images:
        raise DataError(f"{path} has no rows with Usage={usage}")
    return Dataset(np.stack(images), np.asarray(targets, dtype=np.int64), tuple(labels), str(path))
