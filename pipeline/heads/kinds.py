"""The head table: HEADS, one row per kind (its settings, train function, saved artifact, what a
sweep may vary and which way is simpler). Each kind's settings are one dataclass declared with
pipeline.foundation.settings (default, valid values, help), so a flag, a sweep's grid value and a
library call are checked one way, with one message template; a new head is one settings class,
one HeadKind row and its train function (classifiers.py). The flags of `head` and `sweep` come
from these declarations, and a flag that does not apply to the chosen kind is refused, not ignored."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.foundation import flags, layout, records, runs, settings
from pipeline.foundation.errors import UserError
from pipeline.foundation.settings import POSITIVE, Choice, Interval, setting
from pipeline.heads import autosize, knn
from pipeline.search import SETTINGS as INDEX_SETTINGS
from pipeline.heads.classifiers import load_joblib, load_keras, train_dense, train_logreg


# Each kind's settings. The dense ones that depend on the data size are auto (None), resolved from
# the training rows by pipeline.heads.autosize and recorded as numbers: an explicit equal value is
# the same run.
@dataclass
class DenseSettings:
    hidden: int = setting(1024, Interval(int, 0), "hidden units, 0 = linear softmax")
    dropout: float = setting(0.5, Interval(float, 0, 1), "dropout after the hidden layer")
    lr: float = setting(1e-3, POSITIVE, "Adam learning rate")
    batch_size: int | None = setting(None, Interval(int, 1), "rows per step",
                                     auto="the power of two nearest train rows / 50 (about 50 steps an epoch), "
                                     "32 to 1024: 1024 for all of CIFAR-10")
    epochs: int = setting(100, Interval(int, 1), "most epochs; early stopping usually ends sooner")
    l2: float = setting(0.0, Interval(float, 0), "L2 penalty on the Dense kernels")
    patience: int | None = setting(None, Interval(int, 0), "epochs without a better val loss before stopping",
                                   auto="the epochs of about 200 steps, at least 5")
    min_epochs: int | None = setting(None, Interval(int, 0), "epochs before early stopping watches the val loss "
                                     "(the best epoch is chosen after them)",
                                     auto="the epochs of about 300 steps, at most half of --epochs")
    seed: int = flags.seed_setting("weight init, dropout, shuffling")


@dataclass
class LogregSettings:
    C: float = setting(0.1, POSITIVE, "inverse regularization strength")
    max_iter: int = setting(1000, Interval(int, 1), "lbfgs iterations at most")


@dataclass
class KnnSettings:
    k: int = setting(20, Interval(int, 1), "neighbours that vote (at most the number of training rows)")
    weighting: str = setting("distance", Choice(("uniform", "distance")),
                             "equal votes, or votes weighted by 1/cosine distance")


def _no_dropout_without_hidden(settings: dict) -> dict:
    """Dense: without a hidden layer there is no dropout."""
    return {**settings, "dropout": 0.0} if settings["hidden"] == 0 else settings


@dataclass(frozen=True)
class HeadKind:
    name: str
    summary: str
    declared: type         # its settings dataclass (above): defaults, valid values, help
    train: Callable        # (fs, settings, out_dir, verbose, threads) -> (model, history or None, metrics)
    artifact: str          # the model file train() leaves in the run folder
    load: Callable         # artifact path -> model with predict_proba (sklearn) or predict (Keras)
    sweep: tuple           # the settings a sweep may vary (its leaderboard's columns without a grid)
    canonical: Callable = field(default=lambda settings: settings)
    # (settings, training rows) -> the settings with every auto (None) one resolved from the data size
    resolve: Callable = field(default=lambda settings, train_rows: settings)
    # a softmax output layer: a temperature fitted on val (pipeline.heads.calibration) calibrates it
    calibrated: bool = False
    # how a sweep breaks a tie between configurations toward the more regularized one, as the
    # one-standard-error rule does (Breiman et al.): (setting, +1 smaller is simpler / -1 larger is)
    simpler: tuple = ()
    # settings outside the flags that are part of a run's identity (its name's hash): the knn head's index's
    extra: dict = field(default_factory=dict)

    @property
    def defaults(self) -> dict:
        """Every setting with its default, in declaration order (what run.json stores and the run's
        hash covers)."""
        return settings.record(self.declared())

    @property
    def fields(self) -> dict:
        return {f.name: f for f in settings.declared(self.declared)}


HEADS = {kind.name: kind for kind in [
    HeadKind("dense", "Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)", DenseSettings,
             train_dense, layout.MODEL, load_keras,
             ("hidden", "dropout", "lr", "batch_size", "l2", "patience", "min_epochs", "seed"),
             _no_dropout_without_hidden, resolve=autosize.dense, calibrated=True, simpler=(("hidden", 1), ("l2", -1), ("dropout", -1))),
    HeadKind("logreg", "scikit-learn: StandardScaler -> LogisticRegression(lbfgs)", LogregSettings,
             train_logreg, layout.MODEL_JOBLIB, load_joblib, ("C", "max_iter"), simpler=(("C", 1),)),
    HeadKind("knn", "standardize -> cosine k-nearest neighbours through the cached search index",
             KnnSettings, knn.train_knn, layout.MODEL_JOBLIB, load_joblib, ("k", "weighting"),
             extra={"index": INDEX_SETTINGS}, simpler=(("k", -1),)),
]}


def parse_setting(head: str, key: str, value):
    """One setting from a grid value or a library call, converted to its type and checked; the
    message names the setting ("lr must be positive ..."), as a flag's names the flag."""
    kind = HEADS[head]
    if key not in kind.fields:
        raise UserError(f"unknown {head} setting {key!r}; known: {', '.join(kind.fields)}")
    return settings.parse_value(kind.fields[key], value, name=key)


