"""Training-time augmentation, as the seed papers do it, each part switchable.

``build_augmenter(settings)`` returns a function from a batch of preprocessed images
(N, S, S, 1) float32 (in the contract's value range) to an augmented batch of the same
shape and dtype; labels are never touched, so their order is kept. It runs inside the
``tf.data`` pipeline on whole batches.

TensorFlow is imported inside the functions, so ``AugmentSettings`` (which the CLI
needs to build its flags) costs nothing to import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import tensorflow as tf


@dataclass
class AugmentSettings:
    """0 (or False) switches a part off."""

    flip: bool = True
    rotation_deg: float = 10.0
    translation: float = 0.1
    zoom: float = 0.1
    aspect: float = 0.0  # e.g. 0.15: stretch the height alone by up to 15% (children's face proportions)
    shear: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.25
    lighting: float = 0.0  # e.g. 0.3: light falling from one side, up to 30% brighter there than opposite
    blur_probability: float = 0.0
    jpeg_quality_min: int = 0  # e.g. 40 to re-encode at quality 40..95
    noise_std: float = 0.0
    erasing_probability: float = 0.5

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def none(cls) -> "AugmentSettings":
        return cls(flip=False, rotation_deg=0, translation=0, zoom=0, aspect=0, shear=0, brightness=0,
                   contrast=0, lighting=0, blur_probability=0, jpeg_quality_min=0, noise_std=0,
                   erasing_probability=0)


def random_erasing(images: tf.Tensor, probability: float) -> tf.Tensor:
    """Zhong et al.: blank a random rectangle (2-33% of the area) in some images."""
    import tensorflow as tf

    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    area = tf.random.uniform([n], 0.02, 0.33)
    aspect = tf.exp(tf.random.uniform([n], math.log(0.3), math.log(3.3)))
    eh = tf.clip_by_value(tf.sqrt(area * aspect) * tf.cast(h, tf.float32), 1.0, tf.cast(h, tf.float32))
    ew = tf.clip_by_value(tf.sqrt(area / aspect) * tf.cast(w, tf.float32), 1.0, tf.cast(w, tf.float32))
    y0 = tf.random.uniform([n]) * (tf.cast(h, tf.float32) - eh)
    x0 = tf.random.uniform([n]) * (tf.cast(w, tf.float32) - ew)
    rows = tf.cast(tf.range(h), tf.float32)[tf.newaxis, :, tf.newaxis]
    cols = tf.cast(tf.range(w), tf.float32)[tf.newaxis, tf.newaxis, :]
    inside = ((rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None])
              & (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None]))
    apply = tf.random.uniform([n]) < probability
    mask = inside & apply[:, None, None]
    fill = tf.random.uniform(tf.shape(images), tf.reduce_min(images), tf.reduce_max(images))
    return tf.where(mask[..., tf.newaxis], fill, images)


def side_lighting(images: tf.Tensor, strength: float) -> tf.Tensor:
    """Multiply each image by a linear ramp in a random direction: a lamp or window to one side."""
    import tensorflow as tf

    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    angle = tf.random.uniform([n, 1, 1, 1], 0.0, 2.0 * math.pi)
    amount = tf.random.uniform([n, 1, 1, 1], 0.0, strength)
    rows = tf.linspace(-1.0, 1.0, h)[tf.newaxis, :, tf.newaxis, tf.newaxis]
    cols = tf.linspace(-1.0, 1.0, w)[tf.newaxis, tf.newaxis, :, tf.newaxis]
    ramp = (tf.cos(angle) * cols + tf.sin(angle) * rows) / 2.0  # -0.5 .. 0.5 across the face
    return images * (1.0 + amount * ramp)


def gaussian_blur(images: tf.Tensor, probability: float) -> tf.Tensor:
    """A 3x3 Gaussian blur on a random share of the batch."""
    import tensorflow as tf

    kernel = tf.constant([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
    blurred = tf.nn.depthwise_conv2d(images, kernel[:, :, None, None], [1, 1, 1, 1], "SAME")
    apply = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < probability
    return tf.where(apply, blurred, images)


def jpeg_recompress(images: tf.Tensor, quality_min: int, low: float, high: float) -> tf.Tensor:
    """Re-encode each image as JPEG at a random quality (camera/compression artefacts)."""
    import tensorflow as tf

    def one(image: tf.Tensor) -> tf.Tensor:
        pixels = tf.image.convert_image_dtype((image - low) / (high - low), tf.uint8, saturate=True)
        pixels = tf.image.random_jpeg_quality(pixels, quality_min, 95)
        return tf.image.convert_image_dtype(pixels, tf.float32) * (high - low) + low
    return tf.map_fn(one, images)


def build_augmenter(settings: AugmentSettings,
                    value_range: tuple[float, float] = (0.0, 1.0)) -> Callable[["tf.Tensor"], "tf.Tensor"]:
    """A batch-to-batch function applying the switched-on augmentations in a fixed order."""
    import keras
    import tensorflow as tf

    low, high = value_range
    geometric: list[keras.layers.Layer] = []
    if settings.flip:
        geometric.append(keras.layers.RandomFlip("horizontal"))
    if settings.rotation_deg:
        geometric.append(keras.layers.RandomRotation(settings.rotation_deg / 360.0, fill_mode="reflect"))
    if settings.translation:
        geometric.append(keras.layers.RandomTranslation(settings.translation, settings.translation,
                                                        fill_mode="reflect"))
    if settings.zoom:
        geometric.append(keras.layers.RandomZoom(settings.zoom, fill_mode="reflect"))
    if settings.aspect:  # the height alone: the width factor 0 keeps the width
        geometric.append(keras.layers.RandomZoom(settings.aspect, width_factor=0.0, fill_mode="reflect"))
    if settings.shear:
        geometric.append(keras.layers.RandomShear(settings.shear, settings.shear, fill_mode="reflect"))
    photometric: list[keras.layers.Layer] = []
    if settings.brightness:
        photometric.append(keras.layers.RandomBrightness(settings.brightness, value_range=(low, high)))
    if settings.contrast:
        photometric.append(keras.layers.RandomContrast(settings.contrast, value_range=(low, high)))

    def augment(images: tf.Tensor) -> tf.Tensor:
        for layer in geometric + photometric:
            images = layer(images, training=True)
        if settings.lighting:
            images = side_lighting(images, settings.lighting)
        if settings.blur_probability:
            images = gaussian_blur(images, settings.blur_probability)
        if settings.jpeg_quality_min:
            images = jpeg_recompress(images, settings.jpeg_quality_min, low, high)
        if settings.noise_std:
            images = images + tf.random.normal(tf.shape(images), stddev=settings.noise_std * (high - low))
        if settings.erasing_probability:
            images = random_erasing(images, settings.erasing_probability)
        return tf.clip_by_value(images, low, high)

    return augment
