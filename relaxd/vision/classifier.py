"""The emotion classifier: a TFLite model plus its metadata, checked against each other.

A model is refused at load, with a message naming the file and the fix, unless its
metadata and its tensors agree: input (1, S, S, 1) with S the metadata's input size,
one output per label, and int8 or float32 input as the metadata says. Inputs come
from the preprocessing contract (``relaxd.vision.preprocess``) and are quantized
here with the input tensor's own scale and zero point, so an int8 model and its
float original see the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import structlog

import relaxd
from relaxd.errors import ModelError
from relaxd.settings import ClassifierSettings
from relaxd.vision import preprocess
from relaxd.vision.model_meta import ModelMetadata, load_metadata
from relaxd.vision.preprocess import Box, PreprocessSpec
from relaxd.vision.runtime import load_interpreter

log = structlog.get_logger(__name__)

INPUT_DTYPES = {"int8": np.int8, "float32": np.float32}


def default_model_path() -> Path:
    """The shipped model: ``models/DEFAULT`` names the ``.tflite`` to use."""
    models = Path(relaxd.__file__).resolve().parents[1] / "models"
    pointer = models / "DEFAULT"
    if not pointer.is_file():
        raise ModelError(
            f"no default model: {pointer} not found; set classifier.model to a .tflite file "
            "(train-and-export writes one with its .json metadata)"
        )
    name = pointer.read_text(encoding="utf-8").strip()
    if not name:
        raise ModelError(f"{pointer} is empty: it must name the default .tflite in {models}")
    return models / name


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    """Real values to an integer tensor: ``round(x / scale) + zero_point``, clipped."""
    limits = np.iinfo(dtype)
    quantized = np.round(values / scale) + zero_point
    return np.clip(quantized, limits.min, limits.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """An integer tensor back to real values: ``(q - zero_point) * scale``."""
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def renormalise(probabilities: np.ndarray) -> np.ndarray:
    """Make each row a distribution again after int8 rounding (our models end in softmax)."""
    rows = np.clip(probabilities, 0.0, None)
    totals = rows.sum(axis=1, keepdims=True)
    safe = np.where(totals > 0, totals, 1.0)
    return np.where(totals > 0, rows / safe, 1.0 / rows.shape[1]).astype(np.float32)


class EmotionClassifier:
    """Per-face emotion probabilities from a ``.tflite`` model and its ``.json`` metadata."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(
                f"model {self.model_path} not found: set classifier.model to an exported .tflite "
                "(train-and-export writes it with its .json metadata)"
            )
        self.metadata: ModelMetadata = load_metadata(self.model_path)
        self.labels: tuple[str, ...] = self.metadata.labels
        self.spec: PreprocessSpec = self.metadata.preprocess
        self._interpreter = load_interpreter(self.model_path, threads=threads)
        self._check_tensors()
        if self.metadata.placeholder:
            log.warning(
                "placeholder model: predictions are not meaningful",
                model=str(self.model_path),
            )
        log.debug("classifier loaded", model=str(self.model_path), labels=self.labels)

    @classmethod
    def from_settings(cls, settings: ClassifierSettings) -> "EmotionClassifier":
        """The configured model, or the shipped default when ``classifier.model`` is empty."""
        path = Path(settings.model) if settings.model else default_model_path()
        return cls(path, threads=settings.threads)

    def _refuse(self, problem: str) -> ModelError:
        return ModelError(
            f"model {self.model_path} does not match its metadata: {problem}; "
            "re-export the model and its metadata together with train-and-export"
        )

    def _check_tensors(self) -> None:
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise self._refuse(f"expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        size = self.spec.input_size
        shape = tuple(int(d) for d in self._input["shape"])
        if shape != (1, size, size, 1):
            raise self._refuse(f"input shape is {shape}, metadata says (1, {size}, {size}, 1)")
        classes = int(np.prod(self._output["shape"]))
        if classes != len(self.labels):
            raise self._refuse(
                f"the model has {classes} outputs but the metadata lists {len(self.labels)} labels"
            )
        expected = INPUT_DTYPES[self.metadata.quantization]
        if self._input["dtype"] != expected:
            raise self._refuse(
                f"metadata quantization is {self.metadata.quantization} "
                f"but the input tensor is {np.dtype(self._input['dtype']).name}"
            )
        for tensor in (self._input, self._output):
            if tensor["dtype"] != np.float32 and tensor["quantization"][0] == 0:
                raise self._refuse(f"tensor {tensor['name']!r} is integer but has no quantization scale")

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """(N, S, S, 1) float32 from the preprocessing contract to (N, classes) probabilities."""
        size = self.spec.input_size
        if inputs.ndim != 4 or inputs.shape[1:] != (size, size, 1):
            raise ValueError(f"expected inputs of shape (N, {size}, {size}, 1), got {inputs.shape}")
        batch = np.asarray(inputs, dtype=np.float32)
        in_scale, in_zero = self._input["quantization"]
        if self._input["dtype"] != np.float32:
            batch = quantize(batch, in_scale, in_zero, self._input["dtype"])
        rows = np.empty((len(batch), len(self.labels)), dtype=np.float32)
        for i in range(len(batch)):
            self._interpreter.set_tensor(self._input["index"], batch[i : i + 1])
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output["index"]).reshape(-1)
            rows[i] = self._to_real(raw)
        return renormalise(rows)

    def _to_real(self, raw: np.ndarray) -> np.ndarray:
        if self._output["dtype"] == np.float32:
            return raw
        scale, zero = self._output["quantization"]
        return dequantize(raw, scale, zero)

    def classify_face(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """One detected face in a camera frame to its (classes,) probabilities."""
        face = preprocess.face_to_input(frame, box, self.spec)
        return self.predict(face[np.newaxis])[0]

    def describe(self) -> str:
        """One line for logs and the panel: model name, version, quantization."""
        meta = self.metadata
        return f"{meta.name} {meta.version} ({meta.quantization}, {len(self.labels)} labels)"
