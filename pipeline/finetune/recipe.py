"""The training recipe: the training model (upper blocks in their training precision, then the head),
AdamW with discriminative rates (the backbone's layers slower than the head's), linear warm-up (at
least WARMUP_STEPS steps) then cosine decay, label-smoothed loss, the epoch-time estimate, and fit with early stopping and
per-epoch checkpoints. TensorFlow and Keras are imported inside the functions that need them, so
`python -m pipeline finetune --help` does not load them."""
from __future__ import annotations

import time
from pathlib import Path

from pipeline.backbones.folding import fold_batchnorm
from pipeline.backbones.keras_private import discriminative
from pipeline.finetune import activations
from pipeline.finetune.settings import AUTO_STEPS, EPOCH_RANGE, FinetuneSettings
from pipeline.finetune.surgery import with_precision


def train_precision(precision: str) -> str:
    """What the trained part computes in: float32 where the frozen part runs in bfloat16 (a CPU), as
    backpropagation measured faster in float32 there while the forward-only pass is faster in
    bfloat16 (docs/numbers.md, "Fine-tuning")."""
    return "float32" if precision == "bfloat16" else precision


def training_model(parts, mode: str, precision: str):
    """(model, upper copy) for `mode`: the upper part in train_precision(precision), then the head.
    The frozen lower part runs BatchNorm-folded in `precision` (the same function, fewer ops) in
    end-to-end mode, or not at all in cached mode, where the model's input is the cut activation."""
    import keras
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


def auto_epochs(train_rows: int, batch_size: int) -> int:
    """The epochs nearest AUTO_STEPS optimizer steps, clamped to EPOCH_RANGE: a bounded cost on a
    large set, enough passes on a small one (the measured costs: docs/numbers.md, "Fine-tuning")."""
    steps = -(-train_rows // batch_size)
    return min(max(round(AUTO_STEPS / max(steps, 1)), EPOCH_RANGE[0]), EPOCH_RANGE[1])


# Warm-up lasts at least this many optimizer steps (at most half the run), whatever --warmup-epochs
# gives: Adam's per-weight step sizes rest on its second-moment estimate, which a few dozen gradients
# do not settle (Liu et al., 2020, RAdam; Ma & Yarats, 2021), and one epoch is 15 to 25 steps on a
# thousand-odd images. With one epoch of warm-up there, the pretrained blocks took near-full-size steps
# at the peak rate within the first epoch: the training loss rose and accuracy fell (on 900 CIFAR-10
# images through EfficientNet-Lite0, each batch's accuracy from 0.80 to about 0.70) before recovering.
# All of CIFAR-10 (704 steps an epoch) keeps its one epoch.
WARMUP_STEPS = 300


def warmup_steps(s: FinetuneSettings, steps_per_epoch: int) -> int:
    """s.warmup_epochs in steps, but at least WARMUP_STEPS (0 stays 0); at most half the run."""
    total = max(1, s.epochs * steps_per_epoch)
    asked = round(s.warmup_epochs * steps_per_epoch)
    return min(max(asked, WARMUP_STEPS) if asked else 0, total // 2)


def schedule(s: FinetuneSettings, steps_per_epoch: int):
    """Linear warm-up from 0 to s.lr over warmup_steps, then cosine decay to 0 at the last step of
    s.epochs."""
    import keras
    total = max(1, s.epochs * steps_per_epoch)
    warmup = warmup_steps(s, steps_per_epoch)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(s.lr, total)
    return keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=s.lr, warmup_steps=warmup)


def make_optimizer(s: FinetuneSettings, precision: str, steps_per_epoch: int = 1, backbone_variables=()):
    import keras
    cls, extra = {"sgd": (keras.optimizers.SGD, {"momentum": s.momentum}),
                  "adam": (keras.optimizers.Adam, {}),
                  "adamw": (keras.optimizers.AdamW, {"weight_decay": s.weight_decay})}[s.optimizer]
    opt = discriminative(cls)(schedule(s, steps_per_epoch), scaled=backbone_variables,
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


def announce(s, parts, model, mode, sizes: dict, steps: int, log):
    """Before any work: the activation cache's size (cached mode) and an estimated epoch time,
    from timing a few forward+backward passes of the training model on random inputs."""
    import tensorflow as tf
    if mode == "cached":
        shape = tuple(parts.lower.output.shape[1:])
        rows = sizes["train"] * s.views_per_image + (sizes["val"] + sizes["test"]) * s.test_views
        log(f"activation cache: {rows:,} rows of {'x'.join(map(str, shape))} float16, "
            f"{activations.size_bytes(shape, rows) / 1e9:.2f} GB ({s.views_per_image} views per train image, "
            f"{s.test_views} per val/test image)")
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


def fit(model, s: FinetuneSettings, data: dict, ckpt: Path, log) -> dict:
    """model.fit with early stopping and a checkpoint per epoch; with --resume, from the checkpoint."""
    # Here, not at the top: the checkpoint module imports Keras.
    from pipeline.finetune.checkpoint import Checkpoint, ResumableEarlyStopping, restore
    stopper = ResumableEarlyStopping(monitor="val_accuracy", mode="max", patience=s.patience,
                                     restore_best_weights=True)
    # the run's name (its settings' hash) goes into every checkpoint: another run's is refused
    state = {"run": ckpt.parent.name, "epochs_done": 0, "history": {}, "stopped": False}
    if s.resume and ckpt.is_file():
        state = restore(ckpt, model, stopper, state["run"])
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

