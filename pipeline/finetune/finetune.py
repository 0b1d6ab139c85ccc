"""Stage three: fine-tune the upper backbone blocks, starting from the trained stage-two head.

One Keras model: uint8 images -> resize and preprocessing -> the backbone of the features file
(rebuilt exactly: same network, weights and input size) -> the stage-two dense head with its
trained weights. Everything from --unfreeze-from on trains (default: the top two blocks, from the
backbone table: mixed9 for InceptionV3, conv5_block2_1_conv for ResNet50, ...; for a backbone
file, its last resolution's blocks, see backbone.default_unfreeze); BatchNorm stays in inference
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
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.foundation import flags, records
from pipeline import store
from pipeline.foundation.errors import UserError
from pipeline.foundation.outputs import Lock, atomic_file, write_json_atomic

MODES = ("cached", "end-to-end")
OPTIMIZERS = ("adamw", "adam", "sgd")


@dataclass
class FinetuneSettings:
    features: str | None = None        # stage-one file; None: the newest in <cache_dir>/features
    head: str | None = None            # stage-two model.keras; None: the best dense head for the features
    mode: str | None = None            # None: end-to-end on a GPU, cached on a CPU
    unfreeze_from: str | None = None   # None: the backbone row's default, for a file the blocks at its last resolution
    epochs: int = 6                    # all of CIFAR-10 on 2 cores: about an hour, estimated
    batch_size: int = 64
    lr: float = 1e-3                   # the head's peak rate; the backbone's is lr * backbone_lr_scale
    optimizer: str = "adamw"
    momentum: float = 0.9              # sgd only
    weight_decay: float = 0.05         # adamw only (decoupled: each step shrinks weights by lr * this)
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    backbone_lr_scale: float = 0.3
    patience: int = 3
    views_per_image: int = 2           # cached mode: stored views per train image
    map_shift: int = 1                 # cached mode: most cells a training map moves per step
    augment: bool = False              # end-to-end mode: on-the-fly flips and translations
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
                   "(default: the top two blocks, as `python -m pipeline backbones` lists; for a backbone file, the "
                   "first block at its last spatial resolution, e.g. block11_expand_conv for EfficientNet-Lite0)")
    d = FinetuneSettings
    p.add_argument("--epochs", type=flags.non_negative_int, default=d.epochs, metavar="N",
                   help=f"at most N epochs, the length of the cosine decay (default: {d.epochs}; 0 exports "
                   "backbone + head unchanged)")
    p.add_argument("--batch-size", type=flags.positive_int, default=d.batch_size, metavar="N",
                   help=f"default: {d.batch_size}")
    p.add_argument("--lr", type=flags.positive_float, default=d.lr, metavar="X",
                   help=f"the head's peak learning rate, after warm-up (default: {d.lr:g})")
    p.add_argument("--backbone-lr-scale", type=flags.positive_float, default=d.backbone_lr_scale, metavar="F",
                   help=f"the backbone layers' rate is lr times F (default: {d.backbone_lr_scale:g})")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, metavar="E",
                   help="linear warm-up from 0 (at most half the run), then cosine decay to 0 at the last epoch "
                   f"(default: {d.warmup_epochs:g})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="adamw (default), adam, or sgd with momentum 0.9")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="X",
                   help=f"adamw's decoupled weight decay (default: {d.weight_decay:g})")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="X",
                   help=f"default: {d.label_smoothing:g}")
    p.add_argument("--patience", type=flags.positive_int, default=d.patience, metavar="N",
                   help=f"early stopping on validation accuracy after N epochs without improvement, the best "
                   f"epoch's weights restored (default: {d.patience})")
    p.add_argument("--views-per-image", type=flags.positive_int, default=d.views_per_image, metavar="K",
                   help=f"cached mode: views cached per train image: as is, mirrored, then random flips and "
                   f"2-px translations; K times the activation pass (default: {d.views_per_image})")
    p.add_argument("--map-shift", type=flags.non_negative_int, default=d.map_shift, metavar="N",
                   help=f"cached mode: move each training map by up to N cells per step (default: {d.map_shift})")
    p.add_argument("--augment", action="store_true", help="end-to-end mode: on-the-fly random flips and "
                   "translations (cached mode augments through --views-per-image and --map-shift)")
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
    if s.optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {s.optimizer!r}")
    for flag, value, top in (("--label-smoothing", s.label_smoothing, 1.0), ("--weight-decay", s.weight_decay, 1.0),
                             ("--warmup-epochs", s.warmup_epochs, float("inf"))):
        if not 0 <= value < top:
            raise UserError(f"{flag} must be at least 0 and below {top:g}, got {value}")
    if not 0 < s.backbone_lr_scale < float("inf"):
        raise UserError(f"--backbone-lr-scale must be positive and finite, got {s.backbone_lr_scale}")


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

def train_precision(precision: str) -> str:
    """What the trained part computes in: float32 where the frozen part runs in bfloat16 (a CPU):
    backpropagation through EfficientNet-Lite0's top blocks took 2.80 s per batch of 64 in
    bfloat16 and 1.41 s in float32 on the 2-core AMX Xeon (forward-only, bfloat16 is the faster)."""
    return "float32" if precision == "bfloat16" else precision


def training_model(parts, mode: str, precision: str):
    """(model, upper copy) for `mode`: the upper part in train_precision(precision), then the head.
    The frozen lower part runs BatchNorm-folded in `precision` (the same function, fewer ops) in
    end-to-end mode, or not at all in cached mode, where the model's input is the cut activation."""
    import keras
    from pipeline.backbones.folding import fold_batchnorm
    from pipeline.finetune.surgery import with_precision
    upper = with_precision(parts.upper, train_precision(precision))
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


