"""A Keras model rebuilt from a shipped int8 ``.tflite``, to train on from its weights.

Keras checkpoints stay on the machine that trained them; the exported model is what
survives in the repository. To improve a shipped model without starting from zero, its
int8 weights are dequantized back into the architecture named in its metadata.

The converter folded each BatchNorm into the convolution before it (kernel and bias), so
the rebuilt BatchNorm layers carry the folded bias and are recalibrated on training
images: their statistics become those of the convolution's output and their scale and
shift cancel them, so the network computes the same function in inference mode and,
on batches like the calibration set, in training mode too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from relaxd.vision.model_meta import load_metadata
from relaxd_train.data import DataError

#: Layers of ``relaxnet`` that hold weights, in the order the converter emits their ops.
RELAXNET_WEIGHT_LAYERS = (
    "b1c1", "b1c2", "b2c1", "b2c2", "b3c1", "b3c2", "b3_se_reduce", "b3_se_expand",
    "b4c1", "b4c2", "b4_se_reduce", "b4_se_expand", "fc1", "probabilities",
)


def dequantized_weights(model_path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) of every CONV_2D / FULLY_CONNECTED op of the first pass, as float32.

    With flip TTA the graph runs the network twice on shared weight tensors; an op whose
    weight tensor was seen before belongs to the mirror pass and is skipped.
    """
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}

    def real(index: int) -> np.ndarray:
        values = interpreter.get_tensor(index).astype(np.float32)
        q = details[index]["quantization_parameters"]
        scales, zeros = q["scales"], q["zero_points"]
        if len(scales) == 0:
            return values
        axis = q.get("quantized_dimension", 0)
        shape = [1] * values.ndim
        shape[axis] = -1
        return (values - zeros.reshape(shape)) * scales.reshape(shape).astype(np.float32)

    seen: set[int] = set()
    weights = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in ("CONV_2D", "FULLY_CONNECTED"):
            continue
        _, kernel, bias = (int(i) for i in op["inputs"][:3])
        if kernel in seen:
            continue
        seen.add(kernel)
        weights.append((real(kernel), real(bias)))
    return weights


def keras_from_tflite(model_path: Path, calibration: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The Keras ``relaxnet`` of ``model_path`` and a run state built from its metadata.

    ``calibration``: preprocessed training faces (N, S, S, 1) for the BatchNorm statistics.
    """
    import keras

    from relaxd_train.architectures import build

    meta = load_metadata(model_path)
    arch = meta.training.get("arch") if isinstance(meta.training, dict) else None
    if arch != "relaxnet":
        raise DataError(f"--init-from {model_path}: only a relaxnet .tflite can be rebuilt (its metadata says "
                        f"{arch!r}); train from a Keras checkpoint instead")
    weights = dequantized_weights(model_path)
    if len(weights) != len(RELAXNET_WEIGHT_LAYERS):
        raise DataError(f"--init-from {model_path}: found {len(weights)} weight layers, a relaxnet has "
                        f"{len(RELAXNET_WEIGHT_LAYERS)}; is the file a relaxnet export?")
    model = build("relaxnet", meta.preprocess.input_size, len(meta.labels))
    folded_bias: dict[str, np.ndarray] = {}
    for name, (kernel, bias) in zip(RELAXNET_WEIGHT_LAYERS, weights):
        if kernel.ndim == 4:  # TFLite OHWI -> Keras HWIO
            kernel = kernel.transpose(1, 2, 3, 0)
        else:  # TFLite (out, in) -> Keras (in, out)
            kernel = kernel.T
        try:
            layer = model.get_layer(f"{name}_conv")
        except ValueError:
            model.get_layer(name).set_weights([kernel, bias])
        else:
            layer.set_weights([kernel])
            folded_bias[name] = bias
    recalibrate_batchnorm(model, folded_bias, calibration)
    base_state = {
        "command": meta.training.get("train_command", ""),
        "best_val_accuracy": meta.metrics.get("val_accuracy_7_int8"),
        "source_model": {"file": str(model_path), "version": meta.version, "sha256": meta.sha256},
    }
    return model, base_state


def recalibrate_batchnorm(model: Any, folded_bias: dict[str, np.ndarray], calibration: np.ndarray) -> None:
    """Give each ``NAME_bn`` the statistics of ``NAME_conv``'s output; keep the folded function."""
    import keras

    for name, bias in folded_bias.items():  # first the folded function exactly: bn(x) = x + bias
        bn = model.get_layer(f"{name}_bn")
        channels = len(bias)
        bn.set_weights([np.ones(channels), bias, np.zeros(channels), np.full(channels, 1.0 - bn.epsilon)])
    convs = [model.get_layer(f"{name}_conv") for name in folded_bias]
    probe = keras.Model(model.inputs, [conv.output for conv in convs])
    outputs = probe.predict(calibration, batch_size=256, verbose=0)
    for name, out in zip(folded_bias, outputs):
        bn = model.get_layer(f"{name}_bn")
        out = np.asarray(out, dtype=np.float64)  # a bfloat16 sum over ~10^6 values is noise
        mean = out.mean(axis=(0, 1, 2))
        var = out.var(axis=(0, 1, 2))
        scale = np.sqrt(var + bn.epsilon)
        # bn(x) = scale * (x - mean) / sqrt(var + eps) + mean + bias = x + bias
        bn.set_weights([scale, mean + folded_bias[name], mean, var])
