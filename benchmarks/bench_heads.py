"""Stage-two speed and memory: load a full-size features file, train the dense head to early
stopping, fit the logistic-regression baseline.

The file has CIFAR-10's size with InceptionV3's width: 45,000 train + 5,000 val + 10,000 test rows
of 2048 float32 (60,000 x 2048, 0.5 GB), synthetic (10 overlapping classes, non-negative like
pooled ReLU features, 10% of labels wrong) because the speed does not depend on the values, only on the shapes and
on how many epochs early stopping takes. Each step runs in its own process so its peak memory
(max RSS) is its own; wall times are measured inside, excluding the interpreter start.

Writes cache/bench/heads.json. Targets on a 2-core CPU: load < 2 s, dense < 60 s, baseline < 120 s.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_features import save_result  # noqa: E402
from pipeline.foundation import identity
from pipeline.foundation.machine import cpu_model  # noqa: E402
SIZES = {"train": 45_000, "val": 5_000, "test": 10_000}
WIDTH = 2048
TARGETS = {"load": 2, "dense": 60, "logreg": 120}


def make_file(folder: Path) -> Path:
    import numpy as np
    from pipeline import store
    rng = np.random.default_rng(0)
    # overlapping classes and 10% wrong labels, so that (as on real features) the head starts to
    # overfit and early stopping ends it; well-separated classes would train until --epochs
    means = rng.gamma(1.0, 0.08, (10, WIDTH)).astype(np.float32)
    settings = {"dataset": "bench-synthetic", "width": WIDTH, "rows": sum(SIZES.values())}
    attrs = {"schema_version": store.SCHEMA_VERSION, "settings_hash": identity.digest(settings),
             "settings": settings, "feature_width": WIDTH, "data_fingerprint": "synthetic",
             "class_names": [f"class{i}" for i in range(10)]}
    labels = {s: np.where(rng.random(n) < 0.1, rng.integers(0, 10, n), np.arange(n) % 10) for s, n in SIZES.items()}
    writer = store.RowWriter(folder / "bench.h5", attrs, labels, {s: np.arange(n) for s, n in SIZES.items()},
                                 (WIDTH,), log=lambda *a: None)
    for split, y in labels.items():
        for lo in range(0, len(y), 5000):
            part = np.arange(lo, min(lo + 5000, len(y))) % 10      # the true class, before the label noise
            noise = rng.gamma(1.0, 1.0, (len(part), WIDTH)).astype(np.float32)
            writer.write(split, lo, means[part] + noise)
    return writer.finish({})


def step(name: str, path: str, cache: str) -> dict:
    """One measured step, in this (fresh) process."""
    from pipeline.heads import kinds, training
    from pipeline.store.features import load_features
    started = time.perf_counter()
    fs = load_features(path)
    load_s = time.perf_counter() - started
    out = {"wall_seconds": round(load_s, 2)}
    if name != "load":
        settings = kinds.make_settings(name)
        run = training.run_head(fs, name, settings, cache)
        out = {"wall_seconds": run["metrics"]["wall_seconds"], "settings": settings,
               **{k: v for k, v in run["metrics"].items() if k != "wall_seconds"}}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:                                   # child process: one step, JSON on the last line
        print(json.dumps(step(args.step, args.file, args.cache)))
        return
    results = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "device": "CPU"},
               "rows": SIZES, "width": WIDTH, "targets_seconds": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        path = make_file(Path(tmp))
        print(f"made a {sum(SIZES.values()):,} x {WIDTH} features file in {time.perf_counter() - started:.1f} s")
        for name in ("load", "dense", "logreg"):
            proc = subprocess.run([sys.executable, __file__, "--step", name, "--file", str(path),
                                   "--cache", str(Path(tmp) / "cache")],
                                  capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
            if proc.returncode:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name]["within_target"] = results[name]["wall_seconds"] < TARGETS[name]
            print(f"{name:>6}: {results[name]['wall_seconds']:.2f} s, peak RSS {results[name]['peak_rss_mb']} MB")
    save_result("heads", results)


if __name__ == "__main__":
    main()
