"""Dense-head settings that depend on how much data there is, derived from the number of training
rows (each stored view of each train image) and recorded as the numbers they resolved to, as
`finetune --epochs auto` is: `head` on 900 rows runs --batch-size 32, and `--batch-size 32` given
by hand is the same run.

  batch_size   the power of two nearest rows / STEPS_PER_EPOCH, clamped to BATCH_RANGE: about 50
               optimizer steps an epoch on any set. All of CIFAR-10 (45,000 rows) keeps 1,024; a
               set of 1,553 rows gets 32 (a fixed 1,024 gave it 2 steps an epoch).
  min_epochs   early stopping watches val loss only after the epochs of about WATCH_AFTER_STEPS
               steps (Keras's start_from_epoch), so that on a small, noisy validation split an early
               low of the val loss does not end training before the head has learnt (on 100 val
               images the val loss is lowest by chance at epoch 2 in one seed of three); the best
               epoch is chosen from those after. At most half of --epochs.
  patience     epochs of about PATIENCE_STEPS steps without a better val loss, at least
               MIN_PATIENCE (all of CIFAR-10: 5 epochs of 44 steps).
The constants were measured on CIFAR-10 through EfficientNet-Lite0 (docs/numbers.md, "Defaults
that fit the data"): 900, ~1,350 and 45,000 training rows."""
from __future__ import annotations

import math

STEPS_PER_EPOCH = 50
BATCH_RANGE = (32, 1024)
WATCH_AFTER_STEPS = 300
PATIENCE_STEPS = 200
MIN_PATIENCE = 5


def steps_per_epoch(train_rows: int, batch_size: int) -> int:
    return max(1, -(-train_rows // batch_size))


def auto_batch_size(train_rows: int) -> int:
    power = round(math.log2(max(train_rows, 1) / STEPS_PER_EPOCH)) if train_rows > STEPS_PER_EPOCH else 0
    return min(max(2 ** power, BATCH_RANGE[0]), BATCH_RANGE[1])


def dense(settings: dict, train_rows: int) -> dict:
    """The dense settings with every auto (None) one resolved from `train_rows`."""
    s = dict(settings)
    if s["batch_size"] is None:
        s["batch_size"] = auto_batch_size(train_rows)
    steps = steps_per_epoch(train_rows, s["batch_size"])
    if s["min_epochs"] is None:
        s["min_epochs"] = min(math.ceil(WATCH_AFTER_STEPS / steps), s["epochs"] // 2)
    if s["patience"] is None:
        s["patience"] = max(MIN_PATIENCE, math.ceil(PATIENCE_STEPS / steps))
    return s
