"""Stage three: fine-tune the upper backbone blocks, starting from the trained stage-two head.

One Keras model: uint8 images -> resize and preprocessing -> the backbone of the features file
(rebuilt exactly: same network, weights and input size) -> the stage-two dense head with its
trained weights. Everything from --unfreeze-from on trains (default: the top two blocks, from the
backbone table: mixed9 for InceptionV3, conv5_block2_1_conv for ResNet50, ...; for a backbone
file, its last resolution's blocks, see table.default_unfreeze); BatchNorm stays in inference
mode throughout, so moving statistics never change.

The recipe (defaults, meant to work untuned): AdamW, one epoch of linear warm-up then cosine decay
to zero, label smoothing 0.1, weight decay 0.05, the backbone's layers at 0.3x the head's rate,
early stopping on validation accuracy with the best epoch's weights restored.

Modes:
  cached      (default on a CPU) the frozen part below the cut is a fixed function of the image:
              it runs once per stored view into an HDF5 cache under <cache-dir>/activations/,
              and training runs only the upper part. Augmentation: --views-per-image K views per
              train image (as is, mirrored, then random flips + translations of up to 2 px; K
              times the activation pass) and --map-shift: each training map moved by up to that
              many cells per step (pipeline.finetune.activations).
  end-to-end  (default on a GPU) every step runs the whole network on the images; --augment adds
              on-the-fly augmentation (random flip and a translation of up to 2 pixels).

Outputs in <cache-dir>/finetune/<run>/: model.keras (uint8 32x32x3 images -> class probabilities,
plain keras.models.load_model), run.json (settings, class names, metrics, the comparison with
the starting head), report/ (report.json, confusion.png, curves.png, as stage two's) and
checkpoint.npz (for --resume). The last line printed is the model's path.
"""
# This module is the command: its settings, their checks, and the run from inputs to record (the
# docstring above is its --help). The pieces: inputs.py (the starting head), recipe.py (training
# model, optimizer, schedule, fit), feeds.py (the data in each mode), comparison.py (tuned against
# head), surgery.py (the cut), activations.py (the cache), checkpoint.py (--resume).
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.backbones.precision import resolve_precision
from pipeline.backbones.rebuild import rebuild_backbone
from pipeline.backbones.table import default_unfreeze
from pipeline.foundation.readback import sealed, sha256_file
from pipeline.finetune import surgery
from pipeline.finetune.comparison import compare, comparison_table
from pipeline.finetune.feeds import training_data
from pipeline.finetune.inputs import find_head, head_run, load_head, split_sizes
from pipeline.finetune.recipe import (AUTO_STEPS, EPOCH_RANGE, announce, auto_epochs, compile_model, fit,
                                      train_precision, training_model)
from pipeline.foundation import flags, identity, layout, settings
from pipeline.foundation.settings import POSITIVE, Choice, Interval, setting
from pipeline.foundation.errors import UserError
from pipeline.foundation.outputs import atomic_file, produce, write_json_atomic
from pipeline.heads import evaluation   # evaluation.write_report, looked up when called (tests patch it)
from pipeline.ship import calibration
from pipeline.store.features import default_features, load_features

