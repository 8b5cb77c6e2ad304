"""Labelled face data sets in the forms people have them.

Supported layouts (picked automatically by ``list_split`` / ``load_split``):

- the FER2013 CSV: columns ``emotion,pixels,Usage`` (Usage Training/PublicTest/PrivateTest);
- class folders: ``DIR/<class>/*.png|jpg``;
- split folders: ``DIR/{train,val,test}/<class>/*``.

Class folder names are mapped through ``CLASS_ALIASES`` onto the canonical FER2013
labels, so ``joy/``, ``happiness/`` and ``happy/`` are the same class.

Two ways in, sharing the layout logic:

- ``list_split`` gives the labelled images *as stored* (``LabelledImage``), read on
  demand: for face detection on whole photos, or for sampling a few images cheaply;
- ``load_split`` gives a ``Dataset`` of model inputs, every image through
  ``relaxd.vision.preprocess.image_to_input``: the daemon's own contract.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from relaxd.errors import RelaxdError
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


class DataError(RelaxdError):
    """A data set cannot be read: the message names the path and what to fix."""


@dataclass(frozen=True)
class LabelledImage:
    """One image of a data set before preprocessing, and its label index.

    ``source`` is the file path, or ``data.csv line N`` for a FER2013 CSV row, whose
    pixels are already decoded in ``pixels``; files are read only by ``read``.
    """

    source: str
    label: int
    pixels: np.ndarray | None = None

    def read(self, color: bool = False) -> np.ndarray:
        """The image as uint8: grayscale, or BGR with ``color`` (CSV rows stay grayscale)."""
        if self.pixels is not None:
            return self.pixels
        return read_image(Path(self.source), color)


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

    def subset(self, indices: Sequence[int] | np.ndarray, source: str | None = None) -> "Dataset":
        """The images at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        paths = tuple(self.paths[i] for i in indices) if self.paths else ()
        return Dataset(self.images[indices], self.labels[indices], self.label_names,
                       source or self.source, paths)


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


def has_split(path: Path | str, split: str) -> bool:
    """Whether ``path`` holds ``split`` by itself (a CSV, or a split folder), rather than
    being one set of class folders that the caller must divide."""
    path = Path(path)
    return path.is_file() or find_split_dir(path, split) is not None


def read_image(file: Path, color: bool = False) -> np.ndarray:
    """Read one image file as uint8 grayscale (or BGR), or fail naming the file."""
    image = cv2.imread(str(file), cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if image is None or image.size == 0:
        raise DataError(f"cannot read image {file}: remove it or replace it with a valid image")
    return image


def list_split(path: Path | str, split: str,
               labels: tuple[str, ...] = FER2013_LABELS) -> list[LabelledImage]:
    """One split (train/val/test) of a CSV, a split-folder root or a class folder, unread.

    A class-folder root without split folders *is* the split asked for (any split),
    so ``evaluate`` and ``finetune`` accept a plain folder of labelled photos.
    """
    path = Path(path)
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r}: use train, val or test")
    if not path.exists():
        raise DataError(f"data set {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"data set {path} is a file but not a FER2013 CSV (emotion,pixels,Usage)")
        return list_fer_csv(path, split, labels)
    split_dir = find_split_dir(path, split)
    if split_dir is not None:
        return list_class_folders(split_dir, labels)
    if any(find_split_dir(path, other) for other in SPLIT_NAMES):
        raise DataError(f"data set {path} has split folders but no {split!r} split ({'/'.join(SPLIT_NAMES[split])})")
    return list_class_folders(path, labels)


def split_source(path: Path | str, split: str) -> str:
    """Where ``split`` of ``path`` lives, for logs and run records."""
    path = Path(path)
    split_dir = None if path.is_file() else find_split_dir(path, split)
    return str(split_dir or path)


def is_clutter(path: Path) -> bool:
    """Hidden files and folders, and what archivers and notebooks leave beside photos
    (``.DS_Store``, macOS's ``__MACOSX`` and ``._photo.jpg``, ``.ipynb_checkpoints``)."""
    return path.name.startswith((".", "__"))


def list_class_folders(root: Path, labels: tuple[str, ...] = FER2013_LABELS) -> list[LabelledImage]:
    """``root/<class>/*`` with class-name aliases; all folders are checked before any image is read."""
    class_dirs = [child for child in sorted(root.iterdir()) if child.is_dir() and not is_clutter(child)]
    if not class_dirs:
        raise DataError(f"no class folders in {root}: expected {root}/<class>/<image files>")
    seen: dict[str, Path] = {}
    items: list[LabelledImage] = []
    for class_dir in class_dirs:
        label = canonical_class(class_dir.name, root)
        if label not in labels:
            raise DataError(f"class {label!r} ({class_dir}) is not among the model's labels {labels}")
        if label in seen:
            raise DataError(f"{class_dir} and {seen[label]} are both class {label!r}: merge them into one folder")
        seen[label] = class_dir
        files = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_clutter(p))
        if not files:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        items.extend(LabelledImage(str(file), labels.index(label)) for file in files)
    return items


