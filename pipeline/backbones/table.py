"""The backbone table: one row per keras.applications network this project knows, as timm's registry
does it; a new backbone is one new row (plus a PREPROCESSING entry if it preprocesses in a new way).
No caller branches on a backbone's name: input size, preprocessing, width and the fine-tuning
defaults live in the row. A row's columns, in three groups:
- the architecture: constructor, default and smallest input size, feature width, preprocessing;
- the pretrained weights: the Keras ImageNet file (weights.py gives every choice its identity);
- the fine-tuning policy: the default --unfreeze-from block and the pattern that names blocks.

Keras is imported inside the preprocessing functions only: this table is read by `--help`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Row:
    # the architecture
    name: str            # the keras.applications function name in snake case; --backbone NAME
    constructor: str     # keras.applications.<constructor>(include_top=False, pooling="avg", ...)
    default_size: int    # the size its ImageNet weights were trained at
    min_size: int        # the smallest input keras.applications accepts
    width: int           # length of the pooled feature vector
    preprocessing: str   # key of PREPROCESSING: what <module>.preprocess_input does
    # the pretrained weights
    weights_file: str    # Keras's ImageNet file without the top, for --weights PATH offline
    # the fine-tuning policy
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


def block_names(base, row: Row | None = None) -> list[str]:
    """Names worth suggesting for --unfreeze-from: the first layer of each block, blocks found by
    the row's pattern (for a .keras file: `<word><number>_` groups, as EfficientNet-Lite's blockNN_)."""
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