MODES = ("cached", "end-to-end")
OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass
class FinetuneSettings:
    features: str | None = setting(None, None, "stage-one features file whose data, backbone, weights, input size "
                                   "and splits to reuse (default: the newest complete file in <cache-dir>/features, "
                                   "whatever its settings, as for `head`)", metavar="FILE", record=False)
    head: str | None = setting(None, None, "stage-two dense head model.keras to start from (default: the best dense "
                               "head trained on the features file)", metavar="FILE", record=False)
    mode: str | None = setting(None, Choice(MODES), "default: end-to-end on a GPU, cached on a CPU")
    unfreeze_from: str | None = setting(None, None, "train this block and everything after it (default: the top two "
                                        "blocks, as `python -m pipeline backbones` lists; for a backbone file, the "
                                        "first block at its last spatial resolution, e.g. block11_expand_conv for "
                                        "EfficientNet-Lite0)", metavar="NAME")
    epochs: int | None = setting(None, Interval(int, 0), "at most N epochs, the length of the cosine decay; 0 exports "
                                 "backbone + head unchanged",
                                 auto=f"the epochs nearest {AUTO_STEPS:,} optimizer steps, {EPOCH_RANGE[0]} to "
                                 f"{EPOCH_RANGE[1]}: 3 for all of CIFAR-10")
    batch_size: int = setting(64, Interval(int, 1), "training rows per step")
    lr: float = setting(1e-3, POSITIVE, "the head's peak learning rate, after warm-up; the backbone's is lr times "
                        "--backbone-lr-scale")
    backbone_lr_scale: float = setting(0.3, POSITIVE, "the backbone layers' rate: the head's times this")
    warmup_epochs: float = setting(1.0, Interval(float, 0), "linear warm-up from 0 (at most half the run), then "
                                   "cosine decay to 0 at the last epoch")
    optimizer: str = setting("adamw", Choice(OPTIMIZERS), "AdamW with decoupled weight decay, Adam, or SGD with "
                             "--momentum")
    momentum: float = setting(0.9, Interval(float, 0, 1), "sgd's momentum")
    weight_decay: float = setting(0.05, Interval(float, 0, 1), "adamw's decoupled weight decay: each step shrinks "
                                  "weights by lr times this")
    label_smoothing: float = setting(0.1, Interval(float, 0, 1), "targets smoothed towards uniform by this much")
    patience: int = setting(3, Interval(int, 1), "early stopping on validation accuracy after N epochs without "
                            "improvement, the best epoch's weights restored")
    views_per_image: int = setting(2, Interval(int, 1), "cached mode: views cached per train image: as is, "
                                   "mirrored, then random flips and 2-px translations; K times the activation pass",
                                   metavar="K")
    map_shift: int = setting(1, Interval(int, 0), "cached mode: move each training map by up to N cells per step")
    augment: bool = setting(False, None, "end-to-end mode: on-the-fly random flips and translations (cached mode "
                            "augments through --views-per-image and --map-shift)")
    resume: bool = setting(False, None, "continue an interrupted run from its last checkpoint", record=False)
    precision: str = flags.precision_setting()
    seed: int = flags.seed_setting("seed of shuffling, augmentation, dropout")
    backbone: str | None = flags.moved_backbone_setting()
    weights: str | None = flags.moved_weights_setting()
    data: str | None = flags.moved_data_setting()
    cache_dir: str = flags.cache_dir_setting()


def add_arguments(p):
    p.set_defaults(rerun_hint="rerun the same command with --resume")
    settings.add_flags(p, FinetuneSettings)


def run(args):
    print(run_finetune(settings.from_args(FinetuneSettings, args)))


# ---------------------------------------------------------------- the run

def run_settings(s: FinetuneSettings, attrs: dict, head_path: Path, mode: str, cut: str, unfreeze: str,
                 precision: str) -> dict:
    """run.json's settings and the run's identity: the declared ones as resolved (a setting that
    does not apply to the mode or optimizer is None, so it cannot split one run into two) and every
    input's identity."""
    cached = mode == "cached"
    return settings.record(s, features_hash=attrs["settings_hash"], head_sha256=sha256_file(head_path), mode=mode,
                           unfreeze_from=unfreeze, cut=cut, momentum=s.momentum if s.optimizer == "sgd" else None,
                           weight_decay=s.weight_decay if s.optimizer == "adamw" else None,
                           views_per_image=s.views_per_image if cached else None,
                           map_shift=s.map_shift if cached else None, augment=s.augment and not cached,
                           precision=precision, train_precision=train_precision(precision))


def save_model_atomically(model, path: Path):
    """Keras writes the archive in place: write it under a temporary name, then rename."""
    with atomic_file(path) as tmp:
        model.save(tmp)


