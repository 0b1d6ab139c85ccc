"""Stage one beyond one process: the local engine against `--engine ray --workers 2` on the same
cores and the same images, the driver's HDF5 write rate, JPEG decode rate per core, and from those
an estimate for ImageNet-21k on 16 GPU workers.

Both engines run the real command in a subprocess (wall time includes Python, TensorFlow and, for
Ray, starting a local instance and two actors: what a user waits for); the in-run rate is the
command's own (rows after start-up / seconds). Writes cache/bench/engines.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_features import run_features_cli, save_result
from pipeline.foundation.machine import cpu_model  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_JPG = ROOT.parent / "shared" / "data" / "cifar10-jpg"
IMAGENET_21K = 14_197_122     # images in the ImageNet-21k (fall 2011) release


def stage_one(engine: str, limit: int, backbone: str, cache: str) -> dict:
    args = ["--data", str(SHARED_JPG), "--limit", str(limit), "--backbone", backbone, "--precision", "float32",
            "--cache-dir", cache, "--engine", engine]
    if engine == "ray":
        args += ["--workers", "2"]
    wall, summary = run_features_cli(args, f"{engine} run")
    rate = float(summary.split("(")[2].split(" images/s")[0])
    return {"wall_seconds": round(wall, 1), "images_per_second_in_run": rate, "summary": summary}


def hdf5_write_rate(rows: int = 16384, width: int = 2048, shard_rows: int = 4096) -> float:
    """MB/s of the driver writing whole shards of float32 rows (with their block digests)."""
    from pipeline.sources import digest
    from pipeline import store
    labels = {s: np.zeros(rows, np.uint8) for s in store.SPLITS}
    index = {s: np.arange(rows) for s in store.SPLITS}
    features = np.random.default_rng(0).standard_normal((shard_rows, width)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        writer = store.RowWriter(Path(tmp) / "x.h5", {"schema_version": store.SCHEMA_VERSION, "settings_hash": "b"},
                                     labels, index, (width,), log=lambda *a: None, block_rows=digest.BLOCK_ROWS)
        digests = {b: bytes(32) for b in range(shard_rows // digest.BLOCK_ROWS)}
        started = time.perf_counter()
        for split in store.SPLITS:
            for lo in range(0, rows, shard_rows):
                writer.write(split, lo, features, {lo // digest.BLOCK_ROWS + b: d for b, d in digests.items()})
        seconds = time.perf_counter() - started
        writer.close()
    return 3 * rows * width * 4 / seconds / 1e6


def decode_rate(side: int = 400, n: int = 200) -> float:
    """JPEG decodes per second on one core at about ImageNet's average size (~400x350)."""
    from PIL import Image
    from pipeline.sources.decode import read_image
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(20):
            img = (ramp[:, None, None] * 0.6 + rng.integers(0, 100, (side, side, 3)) * 0.4).astype(np.uint8)
            paths.append(Path(tmp) / f"{i}.jpg")
            Image.fromarray(img).save(paths[-1], quality=90)
        started = time.perf_counter()
        for i in range(n):
            read_image(paths[i % 20])
        return n / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=3000, help="train and test images each (default 3000: 6,000 images)")
    parser.add_argument("--backbone", default=str(ROOT.parent / "shared" / "models" / "efficientnet_lite0_imagenet.keras"))
    parser.add_argument("--gpu-rate", type=float, default=2000.0,
                        help="assumed images/s of one GPU worker for the estimate (not measured here: no GPU)")
    args = parser.parse_args()
    if not SHARED_JPG.is_dir():
        raise SystemExit(f"needs the shared CIFAR-10 JPEGs at {SHARED_JPG}")

    runs = {}
    for engine in ("local", "ray"):
        with tempfile.TemporaryDirectory() as cache:
            runs[engine] = stage_one(engine, args.limit, args.backbone, cache)
        print(f"{engine}: {runs[engine]['summary']} (wall {runs[engine]['wall_seconds']} s)", flush=True)
    write_mb_s, decodes = hdf5_write_rate(), decode_rate()
    row_mb = 2048 * 4 / 1e6                       # one InceptionV3 row
    driver_rows_s = write_mb_s / row_mb
    workers = 16
    hours = {"gpu": IMAGENET_21K / (workers * args.gpu_rate) / 3600,
             "decode (8 cores per worker)": IMAGENET_21K / (workers * 8 * decodes) / 3600,
             "driver write": IMAGENET_21K / driver_rows_s / 3600}
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "images": 2 * args.limit, "backbone": Path(args.backbone).name, "runs": runs,
        "ray_over_local_wall": round(runs["ray"]["wall_seconds"] / runs["local"]["wall_seconds"], 2),
        "local_over_ray_rate": round(runs["local"]["images_per_second_in_run"] / runs["ray"]["images_per_second_in_run"], 2),
        "driver_hdf5_write_mb_per_s": round(write_mb_s), "jpeg_decodes_per_core_per_s": round(decodes),
        "imagenet21k_16_workers_hours": {k: round(v, 2) for k, v in hours.items()},
        "assumed_gpu_images_per_s": args.gpu_rate,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    save_result("engines", result)


if __name__ == "__main__":
    main()
