"""Backbone name -> frozen feature extractor: uint8 images in, one feature vector per image out.

BACKBONES is the one table of the keras.applications networks this project knows; a new backbone
is one new row (plus a PREPROCESSING entry if its application preprocesses in a new way).

Two models come out of here:
- ``build_backbone`` gives the plain float32 Keras model (in-graph resize and preprocessing in
  front of the pretrained network). Fine-tuning trains this one; it is the reference function.
- ``fast_extractor`` turns it into the inference function stage one runs: BatchNormalization
  folded into the convolution before it (same function, fewer ops), the network cast to the
  chosen precision (bfloat16 runs on AMX tiles on recent Intel CPUs), and one compiled graph.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np

from pipeline.errors import UserError, first_line
from pipeline.flags import PRECISIONS

_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Row:
    name: str            # the keras.applications function name in snake case; --backbone NAME
    constructor: str     # keras.applications.<constructor>(include_top=False, pooling="avg", ...)
    default_size: int    # the size its ImageNet weights were trained at
    min_size: int        # the smallest input keras.applications accepts
    width: int           # length of the pooled feature vector
    preprocessing: str   # key of PREPROCESSING: what <module>.preprocess_input does
    weights_file: str    # Keras's ImageNet file without the top, for --weights PATH offline
    unfreeze: str        # default --unfreeze-from: the first layer of the top two blocks
    blocks: str          # regex; its first group names the block a layer belongs to


BACKBONES = {row.name: row for row in [
    Row("inception_v3", "InceptionV3", 299, 75, 2048, "tf",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", "mixed9", r"(mixed\d+)$"),
    Row("resnet50", "ResNet50", 224, 32, 2048, "caffe",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "conv5_block2_1_conv", r"(conv\d_block\d+)_"),
    Row("resnet50_v2", "ResNet50V2", 224, 32, 2048, "tf",
        "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", "conv5_block2_preact_bn", r"(conv\d_block\d+)_"),
    Row("xception", "Xception", 299, 71, 2048, "tf",
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5", "block13_sepconv1_act", r"(block\d+)_"),
    Row("densenet121", "DenseNet121", 224, 32, 1024, "torch",
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "conv5_block15_0_bn", r"(conv\d_block\d+)_"),
    Row("efficientnet_b0", "EfficientNetB0", 224, 32, 1280, "in-model",
        "efficientnetb0_notop.h5", "block6d_expand_conv", r"(block\d+[a-z])_"),
    Row("efficientnet_v2_b0", "EfficientNetV2B0", 224, 32, 1280, "in-model",
        "efficientnetv2-b0_notop.h5", "block6g_expand_conv", r"(block\d+[a-z])_"),
    Row("convnext_tiny", "ConvNeXtTiny", 224, 32, 768, "in-model",
        "convnext_tiny_notop.h5", "convnext_tiny_stage_3_block_1_depthwise_conv", r"(stage_\d+_block_\d+)_"),
    Row("mobilenet_v3_large", "MobileNetV3Large", 224, 32, 960, "in-model",
        "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", "expanded_conv_13_expand", r"(expanded_conv_\d+)_"),
]}
DEFAULT_BACKBONE = "inception_v3"


def _tf_style(x):
    import keras
    return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)


def _caffe_style(x):
    """RGB -> BGR and minus the ImageNet mean pixel, as one fixed 1x1 convolution (a permutation
    matrix and a bias): exact in float32, and a built-in layer, so saved models need no custom code."""
    import keras
    conv = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False)
    y = conv(x)
    conv.set_weights([np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3),
                      -np.array([103.939, 116.779, 123.68], dtype="float32")])
    return y


def _torch_style(x):
    """x/255, minus the ImageNet mean, over its standard deviation, per RGB channel."""
    import keras
    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    return keras.layers.Normalization(mean=mean.tolist(), variance=(std ** 2).tolist(), name="preprocess")(x)


# key -> (description, float pixels 0-255 -> what the network takes): each equals the
# application's own preprocess_input (tests check it against that function, row by row).
PREPROCESSING = {
    "tf": ("x/127.5 - 1", _tf_style),
    "caffe": ("RGB->BGR, minus the ImageNet mean pixel", _caffe_style),
    "torch": ("x/255, minus the ImageNet mean, over its std, per channel", _torch_style),
    "in-model": ("pixels 0-255 into the model (it preprocesses itself)", lambda x: x),
}


def describe_preprocessing(key: str, size: int) -> str:
    return f"bilinear resize to {size}x{size}, then {PREPROCESSING[key][0]}"


def backbone_table() -> str:
    """`python -m pipeline backbones`: the table, with parameter counts (each network built with
    random weights at its smallest size: the count does not depend on the size)."""
    import keras
    from pipeline.report import format_table
    rows = []
    for row in BACKBONES.values():
        params = getattr(keras.applications, row.constructor)(
            include_top=False, weights=None, pooling="avg", input_shape=(row.min_size, row.min_size, 3)
        ).count_params()
        rows.append([row.name + (" (default)" if row.name == DEFAULT_BACKBONE else ""), row.default_size,
                     row.min_size, row.width, f"{params / 1e6:.1f} M", PREPROCESSING[row.preprocessing][0],
                     row.unfreeze])
    return format_table(["backbone", "size", "min", "width", "parameters", "preprocessing", "unfreeze from"], rows)


# ---------------------------------------------------------------- weights identity

@dataclass(frozen=True)
class Weights:
    """Where a network's weights came from, as structured attributes (stored in every features
    file, hashed into its name; the inverse, rebuilding the network, reads these fields)."""
    source: str          # "imagenet" (Keras's download), "none" (random init) or "file"
    seed: int = -1       # random init seed (source "none")
    sha256: str = ""     # of the weights file or .keras model (source "file")

    def attrs(self) -> dict:
        return {"weights_source": self.source, "weights_seed": self.seed, "weights_sha256": self.sha256}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "Weights":
        return cls(str(attrs["weights_source"]), int(attrs["weights_seed"]), str(attrs["weights_sha256"]))

    def __str__(self):
        return {"imagenet": "imagenet", "none": f"none (random init, seed {self.seed})",
                "file": f"file sha256:{self.sha256}"}[self.source]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_identity(weights: str, seed: int) -> Weights:
    """--weights imagenet|none|PATH -> what the numbers depend on."""
    if weights == "none":
        return Weights("none", seed)
    if weights == "imagenet":
        return Weights("imagenet")
    if not Path(weights).is_file():
        raise UserError(f"--weights must be imagenet, none or a weights file; {weights} is not a file")
    return Weights("file", sha256=sha256_file(Path(weights)))


def resolve_backbone(backbone: str) -> Row | Path:
    """A table row by name, or the path of a saved .keras model."""
    if backbone in BACKBONES:
        return BACKBONES[backbone]
    path = Path(backbone)
    if path.suffix != ".keras" or not path.exists():
        raise UserError(f"--backbone must be one of {', '.join(BACKBONES)} or a saved .keras model file; "
                        f"{path} does not exist" if path.suffix == ".keras" else
                        f"--backbone must be one of {', '.join(BACKBONES)} or a saved .keras model file, "
                        f"got {backbone!r}")
    return path


def identity(backbone: str, weights: str | None, size: int | None, seed: int) -> dict:
    """The backbone's part of stage one's hashed settings, without building a network (a table
    row is read; a .keras file is loaded, which is cheap)."""
    found = resolve_backbone(backbone)
    if isinstance(found, Path):
        bb = build_backbone(backbone, weights, size)
        return {"backbone": bb.name, **bb.weights.attrs(), "input_size": bb.input_size,
                "feature_width": bb.width, "preprocessing": bb.preprocessing}
    size = found.default_size if size is None else size
    _check_size(found, size)
    return {"backbone": found.name, **weights_identity(weights or "imagenet", seed).attrs(), "input_size": size,
            "feature_width": found.width, "preprocessing": describe_preprocessing(found.preprocessing, size)}


# ---------------------------------------------------------------- device and precision

def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), where it pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> tuple[str, str]:
    """'auto' -> float16 on a GPU, bfloat16 on a CPU with bf16 units, else float32.
    Returns (precision, device description)."""
    import tensorflow as tf
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({len(gpus)} visible)" if gpus else "CPU"
    if precision == "auto":
        precision = "float16" if gpus else ("bfloat16" if cpu_has_bf16() else "float32")
    return precision, device


# ---------------------------------------------------------------- building

@dataclass(frozen=True)
class Backbone:
    model: object          # keras.Model: uint8 (None, H, W, 3) -> float32 (None, width)
    name: str              # the table row's name, or the .keras file's name
    weights: Weights
    input_size: int        # side of the square image the network sees
    width: int             # feature width
    preprocessing: str     # description
    row: Row | None = None  # None for a .keras file


def build_backbone(backbone: str = DEFAULT_BACKBONE, weights: str | None = None, size: int | None = None,
                   image_shape: tuple[int, int, int] = (32, 32, 3), seed: int = 0) -> Backbone:
    """The float32 model: uint8 images of `image_shape` -> resize -> preprocess -> features."""
    found = resolve_backbone(backbone)
    if isinstance(found, Path):
        if weights is not None:
            raise UserError("--weights applies to the named backbones; a --backbone file carries its own weights")
        return _saved_model(found, size, image_shape)
    return _application(found, weights or "imagenet", found.default_size if size is None else size,
                        image_shape, seed)


def _check_size(row: Row, size: int):
    if size < row.min_size:
        raise UserError(f"--size must be at least {row.min_size} for {row.name}, got {size}")


def _front(image_shape, size):
    """uint8 images -> float32 pixels 0-255 at size x size (bilinear, as tf.image.resize)."""
    import keras
    inputs = keras.Input(image_shape, dtype="uint8", name="image")
    # Cast before resizing: Resizing rounds its output back to the input dtype for integer input.
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    return inputs, x


def _application(row: Row, weights: str, size: int, image_shape, seed: int) -> Backbone:
    import keras
    _check_size(row, size)
    identity = weights_identity(weights, seed)
    constructor = getattr(keras.applications, row.constructor)
    kwargs = dict(include_top=False, pooling="avg", input_shape=(size, size, 3))
    if identity.source == "none":
        keras.utils.set_random_seed(seed)  # random init, but the same one every run
        base = constructor(weights=None, **kwargs)
    elif identity.source == "imagenet":
        try:
            base = constructor(weights="imagenet", **kwargs)
        except Exception as exc:
            raise UserError(f"could not download the {row.name} ImageNet weights ({type(exc).__name__}); "
                            f"offline? pass --weights PATH to a local weights file ({row.weights_file}) "
                            "or --weights none") from None
    else:
        # Built exactly as for "imagenet" (EfficientNet adds a layer only then), with Keras's
        # download step answered by the local file instead.
        module = importlib.import_module(constructor.__module__)
        local = SimpleNamespace(get_file=lambda *args, **kwargs: str(weights))
        try:
            with mock.patch.object(module, "file_utils", local):
                base = constructor(weights="imagenet", **kwargs)
        except Exception as exc:
            raise UserError(f"cannot load {row.name} weights from {weights}: {first_line(exc)}") from None
    base.name = row.name
    inputs, x = _front(image_shape, size)
    x = PREPROCESSING[row.preprocessing][1](x)
    features = base(x, training=False)
    model = keras.Model(inputs, features, name=f"{row.name}_features")
    return Backbone(model, row.name, identity, size, int(base.output_shape[-1]),
                    describe_preprocessing(row.preprocessing, size), row)


def _saved_model(path: Path, size: int | None, image_shape) -> Backbone:
    import keras
    try:
        base = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise UserError(f"cannot load Keras model {path}: "
                        f"{first_line(exc)}") from None
    in_shape, out_shape = tuple(base.input_shape), tuple(base.output_shape)
    if len(in_shape) != 4 or in_shape[-1] != 3 or in_shape[1] is None or in_shape[1] != in_shape[2]:
        raise UserError(f"{path} takes input {in_shape}; a backbone must take square RGB images (None, S, S, 3)")
    if len(out_shape) != 2:
        raise UserError(f"{path} gives output {out_shape}; a backbone must give one feature vector (None, D)")
    declared = int(in_shape[1])
    if size is not None and size != declared:
        raise UserError(f"{path} takes {declared}x{declared} images; --size {size} does not match (leave it out)")
    inputs, x = _front(image_shape, declared)
    features = base(x, training=False)
    model = keras.Model(inputs, features, name="saved_backbone_features")
    return Backbone(model, path.name, Weights("file", sha256=sha256_file(path)), declared, int(out_shape[-1]),
                    describe_preprocessing("in-model", declared))


def block_names(base, row: Row | None = None) -> list[str]:
    """Names worth suggesting for --unfreeze-from: the first layer of each block, blocks found by
    the row's pattern (for a .keras file: `<word><number>_` groups, as EfficientNet-Lite's blockNN_)."""
    import re
    names = [layer.name for layer in base.layers[1:]]
    pattern = row.blocks if row else r"([A-Za-z]+\d+)_"
    firsts, seen = [], set()
    for n in names:
        m = re.search(pattern, n)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            firsts.append(n)
    return firsts or names


def default_unfreeze(base, row: Row | None = None) -> str:
    """The table's default block for a row. For a .keras file: the first block that computes at the
    network's last spatial resolution, so the last stage or two train (EfficientNet-Lite0:
    block11_expand_conv, cut at block10_add's 14x14x112 at 224x224): enough network to be worth
    fine-tuning, small enough that a 2-core CPU trains it on all of CIFAR-10 within the hour."""
    import re
    if row:
        return row.unfreeze
    maps = [layer for layer in base.layers[1:] if len(layer.output.shape) == 4]
    if not maps:
        return block_names(base)[-2]
    last = tuple(maps[-1].output.shape[1:3])
    first = next(layer.name for layer in maps if tuple(layer.output.shape[1:3]) == last)
    m = re.search(r"([A-Za-z]+\d+)_", first)
    # the block's first layer (its expansion conv may still run at the previous resolution)
    return next((n for n in block_names(base) if m and n.startswith(m.group(1) + "_")), first)


# ---------------------------------------------------------------- fast inference

def _identity_layer(name, dtype):
    """Stands in for a folded BatchNormalization (accepts the same call arguments). It must share
    the network's dtype policy: a float32 one would cast every activation up and back down."""
    import keras

    class Folded(keras.layers.Layer):
        def call(self, x, training=None, mask=None):
            return x
    return Folded(name=name, dtype=dtype)


