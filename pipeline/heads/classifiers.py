"""One train function per head kind, on cached features alone (no images, no backbone, no GPU needed):
  dense    Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)
           (hidden 0: standardize -> softmax), EarlyStopping on val loss after min_epochs with the
           best weights restored; batch, patience and min_epochs fit the data size (autosize.py).
  logreg   scikit-learn Pipeline(StandardScaler, LogisticRegression(lbfgs, multinomial)).
  knn      pipeline.heads.knn: standardized rows, cosine k-nearest neighbours through the search index.
The model is chosen on the validation split; test accuracy is only reported."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from pipeline import store
from pipeline.extract import views
from pipeline.foundation import layout
from pipeline.heads import autosize, streamed_data


def _configure_tf(threads: int | None):
    """Import TensorFlow lazily (never at module level: `--help` stays quick), optionally capped to
    `threads` CPU threads so parallel sweep workers do not fight over the cores."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")    # a sweep worker trains many models: retracing notes are noise
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass           # already initialised in this worker process, with the same numbers
    return tf


def build_dense(train_x, n_classes: int, s: dict, moments=None):
    """Raw features in, softmax out; standardization is the first layer, so the saved model needs
    nothing else (stage three stacks it on the backbone as it is). Built-in layers only. The layer
    adapts to `train_x`, or takes `moments` (mean, variance) computed by streaming (train_x then
    only gives the width)."""
    import keras
    from keras import layers
    reg = keras.regularizers.L2(s["l2"]) if s["l2"] else None
    inputs = keras.Input((train_x.shape[1],), dtype="float32", name="features")
    if moments is None:
        norm = layers.Normalization(name="standardize")
        norm.adapt(train_x)
    else:
        norm = layers.Normalization(mean=moments[0], variance=moments[1], name="standardize")
    x = norm(inputs)
    if s["hidden"]:
        x = layers.Dense(s["hidden"], activation="relu", kernel_regularizer=reg, name="hidden")(x)
        x = layers.Dropout(s["dropout"], seed=s["seed"], name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", kernel_regularizer=reg, name="predictions")(x)
    return keras.Model(inputs, outputs, name="dense_head")


def train_dense(fs: store.RowSet, s: dict, out_dir: Path, verbose=0, threads=None):
    """Fit on train; from epoch min_epochs + 1 on, stop on val loss and restore the best epoch's
    weights, saved as out_dir/model.keras. Returns (model with the best weights, history, metrics)."""
    _configure_tf(threads)
    import keras
    keras.utils.set_random_seed(s["seed"])
    model, fit = fit_dense(fs, s, verbose)
    model.save(out_dir / layout.MODEL)      # the best epoch's weights, restored at the end of fit
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    val_loss = history["val_loss"]
    watched = val_loss[s["min_epochs"]:] or val_loss[-1:]      # none watched: the last epoch is kept
    best = len(val_loss) - len(watched) + watched.index(min(watched)) + 1   # restored: the first lowest
    train = fs.splits["train"]
    return model, history, {"epochs": len(val_loss), "best_epoch": best,
                            "steps_per_epoch": autosize.steps_per_epoch(streamed_data.n_rows(train), s["batch_size"]),
                            **({"streamed": True} if streamed_data.is_streamed(train) else {})}


def fit_dense(fs: store.RowSet, s: dict, verbose=0):
    """Build and fit the dense model of settings `s` (early stopping on val loss, best weights
    restored): on arrays in memory, or on a streamed file's batches (pipeline.heads.streamed_data).
    Returns (model, Keras history)."""
    import keras
    train, val = fs.splits["train"], fs.splits["val"]
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=s["patience"], restore_best_weights=True,
                                            start_from_epoch=s["min_epochs"])
    compile_args = dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if streamed_data.is_streamed(train):
        model = build_dense(train.features, len(fs.class_names), s, moments=streamed_data.moments(train))
        model.compile(optimizer=keras.optimizers.Adam(s["lr"]), **compile_args)
        fit = model.fit(streamed_data.feed(train, s["batch_size"], s["seed"]), epochs=s["epochs"], shuffle=False,
                        validation_data=streamed_data.feed(val, streamed_data.PREDICT_ROWS, shuffle=False),
                        callbacks=[stopper], verbose=verbose)
        return model, fit
    (x_tr, y_tr), validation = (views.training_rows(fs.splits[k]) for k in ("train", "val"))
    model = build_dense(x_tr, len(fs.class_names), s)
    model.compile(optimizer=keras.optimizers.Adam(s["lr"]), **compile_args)
    fit = model.fit(x_tr, y_tr.astype("int32"), validation_data=(validation[0], validation[1].astype("int32")),
                    epochs=s["epochs"], batch_size=s["batch_size"], callbacks=[stopper],
                    verbose=verbose, shuffle=True)
    return model, fit


def train_logreg(fs: store.RowSet, s: dict, out_dir: Path, verbose=0, threads=None):
    """Returns (fitted Pipeline, None, whether lbfgs converged within max_iter and how many
    iterations it took); saved as out_dir/model.joblib. A streamed file trains the same model by the
    same solver, a pass over the file per evaluation (pipeline.heads.streamed_logreg)."""
    if streamed_data.is_streamed(fs.splits["train"]):
        from pipeline.heads import streamed_logreg
        model, metrics = streamed_logreg.train(fs, s, verbose)
        _save_joblib(model, out_dir)
        return model, None, metrics
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    model = Pipeline([("scale", StandardScaler()),
                      ("logreg", LogisticRegression(C=s["C"], max_iter=s["max_iter"], solver="lbfgs"))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(*views.training_rows(fs.splits["train"]))
    _save_joblib(model, out_dir)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model, None, {"converged": converged, "iterations": int(model[-1].n_iter_.max())}


def _save_joblib(model, out_dir: Path):
    import joblib
    joblib.dump(model, out_dir / layout.MODEL_JOBLIB)


def load_keras(path: Path):
    _configure_tf(None)
    import keras
    return keras.models.load_model(path)


def load_joblib(path: Path):
    import joblib
    return joblib.load(path)
