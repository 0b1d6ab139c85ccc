"""Each format an export writes, and how to open it again as uint8 images -> probabilities: a
SavedModel, a TFLite flatbuffer or a .keras file, with the largest probability difference from the
Keras model each is allowed (FORMATS). TensorFlow is imported inside the functions: `predict --help`
and `export --help` stay quick."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from pipeline.foundation import layout


# format -> (file or folder name in the export, largest allowed absolute probability difference)
FORMATS = {"savedmodel": ("saved_model", 1e-4), "tflite": ("model.tflite", 1e-3), "keras": (layout.MODEL, 1e-4)}


CHECK_BATCH = 32


def in_batches(fn, images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + CHECK_BATCH])) for i in range(0, len(images), CHECK_BATCH)])


def _write_savedmodel(model, path: Path):
    model.export(str(path), format="tf_saved_model", verbose=False)


def open_savedmodel(path: Path):
    """(uint8 batch -> probabilities, input shape, classes, input dtype) of a SavedModel."""
    import tensorflow as tf
    loaded = tf.saved_model.load(str(path))
    spec = loaded.serve.input_signature[0]
    n = loaded.serve.concrete_functions[0].structured_outputs.shape[-1]
    return (lambda batch: loaded.serve(tf.constant(batch)).numpy()), tuple(spec.shape), n, spec.dtype.name


def _write_tflite(model, path: Path):
    import tensorflow as tf
    scratch = path.with_name(path.name + ".saved_model")
    try:
        _write_savedmodel(model, scratch)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(scratch))   # float32: no optimizations
        path.write_bytes(converter.convert())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def open_tflite(path: Path):
    """(uint8 batch -> probabilities, input shape, classes, input dtype) of a TFLite file."""
    import tensorflow as tf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # tf.lite.Interpreter's notice that LiteRT will replace it
        interpreter = tf.lite.Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def call(batch):
        interpreter.resize_tensor_input(inp["index"], batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()
    return call, (None, *inp["shape"][1:]), int(out["shape"][-1]), np.dtype(inp["dtype"]).name


def _write_keras(model, path: Path):
    model.save(path)


def open_keras(path: Path):
    """(uint8 batch -> probabilities, input shape, classes, input dtype) of an exported Keras file."""
    import keras
    model = keras.models.load_model(path, compile=False)
    return (lambda batch: model.predict(batch, batch_size=CHECK_BATCH, verbose=0)), tuple(model.input_shape), \
        model.output_shape[-1], model.inputs[0].dtype


WRITE = {"savedmodel": _write_savedmodel, "tflite": _write_tflite, "keras": _write_keras}


# Each format read back as predict reads it: (callable, input shape, classes, input dtype).
OPEN = {"savedmodel": open_savedmodel, "tflite": open_tflite, "keras": open_keras}