def _convolutions():
    import keras
    return (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def _foldable_pairs(model) -> dict:
    """{conv layer name: the BatchNormalization that alone consumes its output}."""
    import keras
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.axis not in (-1, 3):
            continue
        producer = layer.input._keras_history.operation
        if (isinstance(producer, _convolutions())
                and producer.get_config().get("activation") == "linear"
                and len(producer._outbound_nodes) == 1):
            pairs[producer.name] = layer
    return pairs


def _folded_weights(conv, bn) -> list[np.ndarray]:
    """conv(x) then BN in inference mode == conv'(x) with its last linear map scaled by s and bias
    (b - mean)*s + beta, where s = gamma / sqrt(var + eps)."""
    import keras
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else 0.0
    mean, var = np.asarray(bn.moving_mean, np.float64), np.asarray(bn.moving_variance, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else 1.0
    beta = np.asarray(bn.beta, np.float64) if bn.center else 0.0
    s = gamma / np.sqrt(var + bn.epsilon)
    folded_bias = ((bias - mean) * s + beta).astype(np.float32)
    if isinstance(conv, keras.layers.SeparableConv2D):    # depthwise, then pointwise (1, 1, in, out)
        pointwise = np.asarray(conv.pointwise_kernel, np.float64) * s
        return [np.asarray(conv.depthwise_kernel), pointwise.astype(np.float32), folded_bias]
    kernel = np.asarray(conv.kernel, dtype=np.float64)
    if isinstance(conv, keras.layers.DepthwiseConv2D):   # kernel (kh, kw, in, multiplier)
        kernel = kernel * s.reshape(kernel.shape[2], kernel.shape[3])
    else:                                                 # kernel (kh, kw, in, out)
        kernel = kernel * s
    return [kernel.astype(np.float32), folded_bias]


def fold_batchnorm(model, precision: str = "float32"):
    """A copy of a functional model with each conv->BN pair merged into one conv with a bias,
    every layer computing in `precision`; nested models (ConvNeXt's stem) are folded and cast the
    same way. Computes the same function (in float32, to ~1e-6). Other normalizations (ConvNeXt's
    LayerNormalization, ResNet50V2's pre-activation BN) stay as they are: no conv feeds them."""
    import keras
    pairs = _foldable_pairs(model) if not isinstance(model, keras.Sequential) else {}
    folded_bns = {bn.name for bn in pairs.values()}

    def clone(layer):
        if isinstance(layer, keras.Model):
            return fold_batchnorm(layer, precision)
        if layer.name in folded_bns:
            return _identity_layer(layer.name, _POLICY[precision])
        config = layer.get_config()
        if isinstance(layer, keras.layers.Layer):   # not plain ops (ConvNeXt's residual `+`)
            config["dtype"] = _POLICY[precision]
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in folded_bns or not layer.weights or isinstance(layer, keras.Model):
            continue
        weights = _folded_weights(layer, pairs[layer.name]) if layer.name in pairs else layer.get_weights()
        folded.get_layer(layer.name).set_weights(weights)
    return folded


def fast_extractor(model, precision: str):
    """uint8 numpy batch -> float32 numpy output, computing `model`'s function. `model` is shaped
    like ``Backbone.model``: front layers (cast, resize, preprocess), then one network as its
    last layer, which is folded and cast (stage three passes its frozen lower part this way)."""
    import keras
    import tensorflow as tf
    fast_inner = fold_batchnorm(model.layers[-1], precision)
    front = keras.Model(model.input, model.layers[-2].output)
    image_shape = tuple(model.input_shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.uint8)], reduce_retracing=True)
    def extract(images):
        return tf.cast(fast_inner(front(images, training=False), training=False), tf.float32)

    # Images of different sizes (a list from an image folder) cannot share one tensor: each is
    # resized alone by the same front layers, then the network runs on the whole batch at once.
    @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.uint8)], reduce_retracing=True)
    def resize(images):
        return front(images, training=False)

    @tf.function(input_signature=[tf.TensorSpec(front.output.shape, front.output.dtype)], reduce_retracing=True)
    def network(x):
        return tf.cast(fast_inner(x, training=False), tf.float32)

    def run(batch):
        if not isinstance(batch, np.ndarray) and len({img.shape for img in batch}) > 1:
            return network(tf.concat([resize(img[None]) for img in batch], 0)).numpy()
        return extract(tf.convert_to_tensor(np.asarray(batch), tf.uint8)).numpy()
    return run
