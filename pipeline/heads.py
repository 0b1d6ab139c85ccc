"""Stage two: train a classifier on cached features alone (no images, no backbone, no GPU needed).

  --head dense    Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)
                  (--hidden 0: standardize -> softmax), EarlyStopping on val loss with the best
                  weights restored, ModelCheckpoint of the best epoch.
  --head logreg   scikit-learn Pipeline(StandardScaler, LogisticRegression(lbfgs, multinomial)).

Each run goes to cache/heads/<head>-<features hash>-<settings hash>/ (model.keras or
model.joblib, run.json, history.json) and its report to cache/reports/<same name>/ (report.json,
confusion.png, curves.png). A run whose folder exists is up to date and is not trained again.
The model is chosen on the validation split; test accuracy is only reported.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from pipeline import store
from pipeline.errors import UserError

HEADS = ("dense", "logreg")
# Every setting of a head, with its default; the types here are the types flags and grids parse to.
# Batch 1024: on a 2-core CPU an epoch over 45,000 x 2048 takes ~3 s against ~11 s at 256, and
# the real-feature accuracy was the same (a sweep over 64..1024 stayed within noise).
DEFAULTS = {
    "dense": {"hidden": 1024, "dropout": 0.5, "lr": 1e-3, "batch_size": 1024, "epochs": 100,
              "l2": 0.0, "patience": 5, "seed": 0},
    "logreg": {"C": 0.1, "max_iter": 1000},
}
_VALID = {   # setting -> (is it valid?, what it must be)
    "hidden": (lambda v: v >= 0, "a whole number >= 0 (0: no hidden layer)"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr": (lambda v: v > 0, "positive"),
    "batch_size": (lambda v: v >= 1, "a whole number >= 1"),
    "epochs": (lambda v: v >= 1, "a whole number >= 1"),
    "l2": (lambda v: v >= 0, ">= 0"),
    "patience": (lambda v: v >= 0, "a whole number >= 0"),
    "seed": (lambda v: True, "a whole number"),
    "C": (lambda v: v > 0, "positive"),
    "max_iter": (lambda v: v >= 1, "a whole number >= 1"),
}


# ---------------------------------------------------------------- settings

def parse_setting(head: str, key: str, text) -> int | float:
    """One setting from a flag or a grid value, converted to its type and checked."""
    if key not in DEFAULTS[head]:
        raise UserError(f"unknown {head} setting {key!r}; known: {', '.join(DEFAULTS[head])}")
    kind = type(DEFAULTS[head][key])
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UserError(f"{key} must be {_VALID[key][1]}, got {text!r}") from None
    if not _VALID[key][0](value):
        raise UserError(f"{key} must be {_VALID[key][1]}, got {text!r}")
    return value


def make_settings(head: str, **given) -> dict:
    """The full settings of a head: defaults overridden by `given` (None = default)."""
    if head not in HEADS:
        raise UserError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    return canonical({key: default if given.get(key) is None else parse_setting(head, key, given[key])
                      for key, default in DEFAULTS[head].items()})


def canonical(settings: dict) -> dict:
    """Without a hidden layer there is no dropout: settings differing only there are one run."""
    if settings.get("hidden") == 0:
        settings = {**settings, "dropout": 0.0}
    return settings


def run_name(head: str, features_hash: str, settings: dict) -> str:
    return f"{head}-{features_hash}-{store.settings_hash(settings)}"


# ---------------------------------------------------------------- features

def default_features(cache_dir) -> Path:
    """The newest complete features file in the cache made with `make features`' default settings."""
    from pipeline.backbone import BACKBONES, DEFAULT_BACKBONE
    default = {"backbone": DEFAULT_BACKBONE, "weights_source": "imagenet",
               "input_size": BACKBONES[DEFAULT_BACKBONE].default_size}
    found = []
    for path in Path(cache_dir, "features").glob("*.h5"):
        try:
            attrs = store.read_features(path, splits=()).attrs
        except UserError:
            continue       # incomplete or foreign: not a candidate
        if all(attrs.get(k) == v for k, v in default.items()) and len(attrs.get("row_shape", [0])) == 1:
            found.append(path)
    if not found:
        raise UserError(f"no complete features file with the default settings ({DEFAULT_BACKBONE}, ImageNet "
                        f"weights, {default['input_size']}x{default['input_size']}) in "
                        f"{Path(cache_dir, 'features')}; run `make features` first, or pass --features FILE")
    return max(found, key=lambda p: p.stat().st_mtime)


