"""Every private Keras attribute this project relies on, in one place, so a Keras release that
changes one breaks here and in tests/test_keras_private.py, not deep inside a run: the graph of a
functional model, which operation produced a tensor and how many calls consumed a layer's output
(folding.py folds a BatchNormalization into the convolution it alone follows; finetune/surgery.py
finds where a network can be cut in two), and an optimizer's per-variable hooks (stage three's
slower rate for the backbone's layers, finetune/recipe.py).

Nothing else is private: a weights file loads through keras.applications' public build and
`Model.load_weights` (build.py), not by patching Keras's download step.
"""
from __future__ import annotations


def producer(tensor):
    """The operation (layer or plain op) whose call produced `tensor` in a functional graph."""
    return tensor._keras_history.operation


def consumer_count(layer) -> int:
    """How many calls in the graph consumed `layer`'s output."""
    return len(layer._outbound_nodes)


def first_call(layer):
    """The node of `layer`'s first call: its `input_tensors` and `output_tensors`."""
    return layer._inbound_nodes[0]


def discriminative(optimizer_class):
    """`optimizer_class` whose steps (and decoupled weight decay) on the `scaled` variables use the
    learning rate times `scale`: the backbone's pretrained layers move slower than the head (stage
    three's recipe). Keras has no per-variable rate, and scaling gradients instead would be undone by
    Adam's normalization, so this reads the optimizer's private `_var_key` and `_use_weight_decay` and
    overrides its private `_apply_weight_decay`."""
    from keras import ops

    class Discriminative(optimizer_class):
        def __init__(self, *args, scaled=(), scale=1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self._scale, self._scaled = scale, {self._var_key(v) for v in scaled}

        def _factor(self, variable):
            return self._scale if self._var_key(variable) in self._scaled else 1.0

        def update_step(self, gradient, variable, learning_rate):
            super().update_step(gradient, variable, learning_rate * self._factor(variable))

        def _apply_weight_decay(self, variables):
            if self.weight_decay is None:
                return
            for v in variables:
                if self._use_weight_decay(v):
                    rate = ops.cast(self.learning_rate * self.weight_decay * self._factor(v), v.dtype)
                    v.assign(v - v * rate)
    Discriminative.__name__ = f"Discriminative{optimizer_class.__name__}"
    return Discriminative
