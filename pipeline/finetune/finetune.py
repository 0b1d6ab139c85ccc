"""Stage three: fine-tune the upper backbone blocks, starting from the trained stage-two head.

One Keras model: uint8 images -> resize and preprocessing -> the backbone of the features file
(rebuilt exactly: same network, weights and input size) -> the stage-two dense head with its
trained weights. Everything from --unfreeze-from on trains (default: the top two blocks, from the
backbone table: mixed9 for InceptionV3, conv5_block2_1_conv for ResNet50, ...); BatchNorm stays in inference mode throughout, so moving statistics never change.

Modes:
  cached      (default on a CPU) the frozen part below the cut is a fixed function of the image:
              it runs once per image (and per mirrored image with --augment) into an HDF5 cache
              under <cache-dir>/activations/, and training runs only the upper part. Augmentation
              is horizontal flips only.
  end-to-end  (default on a GPU) every step runs the whole network on the images, with on-the-fly
              augmentation (random flip and a translation of up to 2 pixels).

Outputs in <cache-dir>/finetune/<run>/: model.keras (uint8 32x32x3 images -> class probabilities,
plain keras.models.load_model), run.json (settings, class names, metrics, the comparison with
the starting head), report/ (report.json, confusion.png, curves.png, as stage two's) and
checkpoint.npz (for --resume). The last line printed is the model's path.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.foundation import flags, records
from pipeline import store
from pipeline.foundation.errors import UserError
from pipeline.foundation.outputs import Lock, atomic_file, write_json_atomic

MODES = ("cached", "end-to-end")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class FinetuneSettings:
    features: str | None = None        # stage-one file; None: the newest in <cache_dir>/features
    head: str | None = None            # stage-two model.keras; None: the best dense head for the features
    mode: str | None = None            # None: end-to-end on a GPU, cached on a CPU
    unfreeze_from: str | None = None   # None: the backbone row's default, a file's second-to-last block
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    patience: int = 3
    augment: bool = False
    resume: bool = False
    precision: str = "auto"
    seed: int = 0
    backbone: str | None = None        # path of the .keras backbone when the features file used one
    weights: str | None = None         # the weights file, when the features file was made with one
    data: str | None = None            # the image source, when it moved since stage one
    cache_dir: str = "cache"


def add_arguments(p):
    p.set_defaults(rerun_hint="rerun the same command with --resume")
    p.add_argument("--features", metavar="FILE", help="stage-one features file whose data, backbone, weights, "
                   "input size and splits to reuse (default: the newest complete file in <cache-dir>/features, "
                   "whatever its settings, as for `head`)")
    p.add_argument("--head", metavar="FILE", help="stage-two dense head model.keras to start from "
                   "(default: the best dense head trained on the features file)")
    p.add_argument("--mode", choices=MODES, help="default: end-to-end on a GPU, cached on a CPU")
    p.add_argument("--unfreeze-from", metavar="NAME", help="train this block and everything after it "
                   "(default: the top two blocks, as `python -m pipeline backbones` lists; a backbone file's "
                   "second-to-last block)")
    p.add_argument("--epochs", type=flags.non_negative_int, default=10, metavar="N",
                   help="at most N epochs (default: 10; 0 exports backbone + head unchanged)")
    p.add_argument("--batch-size", type=flags.positive_int, default=32, metavar="N", help="default: 32")
    p.add_argument("--lr", type=flags.positive_float, default=1e-4, metavar="X", help="learning rate (default: 1e-4)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="sgd with momentum 0.9, or adam")
    p.add_argument("--patience", type=flags.positive_int, default=3, metavar="N",
                   help="early stopping on validation loss after N epochs without improvement (default: 3)")
    p.add_argument("--augment", action="store_true", help="random flips (both modes) and translations (end-to-end)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    flags.add_precision(p)
    flags.add_seed(p, "seed of shuffling, augmentation, dropout (default: 0)")
    flags.add_moved_backbone(p)
    p.add_argument("--data", metavar="PATH", help="the image source, if it moved since the features file was made")
    flags.add_cache_dir(p)


def run(args):
    s = FinetuneSettings(**{k: getattr(args, k) for k in FinetuneSettings.__dataclass_fields__ if hasattr(args, k)})
    print(run_finetune(s))


# ---------------------------------------------------------------- inputs

def _check(s: FinetuneSettings):
    if s.epochs < 0:
        raise UserError(f"--epochs must be 0 or more, got {s.epochs}")
    if not 0 < s.lr < float("inf"):
        raise UserError(f"--lr must be positive and finite, got {s.lr}")
    if not 0 <= s.seed <= flags.SEED_MAX:
        raise UserError(f"--seed must be {flags.SEED_RANGE}, got {s.seed}")
    if s.mode is not None and s.mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, got {s.mode!r}")


def _load_head(path: Path, width: int, n_classes: int):
    from pipeline.ship.models import load_keras_file
    head = load_keras_file(path, "head", "head")
    d, k = head.input_shape[-1], head.output_shape[-1]
    if d != width or k != n_classes:
        raise UserError(f"head {path} maps {d} features to {k} classes, but the backbone gives {width} "
                        f"features and the data has {n_classes} classes; train a head on this features file")
    return head


def _head_run(path: Path, features_hash: str) -> dict:
    """The stage-two run.json beside the head, checked against the features file (empty if none)."""
    if not (path.parent / records.RUN_JSON).is_file():
        return {}
    info = records.read_run(path.parent)
    made_from = info["features"]["settings_hash"]
    if made_from not in (None, features_hash):
        raise UserError(f"head {path} was trained on features {made_from}, not on this features file "
                        f"({features_hash}); pass a head trained on it, or run `make head`")
    return info


def _find_head(s: FinetuneSettings, features_hash: str) -> Path:
    if s.head is not None:
        return Path(s.head)
    try:
        from pipeline.heads.training import find_best_head
    except ImportError:
        raise UserError("no --head given and stage two is not installed; pass --head FILE") from None
    found = find_best_head(s.cache_dir, features_hash, head="dense")
    if found is None:
        raise UserError(f"no dense head for features {features_hash} in {Path(s.cache_dir, 'heads')}; "
                        "run `make head` first (or pass --head FILE)")
    found = Path(found)
    return found / records.MODEL if found.is_dir() else found


# ---------------------------------------------------------------- training pieces

def training_model(parts, mode: str, precision: str):
    """(model, upper copy) for `mode`: the upper part in `precision`, then the head. The frozen
    lower part runs BatchNorm-folded (the same function, fewer ops) in end-to-end mode, or not at
    all in cached mode, where the model's input is the cut activation."""
    import keras
    from pipeline.backbones.folding import fold_batchnorm
    from pipeline.finetune.surgery import with_precision
    upper = with_precision(parts.upper, precision)
    if mode == "cached":
        inputs = keras.Input(tuple(parts.lower.output.shape[1:]), name="cut_activation")
        x = inputs
    else:
        lower = fold_batchnorm(parts.lower, precision)
        lower.trainable = False
        inputs = keras.Input(tuple(parts.front.input.shape[1:]), dtype="uint8", name="image")
        x = lower(parts.front(inputs), training=False)
    # training=False on the backbone part: BatchNorm uses (and keeps) its moving statistics.
    outputs = parts.head(upper(x, training=False))
    return keras.Model(inputs, outputs, name=f"finetune_{mode}"), upper


