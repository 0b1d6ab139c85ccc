"""The logreg head on a streamed features file: the same model, trained another way. In memory it is
scikit-learn's StandardScaler + LogisticRegression (lbfgs, multinomial), which needs every row at
once. Streamed, the same softmax layer on standardized rows is fitted by the dense path
(classifiers.fit_dense: hidden 0, Adam, batches from pipeline.heads.streamed_data) to the same
objective: LogisticRegression minimizes ||W||^2 / 2 + C * sum(loss), which divided by C * N is the
mean loss + ||W||^2 / (2 C N), Keras's L2(1 / (2 C N)) on the kernel (the intercept unpenalized,
as scikit-learn's). Training stops as SGDClassifier(early_stopping=True) does at scale, when the
held-out loss (val's) stops falling, and keeps the best epoch's weights (the dense head's rule and
its auto patience): run to the training objective's minimum, a file of many near-copies of its
rows let the weakened penalty 1 / (2 C N) fit them ever closer, epoch after epoch, while val got
worse (docs/numbers.md, "Stage two at scale"). The result is written back into a fitted
scikit-learn Pipeline (scaler statistics and coefficients), so `predict`, `export` and affine.py
treat it as any logreg run.

Why not SGDClassifier.partial_fit: its multi-class model is one-vs-rest, not the softmax that
LogisticRegression and the shipped Dense(K, softmax) layer are (docs/numbers.md has both measured)."""
from __future__ import annotations

import numpy as np

from pipeline.heads import autosize, streamed_data

LR = 1e-3            # the dense head's default Adam learning rate
MAX_EPOCHS = 100     # the dense head's default --epochs; max_iter (lbfgs iterations) caps it too


def settings(s: dict, train_rows: int) -> dict:
    """The dense settings that train logreg settings `s` on `train_rows` rows."""
    dense = {"hidden": 0, "dropout": 0.0, "lr": LR, "batch_size": None, "epochs": min(MAX_EPOCHS, s["max_iter"]),
             "l2": 1.0 / (2.0 * s["C"] * train_rows), "patience": None, "min_epochs": None, "seed": 0}
    return autosize.dense(dense, train_rows)


def as_pipeline(model, s: dict, class_count: int):
    """The fitted scikit-learn Pipeline(StandardScaler, LogisticRegression) equal to the Keras model
    Normalization -> Dense(K, softmax)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    norm, dense = model.get_layer("standardize"), model.get_layer("predictions")
    mean = np.asarray(norm.mean, np.float64).reshape(-1)
    variance = np.asarray(norm.variance, np.float64).reshape(-1)
    kernel, bias = (np.asarray(w, np.float64) for w in dense.get_weights())
    scaler = StandardScaler()
    scaler.mean_, scaler.var_ = mean, variance
    scaler.scale_ = np.where(variance > 0, np.sqrt(variance), 1.0)     # scikit-learn's rule for constant features
    scaler.n_features_in_, scaler.n_samples_seen_ = len(mean), 0
    logreg = LogisticRegression(C=s["C"], max_iter=s["max_iter"], solver="lbfgs")
    coef, intercept = kernel.T, bias
    if class_count == 2:                     # scikit-learn's binary model: one row, sigmoid(z1 - z0)
        coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
    logreg.coef_, logreg.intercept_ = coef, intercept
    logreg.classes_, logreg.n_features_in_ = np.arange(class_count), len(mean)
    return Pipeline([("scale", scaler), ("logreg", logreg)])


def train(fs, s: dict, fit_dense, verbose=0):
    """(fitted Pipeline, metrics) for logreg settings `s` on the streamed file `fs`; `fit_dense`:
    classifiers.fit_dense (passed in: that module calls this one)."""
    import keras
    keras.utils.set_random_seed(0)
    dense = settings(s, streamed_data.n_rows(fs.splits["train"]))
    model, fit = fit_dense(fs, dense, verbose)
    epochs = len(fit.history["loss"])
    pipeline = as_pipeline(model, s, len(fs.class_names))
    pipeline[-1].n_iter_ = np.array([epochs])
    return pipeline, {"converged": epochs < dense["epochs"], "iterations": epochs, "streamed": True,
                      "optimizer": f"Adam lr {LR}, batch {dense['batch_size']}, L2 {dense['l2']:.3g}"}