def schedule(s: FinetuneSettings, steps_per_epoch: int):
    """Linear warm-up from 0 to s.lr over s.warmup_epochs (at most half the run), then cosine decay
    to 0 at the last step of s.epochs."""
    import keras
    total = max(1, s.epochs * steps_per_epoch)
    warmup = min(round(s.warmup_epochs * steps_per_epoch), total // 2)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(s.lr, total)
    return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=s.lr, warmup_steps=warmup)


def _discriminative(optimizer_class):
    """`optimizer_class` whose steps (and decoupled weight decay) on the `scaled` variables use the
    learning rate times `scale`: the backbone's pretrained layers move slower than the head. (Keras
    has no per-variable rate; scaling gradients instead would be undone by Adam's normalization.)"""
    from keras import ops

    class Discriminative(optimizer_class):
        def __init__(self, *args, scaled=(), scale=1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self._scale, self._scaled = scale, {self._var_key(v) for v in scaled}

        def _factor(self, variable):
            return self._scale if self._var_key(variable) in self._scaled else 1.0

        def update_step(self, gradient, variable, learning_rate):
            super().update_step(gradient, variable, learning_rate * self._factor(variable))

        def _apply_weight_decay(self, variables):
            if self.weight_decay is None:
                return
            for v in variables:
                if self._use_weight_decay(v):
                    rate = ops.cast(self.learning_rate * self.weight_decay * self._factor(v), v.dtype)
                    v.assign(v - v * rate)
    Discriminative.__name__ = f"Discriminative{optimizer_class.__name__}"
    return Discriminative


def make_optimizer(s: FinetuneSettings, precision: str, steps_per_epoch: int = 1, backbone_variables=()):
    import keras
    cls, extra = {"sgd": (keras.optimizers.SGD, {"momentum": s.momentum}),
                  "adam": (keras.optimizers.Adam, {}),
                  "adamw": (keras.optimizers.AdamW, {"weight_decay": s.weight_decay})}[s.optimizer]
    opt = _discriminative(cls)(schedule(s, steps_per_epoch), scaled=backbone_variables,
                               scale=s.backbone_lr_scale, **extra)
    # float16 needs loss scaling against underflowing gradients; bfloat16 has float32's range.
    return keras.optimizers.LossScaleOptimizer(opt) if precision == "float16" else opt


def smoothed_loss(smoothing: float, n_classes: int):
    """Sparse categorical cross-entropy against labels smoothed towards uniform (Keras's sparse
    loss has no label_smoothing)."""
    import keras
    from keras import ops

    def loss(y_true, y_prob):
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n_classes)
        return keras.losses.categorical_crossentropy(onehot, y_prob, label_smoothing=smoothing)
    return loss


