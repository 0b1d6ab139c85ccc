"""Every private Keras attribute this project relies on, in one place, so a Keras release that
changes one breaks here and in tests/test_keras_private.py, not deep inside a run: the graph of a
functional model, which operation produced a tensor and how many calls consumed a layer's output
(folding.py folds a BatchNormalization into the convolution it alone follows; finetune/surgery.py
finds where a network can be cut in two).

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