def run_finetune(s: FinetuneSettings, log=print) -> Path:
    """Fine-tune (or find up to date, or resume); return the exported model's path."""
    s = settings.check(s)
    features_path = Path(s.features) if s.features else default_features(s.cache_dir)
    fs = load_features(features_path, splits=("val", "test"))   # the same checks as stage two
    attrs, class_names = fs.attrs, fs.class_names
    precision, device = resolve_precision(s.precision)
    mode = s.mode or ("end-to-end" if device.startswith("GPU") else "cached")
    head_path = find_head(s, attrs["settings_hash"])
    head_info = head_run(head_path, attrs["settings_hash"])   # its record checked before loading it
    head = load_head(head_path, attrs["feature_width"], len(class_names))

    import keras   # here, not at the top: `--help` must not load Keras
    bb = rebuild_backbone(attrs, s.backbone, s.weights)
    unfreeze = s.unfreeze_from or default_unfreeze(bb.model.layers[-1], bb.policy)
    parts = surgery.split(bb.model, head, unfreeze, bb.policy)
    sizes = split_sizes(features_path)
    if s.epochs is None:   # auto: recorded as the number it resolved to, so `--epochs 3` is the same run
        s = replace(s, epochs=auto_epochs(sizes["train"], s.batch_size))
        log(f"--epochs auto: {s.epochs} epochs of {-(-sizes['train'] // s.batch_size)} steps")
    recorded = run_settings(s, attrs, head_path, mode, parts.cut, unfreeze, precision)
    run_dir = (layout.folder(s.cache_dir, layout.FINETUNE_DIR)
               / identity.name(recorded, features_path.stem, mode, unfreeze))
    model_path = run_dir / layout.MODEL

    def done():
        return model_path.is_file() and (run_dir / layout.RUN_JSON).is_file()

    def train():
        run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        # The starting point, measured before any weight moves: the head on the stored features.
        baseline = {k: head.predict(fs.splits[k].features, verbose=0) for k in ("val", "test")}
        keras.utils.set_random_seed(s.seed)
        model, upper = training_model(parts, mode, precision)
        steps = -(-sizes["train"] // s.batch_size)
        announce(s, parts, model, mode, sizes, steps, log)
        data = training_data(s, attrs, features_path, parts, mode, precision, log)
        compile_model(model, s, precision, steps, upper.trainable_variables)
        history = fit(model, s, data, run_dir / layout.CHECKPOINT, log)
        y_prob = {k: model.predict(data[k], verbose=0) for k in ("val", "test")}
        if not all(np.isfinite(p).all() for p in y_prob.values()):   # the model to save, not every epoch
            raise UserError("fine-tuning diverged (its predictions are not finite); no model was saved; "
                            "lower --lr")
        surgery.copy_weights_back(upper, parts.base)
        save_model_atomically(surgery.image_model(bb.model, head), model_path)
        y_true = {k: fs.splits[k].labels for k in ("val", "test")}
        wall = time.perf_counter() - started
        comparison = compare(y_true, baseline, y_prob, head_path, head_info)
        temperature, after = calibration.calibrate(y_true, {k: p[None] for k, p in y_prob.items()})
        evaluation.write_report(run_dir / layout.RUN_REPORT_DIR, y_true=y_true, y_prob=y_prob, class_names=class_names,
                                wall_seconds=wall, history=history, features=fs, cache_dir=s.cache_dir,
                                extra={"stage": "finetune", "settings": recorded, "comparison": comparison},
                                calibrated={"temperature": temperature, "y_prob": after})
        write_json_atomic(run_dir / layout.RUN_JSON, sealed({
            "stage": "finetune", "settings": recorded, "class_names": class_names, "model": layout.MODEL,
            "features": {"path": str(Path(features_path).absolute()), "settings_hash": attrs["settings_hash"]},
            "head": {"path": str(Path(head_path).absolute())}, "backbone": {"name": bb.name, **bb.weights.attrs(),
                                                            "input_size": bb.input_size},
            "device": device, "metrics": comparison["finetuned"], "comparison": comparison,
            "calibration": calibration.summary(y_true, y_prob, after, temperature),
            "epochs_run": len(history.get("loss", [])), "wall_seconds": round(wall, 1)},
            run_dir, layout.RUN_JSON, run_dir.name, leave_out=(layout.CHECKPOINT,)), default=str)
        return comparison

    up_to_date, comparison = produce(run_dir, done, train, log, shown=model_path, record=layout.RUN_JSON)
    if not up_to_date:
        log(comparison_table(comparison))
    return model_path
