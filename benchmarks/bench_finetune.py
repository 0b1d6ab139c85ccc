"""Stage-three speed: seconds per training epoch over CIFAR-10's 45,000 training images at 299x299,
end-to-end against cached mode, and the one-off cost of building the cache.

Measured with the real pieces (pipeline.finetune.finetune.training_model, the activation-cache extractor) on
InceptionV3 (random weights: speed does not depend on their values), --unfreeze-from mixed9, batch
32, precision "auto" (bfloat16 on an AMX CPU) and float32. Each mode trains `--steps` batches after one warm-up batch (graph tracing);
seconds per epoch = median seconds per step x ceil(45,000 / 32). The cache build is timed on
`--cache-images` images and scaled to 45,000 (x2 with flips). Reading the cache from disk is left
out of the cached step; at ~160 KB per image it is a sequential read, small beside a step.

Writes cache/bench/finetune.json: one entry per precision.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_features import save_result  # noqa: E402
TRAIN_IMAGES, SIZE, BATCH = 45_000, 299, 32


def step_seconds(model, x, y, steps):
    model.train_on_batch(x, y)               # warm-up: traces the graph
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per mode (default 3)")
    parser.add_argument("--cache-images", type=int, default=64, help="images for the cache-build timing")
    parser.add_argument("--precision", nargs="+", default=["auto", "float32"],
                        help="precisions to measure (default: auto float32)")
    args = parser.parse_args()
    results = {}
    for precision in dict.fromkeys(args.precision):
        result = measure(precision, args)
        results[result["precision"]] = result
    save_result("finetune", results)


def measure(precision, args) -> dict:

    import keras
    import numpy as np
    from pipeline.backbones.build import build_backbone
    from pipeline.backbones.folding import fast_extractor
    from pipeline.backbones.precision import resolve_precision
    from pipeline.finetune.finetune import FinetuneSettings, compile_model, training_model
    from pipeline.finetune import surgery
    precision, device = resolve_precision(precision)
    bb = build_backbone("inception_v3", "none", SIZE)
    head = keras.Sequential([keras.Input((bb.width,)), keras.layers.Dense(10, activation="softmax")])
    parts = surgery.split(bb.model, head, "mixed9")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(BATCH, args.cache_images), 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, BATCH)
    s = FinetuneSettings()

    extract = fast_extractor(parts.image_to_cut(), precision)
    extract(images[:8])                       # warm-up
    started = time.perf_counter()
    for lo in range(0, args.cache_images, BATCH):
        cut = extract(images[lo:lo + BATCH])
    cache_rate = args.cache_images / (time.perf_counter() - started)

    result = {"device": device, "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "precision": precision, "input_size": SIZE, "batch_size": BATCH, "unfreeze_from": "mixed9",
              "cut": parts.cut, "cut_shape": list(cut.shape[1:]), "train_images": TRAIN_IMAGES,
              "steps_per_epoch": math.ceil(TRAIN_IMAGES / BATCH), "timed_steps": args.steps,
              "method": "median s/step over timed steps x steps per epoch; cache build rate x 45,000"}
    for mode, x in (("end-to-end", images[:BATCH]), ("cached", cut[:BATCH].astype(np.float16).astype(np.float32))):
        model, _ = training_model(parts, mode, precision)
        compile_model(model, s, precision)
        per_step = step_seconds(model, x, y, args.steps)
        result[mode] = {"seconds_per_step": round(per_step, 3),
                        "seconds_per_epoch": round(per_step * result["steps_per_epoch"], 1)}
        print(f"{precision} {mode:>10}: {per_step:.3f} s/step -> {result[mode]['seconds_per_epoch']:,.0f} s/epoch", flush=True)
    result["cache_build"] = {"images_per_second": round(cache_rate, 2),
                             "seconds": round(TRAIN_IMAGES / cache_rate, 1),
                             "seconds_with_flips": round(2 * TRAIN_IMAGES / cache_rate, 1),
                             "gigabytes_float16": round(TRAIN_IMAGES * int(np.prod(cut.shape[1:])) * 2 / 1e9, 2)}
    result["cached_speedup"] = round(result["end-to-end"]["seconds_per_epoch"] / result["cached"]["seconds_per_epoch"], 1)
    print(f"{precision}: cache build {cache_rate:.1f} images/s -> {result['cache_build']['seconds']:,.0f} s once; "
          f"cached is {result['cached_speedup']}x faster per epoch", flush=True)
    return result


if __name__ == "__main__":
    main()
