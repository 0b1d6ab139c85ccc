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


def test_the_optimizer_hooks_scale_one_variables_rate_and_decay():
    """The private optimizer hooks stage three's recipe relies on (`_var_key`, `_use_weight_decay`,
    `_apply_weight_decay`): a scaled variable takes `scale` times the step and the weight decay."""
    import numpy as np
    slow, fast = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(3, "float32"))
    opt = keras_private.discriminative(keras.optimizers.AdamW)(0.1, weight_decay=0.1, scaled=[slow], scale=0.5)
    zero = np.zeros(3, "float32")       # Adam's step is 0 on a zero gradient: only the decay moves them
    opt.apply_gradients([(zero, slow), (zero, fast)])
    np.testing.assert_allclose(fast.numpy(), 1 - 0.1 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(slow.numpy(), 1 - 0.1 * 0.1 * 0.5, rtol=1e-6)
    sgd = keras_private.discriminative(keras.optimizers.SGD)(0.1, scaled=[slow], scale=0.5)
    before_slow, before_fast = slow.numpy(), fast.numpy()
    one = np.ones(3, "float32")
    sgd.apply_gradients([(one, slow), (one, fast)])
    np.testing.assert_allclose(before_fast - fast.numpy(), 0.1, rtol=1e-6)
    np.testing.assert_allclose(before_slow - slow.numpy(), 0.05, rtol=1e-6)
