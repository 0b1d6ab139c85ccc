"""Backbone name -> frozen feature extractor: uint8 images in, one feature vector per image out.

Two models come out of here:
- ``build_backbone`` gives the plain float32 Keras model (in-graph resize and preprocessing in
  front of the pretrained network). Fine-tuning trains this one; it is the reference function.
- ``fast_extractor`` turns it into the inference function stage one runs: BatchNormalization
  folded into the convolution before it (same function, fewer ops), the network cast to the
  chosen precision (bfloat16 runs on AMX tiles on recent Intel CPUs), and one compiled graph.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError, first_line

INCEPTION = "inception_v3"
INCEPTION_PREPROCESSING = "bilinear resize to {size}x{size}, then x/127.5 - 1 (inception_v3.preprocess_input)"
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@dataclass(frozen=True)
class Backbone:
    model: object          # keras.Model: uint8 (None, H, W, 3) -> float32 (None, width)
    name: str              # "inception_v3" or the .keras file's name
    weights: str           # identity of the weights: "imagenet (keras 3.x)", "none (seed 0)", "sha256:..."
    input_size: int        # side of the square image the network sees
    width: int             # feature width (2048 for InceptionV3)
    preprocessing: str


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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

def build_backbone(backbone: str = INCEPTION, weights: str | None = None, size: int | None = None,
                   image_shape: tuple[int, int, int] = (32, 32, 3), seed: int = 0) -> Backbone:
    """The float32 model: uint8 images of `image_shape` -> resize -> preprocess -> features."""
    if backbone == INCEPTION:
        return _inception(weights or "imagenet", 299 if size is None else size, image_shape, seed)
    path = Path(backbone)
    if not path.exists():
        raise UserError(f"--backbone must be {INCEPTION} or a saved .keras model file; {path} does not exist")
    if weights is not None:
        raise UserError("--weights applies to inception_v3 only; a --backbone file carries its own weights")
    return _saved_model(path, size, image_shape)


def _front(image_shape, size):
    """uint8 images -> float32 pixels 0-255 at size x size (bilinear, as tf.image.resize)."""
    import keras
    inputs = keras.Input(image_shape, dtype="uint8", name="image")
    # Cast before resizing: Resizing rounds its output back to the input dtype for integer input.
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    return inputs, x


def inception_weights_identity(weights: str, seed: int) -> str:
    """What the numbers depend on: Keras's ImageNet file (per Keras version), the seed of a random
    init, or the content of a local weights file."""
    import keras
    if weights == "none":
        return f"none (random init, seed {seed})"
    if weights == "imagenet":
        return f"imagenet (keras {keras.__version__})"
    if not Path(weights).is_file():
        raise UserError(f"--weights must be imagenet, none or a weights file; {weights} is not a file")
    return f"sha256:{sha256_file(Path(weights))}"


def _inception(weights: str, size: int, image_shape, seed: int) -> Backbone:
    import keras
    if size < 75:
        raise UserError(f"--size must be at least 75 for InceptionV3, got {size}")
    identity = inception_weights_identity(weights, seed)
    source = "imagenet" if weights == "imagenet" else None
    if weights == "none":
        keras.utils.set_random_seed(seed)  # random init, but the same one every run
    try:
        base = keras.applications.InceptionV3(include_top=False, weights=source, pooling="avg",
                                              input_shape=(size, size, 3))
    except Exception as exc:
        if source != "imagenet":
            raise
        raise UserError(f"could not download the InceptionV3 ImageNet weights ({type(exc).__name__}); "
                        "offline? pass --weights PATH to a local weights file "
                        "(inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5) or --weights none") from None
    if weights not in ("none", "imagenet"):
        try:
            base.load_weights(str(weights))
        except Exception as exc:
            raise UserError(f"cannot load InceptionV3 weights from {weights}: "
                            f"{first_line(exc)}") from None
    base.name = INCEPTION
    inputs, x = _front(image_shape, size)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    features = base(x, training=False)
    model = keras.Model(inputs, features, name=f"{INCEPTION}_features")
    return Backbone(model, INCEPTION, identity, size, int(base.output_shape[-1]),
                    INCEPTION_PREPROCESSING.format(size=size))


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
    return Backbone(model, path.name, f"sha256:{sha256_file(path)}", declared, int(out_shape[-1]),
                    f"bilinear resize to {declared}x{declared}, pixels 0-255 into the model (it preprocesses itself)")


# ---------------------------------------------------------------- fast inference

def _identity_layer(name, dtype):
    """Stands in for a folded BatchNormalization (accepts the same call arguments). It must share
    the network's dtype policy: a float32 one would cast every activation up and back down."""
    import keras

    class Folded(keras.layers.Layer):
        def call(self, x, training=None, mask=None):
            return x
    return Folded(name=name, dtype=dtype)


def _foldable_pairs(model) -> dict:
    """{conv layer name: the BatchNormalization that alone consumes its output}."""
    import keras
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.axis not in (-1, 3):
            continue
        producer = layer.input._keras_history.operation
        if (isinstance(producer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
                and producer.get_config().get("activation") == "linear"
                and len(producer._outbound_nodes) == 1):
            pairs[producer.name] = layer
    return pairs


def _folded_weights(conv, bn) -> list[np.ndarray]:
    """conv(x) then BN in inference mode == conv'(x) with kernel*s and bias (b - mean)*s + beta,
    where s = gamma / sqrt(var + eps)."""
    import keras
    kernel = np.asarray(conv.kernel, dtype=np.float64)
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else 0.0
    mean, var = np.asarray(bn.moving_mean, np.float64), np.asarray(bn.moving_variance, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else 1.0
    beta = np.asarray(bn.beta, np.float64) if bn.center else 0.0
    s = gamma / np.sqrt(var + bn.epsilon)
    if isinstance(conv, keras.layers.DepthwiseConv2D):   # kernel (kh, kw, in, multiplier)
        kernel = kernel * s.reshape(kernel.shape[2], kernel.shape[3])
    else:                                                 # kernel (kh, kw, in, out)
        kernel = kernel * s
    return [kernel.astype(np.float32), ((bias - mean) * s + beta).astype(np.float32)]


def fold_batchnorm(model, precision: str = "float32"):
    """A copy of a flat functional model with each conv->BN pair merged into one conv with a bias,
    every layer computing in `precision`. Computes the same function (in float32, to ~1e-6)."""
    import keras
    pairs = _foldable_pairs(model)
    folded_bns = {bn.name for bn in pairs.values()}

    def clone(layer):
        if layer.name in folded_bns:
            return _identity_layer(layer.name, _POLICY[precision])
        config = layer.get_config()
        config["dtype"] = _POLICY[precision]
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in folded_bns or not layer.weights:
            continue
        weights = _folded_weights(layer, pairs[layer.name]) if layer.name in pairs else layer.get_weights()
        folded.get_layer(layer.name).set_weights(weights)
    return folded


def fast_extractor(model, precision: str):
    """uint8 numpy batch -> float32 numpy output, computing `model`'s function. `model` is shaped
    like ``Backbone.model``: front layers (cast, resize, preprocess), then one flat network as its
    last layer, which is folded and cast (stage three passes its frozen lower part this way)."""
    import keras
    import tensorflow as tf
    fast_inner = fold_batchnorm(model.layers[-1], precision)
    front = keras.Model(model.input, model.layers[-2].output)
    image_shape = tuple(model.input_shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.uint8)], reduce_retracing=True)
    def extract(images):
        return tf.cast(fast_inner(front(images, training=False), training=False), tf.float32)

    return lambda batch: extract(tf.convert_to_tensor(batch, tf.uint8)).numpy()
