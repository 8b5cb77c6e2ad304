"""Tiny real TFLite models for tests: a small Keras net converted with the real converter.

Shared by the classifier, replay, daemon and benchmark tests (through ``conftest.py``'s
``tiny_model`` fixture), so none of them needs the shipped model or a training run.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from relaxd.vision.model_meta import FER2013_GROUPS, FER2013_LABELS, ModelMetadata, file_sha256, save_metadata
from relaxd.vision.preprocess import PreprocessSpec

SIZE = 48


def smooth_inputs(count: int, seed: int) -> np.ndarray:
    """Contract-shaped inputs: smooth random 'faces' in 0..1 (unit normalisation)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 6, 6), dtype=np.float32)
    smooth = [cv2.resize(c, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC) for c in coarse]
    return np.clip(np.stack(smooth), 0.0, 1.0)[..., np.newaxis].astype(np.float32)


def tiny_keras_model(calibration: np.ndarray):
    """An untrained 48x48x1 -> 7-way softmax net whose outputs depend clearly on the input."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 1)),
        keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(len(FER2013_LABELS)),
        keras.layers.Softmax(),
    ])
    # Scale the untrained output layer so its logits spread over a few units: confident,
    # input-dependent predictions make int8-versus-float comparisons mean something.
    dense = model.layers[-2]
    kernel, bias = dense.get_weights()
    features = keras.Sequential(model.layers[:-2])(calibration)
    logits = np.asarray(features) @ kernel
    spread = float(np.std(logits - logits.mean(axis=0)))
    dense.set_weights([kernel * (3.0 / spread), bias])
    return model


def convert(model, calibration: np.ndarray, int8: bool) -> bytes:
    """float32 or full-integer int8 (int8 input and output) .tflite bytes."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i: i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def write_model(folder: Path, content: bytes, quantization: str, name: str = "tiny", **changes) -> Path:
    """Write a .tflite and its metadata (sha256 set) the way train-and-export does."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.tflite"
    path.write_bytes(content)
    meta = ModelMetadata(name=name, version="1", labels=FER2013_LABELS, groups=FER2013_GROUPS,
                         preprocess=PreprocessSpec(input_size=SIZE), quantization=quantization,
                         sha256=file_sha256(path))
    save_metadata(path, replace(meta, **changes))
    return path
