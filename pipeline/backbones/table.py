"""The backbone table: one entry per keras.applications network this project knows, as timm's registry
does it, in three parts kept apart:
- the architecture: what keras.applications builds (constructor, input sizes, feature width, preprocessing);
- the pretrained weights: Keras's ImageNet file, which keras.applications downloads for "imagenet"
  and --weights PATH loads offline (weights.py records which weights a run used, with their identity);
- the fine-tuning policy: the default --unfreeze-from block and the pattern that names blocks.
A new backbone is one new entry (plus a PREPROCESSING entry if it preprocesses in a new way). No
caller branches on a backbone's name: whatever differs between backbones lives in its entry.

Keras is imported inside the preprocessing functions only: this table is read by `--help`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Architecture:
    constructor: str     # keras.applications.<constructor>(include_top=False, pooling="avg", ...)
    default_size: int    # the size its ImageNet weights were trained at
    min_size: int        # the smallest input keras.applications accepts
    width: int           # length of the pooled feature vector
    preprocessing: str   # key of PREPROCESSING: what <module>.preprocess_input does


@dataclass(frozen=True)
class PretrainedWeights:
    file: str            # Keras's ImageNet file without the top, for --weights PATH offline
    # EfficientNet: Keras's ImageNet build alone divides its in-model Normalization's output once
    # more by the square root of these standard deviations (tensorflow/tensorflow#49930); a weights
    # file is built the same way (build.py), so it gives what the download gives.
    renormalize: tuple[float, ...] = ()


@dataclass(frozen=True)
class FinetunePolicy:
    unfreeze: str | None  # default --unfreeze-from: the first layer of the top two blocks (None: computed)
    blocks: str           # regex; its first group names the block a layer belongs to


@dataclass(frozen=True)
class Entry:
    name: str            # the keras.applications function name in snake case; --backbone NAME
    architecture: Architecture
    weights: PretrainedWeights
    policy: FinetunePolicy


BACKBONES = {entry.name: entry for entry in [
    Entry("inception_v3", Architecture("InceptionV3", 299, 75, 2048, "tf"),
          PretrainedWeights("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
          FinetunePolicy("mixed9", r"(mixed\d+)$")),
    Entry("resnet50", Architecture("ResNet50", 224, 32, 2048, "caffe"),
          PretrainedWeights("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
          FinetunePolicy("conv5_block2_1_conv", r"(conv\d_block\d+)_")),
    Entry("resnet50_v2", Architecture("ResNet50V2", 224, 32, 2048, "tf"),
          PretrainedWeights("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
          FinetunePolicy("conv5_block2_preact_bn", r"(conv\d_block\d+)_")),
    Entry("xception", Architecture("Xception", 299, 71, 2048, "tf"),
          PretrainedWeights("xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
          FinetunePolicy("block13_sepconv1_act", r"(block\d+)_")),
    Entry("densenet121", Architecture("DenseNet121", 224, 32, 1024, "torch"),
          PretrainedWeights("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
          FinetunePolicy("conv5_block15_0_bn", r"(conv\d_block\d+)_")),
    Entry("efficientnet_b0", Architecture("EfficientNetB0", 224, 32, 1280, "in-model"),
          PretrainedWeights("efficientnetb0_notop.h5", renormalize=(0.229, 0.224, 0.225)),
          FinetunePolicy("block6d_expand_conv", r"(block\d+[a-z])_")),
    Entry("efficientnet_v2_b0", Architecture("EfficientNetV2B0", 224, 32, 1280, "in-model"),
          PretrainedWeights("efficientnetv2-b0_notop.h5"),
          FinetunePolicy("block6g_expand_conv", r"(block\d+[a-z])_")),
    Entry("convnext_tiny", Architecture("ConvNeXtTiny", 224, 32, 768, "in-model"),
          PretrainedWeights("convnext_tiny_notop.h5"),
          FinetunePolicy("convnext_tiny_stage_3_block_1_depthwise_conv", r"(stage_\d+_block_\d+)_")),
    Entry("mobilenet_v3_large", Architecture("MobileNetV3Large", 224, 32, 960, "in-model"),
          PretrainedWeights("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
          FinetunePolicy("expanded_conv_13_expand", r"(expanded_conv_\d+)_")),
]}

DEFAULT_BACKBONE = "inception_v3"

# A .keras backbone file's policy: blocks are `<word><number>_` groups (EfficientNet-Lite's
# blockNN_), and the default block is computed from the network (default_unfreeze).
FILE_POLICY = FinetunePolicy(None, r"([A-Za-z]+\d+)_")


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


def block_names(base, policy: FinetunePolicy = FILE_POLICY) -> list[str]:
    """Names worth suggesting for --unfreeze-from: the first layer of each block, blocks found by
    the policy's pattern."""
    names = [layer.name for layer in base.layers[1:]]
    firsts, seen = [], set()
    for n in names:
        m = re.search(policy.blocks, n)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            firsts.append(n)
    return firsts or names


# A backbone file's default cut: train the fewest top blocks that hold this share of the network's
# weights. Measured through EfficientNet-Lite0 on all of CIFAR-10 (docs/numbers.md, "Fine-tuning"):
# the blocks at the last resolution (79% of the weights, block11) gave 0.908 test, two blocks more
# (89%, block09) 0.920 at 1.9x the step time, still inside 45 minutes on 2 cores; a third more (92%)
# costs 2.2x. The share, unlike a block count or a resolution, means the same in a deeper or
# shallower network of another family (EfficientNet-B0: block5b, the same place as Lite0's block09).
WEIGHT_SHARE = 0.85


def default_unfreeze(base, policy: FinetunePolicy = FILE_POLICY) -> str:
    """The policy's default block. Computed when it has none (a .keras file): the first layer of the
    deepest block from which on the layers hold at least WEIGHT_SHARE of the network's weights
    (EfficientNet-Lite0: block09_expand_conv, cut at block08_project_bn's 14x14x112 at 224x224)."""
    if policy.unfreeze:
        return policy.unfreeze
    layers = base.layers[1:]
    position = {layer.name: i for i, layer in enumerate(layers)}
    sizes = np.array([layer.count_params() for layer in layers], dtype=np.float64)
    from_here = np.cumsum(sizes[::-1])[::-1]          # weights of layer i and everything after it
    blocks = block_names(base, policy)
    enough = [b for b in blocks if from_here[position[b]] >= WEIGHT_SHARE * sizes.sum()]
    return enough[-1] if enough else blocks[0]
