"""The head table: HEADS, one row per kind (defaults, train function, saved artifact, what a sweep may
vary and which way is simpler), and SETTINGS, the one table of valid ranges, with one message
template for every range error; a new head is one HeadKind row plus its train function
(classifiers.py). The flags of `head` and `sweep` come from these tables, and a flag that does not
apply to the chosen kind is refused, not ignored."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.foundation import flags, records
from pipeline.foundation.errors import UserError
from pipeline.heads.classifiers import load_joblib, load_keras, train_dense, train_knn, train_logreg


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
    # a softmax output layer: a temperature fitted on val (pipeline.ship.calibration) calibrates it
    calibrated: bool = False
    # how a sweep breaks a tie between configurations toward the more regularized one, as the
    # one-standard-error rule does (Breiman et al.): (setting, +1 smaller is simpler / -1 larger is)
    simpler: tuple = ()


HEADS = {kind.name: kind for kind in [
    HeadKind("dense", "Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)",
             {"hidden": 1024, "dropout": 0.5, "lr": 1e-3, "batch_size": 1024, "epochs": 100, "l2": 0.0,
              "patience": 5, "seed": 0},
             train_dense, records.MODEL, load_keras,
             ("hidden", "dropout", "lr", "batch_size", "l2", "patience", "seed"), _no_dropout_without_hidden,
             calibrated=True, simpler=(("hidden", 1), ("l2", -1), ("dropout", -1))),
    HeadKind("logreg", "scikit-learn: StandardScaler -> LogisticRegression(lbfgs)", {"C": 0.1, "max_iter": 1000},
             train_logreg, records.MODEL_JOBLIB, load_joblib, ("C", "max_iter"), simpler=(("C", 1),)),
    HeadKind("knn", "scikit-learn: StandardScaler -> cosine k-nearest neighbours", {"k": 20, "weighting": "distance"},
             train_knn, records.MODEL_JOBLIB, load_joblib, ("k", "weighting"), simpler=(("k", -1),)),
]}


# How a sweep breaks ties toward the more regularized configuration (each row's `simpler`).
TIE_LEVEL = 0.05
TIE_RULE = (f"ties: val accuracy not distinguishable from the best's (McNemar's exact test on the same val "
            f"images, p >= {TIE_LEVEL}); recommended: the most regularized of the ties (" + "; ".join(
                f"{k.name}: " + ", then ".join(f"{'smaller' if sign > 0 else 'larger'} {key}" for key, sign in k.simpler)
                for k in HEADS.values() if k.simpler) + "), then the fastest to train")


def predict_proba(model, x):
    """(N, K) class probabilities from any kind of head."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)
    return model.predict(x, batch_size=4096, verbose=0)


def load_head(run_dir):
    """The saved model of a run folder, by the artifact its run.json's head kind names."""
    run_dir = Path(run_dir)
    run_json = run_dir / records.RUN_JSON
    kinds = [HEADS[kind_of(run_json)]] if run_json.is_file() else list(HEADS.values())
    for kind in kinds:
        if (run_dir / kind.artifact).is_file():
            return kind.load(run_dir / kind.artifact)
    raise UserError(f"{run_dir} holds no {' or '.join(sorted({k.artifact for k in kinds}))}")


def read_run_json(path: Path) -> dict:
    """A head run's run.json (pipeline.foundation.records: a damaged one is a UserError saying what to do)."""
    return records.read_run(Path(path).parent)


def kind_of(run_json: Path) -> str:
    """The head kind a run.json names; one this version does not know is a damaged record."""
    head = records.run_kind(read_run_json(run_json))
    if head not in HEADS:
        raise records.damaged(run_json, records.RUN, f"unknown head kind {head!r}")
    return head


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
