"""Cutting a backbone in two for fine-tuning: a frozen lower part and a trainable upper part.

The cut is a *separator*: a layer whose output is the only path from everything before it to
everything after it (mixed8 in InceptionV3, the output of block13 in EfficientNet-Lite0). Below it
the network is a fixed function of the image, which is what makes the cached mode possible.
`--unfreeze-from NAME` trains everything after the last separator that comes before NAME, so a
block name (InceptionV3's `mixed9`) means the whole block, as the Keras fine-tuning guide does.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.backbones import keras_private
from pipeline.backbones.precision import POLICY as _POLICY
from pipeline.backbones.table import FILE_POLICY, FinetunePolicy, block_names
from pipeline.foundation.errors import UserError


@dataclass
class Parts:
    front: object    # keras.Model: uint8 image -> the pretrained network's input (resize, preprocess)
    base: object     # the pretrained network (float32); the exported model uses it
    cut: str         # name of the layer whose output is the cut
    lower: object    # keras.Model: network input -> cut activation (frozen)
    upper: object    # keras.Model: cut activation -> features (trainable); shares layers with `base`
    head: object     # the stage-two head: features -> class probabilities

    def image_to_cut(self):
        """keras.Model: uint8 image -> cut activation (front, then the frozen lower part), shaped as
        backbone.fast_extractor expects."""
        import keras
        return keras.Model(self.front.input, self.lower(self.front.output), name="image_to_cut")


def _producers(layer, position) -> list[int]:
    """Positions of the layers whose outputs `layer` consumed when the network was built."""
    return [position[keras_private.producer(t).name] for t in keras_private.first_call(layer).input_tensors]


def separators(base) -> list[int]:
    """Positions i (in the network's topological order of operations: layers, and plain ops such
    as ConvNeXt's residual `+`) whose output alone carries everything from 0..i to after i."""
    layers = base.operations
    position = {layer.name: i for i, layer in enumerate(layers)}
    earliest = [min(_producers(l, position), default=i) for i, l in enumerate(layers)]
    found, low = [], len(layers)
    for i in range(len(layers) - 1, -1, -1):   # low = earliest producer of any layer after i
        if low >= i and len(keras_private.first_call(layers[i]).output_tensors) == 1:
            found.append(i)
        low = min(low, earliest[i])
    return sorted(found)


def find_cut(base, unfreeze_from: str, policy: FinetunePolicy = FILE_POLICY) -> str:
    """The separator right before the block that `unfreeze_from` names (`policy`: the backbone's
    fine-tuning policy, which says how blocks are named)."""
    names = [op.name for op in base.operations]
    if unfreeze_from not in [layer.name for layer in base.layers[1:]]:
        raise UserError(f"--unfreeze-from {unfreeze_from!r} is not a layer of {base.name}; valid block "
                        f"names: {', '.join(block_names(base, policy))} (or any other layer name of the network)")
    target = names.index(unfreeze_from)
    return names[max(i for i in separators(base) if i < target)]


def split(backbone_model, head, unfreeze_from: str, policy: FinetunePolicy = FILE_POLICY) -> Parts:
    """Cut `backbone_model` (from pipeline.backbones.build.build_backbone, `policy` its fine-tuning
    policy) before `unfreeze_from`."""
    import keras
    base = backbone_model.layers[-1]           # the pretrained network after the front layers
    front = keras.Model(backbone_model.input, backbone_model.layers[-2].output, name="front")
    cut = find_cut(base, unfreeze_from, policy)
    cut_tensor = next(op for op in base.operations if op.name == cut).output
    lower = keras.Model(base.input, cut_tensor, name="lower")
    upper = keras.Model(cut_tensor, base.output, name="upper")
    trainable = set(map(id, upper.layers[1:]))
    base.trainable = True
    for layer in [*base.layers, *head.layers]:
        # Everything from the cut down stays fixed. BatchNorm is frozen everywhere: a frozen BN layer
        # always runs in inference mode. Calling the network with training=False is not enough in
        # Keras 3: a nested functional model passes the outer fit's training=True on to its layers,
        # overriding the training=False it was built with (seen in Keras 3.15: moving statistics moved).
        layer.trainable = (id(layer) in trainable or layer in head.layers) and not isinstance(
            layer, keras.layers.BatchNormalization)
    return Parts(front, base, cut, lower, upper, head)


def with_precision(model, precision: str):
    """A copy of `model` computing in `precision` (float32 variables, as mixed precision keeps them),
    with the same weights. Trainability is copied layer by layer."""
    import keras

    def clone(layer):
        if isinstance(layer, keras.Model):       # ConvNeXt's downsampling blocks
            return with_precision(layer, precision)
        config = layer.get_config()
        if isinstance(layer, keras.layers.Layer) and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = _POLICY[precision]   # (not plain ops such as ConvNeXt's residual `+`)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    for src, dst in zip(model.layers, copy.layers):
        dst.trainable = src.trainable
    return copy


def copy_weights_back(trained, reference):
    """Write the weights of a with_precision copy into the layers of `reference` (same names)."""
    for layer in trained.layers:
        if layer.weights:
            reference.get_layer(layer.name).set_weights(layer.get_weights())
