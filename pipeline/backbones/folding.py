"""The inference function stage one runs: BatchNormalization folded into the convolution before it
(same function, fewer ops), the network cast to the chosen precision (bfloat16 runs on AMX tiles on
recent Intel CPUs), and one compiled graph."""
from __future__ import annotations

import numpy as np

from pipeline.backbones import keras_private
from pipeline.backbones.precision import POLICY


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
        producer = keras_private.producer(layer.input)
        if (isinstance(producer, _convolutions())
                and producer.get_config().get("activation") == "linear"
                and keras_private.consumer_count(producer) == 1):
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
            return _identity_layer(layer.name, POLICY[precision])
        config = layer.get_config()
        if isinstance(layer, keras.layers.Layer):   # not plain ops (ConvNeXt's residual `+`)
            config["dtype"] = POLICY[precision]
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