def make_settings(head: str, **given) -> dict:
    """The full settings of a head: defaults overridden by `given` (None = default), each checked."""
    # the --head flag's own check and message, for a library caller too
    settings.parse_value(next(f for f in settings.declared(StageTwoSettings) if f.name == "head"), head)
    checked = {key: parse_setting(head, key, value) for key, value in given.items() if value is not None}
    return canonical(head, {**HEADS[head].defaults, **checked})


def resolve(head: str, settings: dict, fs) -> dict:
    """The settings with every auto one resolved from the size of the features' train split (every
    stored view of each image is a training row), as the run records them."""
    train = fs.splits["train"]
    return HEADS[head].resolve(settings, len(train.labels) * len(train.views))


def canonical(head: str, settings: dict) -> dict:
    """Settings that are one run written differently, written one way (the row's rule), so they
    train once."""
    return HEADS[head].canonical(settings)


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
    kinds = [HEADS[kind_of(run_dir)]] if (run_dir / layout.RUN_JSON).is_file() else list(HEADS.values())
    for kind in kinds:
        if (run_dir / kind.artifact).is_file():
            return kind.load(run_dir / kind.artifact)
    raise UserError(f"{run_dir} holds no {' or '.join(sorted({k.artifact for k in kinds}))}")


def kind_of(run_dir: Path) -> str:
    """The head kind a run folder's run.json names; one this version does not know is a damaged record."""
    head = runs.Run.read(run_dir).kind
    if head not in HEADS:
        raise records.damaged(run_dir / layout.RUN_JSON, records.RUN, f"unknown head kind {head!r}")
    return head




# ---------------------------------------------------------------- the flags of `head` and `sweep`

@dataclass
class StageTwoSettings:
    """The settings `head` and `sweep` share (each command adds its own; each kind's come from its
    class above)."""
    features: str | None = flags.features_setting()
    head: str = setting("dense", Choice(tuple(HEADS)), "which classifier")
    cache_dir: str = flags.cache_dir_setting("models and reports")


def add_arguments(p, declared: type):
    """The command's own flags (`declared`, a StageTwoSettings), then one group per head kind with
    one flag per setting; head settings default to None = the kind's default."""
    settings.add_flags(p, declared)
    for kind in HEADS.values():
        settings.add_flags(p.add_argument_group(f"--head {kind.name}", kind.summary), kind.declared, given_only=True)


def settings_from_args(args, head: str) -> dict:
    """The `head` kind's settings from its flags; another kind's flag is refused, not ignored."""
    for kind in HEADS.values():
        for f in settings.declared(kind.declared):
            if getattr(args, f.name, None) is not None and f.name not in HEADS[head].fields:
                kinds = " or ".join(f"--head {k.name}" for k in HEADS.values() if f.name in k.fields)
                raise UserError(f"{settings.flag_name(f)} applies to {kinds}, not --head {head}")
    return canonical(head, settings.record(settings.from_args(HEADS[head].declared, args)))
