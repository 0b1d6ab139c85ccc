"""pipeline.backbones.keras_private against the installed Keras: each private attribute it reads still
means what it did. A Keras release that renames or reshapes one fails here, by name."""
import importlib

import keras
import numpy as np
import pytest

from pipeline.backbones import keras_private


def test_the_graph_attributes_say_who_produced_and_who_consumed():
    inputs = keras.Input((8, 8, 3))
    conv, bn = keras.layers.Conv2D(4, 3, name="conv"), keras.layers.BatchNormalization(name="bn")
    y = bn(conv(inputs))
    keras.Model(inputs, [keras.layers.ReLU()(y), keras.layers.Activation("sigmoid")(y)])
    assert keras_private.producer(bn.input) is conv
    assert keras_private.consumer_count(conv) == 1 and keras_private.consumer_count(bn) == 2
    node = keras_private.first_call(bn)
    assert [keras_private.producer(t) for t in node.input_tensors] == [conv]
    assert len(node.output_tensors) == 1


def test_the_download_step_is_where_the_adapter_answers_it():
    assert callable(importlib.import_module(keras_private.FILE_UTILS).get_file)


@pytest.mark.slow    # ~9 s: a whole ResNet built twice
def test_a_weights_file_loads_as_imagenet_does(tmp_path):
    """ResNet50V2: its module builds through resnet.py and has no download step of its own."""
    build = keras.applications.ResNet50V2
    kwargs = dict(include_top=False, pooling="avg", input_shape=(32, 32, 3))
    made = build(weights=None, **kwargs)
    made.save_weights(tmp_path / "w.weights.h5")
    with keras_private.weights_from_file(tmp_path / "w.weights.h5"):
        loaded = build(weights="imagenet", **kwargs)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(made.predict(images, verbose=0), loaded.predict(images, verbose=0))
