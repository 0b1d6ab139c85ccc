"""Flip views: what `features --views 2` buys and costs, on the shared ImageNet-pretrained EfficientNet-Lite0
and real CIFAR-10 JPEGs.

- Accuracy: the default dense head and the logistic-regression baseline trained on one view and on two
  (each evaluated on the mean of its views' probabilities), test accuracy and ECE before/after the
  dense head's temperature. The one-view runs read the first view of the same 2-view file: it equals a
  `--views 1` file bit for bit (tests/test_views.py), so the comparison is on identical features.
- Stage-one cost: images/s of the fast extractor with one and with two views on the same images,
  alternating rounds (best of each), so that both see the same machine load.

Usage: bench_views.py [--features FILE_WITH_2_VIEWS | --limit N] [--cache-dir DIR]; without --features it
runs stage one with --views 2 and --limit N (default 500 train + 500 test images). Writes cache/bench/views.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from bench_features import save_result
from pipeline.foundation.machine import cpu_model  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg"
BACKBONE = ROOT.parent / "shared" / "models" / "efficientnet_lite0_imagenet.keras"


def heads_on(fs, cache: Path) -> dict:
    from pipeline.heads.kinds import make_settings
    from pipeline.heads.training import run_head
    out = {}
    for head in ("dense", "logreg"):
        r = run_head(fs, head, make_settings(head), cache)
        cal = r["calibration"]
        out[head] = {"test_accuracy": r["metrics"]["test_accuracy"], "val_accuracy": r["metrics"]["val_accuracy"],
                     "wall_seconds": r["metrics"]["wall_seconds"], "calibration": cal}
    return out


def extraction_rates(backbone: str, images, rounds: int = 2) -> dict:
    """images/s with one and with two views, alternating rounds, best of each."""
    from pipeline.backbones.build import build_backbone
    from pipeline.backbones.folding import fast_extractor
    from pipeline.extract.views import image_views
    extract = fast_extractor(build_backbone(backbone, image_shape=images.shape[1:]).model, "float32")
    extract(images[:8])                                    # trace once outside the timing
    best = {1: 0.0, 2: 0.0}
    for _ in range(rounds):
        for views in (1, 2):
            started = time.perf_counter()
            for lo in range(0, len(images), 64):
                for v in image_views(images[lo:lo + 64], views):
                    extract(v)
            best[views] = max(best[views], len(images) / (time.perf_counter() - started))
    return {f"{k}_view_images_per_second": round(v, 2) for k, v in best.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", help="a stage-one file made with --views 2")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--timing-images", type=int, default=256)
    p.add_argument("--cache-dir", default=str(ROOT / "cache"))
    args = p.parse_args()
    from pipeline.extract.features import FeatureSettings, run_features
    from pipeline.sources.rows import load_splits
    from pipeline.store.features import load_features
    cache = Path(args.cache_dir)
    path = args.features or run_features(FeatureSettings(data=str(DATA), backbone=str(BACKBONE), limit=args.limit,
                                                         views=2, precision="float32", cache_dir=str(cache)))
    two = load_features(path)
    assert two.attrs.get("views") == 2, f"{path} has one view"
    one = dataclasses.replace(two, splits={k: dataclasses.replace(s, mirrored=None) for k, s in two.splits.items()})
    result = {"features": str(path), "rows": {k: len(s.labels) for k, s in two.splits.items()},
              "stage_one_seconds_two_views": two.attrs.get("elapsed_seconds"),
              "cpu": f"{cpu_model()}, {os.cpu_count()} cores", "views": {}}
    for n, fs in ((1, one), (2, two)):
        result["views"][n] = heads_on(fs, cache / "bench" / f"views-{n}")
    test = load_splits(two.attrs, None)["test"].x[:args.timing_images]
    result["extraction"] = extraction_rates(str(BACKBONE), test)
    out = save_result("views", result)
    for n in (1, 2):
        v = result["views"][n]
        c = v["dense"]["calibration"]["test"]
        print(f"{n} view(s): dense test {v['dense']['test_accuracy']:.4f} (ECE {c['ece_before']:.4f} -> "
              f"{c['ece_after']:.4f}, T {v['dense']['calibration']['temperature']:.3f}), "
              f"logreg test {v['logreg']['test_accuracy']:.4f} (ECE {v['logreg']['calibration']['test']['ece_before']:.4f})")
    print(json.dumps(result["extraction"]), f"-> {out}")


if __name__ == "__main__":
    main()
