"""A logreg head (scikit-learn Pipeline(StandardScaler, LogisticRegression)) as one Keras layer,
so that `predict` and `export` ship it as they ship a dense head: features -> Dense(K, softmax).

Standardizing is affine and so are the logits, so the two fold into one affine map:
    logits = ((x - mean) / scale) @ W.T + b = x @ (W / scale).T + (b - W @ (mean / scale))
and softmax(logits) is LogisticRegression's multinomial predict_proba. A two-class model stores one
row w (its predict_proba is [1 - sigmoid(z), sigmoid(z)]), which is softmax([0, z]): rows [0, w].
The weights are folded in float64 and stored in float32; tests/test_logreg_ship.py holds the layer
to predict_proba within AFFINE_TOLERANCE on random and real features."""
from __future__ import annotations

import numpy as np

# the largest |probability difference| from predict_proba the float32 layer is allowed
AFFINE_TOLERANCE = 1e-5


def affine_weights(pipeline) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (d, K), bias (K,)) of the one affine map equal to the pipeline's scaler + logits."""
    scaler, logreg = pipeline[0], pipeline[-1]
    if getattr(logreg, "multi_class", "auto") == "ovr":
        raise ValueError("a one-vs-rest LogisticRegression is no softmax; only multinomial ones fold")
    W, b = np.asarray(logreg.coef_, np.float64), np.asarray(logreg.intercept_, np.float64)
    if W.shape[0] == 1:                                  # two classes: one row, softmax([0, z])
        W, b = np.vstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
    d = W.shape[1]
    mean = np.zeros(d) if scaler.mean_ is None else np.asarray(scaler.mean_, np.float64)
    scale = np.ones(d) if scaler.scale_ is None else np.asarray(scaler.scale_, np.float64)
    kernel = W / scale
    return kernel.T, b - kernel @ mean


def keras_head(pipeline, name: str = "logreg_head"):
    """A Keras model features (d,) -> softmax probabilities (K,) equal to pipeline.predict_proba.
    Built-in layers only, so it stacks on a backbone and exports as a dense head does."""
    import keras
    kernel, bias = affine_weights(pipeline)
    inputs = keras.Input((kernel.shape[0],), dtype="float32", name="features")
    layer = keras.layers.Dense(kernel.shape[1], activation="softmax", name="predictions")
    model = keras.Model(inputs, layer(inputs), name=name)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model
