"""Every private Keras attribute this project relies on, in one place, so a Keras release that
changes one breaks here and in tests/test_keras_private.py, not deep inside a run.

- the graph of a functional model: which operation produced a tensor, how many calls consumed a
  layer's output (folding.py folds a BatchNormalization into the convolution it alone follows);
- the download step of keras.applications: a local weights file is loaded by answering
  `keras.src.utils.file_utils.get_file` (which every application module calls) with its path, so
  the network is built exactly as for "imagenet" (EfficientNet adds a normalization layer only
  then; `weights=PATH` would build another network). Patching the shared module, not the
  application's own: ResNet50V2's module builds through resnet.py and has no `file_utils` itself.

finetune/surgery.py still reads `_inbound_nodes`/`_keras_history` itself; it moves onto
`producer`/`first_call` here once the fine-tuning branch that edits it has landed.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from unittest import mock


def producer(tensor):
    """The operation (layer or plain op) whose call produced `tensor` in a functional graph."""
    return tensor._keras_history.operation


def consumer_count(layer) -> int:
    """How many calls in the graph consumed `layer`'s output."""
    return len(layer._outbound_nodes)


def first_call(layer):
    """The node of `layer`'s first call: its `input_tensors` and `output_tensors`."""
    return layer._inbound_nodes[0]


FILE_UTILS = "keras.src.utils.file_utils"


@contextmanager
def weights_from_file(path):
    """Inside: any `keras.applications` constructor called with weights="imagenet" loads `path`
    instead of downloading."""
    with mock.patch.object(importlib.import_module(FILE_UTILS), "get_file", lambda *a, **kw: str(path)):
        yield