def compile_model(model, s: FinetuneSettings, precision: str, steps_per_epoch: int = 1, backbone_variables=()):
    n_classes = int(model.output_shape[-1])
    model.compile(optimizer=make_optimizer(s, precision, steps_per_epoch, backbone_variables),
                  loss=smoothed_loss(s.label_smoothing, n_classes), metrics=["accuracy"])


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
    cached = mode == "cached"
    return {"features_hash": attrs["settings_hash"], "head_sha256": sha256_file(head_path), "mode": mode,
            "unfreeze_from": unfreeze, "cut": cut, "epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr,
            "backbone_lr_scale": s.backbone_lr_scale, "warmup_epochs": s.warmup_epochs,
            "optimizer": s.optimizer, "momentum": s.momentum if s.optimizer == "sgd" else None,
            "weight_decay": s.weight_decay if s.optimizer == "adamw" else None,
            "label_smoothing": s.label_smoothing, "patience": s.patience,
            "views_per_image": s.views_per_image if cached else None, "map_shift": s.map_shift if cached else None,
            "augment": s.augment and not cached, "precision": precision,
            "train_precision": train_precision(precision), "seed": s.seed}


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
        keras.utils.set_random_seed(s.seed)
        model, upper = training_model(parts, mode, precision)
        sizes = _split_sizes(features_path)
        steps = -(-sizes["train"] // s.batch_size)
        _announce(s, parts, model, mode, sizes, steps, log)
        data = _training_data(s, attrs, features_path, parts, mode, precision, log)
        compile_model(model, s, precision, steps, upper.trainable_variables)
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
        log("cached mode: --augment has no effect; cached mode augments with --views-per-image and --map-shift")
    cs = activations.settings(attrs, parts.cut, s.views_per_image, precision)
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
    return {k: activations.batches(path, k, s.batch_size, shuffle=(k == "train"), seed=s.seed, shift=s.map_shift)
            for k in store.SPLITS}


def _split_sizes(features_path: Path) -> dict:
    import h5py
    with h5py.File(features_path, "r") as f:
        return {k: len(f[k]["labels"]) for k in store.SPLITS}


def _announce(s, parts, model, mode, sizes: dict, steps: int, log):
    """Before any work: the activation cache's size (cached mode) and an estimated epoch time,
    from timing a few forward+backward passes of the training model on random inputs."""
    import tensorflow as tf
    from pipeline.finetune import activations
    if mode == "cached":
        shape = tuple(parts.lower.output.shape[1:])
        rows = sizes["train"] * s.views_per_image + sizes["val"] + sizes["test"]
        log(f"activation cache: {rows:,} rows of {'x'.join(map(str, shape))} float16, "
            f"{activations.size_bytes(shape, rows) / 1e9:.2f} GB ({s.views_per_image} views per train image)")
    x = tf.random.uniform((s.batch_size, *model.input.shape[1:]), 0, 255 if mode == "end-to-end" else 1)
    x = tf.cast(x, model.input.dtype)
    variables = model.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return tape.gradient(loss, variables)
    step()                                     # traces
    started = time.perf_counter()
    for _ in range(2):
        step()
    per_step = (time.perf_counter() - started) / 2
    log(f"estimated training time: {per_step * steps:.0f} s per epoch ({steps:,} steps of {per_step:.2f} s), "
        f"at most {s.epochs} epochs")


# ---------------------------------------------------------------- fit with checkpoints

def _fit(model, s: FinetuneSettings, data: dict, ckpt: Path, log) -> dict:
    """model.fit with early stopping and a checkpoint per epoch; with --resume, from the checkpoint."""
    from pipeline.finetune.checkpoint import Checkpoint, ResumableEarlyStopping, restore
    stopper = ResumableEarlyStopping(monitor="val_accuracy", mode="max", patience=s.patience,
                                     restore_best_weights=True)
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
        # shuffle=False: the cached batches shuffle themselves, seeded by epoch; fit's own shuffle of
        # a PyDataset's batch order draws from Python's global random state, which a resumed run
        # (or a second run in one process) does not share, so their batch orders differed.
        model.fit(data["train"], validation_data=data["val"], epochs=s.epochs, initial_epoch=state["epochs_done"],
                  callbacks=[stopper, Checkpoint(ckpt, stopper, state)], verbose=2,
                  shuffle=not hasattr(data["train"], "start_at"))
    elif stopper.carried and stopper.carried[3] is not None:
        # Training had ended (all epochs done, or stopped early) before the run was killed, e.g.
        # while exporting: the result is the best epoch's weights, as fit's end would have restored.
        model.set_weights(stopper.carried[3])
    return state["history"]


def compare(y_true: dict, head_prob: dict, tuned_prob: dict, head_path: Path, head_info: dict) -> dict:
    """The fine-tuned model against its starting head on the same val and test images, stated as
    `python -m pipeline compare` states two runs (pipeline.foundation.stats.paired): accuracies with 95%
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