def make_optimizer(s: FinetuneSettings, precision: str):
    import keras
    if s.optimizer == "sgd":
        opt = keras.optimizers.SGD(s.lr, momentum=s.momentum)
    else:
        opt = keras.optimizers.Adam(s.lr)
    # float16 needs loss scaling against underflowing gradients; bfloat16 has float32's range.
    return keras.optimizers.LossScaleOptimizer(opt) if precision == "float16" else opt


def compile_model(model, s: FinetuneSettings, precision: str):
    model.compile(optimizer=make_optimizer(s, precision), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def image_dataset(x, y, batch_size: int, shuffle: bool, augment: bool, seed: int):
    """tf.data over uint8 images; augmentation: random horizontal flip and a shift of up to 2 px
    (reflect-pad by 2, random crop back), applied per image on the fly."""
    import tensorflow as tf
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augment:
        h, w, c = x.shape[1:]

        def jitter(img, label):
            img = tf.image.random_flip_left_right(img)
            img = tf.pad(img, [[2, 2], [2, 2], [0, 0]], mode="REFLECT")
            return tf.image.random_crop(img, (h, w, c)), label
        ds = ds.map(jitter, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- the run

def run_settings(s: FinetuneSettings, attrs: dict, head_path: Path, mode: str, cut: str, unfreeze: str,
                 precision: str) -> dict:
    from pipeline.backbones.weights import sha256_file
    return {"features_hash": attrs["settings_hash"], "head_sha256": sha256_file(head_path), "mode": mode,
            "unfreeze_from": unfreeze, "cut": cut, "epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr,
            "optimizer": s.optimizer, "momentum": s.momentum if s.optimizer == "sgd" else None,
            "patience": s.patience, "augment": s.augment, "precision": precision, "seed": s.seed}


def save_model_atomically(model, path: Path):
    """Keras writes the archive in place: write it under a temporary name, then rename."""
    with atomic_file(path) as tmp:
        model.save(tmp)


def run_finetune(s: FinetuneSettings, log=print) -> Path:
    """Fine-tune (or find up to date, or resume); return the exported model's path."""
    _check(s)
    from pipeline.backbones.precision import resolve_precision
    from pipeline.store.features import default_features, load_features
    features_path = Path(s.features) if s.features else default_features(s.cache_dir)
    fs = load_features(features_path, splits=("val", "test"))   # the same checks as stage two
    attrs, class_names = fs.attrs, fs.class_names
    precision, device = resolve_precision(s.precision)
    mode = s.mode or ("end-to-end" if device.startswith("GPU") else "cached")
    head_path = _find_head(s, attrs["settings_hash"])
    head_info = _head_run(head_path, attrs["settings_hash"])   # its record checked before loading it
    head = _load_head(head_path, attrs["feature_width"], len(class_names))

    import keras
    from pipeline.finetune import surgery
    from pipeline.backbones.table import default_unfreeze
    from pipeline.backbones.rebuild import rebuild_backbone
    bb = rebuild_backbone(attrs, s.backbone, s.weights)
    unfreeze = s.unfreeze_from or default_unfreeze(bb.model.layers[-1], bb.row)
    parts = surgery.split(bb.model, head, unfreeze, bb.row)
    settings = run_settings(s, attrs, head_path, mode, parts.cut, unfreeze, precision)
    run_dir = (records.folder(s.cache_dir, records.FINETUNE)
               / f"{features_path.stem}-{mode}-{unfreeze}-{store.settings_hash(settings)}")
    model_path = run_dir / records.MODEL
    if model_path.is_file() and (run_dir / records.RUN_JSON).is_file():
        log(f"up to date: {model_path}")
        return model_path

    run_dir.mkdir(parents=True, exist_ok=True)
    with Lock(run_dir, log=log):
        if model_path.is_file() and (run_dir / records.RUN_JSON).is_file():   # finished just before we locked
            log(f"up to date: {model_path}")
            return model_path
        started = time.perf_counter()
        # The starting point, measured before any weight moves: the head on the stored features.
        baseline = {k: head.predict(fs.splits[k].features, verbose=0) for k in ("val", "test")}
        data = _training_data(s, attrs, features_path, parts, mode, precision, log)
        keras.utils.set_random_seed(s.seed)
        model, upper = training_model(parts, mode, precision)
        compile_model(model, s, precision)
        history = _fit(model, s, data, run_dir / "checkpoint.npz", log)
        y_prob = {k: model.predict(data[k], verbose=0) for k in ("val", "test")}
        if not all(np.isfinite(p).all() for p in y_prob.values()):   # the model to save, not every epoch
            raise UserError("fine-tuning diverged (its predictions are not finite); no model was saved; "
                            "lower --lr")
        surgery.copy_weights_back(upper, parts.base)
        save_model_atomically(surgery.image_model(bb.model, head), model_path)
        y_true = {k: fs.splits[k].labels for k in ("val", "test")}
        wall = time.perf_counter() - started
        comparison = compare(y_true, baseline, y_prob, head_path, head_info)
        from pipeline.ship import calibration
        from pipeline.heads.evaluation import write_report
        temperature, after = calibration.calibrate(y_true, {k: p[None] for k, p in y_prob.items()})
        write_report(run_dir / records.REPORT_DIR, y_true=y_true, y_prob=y_prob, class_names=class_names,
                     wall_seconds=wall, history=history, features=fs, cache_dir=s.cache_dir,
                     extra={"stage": "finetune", "settings": settings, "comparison": comparison},
                     calibrated={"temperature": temperature, "y_prob": after})
        write_json_atomic(run_dir / records.RUN_JSON, {
            "stage": "finetune", "settings": settings, "class_names": class_names, "model": records.MODEL,
            "features": {"path": str(Path(features_path).absolute()), "settings_hash": attrs["settings_hash"]},
            "head": {"path": str(Path(head_path).absolute())}, "backbone": {"name": bb.name, **bb.weights.attrs(),
                                                            "input_size": bb.input_size},
            "device": device, "metrics": comparison["finetuned"], "comparison": comparison,
            "calibration": calibration.summary(y_true, y_prob, after, temperature),
            "epochs_run": len(history.get("loss", [])), "wall_seconds": round(wall, 1)}, default=str)
    log(_comparison_table(comparison))
    return model_path


def _training_data(s, attrs, features_path, parts, mode, precision, log) -> dict:
    """{"train", "val", "test"}: keras-ready inputs for the training model in `mode`."""
    from pipeline.sources.rows import load_splits
    if mode == "end-to-end":
        splits = load_splits(attrs, s.data)
        return {k: image_dataset(v.x, v.y, s.batch_size, shuffle=(k == "train"), augment=s.augment and k == "train",
                                 seed=s.seed) for k, v in splits.items()}
    from pipeline.finetune import activations
    from pipeline.backbones.folding import fast_extractor
    if s.augment:
        log("cached mode: --augment caches mirrored images (random translation needs --mode end-to-end)")
    cs = activations.settings(attrs, parts.cut, s.augment, precision)
    path = activations.path_for(s.cache_dir, features_path, cs)
    if not path.exists():
        with Lock(path, log=log):
            if not path.exists():
                splits = load_splits(attrs, s.data)
                fn = fast_extractor(parts.image_to_cut(), precision)
                activations.build(path, cs, splits, fn, max(s.batch_size, 32), log=log)
    else:
        log(f"activation cache up to date: {path}")
    # Every row checked (finite, labels in range) once before training: a damaged cache must not
    # train a garbage model.
    store.read_rows(path, expect={"settings_hash": store.settings_hash(cs)}, splits=(), words=activations.WORDS,
                    n_classes=len(attrs["class_names"]))
    return {k: activations.batches(path, k, s.batch_size, shuffle=(k == "train"), seed=s.seed)
            for k in store.SPLITS}


# ---------------------------------------------------------------- fit with checkpoints

def _fit(model, s: FinetuneSettings, data: dict, ckpt: Path, log) -> dict:
    """model.fit with early stopping and a checkpoint per epoch; with --resume, from the checkpoint."""
    from pipeline.finetune.checkpoint import Checkpoint, ResumableEarlyStopping, restore
    stopper = ResumableEarlyStopping(monitor="val_loss", patience=s.patience, restore_best_weights=True)
    state = {"epochs_done": 0, "history": {}, "stopped": False}
    if s.resume and ckpt.is_file():
        state = restore(ckpt, model, stopper)
        log(f"resuming from epoch {state['epochs_done']} of {s.epochs} ({ckpt})")
    elif s.resume:
        log(f"nothing to resume in {ckpt.parent}; starting from the head")
    elif ckpt.is_file():
        log(f"starting over (pass --resume to continue from {ckpt})")
    if hasattr(data["train"], "start_at"):   # cached mode: a seeded plan per epoch
        data["train"].start_at(state["epochs_done"])
    if s.epochs > state["epochs_done"] and not state["stopped"]:
        model.fit(data["train"], validation_data=data["val"], epochs=s.epochs, initial_epoch=state["epochs_done"],
                  callbacks=[stopper, Checkpoint(ckpt, stopper, state)], verbose=2)
    elif stopper.carried and stopper.carried[3] is not None:
        # Training had ended (all epochs done, or stopped early) before the run was killed, e.g.
        # while exporting: the result is the best epoch's weights, as fit's end would have restored.
        model.set_weights(stopper.carried[3])
    return state["history"]


def compare(y_true: dict, head_prob: dict, tuned_prob: dict, head_path: Path, head_info: dict) -> dict:
    """The fine-tuned model against its starting head on the same val and test images, stated as
    `python -m pipeline compare` states two runs (pipeline.stats.paired): accuracies with 95%
    intervals, the change with its paired bootstrap interval, McNemar's exact p."""
    from pipeline.foundation import stats
    paired = {k: stats.paired(np.argmax(head_prob[k], 1) == y_true[k], np.argmax(tuned_prob[k], 1) == y_true[k])
              for k in y_true}

    def accuracy(side):
        return {key: value for k, p in paired.items() for key, value in (
            (f"{k}_accuracy", round(p[side]["accuracy"], 4)),
            (f"{k}_accuracy_interval", [round(p[side]["low"], 4), round(p[side]["high"], 4)]))}
    head = {"path": str(head_path), **accuracy("a")}
    if head_info.get("metrics"):
        head["reported"] = head_info["metrics"]
    tuned = accuracy("b")
    return {"head": head, "finetuned": tuned, "paired": paired,
            "delta": {f"{k}_accuracy": round(p["difference"], 4) for k, p in paired.items()}}


def _comparison_table(c: dict) -> str:
    from pipeline.foundation.tables import paired_table
    return paired_table(c["paired"], "head", "tuned")