def list_fer_csv(path: Path, split: str, labels: tuple[str, ...] = FER2013_LABELS) -> list[LabelledImage]:
    """The original FER2013 CSV: square pixel strings, emotion index 0..6 in FER order."""
    usage = CSV_USAGE[split]
    items: list[LabelledImage] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {name.strip() for name in reader.fieldnames or ()}
            missing = {"emotion", "pixels", "Usage"} - columns
            if missing:
                raise DataError(
                    f"{path} lacks the column(s) {sorted(missing)}: expected a header line emotion,pixels,Usage "
                    "(Usage says which rows are Training, PublicTest or PrivateTest)"
                )
            for line, row in enumerate(reader, start=2):
                row = {key.strip(): value for key, value in row.items() if key is not None}
                if (row.get("Usage") or "").strip() != usage:
                    continue
                items.append(parse_csv_row(row, path, line, labels))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} is not a readable CSV file ({error})") from None
    items = [item for item in items if item.label >= 0]
    if not items:
        raise DataError(f"{path} has no rows with Usage={usage} (needed for the {split!r} split)")
    return items


def parse_csv_row(row: dict[str, str | None], path: Path, line: int,
                  labels: tuple[str, ...]) -> LabelledImage:
    """One CSV row to a face; label -1 when the emotion is not among ``labels``."""
    where = f"{path} line {line}"
    try:
        emotion = int(row["emotion"] or "")
        pixels = np.array((row["pixels"] or "").split(), dtype=np.int64)
    except ValueError:
        raise DataError(f"{where}: emotion must be an integer and pixels space-separated integers") from None
    if not 0 <= emotion < len(FER2013_LABELS):
        raise DataError(f"{where}: emotion {emotion} is not 0..6 (FER2013 order {', '.join(FER2013_LABELS)})")
    side = int(round(np.sqrt(pixels.size)))
    if pixels.size == 0 or side * side != pixels.size:
        raise DataError(f"{where}: {pixels.size} pixels do not make a square image (48x48 = 2304)")
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{where}: pixel values must be 0..255")
    name = FER2013_LABELS[emotion]
    label = labels.index(name) if name in labels else -1
    return LabelledImage(where, label, pixels.astype(np.uint8).reshape(side, side))


def to_dataset(items: Iterable[LabelledImage], spec: PreprocessSpec, labels: tuple[str, ...],
               source: str) -> Dataset:
    """Read and preprocess labelled images (grayscale, the contract's size and range)."""
    items = list(items)
    if not items:
        raise DataError(f"no images in {source}")
    images = np.stack([image_to_input(item.read(), spec) for item in items])
    targets = np.asarray([item.label for item in items], dtype=np.int64)
    paths = tuple(item.source for item in items if item.pixels is None)
    return Dataset(images, targets, tuple(labels), source, paths)


def load_split(path: Path | str, split: str, spec: PreprocessSpec,
               labels: tuple[str, ...] = FER2013_LABELS) -> Dataset:
    """Load one split (train/val/test) from a CSV, a split-folder root or a class folder."""
    return to_dataset(list_split(path, split, labels), spec, labels, split_source(path, split))


def sample_split(path: Path | str, split: str, spec: PreprocessSpec, count: int, seed: int,
                 labels: tuple[str, ...] = FER2013_LABELS) -> Dataset:
    """A seeded random sample of ``count`` images of one split; only those are read."""
    items = list_split(path, split, labels)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(items), size=min(count, len(items)), replace=False)
    return to_dataset([items[i] for i in sorted(chosen)], spec, labels, split_source(path, split))


def stratified_holdout(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out) with about ``share`` of each class held out, seeded.

    Every class with at least two images keeps one on each side, so a small folder of
    children's photos still has something to validate on.
    """
    if not 0.0 < share < 1.0:
        raise DataError(f"the validation share must be between 0 and 1, got {share}")
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held: list[int] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(len(members) * share))
        count = min(max(count, 1), len(members) - 1) if len(members) >= 2 else 0
        held.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))


def subject_of(source: str) -> str:
    """The person in a file named ``S<subject>_<sequence>_<frame>.png`` (CK+), else the file itself."""
    stem = Path(source).stem
    return stem.split("_", 1)[0] if "_" in stem else stem


def is_held_out_subject(subject: str, share: float) -> bool:
    """Whether ``subject`` is in the held-out ``share`` of subjects: a fixed hash, no seed to keep."""
    digest = hashlib.sha1(subject.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def split_by_subject(items: Sequence[LabelledImage], share: float) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(trained, held out) with about ``share`` of the *subjects* held out.

    Frames of one posed sequence are near-duplicates, so a split by file would put the same
    face on both sides; ``train`` and ``evaluate`` call this with the same share and agree.
    """
    if not 0.0 <= share < 1.0:
        raise DataError(f"the held-out share of subjects must be at least 0 and below 1, got {share}")
    trained, held = [], []
    for item in items:
        (held if is_held_out_subject(subject_of(item.source), share) else trained).append(item)
    return trained, held


def load_class_folders(root: Path, spec: PreprocessSpec,
                       labels: tuple[str, ...] = FER2013_LABELS) -> Dataset:
    """``root/<class>/*`` preprocessed (kept for callers of the first version)."""
    return to_dataset(list_class_folders(root, labels), spec, labels, str(root))


def load_fer_csv(path: Path, split: str, spec: PreprocessSpec,
                 labels: tuple[str, ...] = FER2013_LABELS) -> Dataset:
    """One split of a FER2013 CSV preprocessed (kept for callers of the first version)."""
    return to_dataset(list_fer_csv(path, split, labels), spec, labels, str(path))