def load_features(path) -> store.FeatureSet:
    """Read a features file and check what stage two needs beyond the store's own schema checks."""
    import numpy as np
    fs = store.read_features(path)
    attrs, path = fs.attrs, fs.path
    if "settings" in attrs and store.settings_hash(attrs["settings"]) != attrs["settings_hash"]:
        raise UserError(f"{path} is stale: its settings no longer match its settings_hash "
                        f"{attrs['settings_hash']}; rerun `make features`")
    classes = attrs.get("class_names") or []
    if len(classes) < 2:
        raise UserError(f"{path} names {len(classes)} classes in class_names; a classifier needs at least 2")
    for name, split in fs.splits.items():
        x = split.features
        if x.ndim != 2:
            raise UserError(f"{path}: {name} features have shape {x.shape}; stage two needs one "
                            f"vector per image, (N, D)")
        if x.shape[1] != attrs.get("feature_width"):
            raise UserError(f"{path}: {name} features are {x.shape[1]} wide but the file's "
                            f"feature_width says {attrs.get('feature_width')}")
        if len(x) == 0:
            raise UserError(f"{path}: the {name} split is empty")
        if split.labels.max() >= len(classes):
            raise UserError(f"{path}: {name} has label {split.labels.max()} but only {len(classes)} class names")
        if not np.isfinite(x).all():
            raise UserError(f"{path}: {name} features contain NaN or infinite values; rerun `make features`")
    return fs


def _identity(fs: store.FeatureSet) -> dict:
    return {"path": str(fs.path), "settings_hash": fs.attrs["settings_hash"],
            "feature_width": int(fs.attrs["feature_width"]), "class_names": fs.class_names}


# ---------------------------------------------------------------- the two heads

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


def build_dense(train_x, n_classes: int, s: dict):
    """Raw features in, softmax out; standardization is the first layer, so the saved model needs
    nothing else (stage three stacks it on the backbone as it is). Built-in layers only."""
    import keras
    from keras import layers
    reg = keras.regularizers.L2(s["l2"]) if s["l2"] else None
    inputs = keras.Input((train_x.shape[1],), dtype="float32", name="features")
    norm = layers.Normalization(name="standardize")
    norm.adapt(train_x)
    x = norm(inputs)
    if s["hidden"]:
        x = layers.Dense(s["hidden"], activation="relu", kernel_regularizer=reg, name="hidden")(x)
        x = layers.Dropout(s["dropout"], seed=s["seed"], name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", kernel_regularizer=reg, name="predictions")(x)
    return keras.Model(inputs, outputs, name="dense_head")


def train_dense(fs: store.FeatureSet, s: dict, out_dir: Path, verbose=0, threads=None):
    """Fit on train, stop on val loss. Returns (model with the best weights, history dict)."""
    _configure_tf(threads)
    import keras
    keras.utils.set_random_seed(s["seed"])
    tr, va = fs.splits["train"], fs.splits["val"]
    model = build_dense(tr.features, len(fs.class_names), s)
    model.compile(optimizer=keras.optimizers.Adam(s["lr"]), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=s["patience"],
                                               restore_best_weights=True),
                 # the best epoch on disk as it trains: this file becomes the run's model.keras
                 keras.callbacks.ModelCheckpoint(out_dir / "model.keras", monitor="val_loss",
                                                 save_best_only=True)]
    fit = model.fit(tr.features, tr.labels.astype("int32"), validation_data=(va.features, va.labels.astype("int32")),
                    epochs=s["epochs"], batch_size=s["batch_size"], callbacks=callbacks,
                    verbose=verbose, shuffle=True)
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    return model, history


