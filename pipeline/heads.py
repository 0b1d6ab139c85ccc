"""Stage two: train a classifier on cached features alone (no images, no backbone, no GPU needed).

  --head dense    Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)
                  (--hidden 0: standardize -> softmax), EarlyStopping on val loss with the best
                  weights restored, ModelCheckpoint of the best epoch.
  --head logreg   scikit-learn Pipeline(StandardScaler, LogisticRegression(lbfgs, multinomial)).
  --head knn      scikit-learn Pipeline(StandardScaler, KNeighborsClassifier(cosine)): the
                  training-free k-nearest-neighbour probe of DINO- and CLIP-style evaluations.

HEADS is the one table of head kinds (defaults, train function, saved artifact, what a sweep may
vary) and SETTINGS the one table of valid ranges; a new head is one HeadKind row plus its train
function. Each run goes to cache/heads/<head>-<features hash>-<settings hash>/ (the row's
artifact: model.keras or model.joblib; run.json; history.json for heads trained by epochs) and
its report to cache/reports/<same name>/ (report.json, confusion.png, curves.png). A run whose folder exists is up to date and is not trained again.
The model is chosen on the validation split; test accuracy is only reported.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline import flags, records, store, views
from pipeline.errors import UserError, warn
from pipeline.features import default_features, load_features  # noqa: F401  (the one features-file rule)
from pipeline.outputs import Lock, atomic_dir, write_json_atomic

# ---------------------------------------------------------------- settings and their valid ranges

@dataclass(frozen=True)
class Interval:
    """A number of `kind` between `low` and `high` (None: unbounded), like scikit-learn's
    _parameter_constraints; floats must also be finite."""
    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "left"       # which ends belong: "left", "right", "both" or "neither"

    def parse(self, text):
        if isinstance(text, bool) or (self.kind is int and isinstance(text, float) and not text.is_integer()):
            raise ValueError(text)
        value = self.kind(text)
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        if (not math.isfinite(value)
                or (self.low is not None and not (value >= self.low if left else value > self.low))
                or (self.high is not None and not (value <= self.high if right else value < self.high))):
            raise ValueError(text)
        return value

    def __str__(self):
        what = "a whole number" if self.kind is int else "a finite number"
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        if self.low is not None and self.high is not None:
            span = f"in {'[' if left else '('}{self.low}, {self.high}{']' if right else ')'}"
            return f"{what} {span}" if self.kind is int else span
        if self.low == 0 and not left:
            return f"positive ({what} > 0)"
        return what if self.low is None else f"{what} {'>=' if left else '>'} {self.low}"


@dataclass(frozen=True)
class Choice:
    options: tuple

    def parse(self, text):
        if text not in self.options:
            raise ValueError(text)
        return text

    def __str__(self):
        return f"one of {', '.join(self.options)}"


# setting -> (valid values, what it does): the one place flags, grids and make_settings check
# against, with one message for every mistake.
SETTINGS = {
    "hidden": (Interval(int, 0), "hidden units, 0 = linear softmax"),
    "dropout": (Interval(float, 0, 1), "dropout after the hidden layer"),
    "lr": (Interval(float, 0, closed="neither"), "Adam learning rate"),
    "batch_size": (Interval(int, 1), "rows per step"),
    "epochs": (Interval(int, 1), "most epochs; early stopping usually ends sooner"),
    "l2": (Interval(float, 0), "L2 penalty on the Dense kernels"),
    "patience": (Interval(int, 0), "epochs without a better val loss before stopping"),
    "seed": (Interval(int, 0, flags.SEED_MAX, closed="both"), "weight init, dropout, shuffling"),
    "C": (Interval(float, 0, closed="neither"), "inverse regularization strength"),
    "max_iter": (Interval(int, 1), "lbfgs iterations at most"),
    "k": (Interval(int, 1), "neighbours that vote (at most the number of training rows)"),
    "weighting": (Choice(("uniform", "distance")), "equal votes, or votes weighted by 1/cosine distance"),
}


def parse_setting(head: str, key: str, text):
    """One setting from a flag or a grid value, converted to its type and checked."""
    if key not in HEADS[head].defaults:
        raise UserError(f"unknown {head} setting {key!r}; known: {', '.join(HEADS[head].defaults)}")
    constraint = SETTINGS[key][0]
    try:
        return constraint.parse(text)
    except (TypeError, ValueError):
        raise UserError(f"{key} must be {constraint}, got {text!r}") from None


def make_settings(head: str, **given) -> dict:
    """The full settings of a head: defaults overridden by `given` (None = default)."""
    if head not in HEADS:
        raise UserError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    return canonical(head, {key: default if given.get(key) is None else parse_setting(head, key, given[key])
                            for key, default in HEADS[head].defaults.items()})


def canonical(head: str, settings: dict) -> dict:
    """Settings that are one run written differently, written one way (the row's rule), so they
    train once."""
    return HEADS[head].canonical(settings)


def _no_dropout_without_hidden(settings: dict) -> dict:
    """Dense: without a hidden layer there is no dropout."""
    return {**settings, "dropout": 0.0} if settings["hidden"] == 0 else settings


def run_name(head: str, features_hash: str, settings: dict) -> str:
    return f"{head}-{features_hash}-{store.settings_hash(settings)}"


# ---------------------------------------------------------------- features

def _identity(fs: store.FeatureSet) -> dict:
    return {"path": str(Path(fs.path).absolute()), "settings_hash": fs.attrs["settings_hash"],
            "feature_width": int(fs.attrs["feature_width"]), "class_names": fs.class_names,
            "views": len(fs.splits["train"].views)}


# ---------------------------------------------------------------- training, one function per kind

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
    """Fit on train, stop on val loss; the best epoch is saved as out_dir/model.keras as it trains.
    Returns (model with the best weights, history, metrics)."""
    _configure_tf(threads)
    import keras
    keras.utils.set_random_seed(s["seed"])
    (x_tr, y_tr), validation = (views.training_rows(fs.splits[k]) for k in ("train", "val"))
    model = build_dense(x_tr, len(fs.class_names), s)
    model.compile(optimizer=keras.optimizers.Adam(s["lr"]), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=s["patience"],
                                               restore_best_weights=True),
                 # the best epoch on disk as it trains: this file becomes the run's model.keras
                 keras.callbacks.ModelCheckpoint(out_dir / records.MODEL, monitor="val_loss",
                                                 save_best_only=True)]
    fit = model.fit(x_tr, y_tr.astype("int32"), validation_data=(validation[0], validation[1].astype("int32")),
                    epochs=s["epochs"], batch_size=s["batch_size"], callbacks=callbacks,
                    verbose=verbose, shuffle=True)
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    val_loss = history["val_loss"]      # EarlyStopping restored the first lowest one
    return model, history, {"epochs": len(val_loss), "best_epoch": val_loss.index(min(val_loss)) + 1}


def train_logreg(fs: store.FeatureSet, s: dict, out_dir: Path, verbose=0, threads=None):
    """Returns (fitted Pipeline, None, whether lbfgs converged within max_iter and how many
    iterations it took); saved as out_dir/model.joblib."""
    import warnings
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


def train_knn(fs: store.FeatureSet, s: dict, out_dir: Path, verbose=0, threads=None):
    """Cosine k-nearest neighbours on standardized features: no training beyond storing the
    standardized train rows (float32). Returns (fitted Pipeline, None, metrics); saved as
    out_dir/model.joblib."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    tr = fs.splits["train"]
    rows = len(tr.labels) * len(tr.views)     # the model holds every stored view of each train image
    if s["k"] > rows:
        raise UserError(f"k must be at most the number of training rows ({rows}), got {s['k']}")
    model = Pipeline([("scale", StandardScaler()),
                      ("knn", KNeighborsClassifier(n_neighbors=s["k"], weights=s["weighting"], metric="cosine",
                                                   algorithm="brute", n_jobs=threads))])
    model.fit(*views.training_rows(tr))     # every stored view of each train image
    _save_joblib(model, out_dir)
    return model, None, {"train_rows": rows}


def _save_joblib(model, out_dir: Path):
    import joblib
    joblib.dump(model, out_dir / records.MODEL_JOBLIB)


def _load_keras(path: Path):
    _configure_tf(None)
    import keras
    return keras.models.load_model(path)


def _load_joblib(path: Path):
    import joblib
    return joblib.load(path)


# ---------------------------------------------------------------- the head table

@dataclass(frozen=True)
class HeadKind:
    name: str
    summary: str
    # every setting with its default (ranges in SETTINGS). Dense batch 1024: on a 2-core CPU an
    # epoch over 45,000 x 2048 takes ~3 s against ~11 s at 256, with the same real-feature accuracy.
    defaults: dict
    train: Callable        # (fs, settings, out_dir, verbose, threads) -> (model, history or None, metrics)
    artifact: str          # the model file train() leaves in the run folder
    load: Callable         # artifact path -> model with predict_proba (sklearn) or predict (Keras)
    sweep: tuple           # the settings a sweep may vary (its leaderboard's columns without a grid)
    canonical: Callable = field(default=lambda settings: settings)
    # a softmax output layer: a temperature fitted on val (pipeline.calibration) calibrates it
    calibrated: bool = False
    # how a sweep breaks a tie between configurations toward the more regularized one, as the
    # one-standard-error rule does (Breiman et al.): (setting, +1 smaller is simpler / -1 larger is)
    simpler: tuple = ()


HEADS = {kind.name: kind for kind in [
    HeadKind("dense", "Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)",
             {"hidden": 1024, "dropout": 0.5, "lr": 1e-3, "batch_size": 1024, "epochs": 100, "l2": 0.0,
              "patience": 5, "seed": 0},
             train_dense, records.MODEL, _load_keras,
             ("hidden", "dropout", "lr", "batch_size", "l2", "patience", "seed"), _no_dropout_without_hidden,
             calibrated=True, simpler=(("hidden", 1), ("l2", -1), ("dropout", -1))),
    HeadKind("logreg", "scikit-learn: StandardScaler -> LogisticRegression(lbfgs)", {"C": 0.1, "max_iter": 1000},
             train_logreg, records.MODEL_JOBLIB, _load_joblib, ("C", "max_iter"), simpler=(("C", 1),)),
    HeadKind("knn", "scikit-learn: StandardScaler -> cosine k-nearest neighbours", {"k": 20, "weighting": "distance"},
             train_knn, records.MODEL_JOBLIB, _load_joblib, ("k", "weighting"), simpler=(("k", -1),)),
]}


def predict_proba(model, x):
    """(N, K) class probabilities from any kind of head."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)
    return model.predict(x, batch_size=4096, verbose=0)


def load_head(run_dir):
    """The saved model of a run folder, by the artifact its run.json's head kind names."""
    run_dir = Path(run_dir)
    run_json = run_dir / records.RUN_JSON
    kinds = [HEADS[_kind(run_json)]] if run_json.is_file() else list(HEADS.values())
    for kind in kinds:
        if (run_dir / kind.artifact).is_file():
            return kind.load(run_dir / kind.artifact)
    raise UserError(f"{run_dir} holds no {' or '.join(sorted({k.artifact for k in kinds}))}")


# ---------------------------------------------------------------- one run

def read_run_json(path: Path) -> dict:
    """A head run's run.json (pipeline.records: a damaged one is a UserError saying what to do)."""
    return records.read_run(Path(path).parent)


def _kind(run_json: Path) -> str:
    """The head kind a run.json names; one this version does not know is a damaged record."""
    head = records.run_kind(read_run_json(run_json))
    if head not in HEADS:
        raise records.damaged(run_json, records.RUN, f"unknown head kind {head!r}")
    return head


def finished_run(cache_dir, head: str, features_hash: str, settings: dict) -> dict | None:
    """run.json of the run with these settings (plus run_dir, report, skipped), if it finished:
    a run.json (written last) and a model."""
    name = run_name(head, features_hash, settings)
    run_dir = records.folder(cache_dir, records.HEADS) / name
    if not (run_dir / records.RUN_JSON).is_file() or not (run_dir / HEADS[head].artifact).is_file():
        return None
    return {**read_run_json(run_dir / records.RUN_JSON), "run_dir": str(run_dir),
            "report": str(records.folder(cache_dir, records.REPORTS) / name), "skipped": True}


def _check_finite(y_prob: dict, head: str):
    """A diverged model (NaN or infinite probabilities) is not a result: nothing is saved. (A NaN
    epoch followed by restoring an earlier best one is fine: the saved model is what counts.)"""
    import numpy as np
    if not all(np.isfinite(p).all() for p in y_prob.values()):
        raise UserError(f"the {head} head diverged (its predictions are not finite); nothing was saved; "
                        "lower --lr or check the features")


def run_head(fs: store.FeatureSet, head: str, settings: dict, cache_dir, verbose=0, threads=None,
             wait: bool = False) -> dict:
    """Train (unless up to date), save, report. Returns run.json's content plus run_dir, report and
    skipped. Under the run's lock (a second run on the same settings is refused, or with `wait`
    waits and then finds it done); model and report folders are written under temporary names and
    renamed when complete, run.json last."""
    from pipeline.calibration import calibrate, summary
    from pipeline.report import write_report
    done = finished_run(cache_dir, head, fs.attrs["settings_hash"], settings)
    if done:
        return done
    name = run_name(head, fs.attrs["settings_hash"], settings)
    final = records.folder(cache_dir, records.HEADS) / name
    report_dir = records.folder(cache_dir, records.REPORTS) / name
    with Lock(final, wait=wait, also=[report_dir]):
        done = finished_run(cache_dir, head, fs.attrs["settings_hash"], settings)
        if done:                                    # finished by the run we waited for
            return done
        with atomic_dir(final) as tmp:
            started = time.perf_counter()
            model, history, metrics = HEADS[head].train(fs, settings, tmp, verbose, threads)
            if history is not None:
                write_json_atomic(tmp / records.HISTORY_JSON, history)
            wall = time.perf_counter() - started
            y_true = {s: fs.splits[s].labels for s in ("val", "test")}
            # every stored view of each image, and their mean: a 2-view file is evaluated with flip TTA
            per_view = {s: views.per_view(lambda x: predict_proba(model, x), fs.splits[s].views) for s in ("val", "test")}
            y_prob = {s: p.mean(axis=0) for s, p in per_view.items()}
            _check_finite(y_prob, head)
            temperature, after = None, None
            if HEADS[head].calibrated:      # a softmax output layer: temperature scaling fitted on val
                temperature, after = calibrate(y_true, per_view)
            info = {"head": head, "settings": settings, "features": _identity(fs), "metrics": {}}
            report = write_report(report_dir, y_true=y_true, y_prob=y_prob, class_names=fs.class_names,
                                  wall_seconds=wall, history=history, features=fs, cache_dir=cache_dir,
                                  calibrated=after and {"temperature": temperature, "y_prob": after},
                                  extra={"run": name, "head": head, "settings": settings, "features": info["features"]})
            info["calibration"] = summary(y_true, y_prob, after, temperature)
            info["metrics"] = {"val_accuracy": report["val_accuracy"], "test_accuracy": report["test_accuracy"],
                               "val_accuracy_interval": report["val_accuracy_interval"],
                               "test_accuracy_interval": report["test_accuracy_interval"],
                               "wall_seconds": report["wall_seconds"], **metrics}
            write_json_atomic(tmp / records.RUN_JSON, info)   # last: a folder with run.json is a finished run
    return {**info, "run_dir": str(final), "report": str(report_dir), "skipped": False, "model": model}


def find_best_head(cache_dir, settings_hash: str, head: str = "dense") -> Path | None:
    """The model file of the finished `head` run with the best validation accuracy on the features
    file `settings_hash`; None when there is none. A run with a damaged run.json is left out with a
    warning: the user named none of them, and one bad run must not hide the others."""
    best, best_acc = None, -1.0
    runs = records.folder(cache_dir, records.HEADS)
    for run_json in sorted(runs.glob(f"{head}-{settings_hash}-*/{records.RUN_JSON}")):
        model = run_json.parent / HEADS[head].artifact
        if not model.is_file():
            continue                       # not a finished run
        try:
            acc = read_run_json(run_json)["metrics"]["val_accuracy"]
        except UserError as exc:
            warn(f"left out of the search for the best {head} head: {exc}")
            continue
        if acc > best_acc:
            best, best_acc = model, acc
    return best


# ---------------------------------------------------------------- command line

def add_common_arguments(p):
    """Flags shared by `head` and `sweep`: one group per head kind, one flag per setting, from the
    tables; head settings default to None = the row's default."""
    p.add_argument("--features", metavar="FILE", help="stage-one HDF5 file (default: the newest complete "
                   "file in CACHE/features, whatever its settings)")
    p.add_argument("--head", default="dense", choices=list(HEADS), help="which classifier (default: dense)")
    flags.add_cache_dir(p, "models and reports")
    for kind in HEADS.values():
        group = p.add_argument_group(f"--head {kind.name}", kind.summary)
        for key, default in kind.defaults.items():
            constraint, what = SETTINGS[key]
            metavar = "{" + ",".join(constraint.options) + "}" if isinstance(constraint, Choice) else (
                "N" if constraint.kind is int else "F")
            group.add_argument(f"--{key.replace('_', '-')}", metavar=metavar, help=f"{what} (default: {default})")


def settings_from_args(args) -> dict:
    """The chosen kind's settings from its flags; another kind's flag is refused, not ignored."""
    for kind in HEADS.values():
        for key in kind.defaults:
            if getattr(args, key, None) is not None and key not in HEADS[args.head].defaults:
                kinds = " or ".join(f"--head {k.name}" for k in HEADS.values() if key in k.defaults)
                raise UserError(f"--{key.replace('_', '-')} applies to {kinds}, not --head {args.head}")
    return make_settings(args.head, **{k: getattr(args, k, None) for k in HEADS[args.head].defaults})


def features_from_args(args) -> store.FeatureSet:
    return load_features(args.features or default_features(args.cache_dir))


def add_arguments(p):
    add_common_arguments(p)
    p.add_argument("--seeds", type=flags.positive_int, default=1, metavar="N",
                   help="dense: train N seeds (--seed, --seed + 1, ...) and report the mean, standard deviation "
                        "and 95%% interval of the mean of the accuracies (default: 1)")


def run(args):
    from pipeline.report import print_summary
    settings = settings_from_args(args)        # flag mistakes surface before any loading
    from pipeline import seeds
    seeds.check(args.head, args.seeds)
    fs = features_from_args(args)
    if args.seeds > 1:
        summary, path = seeds.run_seeds(fs, args.head, settings, args.cache_dir, args.seeds, verbose=2)
        print(seeds.summary_text(summary))
        print(f"summary: {path}")
        return
    result = run_head(fs, args.head, settings, args.cache_dir, verbose=2)
    if result["skipped"]:
        print(f"up to date: {result['run_dir']}")
    report_json = Path(result["report"], records.REPORT_JSON)
    if report_json.is_file():
        print_summary(records.read(report_json, records.REPORT), title=f"{args.head} head on {fs.path.name}")
    print(f"report: {result['report']}")
    print(f"model:  {result['run_dir']}")
