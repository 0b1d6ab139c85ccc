"""Where a cached-mode training step's time goes, on a real activation cache: reading a batch (the
PyDataset fit reads: a contiguous window, one stored view per image, the map shift, float16 -> float32),
the forward pass, the backward pass, and the optimizer's update; median seconds over `--steps` batches
after a warm-up, each part timed alone in the same process.

    python benchmarks/bench_epoch_parts.py FEATURES.h5 ACTIVATIONS.h5 HEAD.keras [--backbone FILE]
        [--unfreeze-from NAME] [--steps 20]

The training model, optimizer and loss are the ones `finetune` builds with its defaults; ACTIVATIONS.h5
is the cache a finetune run built (cache/activations/), its cut the one --unfreeze-from gives.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pipeline.backbones.precision import resolve_precision  # noqa: E402
from pipeline.backbones.rebuild import rebuild_backbone  # noqa: E402
from pipeline.backbones.table import default_unfreeze  # noqa: E402
from pipeline.finetune import activations, surgery  # noqa: E402
from pipeline.finetune.recipe import compile_model, training_model  # noqa: E402
from pipeline.finetune.settings import FinetuneSettings  # noqa: E402
from pipeline.store import read_rows  # noqa: E402


def median_seconds(fn, steps: int) -> float:
    fn(0)                                    # warm-up: traces the graph, opens the file
    times = []
    for i in range(1, steps + 1):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("features")
    p.add_argument("activations")
    p.add_argument("head")
    p.add_argument("--backbone")
    p.add_argument("--unfreeze-from")
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args(argv)
    import keras
    import tensorflow as tf
    s = FinetuneSettings(epochs=3)           # what --epochs auto gives all of CIFAR-10
    precision, _ = resolve_precision(s.precision)
    bb = rebuild_backbone(read_rows(a.features, splits=()).attrs, a.backbone)
    cut_block = a.unfreeze_from or default_unfreeze(bb.model.layers[-1], bb.policy)
    parts = surgery.split(bb.model, keras.models.load_model(a.head), cut_block, bb.policy)
    model, upper = training_model(parts, "cached", precision)
    compile_model(model, s, precision, 704, upper.trainable_variables)
    feed = activations.batches(Path(a.activations), "train", s.batch_size, shuffle=True, shift=s.map_shift)
    x, y = feed[0]
    loss_fn, variables = model.loss, model.trainable_variables

    @tf.function
    def forward():
        return loss_fn(y, model(x, training=True))

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, variables)

    parts_s = {"read_batch": median_seconds(lambda i: feed[i % len(feed)], a.steps),
               "forward": median_seconds(lambda i: forward(), a.steps),
               "forward_backward": median_seconds(lambda i: forward_backward(), a.steps),
               "train_step": median_seconds(lambda i: model.train_on_batch(x, y), a.steps)}
    parts_s["backward"] = parts_s["forward_backward"] - parts_s["forward"]
    parts_s["optimizer_and_overhead"] = parts_s["train_step"] - parts_s["forward_backward"]
    print(json.dumps({"cut": parts.cut, "unfreeze_from": cut_block, "batch": s.batch_size, "precision": precision,
                      "seconds": {k: round(v, 4) for k, v in parts_s.items()}}))


if __name__ == "__main__":
    main()