def train_logreg(fs: store.FeatureSet, s: dict):
    """Returns (fitted Pipeline, whether lbfgs converged within max_iter)."""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    model = Pipeline([("scale", StandardScaler()),
                      ("logreg", LogisticRegression(C=s["C"], max_iter=s["max_iter"], solver="lbfgs"))])
    tr = fs.splits["train"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(tr.features, tr.labels)
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def predict_proba(model, x):
    """(N, K) class probabilities from either kind of head."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)
    return model.predict(x, batch_size=4096, verbose=0)


def load_head(run_dir):
    """The saved model of a run folder: a keras.Model or a scikit-learn Pipeline."""
    run_dir = Path(run_dir)
    if (run_dir / "model.keras").is_file():
        _configure_tf(None)
        import keras
        return keras.models.load_model(run_dir / "model.keras")
    if (run_dir / "model.joblib").is_file():
        import joblib
        return joblib.load(run_dir / "model.joblib")
    raise UserError(f"{run_dir} holds no model.keras or model.joblib")


# ---------------------------------------------------------------- one run

def _write_json(path: Path, data):
    path.write_text(json.dumps(data, indent=2))


def finished_run(cache_dir, head: str, features_hash: str, settings: dict) -> dict | None:
    """run.json of the run with these settings (plus run_dir, report, skipped), if it finished."""
    name = run_name(head, features_hash, settings)
    run_json = Path(cache_dir) / "heads" / name / "run.json"
    if not run_json.is_file():
        return None
    return {**json.loads(run_json.read_text()), "run_dir": str(run_json.parent),
            "report": str(Path(cache_dir) / "reports" / name), "skipped": True}


def run_head(fs: store.FeatureSet, head: str, settings: dict, cache_dir, verbose=0, threads=None) -> dict:
    """Train (unless up to date), save, report. Returns run.json's content plus run_dir, report and
    skipped. Everything is written under temporary names and renamed when complete."""
    from pipeline.report import replace_dir, write_report
    done = finished_run(cache_dir, head, fs.attrs["settings_hash"], settings)
    if done:
        return done
    name = run_name(head, fs.attrs["settings_hash"], settings)
    final = Path(cache_dir) / "heads" / name
    report_dir = Path(cache_dir) / "reports" / name

    tmp = final.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        started = time.perf_counter()
        history, metrics = None, {}
        if head == "dense":
            model, history = train_dense(fs, settings, tmp, verbose, threads)
            val_loss = history["val_loss"]      # EarlyStopping restored the first lowest one
            metrics = {"epochs": len(val_loss), "best_epoch": val_loss.index(min(val_loss)) + 1}
            _write_json(tmp / "history.json", history)
        else:
            import joblib
            model, converged = train_logreg(fs, settings)
            metrics = {"converged": converged, "iterations": int(model[-1].n_iter_.max())}
            joblib.dump(model, tmp / "model.joblib")
        wall = time.perf_counter() - started
        y_true = {s: fs.splits[s].labels for s in ("val", "test")}
        y_prob = {s: predict_proba(model, fs.splits[s].features) for s in ("val", "test")}
        info = {"head": head, "settings": settings, "features": _identity(fs), "metrics": {}}
        report = write_report(report_dir, y_true=y_true, y_prob=y_prob, class_names=fs.class_names,
                              wall_seconds=wall, history=history, features=fs,
                              extra={"run": name, "head": head, "settings": settings, "features": info["features"]})
        info["metrics"] = {"val_accuracy": report["val_accuracy"], "test_accuracy": report["test_accuracy"],
                           "wall_seconds": report["wall_seconds"], **metrics}
        _write_json(tmp / "run.json", info)      # last: a folder with run.json is a finished run
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**info, "run_dir": str(final), "report": str(report_dir), "skipped": False, "model": model}


def find_best_head(cache_dir, settings_hash: str, head: str = "dense") -> Path | None:
    """The model file of the finished `head` run with the best validation accuracy on the features
    file `settings_hash`; None when there is none."""
    best, best_acc = None, -1.0
    for run_json in sorted(Path(cache_dir, "heads").glob(f"{head}-{settings_hash}-*/run.json")):
        acc = json.loads(run_json.read_text())["metrics"]["val_accuracy"]
        if acc > best_acc:
            best, best_acc = run_json.parent, acc
    if best is None:
        return None
    return best / ("model.keras" if head == "dense" else "model.joblib")


# ---------------------------------------------------------------- command line

def add_common_arguments(p):
    """Flags shared by `head` and `sweep`; head settings default to None = DEFAULTS."""
    d, l = DEFAULTS["dense"], DEFAULTS["logreg"]
    p.add_argument("--features", metavar="FILE", help="stage-one HDF5 file (default: the newest complete "
                   "file in CACHE/features made with the default settings)")
    p.add_argument("--head", default="dense", choices=HEADS, help="which classifier (default: dense)")
    p.add_argument("--cache-dir", default="cache", metavar="DIR", help="where models and reports go (default: cache)")
    p.add_argument("--seed", type=int, metavar="N", help=f"dense: weight init, dropout, shuffling (default: {d['seed']})")
    g = p.add_argument_group("dense head")
    g.add_argument("--hidden", metavar="N", help=f"hidden units, 0 = linear softmax (default: {d['hidden']})")
    g.add_argument("--dropout", metavar="F", help=f"dropout after the hidden layer (default: {d['dropout']})")
    g.add_argument("--lr", metavar="F", help=f"Adam learning rate (default: {d['lr']})")
    g.add_argument("--batch-size", metavar="N", help=f"(default: {d['batch_size']})")
    g.add_argument("--epochs", metavar="N", help=f"most epochs; early stopping usually ends sooner (default: {d['epochs']})")
    g.add_argument("--l2", metavar="F", help=f"L2 penalty on the Dense kernels (default: {d['l2']})")
    g.add_argument("--patience", metavar="N", help=f"epochs without a better val loss before stopping (default: {d['patience']})")
    g = p.add_argument_group("logistic-regression baseline")
    g.add_argument("--C", metavar="F", help=f"inverse regularization strength (default: {l['C']})")
    g.add_argument("--max-iter", metavar="N", help=f"lbfgs iterations at most (default: {l['max_iter']})")


def settings_from_args(args) -> dict:
    return make_settings(args.head, **{k: getattr(args, k, None) for k in DEFAULTS[args.head]})


def features_from_args(args) -> store.FeatureSet:
    return load_features(args.features or default_features(args.cache_dir))


def add_arguments(p):
    add_common_arguments(p)


def run(args):
    from pipeline.report import print_summary
    settings = settings_from_args(args)        # flag mistakes surface before any loading
    fs = features_from_args(args)
    result = run_head(fs, args.head, settings, args.cache_dir, verbose=2)
    if result["skipped"]:
        print(f"up to date: {result['run_dir']}")
    report_json = Path(result["report"], "report.json")
    if report_json.is_file():
        print_summary(json.loads(report_json.read_text()), title=f"{args.head} head on {fs.path.name}")
    print(f"report: {result['report']}")
    print(f"model:  {result['run_dir']}")
