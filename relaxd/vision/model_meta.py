"""Model metadata: the JSON file that sits next to every ``.tflite`` in ``models/``.

The daemon reads labels, their order, the negative/neutral/positive grouping and the
preprocessing contract from here instead of hard-coding them; the training tool
writes it. ``model.tflite`` is described by ``model.json`` (same stem).

Two digests seal the pair: ``sha256`` is the ``.tflite`` file's, and ``contract_sha256``
covers that digest together with the label order, the grouping, the decision's negative
weight, the preprocessing contract and the quantization, so metadata edited after export
(angry and happy swapped: a chair that halts on a happy face) is refused. A chair regroups
labels or changes the weight in its config (``affect``), where that is validated.

The shipped grouping puts surprise with the negative labels (product decision, issue 14):
a startled child never gets more stimulation, and on children's faces fear reads as
surprise half of the time. ``SURPRISE_POSITIVE_GROUPS`` is the older grouping, kept so
``evaluate`` can report both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from relaxd.errors import ModelError
from relaxd.vision.preprocess import PreprocessSpec
from relaxd.vocabulary import GROUPS

FORMAT = "relaxd-model/1"
FER2013_LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
FER2013_GROUPS = {
    "negative": ("angry", "disgust", "fear", "sad", "surprise"),
    "neutral": ("neutral",),
    "positive": ("happy",),
}
SURPRISE_POSITIVE_GROUPS = {
    "negative": ("angry", "disgust", "fear", "sad"),
    "neutral": ("neutral",),
    "positive": ("happy", "surprise"),
}


@dataclass(frozen=True)
class ModelMetadata:
    """What the daemon needs to know about a model, beyond its weights."""

    name: str
    version: str
    labels: tuple[str, ...]
    groups: Mapping[str, tuple[str, ...]]
    preprocess: PreprocessSpec
    quantization: str  # "int8" or "float32"
    sha256: str = ""
    contract_sha256: str = ""
    placeholder: bool = False
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    #: ``negative_weight`` of the per-frame decision (``relaxd.vision.decision``) and how it was chosen
    decision: Mapping[str, Any] = field(default_factory=dict)

    @property
    def negative_weight(self) -> float:
        """The shipped weight of the negative group (1.0, the plain group argmax, when none is written)."""
        return float(self.decision.get("negative_weight", 1.0))

    def regrouped(self, groups: Mapping[str, tuple[str, ...]]) -> "ModelMetadata":
        """This model with another grouping of its labels (validated like the shipped one)."""
        return replace(self, groups={group: tuple(groups[group]) for group in GROUPS})

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels) or not self.labels:
            raise ModelError(f"model metadata labels must be unique and non-empty, got {self.labels}")
        if set(self.groups) != set(GROUPS):
            raise ModelError(f"model metadata groups must be exactly {GROUPS}, got {sorted(self.groups)}")
        grouped = [label for members in self.groups.values() for label in members]
        if sorted(grouped) != sorted(self.labels):
            raise ModelError(
                "model metadata groups must place every label in exactly one group: "
                f"labels {sorted(self.labels)}, grouped {sorted(grouped)}"
            )
        weight = self.decision.get("negative_weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 < weight <= 10.0:
            raise ModelError(f"model metadata decision.negative_weight must be a number above 0 and at most 10, "
                             f"got {weight!r}")
        if self.quantization not in ("int8", "float32"):
            raise ModelError(f"model metadata quantization must be int8 or float32, got {self.quantization!r}")

    def group_of(self, label: str) -> str:
        """negative, neutral or positive for one of this model's labels."""
        for group, members in self.groups.items():
            if label in members:
                return group
        raise KeyError(label)

    def group_index(self) -> list[int]:
        """For each label index, the index of its group in ``GROUPS``."""
        return [GROUPS.index(self.group_of(label)) for label in self.labels]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "labels": list(self.labels),
            "groups": {group: list(self.groups[group]) for group in GROUPS},
            "preprocess": self.preprocess.to_dict(),
            "quantization": self.quantization,
            "sha256": self.sha256,
            "contract_sha256": self.contract_sha256,
            "placeholder": self.placeholder,
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "decision": dict(self.decision),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model metadata") -> "ModelMetadata":
        if data.get("format") != FORMAT:
            raise ModelError(f"{source}: 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                labels=tuple(data["labels"]),
                groups={group: tuple(members) for group, members in data["groups"].items()},
                preprocess=PreprocessSpec.from_dict(data["preprocess"]),
                quantization=str(data["quantization"]),
                sha256=str(data.get("sha256", "")),
                contract_sha256=str(data.get("contract_sha256", "")),
                placeholder=bool(data.get("placeholder", False)),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                decision=dict(data.get("decision", {})),
            )
        except KeyError as missing:
            raise ModelError(f"{source}: required key {missing} is missing") from None
        except ModelError as error:
            raise ModelError(f"{source}: {error}") from None


def metadata_path(model_path: Path) -> Path:
    """``models/x.tflite`` is described by ``models/x.json``."""
    return Path(model_path).with_suffix(".json")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def contract_sha256(meta: ModelMetadata) -> str:
    """The digest of what must not change after export: the model file's digest, labels and their
    groups, the decision's weight, preprocessing and quantization."""
    sealed = {"model_sha256": meta.sha256, "labels": list(meta.labels), "preprocess": meta.preprocess.to_dict(),
              "quantization": meta.quantization,
              "groups": {group: list(meta.groups[group]) for group in GROUPS},
              "negative_weight": meta.negative_weight}
    return hashlib.sha256(json.dumps(sealed, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def load_metadata(model_path: Path) -> ModelMetadata:
    """Read and validate the metadata of a model; check it describes this very file."""
    model_path = Path(model_path)
    meta_path = metadata_path(model_path)
    if not meta_path.is_file():
        raise ModelError(
            f"model metadata {meta_path} not found: every model needs its JSON next to it "
            "(train-and-export export writes both)"
        )
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"model metadata {meta_path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"model metadata {meta_path} must hold a JSON object")
    meta = ModelMetadata.from_dict(data, source=str(meta_path))
    if meta.sha256 and model_path.is_file() and file_sha256(model_path) != meta.sha256:
        raise ModelError(
            f"model {model_path} does not match its metadata {meta_path} (sha256 differs): "
            "the file was replaced or corrupted; re-export both together"
        )
    if not meta.contract_sha256:
        raise ModelError(
            f"model metadata {meta_path} has no contract_sha256, so its labels and preprocessing are not sealed "
            "to the model: re-export the model with train-and-export export (it writes both)"
        )
    if contract_sha256(meta) != meta.contract_sha256:
        raise ModelError(
            f"model metadata {meta_path} was edited after export: its labels, their order or groups, the "
            "negative weight, the preprocessing or the quantization no longer match what the model was exported with (contract_sha256 differs). "
            "Restore the exported JSON, or re-export; to regroup labels use the config, not this file"
        )
    return meta


def save_metadata(model_path: Path, meta: ModelMetadata) -> Path:
    """Write ``meta`` beside the model, sealed with its ``contract_sha256``."""
    meta = replace(meta, contract_sha256=contract_sha256(meta))
    path = metadata_path(model_path)
    path.write_text(json.dumps(meta.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
