"""What a fine-tuning cut costs: for each --unfreeze-from block, the share of the network's weights it
trains and the seconds per training step of cached mode (the upper part in float32, then a 1024-unit
dense head, AdamW, batch 64, random activations of the cut's shape), the best of two timed passes of
10 steps after one warm-up pass. Also names the block the default policy picks.

    python benchmarks/bench_cuts.py BACKBONE [BLOCK ...]

BACKBONE is a .keras backbone file (e.g. ../shared/models/efficientnet_lite0_imagenet.keras) or a
keras.applications name built with random weights (e.g. EfficientNetB0: speed only). Without
blocks: the block the default policy picks (for a keras.applications name: as it would for a file
of that network) and its neighbours. One JSON line per block.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.backbones.table import (BACKBONES, FILE_POLICY, FinetunePolicy, block_names,  # noqa: E402
                                      default_unfreeze)
from pipeline.finetune import surgery  # noqa: E402
from pipeline.finetune.recipe import training_model  # noqa: E402

STEPS, BATCH = 10, 64


def load(which: str):
    """(image model as stage one builds it: input -> base network, its fine-tuning policy)."""
    import keras
    if which.endswith(".keras"):
        base, policy = keras.saving.load_model(which, compile=False), FILE_POLICY
    else:
        base = getattr(keras.applications, which)(weights=None, include_top=False, pooling="avg",
                                                  input_shape=(224, 224, 3))
        # the table's block names for that family, its cut computed as a backbone file's would be
        named = next((b.policy for b in BACKBONES.values() if b.architecture.constructor == which), FILE_POLICY)
        policy = FinetunePolicy(None, named.blocks)
    inputs = keras.Input(base.input.shape[1:])
    return keras.Model(inputs, base(keras.layers.Identity()(inputs))), policy


def weight_share(base, block: str) -> float:
    sizes = [layer.count_params() for layer in base.layers[1:]]
    at = [layer.name for layer in base.layers[1:]].index(block)
    return sum(sizes[at:]) / sum(sizes)


def seconds_per_step(model, policy, block: str) -> float:
    import keras
    width = int(model.output.shape[-1])
    head = keras.Sequential([keras.Input((width,)), keras.layers.Dense(1024, activation="relu"),
                             keras.layers.Dropout(0.5), keras.layers.Dense(10, activation="softmax")])
    trained, _ = training_model(surgery.split(model, head, block, policy), "cached", "float32")
    trained.compile(optimizer=keras.optimizers.AdamW(1e-4), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((BATCH * STEPS, *trained.input.shape[1:]), dtype=np.float32)
    y = rng.integers(0, 10, BATCH * STEPS)
    trained.fit(x[:BATCH * 2], y[:BATCH * 2], batch_size=BATCH, epochs=1, verbose=0)      # traces
    timed = []
    for _ in range(2):
        started = time.perf_counter()
        trained.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        timed.append((time.perf_counter() - started) / STEPS)
    return min(timed)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    model, policy = load(argv[0])
    base = model.layers[-1]
    chosen = default_unfreeze(base, policy)
    blocks = argv[1:]
    if not blocks:
        names = block_names(base, policy)
        at = names.index(chosen)
        blocks = names[max(at - 1, 0):at + 3]
    for block in blocks:
        print(json.dumps({"backbone": argv[0], "unfreeze_from": block, "default": block == chosen,
                          "weight_share": round(weight_share(base, block), 3),
                          "s_per_step": round(seconds_per_step(model, policy, block), 3)}), flush=True)


if __name__ == "__main__":
    main()
