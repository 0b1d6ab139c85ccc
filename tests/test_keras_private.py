"""pipeline.backbones.keras_private against the installed Keras: each private attribute it reads still
means what it did. A Keras release that renames or reshapes one fails here, by name."""
import keras

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


def test_a_plain_op_in_the_graph_is_an_operation_too():
    """finetune/surgery.py walks `model.operations`, which holds plain ops (ConvNeXt's residual `+`)
    beside layers: they answer the same attributes."""
    inputs = keras.Input((4,))
    a, b = keras.layers.Dense(4, name="a"), keras.layers.Dense(4, name="b")
    model = keras.Model(inputs, a(inputs) + b(inputs))
    add = model.operations[-1]
    assert not isinstance(add, keras.layers.Layer)
    assert {keras_private.producer(t) for t in keras_private.first_call(add).input_tensors} == {a, b}
    assert len(keras_private.first_call(add).output_tensors) == 1
