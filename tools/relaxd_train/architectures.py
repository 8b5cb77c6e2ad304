"""The emotion-model architectures, selectable by name.

- ``model1``: the relaxation-chair paper's Model 1 (Mačerauskas & Žigunovs): 2 conv,
  2 pool, 4 dense layers.
- ``model2``: the same paper's Model 2: 8 conv, 4 pool, 4 dense, BatchNorm + Dropout.
- ``se``: the Squeeze-and-Excitation CNN of "Emotion Classification of Children
  Expressions": VGG-style blocks each followed by an SE block.
- ``cbam``: the same backbone with CBAM (channel + spatial attention) blocks.
- ``relaxnet``: the project's default, sized for the chair: < 1 MB as int8, well
  under 1 ms per face on one x86 core, trainable on a 2-core CPU in a session.

Each builder takes the input size and number of classes and returns an uncompiled
``keras.Model`` whose output is a softmax over the classes.

Keras is imported inside the functions: the CLI lists ``ARCHITECTURES`` for its
``--arch`` choices, and ``--help`` must not wait the seconds TensorFlow takes to load.
"""

from __future__ import annotations

from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    import keras


def conv_bn_relu(x: Any, filters: int, kernel: int = 3, name: str = "") -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def squeeze_excite(x: Any, ratio: int = 8, name: str = "") -> Any:
    """SE block (Hu et al.): reweight channels from their global average."""
    from keras import layers

    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = layers.Conv2D(max(4, channels // ratio), 1, activation="relu", name=f"{name}_se_reduce")(s)
    s = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_se_expand")(s)
    return layers.Multiply(name=f"{name}_se_scale")([x, s])


def cbam(x: Any, ratio: int = 8, name: str = "") -> Any:
    """CBAM (Woo et al.): channel attention, then a 7x7 spatial attention map.

    The channel mean and max are ``keras.ops`` calls, not ``Lambda`` layers, so a
    saved checkpoint loads again (Keras refuses to deserialise Python lambdas).
    """
    from keras import layers, ops

    channels = x.shape[-1]
    reduce = layers.Dense(max(4, channels // ratio), activation="relu", name=f"{name}_ca_reduce")
    expand = layers.Dense(channels, name=f"{name}_ca_expand")
    avg = expand(reduce(layers.GlobalAveragePooling2D(name=f"{name}_ca_avg")(x)))
    mx = expand(reduce(layers.GlobalMaxPooling2D(name=f"{name}_ca_max")(x)))
    ca = layers.Activation("sigmoid", name=f"{name}_ca_sigmoid")(layers.Add(name=f"{name}_ca_add")([avg, mx]))
    x = layers.Multiply(name=f"{name}_ca_scale")([x, layers.Reshape((1, 1, channels))(ca)])
    avg_map = ops.mean(x, axis=-1, keepdims=True)
    max_map = ops.max(x, axis=-1, keepdims=True)
    sa = layers.Concatenate(name=f"{name}_sa_cat")([avg_map, max_map])
    sa = layers.Conv2D(1, 7, padding="same", activation="sigmoid", name=f"{name}_sa_conv")(sa)
    return layers.Multiply(name=f"{name}_sa_scale")([x, sa])


def dense_head(x: Any, units: tuple[int, ...], classes: int, dropout: float) -> Any:
    from keras import layers

    for i, width in enumerate(units):
        x = layers.Dense(width, activation="relu", name=f"fc{i + 1}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"fc{i + 1}_dropout")(x)
    return layers.Dense(classes, activation="softmax", dtype="float32", name="probabilities")(x)


def build_model1(size: int, classes: int) -> keras.Model:
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="face")
    x = layers.Conv2D(32, 3, activation="relu", padding="same", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", padding="same", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = dense_head(x, (256, 128, 64), classes, dropout=0.3)
    return keras.Model(inputs, outputs, name="model1")


def vgg_backbone(inputs: Any, widths: tuple[int, ...], attention: Callable | None, dropout: float) -> Any:
    from keras import layers

    x = inputs
    for block, width in enumerate(widths, start=1):
        x = conv_bn_relu(x, width, name=f"b{block}c1")
        x = conv_bn_relu(x, width, name=f"b{block}c2")
        if attention is not None:
            x = attention(x, name=f"b{block}")
        x = layers.MaxPooling2D(2, name=f"b{block}_pool")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"b{block}_dropout")(x)
    return x


def build_model2(size: int, classes: int) -> keras.Model:
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="face")
    x = vgg_backbone(inputs, (32, 64, 128, 256), attention=None, dropout=0.25)
    x = layers.Flatten(name="flatten")(x)
    outputs = dense_head(x, (256, 128, 64), classes, dropout=0.4)
    return keras.Model(inputs, outputs, name="model2")


def build_se(size: int, classes: int) -> keras.Model:
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="face")
    x = vgg_backbone(inputs, (32, 64, 128, 256), attention=squeeze_excite, dropout=0.2)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = dense_head(x, (128,), classes, dropout=0.4)
    return keras.Model(inputs, outputs, name="se")


def build_cbam(size: int, classes: int) -> keras.Model:
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="face")
    x = vgg_backbone(inputs, (32, 64, 128, 256), attention=cbam, dropout=0.2)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = dense_head(x, (128,), classes, dropout=0.4)
    return keras.Model(inputs, outputs, name="cbam")


RELAXNET_WIDTHS = (32, 64, 128, 192)


def build_relaxnet(size: int, classes: int, widths: tuple[int, ...] = RELAXNET_WIDTHS) -> keras.Model:
    """VGG-style, BatchNorm, SE on the two deepest blocks, global pooling, one dense layer.

    The first block (two narrow convs at full resolution) is where most multiply-adds
    go; the deepest block stays narrow so the int8 file stays under 1 MB.
    """
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="face")
    x = conv_bn_relu(inputs, widths[0], name="b1c1")
    x = conv_bn_relu(x, widths[0], name="b1c2")
    x = layers.MaxPooling2D(2, name="b1_pool")(x)
    for block, width in enumerate(widths[1:], start=2):
        x = conv_bn_relu(x, width, name=f"b{block}c1")
        x = conv_bn_relu(x, width, name=f"b{block}c2")
        if block >= len(widths) - 1:
            x = squeeze_excite(x, name=f"b{block}")
        x = layers.MaxPooling2D(2, name=f"b{block}_pool")(x)
        x = layers.Dropout(0.1 * (block - 1), name=f"b{block}_dropout")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.4, name="fc1_dropout")(x)
    # float32 even in a bfloat16 run: probabilities rounded to 3 digits tie and blur the loss
    outputs = layers.Dense(classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="relaxnet")


