"""Stage-one speed: our extractor against the plain approach, in one run on the same machine.

plain: the tutorial's way, a Keras model with a resize layer in front of InceptionV3, float32,
       `model.predict` (batch 32).
ours:  `fast_extractor`: BatchNorm folded into the convolutions, precision "auto" (bfloat16 on
       an AMX/AVX512-BF16 CPU), one compiled graph (batch 64).
Both at 299x299 on the same real CIFAR-10 images, alternating rounds so drift hits both alike;
the best round of each counts. Weights are random (`none`): speed does not depend on their values.
Then the real stage-one command runs in a subprocess over --limit images per split (0 = all of
CIFAR-10) to measure its peak memory (max RSS) and end-to-end rate.

Writes cache/bench/features.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_JPG = ROOT.parent / "shared" / "data" / "cifar10-jpg"

from pipeline.foundation.machine import cpu_model  # noqa: E402  (after the path above)


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")   # the ones precision "auto" and speed hinge on
LIBRARIES = ("tensorflow", "keras", "numpy", "h5py", "scikit-learn", "ray")


def save_result(name: str, result) -> Path:
    """Every benchmark's result goes to cache/bench/<name>.json, written atomically, with the
    environment it was measured in (tools/make_numbers.py renders it into docs/numbers.md); prints the path."""
    from pipeline.foundation.outputs import write_json_atomic
    out = ROOT / "cache" / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, {**result, "environment": environment()})
    print(out)
    return out


def environment() -> dict:
    """What a number depends on besides the code's settings: the CPU and its flags, what precision
    "auto" resolves to there, how busy the machine was (the project's machines are shared), when,
    which commit (and whether it had local changes), which library versions, and the command line."""
    from datetime import datetime, timezone
    from importlib import metadata
    from pipeline.backbones.precision import resolve_precision
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    precision, device = resolve_precision("auto")
    versions = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass

    def git(*args):                          # None outside a git checkout or without git
        try:
            proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "device": device, "precision_auto": precision, "load_average": [round(v, 1) for v in os.getloadavg()],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": git("rev-parse", "HEAD"), "local_changes": None if status is None else bool(status),
            "versions": versions, "argv": sys.argv[1:]}


def images(n):
    import numpy as np
    if SHARED_JPG.is_dir():
        from pipeline.sources.dataset import load_dataset
        return load_dataset(SHARED_JPG, limit=n).test_x, f"real CIFAR-10 test images from {SHARED_JPG}"
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "random images"


def rate(fn, x):
    started = time.perf_counter()
    fn(x)
    return len(x) / (time.perf_counter() - started)


def plain_and_fast(backbone, precision):
    """(plain, ours): the tutorial's model.predict at batch 32, and stage one's fast extractor at
    batch 64; each takes a uint8 batch."""
    from pipeline.backbones.folding import fast_extractor
    fast = fast_extractor(backbone.model, precision)
    plain = lambda batch: backbone.model.predict(batch, batch_size=32, verbose=0)  # noqa: E731

    def ours(batch):
        for lo in range(0, len(batch), 64):
            fast(batch[lo:lo + 64])
    return plain, ours


def run_features_cli(args: list[str], what: str) -> tuple[float, str]:
    """`python -m pipeline features ARGS` in a child process: (wall seconds, its last `features:` line)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "features", *args], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return wall, [line for line in proc.stdout.splitlines() if line.startswith("features:")][-1]


def stage_one_run(limit):
    """The real CLI in a subprocess: its peak RSS is what a user's run costs."""
    with tempfile.TemporaryDirectory() as cache:
        args = ["--weights", "none", "--cache-dir", cache]
        if SHARED_JPG.is_dir():
            args += ["--data", str(SHARED_JPG)]
        if limit:
            args += ["--limit", str(limit)]
        wall, summary = run_features_cli(args, "stage one")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"limit_per_split": limit or "all", "wall_seconds": round(wall, 1), "peak_rss_mb": round(peak_mb),
            "summary": summary}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="images per timed round (default 256)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=1000,
                        help="images per split for the memory run; 0 = all of CIFAR-10 (default 1000)")
    args = parser.parse_args()

    from pipeline.backbones.build import build_backbone
    from pipeline.backbones.precision import resolve_precision
    x, source = images(args.images)
    precision, device = resolve_precision("auto")
    plain, ours = plain_and_fast(build_backbone("inception_v3", "none", 299, seed=0), precision)
    plain(x[:32]), ours(x[:64])                                   # warm-up: tracing, oneDNN kernels
    plain_rates, our_rates = [], []
    for r in range(args.rounds):
        plain_rates.append(rate(plain, x))
        our_rates.append(rate(ours, x))
        print(f"round {r + 1}: plain {plain_rates[-1]:.1f} images/s, ours {our_rates[-1]:.1f} images/s", flush=True)
    best_plain, best_ours = max(plain_rates), max(our_rates)
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "device": device},
        "input_size": 299, "images": len(x), "image_source": source, "rounds": args.rounds,
        "plain": {"what": "Keras model, Resizing + InceptionV3, float32, model.predict, batch 32",
                  "images_per_second": round(best_plain, 1), "all_rounds": [round(v, 1) for v in plain_rates]},
        "ours": {"what": f"fast_extractor: folded BatchNorm, {precision}, tf.function, batch 64",
                 "images_per_second": round(best_ours, 1), "all_rounds": [round(v, 1) for v in our_rates]},
        "speedup": round(best_ours / best_plain, 2),
        "in_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(f"plain {best_plain:.1f} images/s, ours {best_ours:.1f} images/s: {result['speedup']:.2f}x", flush=True)
    result["stage_one_run"] = stage_one_run(args.limit)
    print(f"stage one over {result['stage_one_run']['limit_per_split']} images per split: "
          f"peak RSS {result['stage_one_run']['peak_rss_mb']} MB; {result['stage_one_run']['summary']}")
    save_result("features", result)


if __name__ == "__main__":
    main()
