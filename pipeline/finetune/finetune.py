"""The `finetune` command: from the inputs (inputs.py: the starting head) through the cut (surgery.py),
the data feeds (feeds.py), the recipe (recipe.py) and the comparison with the head (comparison.py)
to the run's record. Its settings are settings.py; checkpoints for --resume are checkpoint.py."""
# This module is the command: its settings, their checks, and the run from inputs to record (the
# docstring above is its --help). The pieces: inputs.py (the starting head), recipe.py (training
# model, optimizer, schedule, fit), feeds.py (the data in each mode), comparison.py (tuned against
# head), surgery.py (the cut), activations.py (the cache), checkpoint.py (--resume).
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.backbones.compose import image_model
from pipeline.backbones.precision import resolve_precision
from pipeline.backbones.rebuild import rebuild_backbone
from pipeline.backbones.table import default_unfreeze
from pipeline.foundation.readback import sealed, sha256_file
from pipeline.finetune import surgery
from pipeline.finetune.comparison import compare, comparison_table
from pipeline.finetune.feeds import training_data
from pipeline.finetune.inputs import find_head, head_run, load_head, split_sizes
from pipeline.finetune.recipe import (announce, auto_epochs, compile_model, fit, train_precision, training_model,
                                      warmup_steps)
from pipeline.finetune.settings import FinetuneSettings
from pipeline.foundation import identity, layout, records, settings
from pipeline.foundation.errors import UserError, warn
from pipeline.foundation.outputs import atomic_file, produce, write_json_atomic
from pipeline.heads import evaluation   # evaluation.write_report, looked up when called (tests patch it)
from pipeline.heads import calibration
from pipeline.heads.exclude import read_exclusion, split_index
from pipeline.store.features import default_features, load_features

HELP = """Stage three: fine-tune the upper backbone blocks, starting from the trained stage-two head.

One Keras model: uint8 images -> resize and preprocessing -> the backbone of the features file
(rebuilt exactly: same network, weights and input size) -> the stage-two dense head with its
trained weights. Everything from --unfreeze-from on trains (default: the top two blocks, as
`python -m pipeline backbones` lists them; for a backbone file, the fewest top blocks holding 85
percent of its weights);
BatchNorm stays in inference mode throughout, so moving statistics never change.

The recipe (defaults, meant to work untuned): AdamW, one epoch of linear warm-up (but at least
300 steps, at most half the run) then cosine decay to zero, label smoothing, weight decay, the backbone's layers at a fraction of the head's rate,
early stopping on validation accuracy with the best epoch's weights restored. The final evaluation
and the exported model average each image's and its mirror image's probabilities (--test-views).

Modes:
  cached      (default on a CPU) the frozen part below the cut is a fixed function of the image:
              it runs once per stored view into a cache under <cache-dir>/activations/, and
              training runs only the upper part. Augmentation: --views-per-image views per train
              image (as is, mirrored, then random flips and small translations; each view costs
              one more pass of the frozen part) and --map-shift (each training map moved by up
              to that many cells per step).
  end-to-end  (default on a GPU) every step runs the whole network on the images; --augment adds
              on-the-fly augmentation (random flips and small translations).

Outputs in <cache-dir>/finetune/<run>/: model.keras (uint8 images -> class probabilities, loads
with plain Keras), run.json (settings, class names, metrics, the comparison with the starting
head), report/ (as stage two's) and checkpoint.npz (for --resume). The last line printed is the
model's path.
"""


def add_arguments(p):
    p.set_defaults(rerun_hint="rerun the same command with --resume")
    settings.add_flags(p, FinetuneSettings)
    p.add_argument("--head", dest="deprecated_head", metavar="FILE", help=argparse.SUPPRESS)


def run(args):
    if args.deprecated_head is not None:       # the old spelling of --start-from, kept working for now
        if args.start_from is not None:
            raise UserError("--head is the old name of --start-from; give only --start-from")
        warn("finetune --head FILE is now --start-from FILE (--head names a head kind in `head` and `sweep`)")
        args.start_from = args.deprecated_head
    print(run_finetune(settings.from_args(FinetuneSettings, args)))


# ---------------------------------------------------------------- the run

def run_settings(s: FinetuneSettings, attrs: dict, head_path: Path, mode: str, cut: str, unfreeze: str,
                 precision: str, exclusion=None) -> dict:
    """run.json's settings and the run's identity: the declared ones as resolved (a setting that
    does not apply to the mode or optimizer is None, so it cannot split one run into two) and every
    input's identity (with --exclude, the training rows left out)."""
    cached = mode == "cached"
    left_out = {"exclude": exclusion.identity} if exclusion else {}
    return settings.record(s, **left_out, features_hash=attrs["settings_hash"], head_sha256=sha256_file(head_path),
                           mode=mode,
                           unfreeze_from=unfreeze, cut=cut, momentum=s.momentum if s.optimizer == "sgd" else None,
                           weight_decay=s.weight_decay if s.optimizer == "adamw" else None,
                           views_per_image=s.views_per_image if cached else None,
                           map_shift=s.map_shift if cached else None, augment=s.augment and not cached,
                           test_views=s.test_views,
                           precision=precision, train_precision=train_precision(precision))


