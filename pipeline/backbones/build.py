"""Building the float32 reference model: uint8 images -> in-graph resize and preprocessing -> the
pretrained network (a table entry with its weights, or a .keras file) -> one feature vector per image.
Fine-tuning trains this one; folding.py turns it into stage one's inference function.
`identity` is the backbone's part of stage one's hashed settings."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.backbones.table import (DEFAULT_BACKBONE, FILE_POLICY, PREPROCESSING, Entry, FinetunePolicy,
                                      PretrainedWeights, describe_preprocessing)
from pipeline.backbones.weights import Weights, resolve_backbone, weights_identity
from pipeline.foundation.errors import OFFLINE_WAYS, UserError, first_line
from pipeline.foundation.readback import sha256_file


def identity(backbone: str, weights: str | None, size: int | None, seed: int) -> dict:
    """The backbone's part of stage one's hashed settings, without building a network (a table
    entry is read; a .keras file is loaded, which is cheap)."""
    found = resolve_backbone(backbone)
    if isinstance(found, Path):
        bb = build_backbone(backbone, weights, size)
        return {"backbone": bb.name, **bb.weights.attrs(), "input_size": bb.input_size,
                "feature_width": bb.width, "preprocessing": bb.preprocessing}
    arch = found.architecture
    size = arch.default_size if size is None else size
    _check_size(found, size)
    return {"backbone": found.name, **weights_identity(weights or "imagenet", seed).attrs(), "input_size": size,
            "feature_width": arch.width, "preprocessing": describe_preprocessing(arch.preprocessing, size)}


@dataclass(frozen=True)
class Backbone:
    model: object          # keras.Model: uint8 (None, H, W, 3) -> float32 (None, width)
    name: str              # the table entry's name, or the .keras file's name
    weights: Weights
    input_size: int        # side of the square image the network sees
    width: int             # feature width
    preprocessing: str     # description
    policy: FinetunePolicy = FILE_POLICY   # the table entry's; a .keras file's is computed


def build_backbone(backbone: str = DEFAULT_BACKBONE, weights: str | None = None, size: int | None = None,
                   image_shape: tuple[int, int, int] = (32, 32, 3), seed: int = 0) -> Backbone:
    """The float32 model: uint8 images of `image_shape` -> resize -> preprocess -> features."""
    found = resolve_backbone(backbone)
    if isinstance(found, Path):
        if weights is not None:
            raise UserError("--weights applies to the named backbones; a --backbone file carries its own weights")
        return _saved_model(found, size, image_shape)
    return _application(found, weights or "imagenet", found.architecture.default_size if size is None else size,
                        image_shape, seed)


def _check_size(entry: Entry, size: int):
    if size < entry.architecture.min_size:
        raise UserError(f"--size must be at least {entry.architecture.min_size} for {entry.name}, got {size}")


def _front(image_shape, size):
    """uint8 images -> float32 pixels 0-255 at size x size (bilinear, as tf.image.resize)."""
    import keras
    inputs = keras.Input(image_shape, dtype="uint8", name="image")
    # Cast before resizing: Resizing rounds its output back to the input dtype for integer input.
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    return inputs, x


def _application(entry: Entry, weights: str, size: int, image_shape, seed: int) -> Backbone:
    import keras
    _check_size(entry, size)
    arch, identity = entry.architecture, weights_identity(weights, seed)
    constructor = getattr(keras.applications, arch.constructor)
    kwargs = dict(include_top=False, pooling="avg", input_shape=(size, size, 3))
    if identity.source == "none":
        keras.utils.set_random_seed(seed)  # random init, but the same one every run
        base = constructor(weights=None, **kwargs)
    elif identity.source == "imagenet":
        try:
            base = constructor(weights="imagenet", **kwargs)
        except Exception as exc:
            raise UserError(f"could not download the {entry.name} ImageNet weights ({type(exc).__name__}); "
                            f"{OFFLINE_WAYS} ({entry.weights.file} for {entry.name})") from None
    else:
        try:
            base = _as_imagenet_builds(constructor(weights=None, **kwargs), entry.weights)
            base.load_weights(weights)
        except Exception as exc:
            raise UserError(f"cannot load {entry.name} weights from {weights}: {first_line(exc)}") from None
    base.name = entry.name
    inputs, x = _front(image_shape, size)
    x = PREPROCESSING[arch.preprocessing][1](x)
    features = base(x, training=False)
    model = keras.Model(inputs, features, name=f"{entry.name}_features")
    return Backbone(model, entry.name, identity, size, int(base.output_shape[-1]),
                    describe_preprocessing(arch.preprocessing, size), entry.policy)


def _as_imagenet_builds(base, pretrained: PretrainedWeights):
    """`base` (built with weights=None) as keras.applications builds it for its ImageNet weights, so
    that a weights file gives what the download gives: with the extra rescaling after the in-model
    Normalization where the table says so, inserted through clone_model's public call_function."""
    import keras
    if not pretrained.renormalize:
        return base
    scale = [1.0 / math.sqrt(s) for s in pretrained.renormalize]   # as Keras computes it: the same float32s

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return keras.layers.Rescaling(scale)(out) if isinstance(layer, keras.layers.Normalization) else out
    return keras.models.clone_model(base, clone_function=lambda layer: layer, call_function=call)


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