ARCHITECTURES: dict[str, Callable[[int, int], keras.Model]] = {
    "model1": build_model1,
    "model2": build_model2,
    "se": build_se,
    "cbam": build_cbam,
    "relaxnet": build_relaxnet,
}


def build(name: str, size: int, classes: int) -> keras.Model:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}: choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](size, classes)


def multiply_adds(model: keras.Model) -> int:
    """Multiply-accumulate operations of one forward pass (convolutions and dense layers)."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            out_h, out_w = layer.output.shape[1:3]
            kh, kw = layer.kernel_size
            in_ch = layer.input.shape[-1]
            total += out_h * out_w * kh * kw * in_ch * layer.filters
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)


#: ``--precision`` choices and the Keras dtype policy each trains under.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


@contextmanager
def precision(name: str) -> Iterator[None]:
    """Build and train under ``name``'s dtype policy, then restore the previous one.

    ``bfloat16`` computes in bfloat16 with float32 weights (Keras mixed precision):
    about 1.9x faster per training step on a CPU with AVX512-BF16 (benchmarks/bench_train_precision.py),
    and the same weights to export.
    """
    import keras

    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {name!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[name])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def load_checkpoint(path: Path) -> keras.Model:
    """A run's ``.keras`` checkpoint under the current dtype policy, or a ``FileNotFoundError``
    naming it and the fix.

    A checkpoint trained in bfloat16 comes back as float32 (the weights are float32 in
    both), so export and evaluation never see the training precision.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: pass a run's best.keras or last.keras (train-and-export train writes them)"
        )
    import relaxd_train.losses  # noqa: F401  (registers the training loss the checkpoint names)

    model = keras.models.load_model(path)
    trained_under = next(layer for layer in model.layers if layer.weights).dtype_policy.name
    if model.name not in ARCHITECTURES or trained_under == keras.config.dtype_policy().name:
        return model
    rebuilt = build(model.name, int(model.input_shape[1]), int(model.output_shape[-1]))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def feature_layer_count(model: keras.Model) -> int:
    """How many leading layers make the feature extractor: everything up to and including
    the last layer with a spatial (4-D) output; the rest is the classification head."""
    count = 0
    for index, layer in enumerate(model.layers):
        if len(layer.output.shape) == 4:
            count = index + 1
    return count


def gradcam_layer(model: keras.Model) -> str:
    """The layer whose output is the last convolutional feature map (Grad-CAM's target):
    the deepest 4-D output larger than 1x1, not counting pooling and dropout."""
    from keras import layers

    skip = (layers.MaxPooling2D, layers.AveragePooling2D, layers.Dropout, layers.InputLayer)
    names = [layer.name for layer in model.layers
             if len(layer.output.shape) == 4 and min(layer.output.shape[1:3]) > 1 and not isinstance(layer, skip)]
    if not names:
        raise ValueError(f"model {model.name!r} has no convolutional feature map to explain")
    return names[-1]