def as_is_view(y_true: dict, per_view: dict) -> dict:
    """Accuracy from the image as is alone (what test-time views add is the metrics' difference)."""
    return {f"{k}_accuracy": round(float(np.mean(p[0].argmax(1) == y_true[k])), 4) for k, p in per_view.items()}


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
    index = split_index(features_path)
    exclusion = s.exclude and read_exclusion(s.exclude, attrs, index, s.data)
    if exclusion:
        log(exclusion.describe())

    import keras   # here, not at the top: `--help` must not load Keras
    bb = rebuild_backbone(attrs, s.backbone, s.weights)
    unfreeze = s.unfreeze_from or default_unfreeze(bb.model.layers[-1], bb.policy)
    parts = surgery.split(bb.model, head, unfreeze, bb.policy)
    sizes = split_sizes(features_path)
    sizes["train"] -= len(exclusion.rows) if exclusion else 0
    if s.epochs is None:   # auto: recorded as the number it resolved to, so `--epochs 3` is the same run
        s = replace(s, epochs=auto_epochs(sizes["train"], s.batch_size))
        log(f"--epochs auto: {s.epochs} epochs of {-(-sizes['train'] // s.batch_size)} steps")
    recorded = {**run_settings(s, attrs, head_path, mode, parts.cut, unfreeze, precision, exclusion),
                "warmup_steps": warmup_steps(s, -(-sizes["train"] // s.batch_size))}   # as the schedule resolves it
    run_dir = (layout.folder(s.cache_dir, layout.FINETUNE_DIR)
               / identity.name(recorded, features_path.stem, mode, unfreeze))
    model_path = run_dir / layout.MODEL

    def done():       # a damaged record is an error naming it, never "up to date" (as compare and export)
        record = run_dir / layout.RUN_JSON
        return model_path.is_file() and record.is_file() and bool(records.read(record, records.RUN))

    def train():
        started = time.perf_counter()
        # The starting point, measured before any weight moves: the head on the stored features.
        baseline = {k: head.predict(fs.splits[k].features, verbose=0) for k in ("val", "test")}
        keras.utils.set_random_seed(s.seed)
        model, upper = training_model(parts, mode, precision)
        steps = -(-sizes["train"] // s.batch_size)
        announce(s, parts, model, mode, sizes, steps, log)
        data = training_data(s, attrs, features_path, parts, mode, precision, log,
                             index["train"][exclusion.rows] if exclusion else None)
        run_dir.mkdir(parents=True, exist_ok=True)     # after the images are read and checked: a bad file leaves none
        compile_model(model, s, precision, steps, upper.trainable_variables)
        history = fit(model, s, data, run_dir / layout.CHECKPOINT, log)
        # (V, N, K): each test-time view's probabilities; the run's are their mean, as the exported model's
        per_view = {k: np.stack([model.predict(v, verbose=0) for v in data["views"][k]]) for k in ("val", "test")}
        y_prob = {k: p.mean(axis=0) for k, p in per_view.items()}
        if not all(np.isfinite(p).all() for p in y_prob.values()):   # the model to save, not every epoch
            raise UserError("fine-tuning diverged (its predictions are not finite); no model was saved; "
                            "lower --lr")
        surgery.copy_weights_back(upper, parts.base)
        save_model_atomically(image_model(bb.model, head, views=s.test_views), model_path)
        y_true = {k: fs.splits[k].labels for k in ("val", "test")}
        wall = time.perf_counter() - started
        comparison = compare(y_true, baseline, y_prob, head_path, head_info)
        calibrated = calibration.assess(y_true, per_view, fit=True)
        evaluation.write_report(run_dir / layout.RUN_REPORT_DIR, y_true=y_true, y_prob=y_prob, class_names=class_names,
                                wall_seconds=wall, history=history, features=fs, cache_dir=s.cache_dir,
                                extra={"stage": "finetune", "settings": recorded, "comparison": comparison},
                                calibrated=calibrated)
        write_json_atomic(run_dir / layout.RUN_JSON, sealed({
            "stage": "finetune", "settings": recorded, "class_names": class_names, "model": layout.MODEL,
            "features": {"path": str(Path(features_path).absolute()), "settings_hash": attrs["settings_hash"]},
            "head": {"path": str(Path(head_path).absolute())}, "backbone": {"name": bb.name, **bb.weights.attrs(),
                                                            "input_size": bb.input_size},
            "device": device, "metrics": comparison["finetuned"], "comparison": comparison,
            "calibration": calibrated.summary, "as_is_view": as_is_view(y_true, per_view),
            "epochs_run": len(history.get("loss", [])), "wall_seconds": round(wall, 1)},
            run_dir, layout.RUN_JSON, run_dir.name, leave_out=(layout.CHECKPOINT,)), default=str)
        return comparison

    up_to_date, comparison = produce(run_dir, done, train, log, shown=model_path, record=layout.RUN_JSON)
    if not up_to_date:
        log(comparison_table(comparison))
    return model_path
