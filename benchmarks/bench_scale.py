"""Stage two at scale: time and memory of each command on a features file of --rows N rows.

    python benchmarks/bench_scale.py --rows 500000 [--source FILE]

Makes (once; cached as cache/bench/scale-<N>-<hash>.h5, written by pipeline.store's RowWriter under a
temporary name and renamed, so `info`, `verify`'s structural checks and `head` accept it) a features
file of N rows from a real one (--source, default the newest complete file in cache/features; all of
CIFAR-10 through EfficientNet-Lite0 at width 1,280 is the intended one): each split keeps its share
of the source's rows (45,000 : 5,000 : 10,000 for CIFAR-10), its rows are whole passes over the source
split's rows (a seeded sample of them when fewer), and every copy after the first gets seeded Gaussian
noise of NOISE times each feature's standard deviation; labels, source indices and the data fingerprint are the source's, so every
command finds the images behind the rows.

Then runs, each as its own process on that file (`python -m pipeline ... --features FILE
--cache-dir cache/bench/scale-<N>-cache`): `head` (dense), `head --head logreg`, `head --head knn`,
`neighbors` (test row 0, k 10) and `audit --no-exact` (the exact-copy check hashes the source's
images, the same work at every N). Per command: wall seconds (start-up included) and peak resident
memory in MB, taken from os.wait4's rusage of that one child (ru_maxrss: the largest resident set of
the process, and of any process it waited for), so one command's peak is not mixed with another's
(getrusage(RUSAGE_CHILDREN) is the maximum over all children so far). Linux carries a parent's
resident size at fork into the child's ru_maxrss, so this process stays small: the file is made in
a child of its own, and nothing large is imported here until the last command has run. The
commands' cache folder is emptied first, so every command computes (nothing is up to date). For the searches, recall@10
against exact search as the command records it in its own JSON output (`recall_at_10`; null when
the command does not record one), and the index's own recall@10 from its build. Writes cache/bench/scale-<N>.json atomically (with --only, the other
commands an earlier run measured on the same file are kept, each with the date, commit and load
it was measured at); prints its path last.

Not part of `make bench` (it runs for hours at 2,000,000 rows); docs/numbers.md holds its results.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.foundation.layout import INDEXES_DIR     # noqa: E402 (a table of names: nothing large)

NOISE = 0.01          # of each feature's standard deviation: copies stay each other's nearest neighbours
WRITE_ROWS = 8192     # rows generated and written at a time (the making never holds the file)
COMMANDS = {
    "head_dense": ["head", "--head", "dense"],
    "head_logreg": ["head", "--head", "logreg"],
    "head_knn": ["head", "--head", "knn"],
    "neighbors": ["neighbors", "--split", "test", "--row", "0", "--k", "10"],
    "audit": ["audit", "--no-exact"],
}
SEARCHES = ("head_knn", "neighbors", "audit")
RECALL_KEY = "recall_at_10"     # the key this benchmark writes recall@10 under
# the keys a searching command records it under in its own JSON (the index's record); without either, null
RECALL_KEYS = ("recall_at_10", "recall@10")
BUILD_RECALL_KEY = "index_recall_at_10"


def bench_dir() -> Path:
    return ROOT / "cache" / "bench"


def split_sizes(source_sizes: dict, rows: int) -> dict:
    """Each split's share of `rows`, in the source's proportions (at least 1 row each)."""
    total = sum(source_sizes.values())
    sizes = {s: max(1, round(rows * n / total)) for s, n in source_sizes.items()}
    sizes["train"] += rows - sum(sizes.values())
    return sizes


def make_file(source, rows: int, out_dir: Path, seed: int = 0, log=print) -> Path:
    """The N-row features file made from `source` (see the module's text); made once, up to date after."""
    import numpy as np
    from pipeline import store
    from pipeline.foundation import identity
    from pipeline.foundation.errors import UserError
    from pipeline.foundation.outputs import produce
    from pipeline.store.features import load_features
    src = load_features(source)      # checked; a source is one real file (all of CIFAR-10: 307 MB)
    sizes = split_sizes({s: len(src.splits[s].labels) for s in store.SPLITS}, rows)
    if rows < len(sizes):
        raise UserError(f"--rows must be at least {len(sizes)}, got {rows}")
    settings = {"dataset": "bench-scale", "source": src.attrs["settings_hash"], "rows": rows, "noise": NOISE,
                "seed": seed}
    final = Path(out_dir) / f"scale-{rows}-{identity.digest(settings)}.h5"
    keep = {k: v for k, v in src.attrs.items() if k not in ("complete", "settings", "settings_hash", "row_shape")}
    attrs = {**keep, "settings": settings, "settings_hash": identity.digest(settings), "bench_rows": rows}
    copy_of = {s: rows_of(len(src.splits[s].labels), n, seed) for s, n in sizes.items()}

    def make():
        writer = store.RowWriter(final, attrs, {s: src.splits[s].labels[c] for s, c in copy_of.items()},
                                 {s: src.splits[s].index[c] for s, c in copy_of.items()},
                                 (int(src.attrs["feature_width"]),), log=log)
        try:
            for split, at in copy_of.items():
                x_src = src.splits[split].features
                std = x_src.std(axis=0, dtype=np.float64).astype(np.float32)
                for lo in range(writer.rows_done(split) // WRITE_ROWS * WRITE_ROWS, len(at), WRITE_ROWS):
                    part = at[lo:lo + WRITE_ROWS]
                    x = x_src[part]
                    rng = np.random.default_rng([seed, store.SPLITS.index(split), lo])
                    copy = (np.arange(lo, lo + len(part)) >= len(x_src))[:, None]   # the first pass stays exact
                    x = x + copy * rng.standard_normal(x.shape, dtype=np.float32) * (NOISE * std)
                    writer.write(split, lo, x.astype(np.float32))
            writer.finish({"made_from": str(source)})
        finally:
            writer.close()

    produce(final, final.is_file, make, log)
    return final


def rows_of(n_source: int, n: int, seed: int):
    """Which source row each of n rows copies: fewer than the source's, a seeded sample of them in the
    source's order (so every class is there, stored as the source stores them); more, whole passes
    over the source, the last one partial."""
    import numpy as np
    if n <= n_source:
        return np.sort(np.random.default_rng(seed).choice(n_source, n, replace=False))
    return np.arange(n) % n_source


def measure(name: str, argv: list[str], log_path: Path) -> dict:
    """One command in its own process: wall seconds, its own peak RSS (os.wait4), exit code."""
    started = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "exit_code": proc.returncode, "log": str(log_path)}


def recall_of(cache: Path, since: float, keys=RECALL_KEYS):
    """recall@10 as the command recorded it (under one of `keys`) in a JSON it wrote under `cache`
    after `since` (the searches record it with their answer); None when none does."""
    for path in sorted(cache.rglob("*.json")):
        if path.stat().st_mtime < since:
            continue
        try:
            record = json.loads(path.read_text())
            found = next((v for v in (_find(record, key) for key in keys) if v is not None), None)
        except (OSError, ValueError):
            continue
        if found is not None:
            return found
    return None


def _find(record, key):
    if isinstance(record, dict):
        if isinstance(record.get(key), (int, float)):
            return record[key]
        if isinstance(record.get(key), dict) and isinstance(record[key].get("recall"), (int, float)):
            return record[key]["recall"]            # a recall record: {"recall": ..., "k": ..., ...}
        record = list(record.values())
    if isinstance(record, list):
        for value in record:
            found = _find(value, key)
            if found is not None:
                return found
    return None


def made(rows: int, source: str | None) -> dict:
    """Make (or find) the file, in this process: {file, source, width} (the --make-only child's answer)."""
    from pipeline import store
    from pipeline.store.features import default_features
    source = Path(source) if source else default_features(ROOT / "cache")
    path = make_file(source, rows, bench_dir())
    return {"file": str(path), "source": str(source),
            "width": int(store.read_rows(path, splits=(), values=False).attrs["feature_width"])}


def earlier_commands(final: Path, file: Path) -> dict:
    """The commands an earlier run (--only) measured on the same file, kept beside this run's: each
    carries its own date, commit and load ("measured")."""
    try:
        earlier = json.loads(final.read_text())
    except (OSError, ValueError):
        return {}
    if earlier.get("file") != str(file):
        return {}
    env = earlier.get("environment", {})
    when = {k: env.get(k) for k in ("date", "commit", "load_average")}
    return {name: {"measured": when, **r} for name, r in earlier.get("commands", {}).items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, required=True, help="rows of the features file (all splits)")
    p.add_argument("--source", help="the real features file its rows come from (default: the newest in cache/features)")
    p.add_argument("--only", help="comma-separated commands to run (default: all of " + ", ".join(COMMANDS) + ")")
    p.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make_only:                        # the child that makes the file: its answer on the last line
        print(json.dumps(made(args.rows, args.source)))
        return
    # This process stays small: Linux hands a parent's resident size at fork on to the child's ru_maxrss
    # (it survives the exec), so the file is made in a child and nothing large is imported here.
    out = bench_dir()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--make-only",
                           *(["--source", args.source] if args.source else [])], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"making the file failed:\n{proc.stderr[-3000:]}")
    file = json.loads(proc.stdout.strip().splitlines()[-1])
    path = Path(file["file"])
    result = {"rows": args.rows, "width": file["width"], "source": file["source"], "file": str(path),
              "file_gb": round(path.stat().st_size / 1e9, 2), "make_seconds": round(time.perf_counter() - started, 1),
              "memory_method": "os.wait4 rusage ru_maxrss of each command's process (the parent kept small)",
              "commands": {}}
    cache = out / f"scale-{args.rows}-cache"
    shutil.rmtree(cache, ignore_errors=True)           # every command computes: nothing up to date
    logs = out / f"scale-{args.rows}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name in (args.only.split(",") if args.only else COMMANDS):
        # each search builds its own index (the time a user's first search of the file takes), not
        # the one the command before it left
        shutil.rmtree(cache / INDEXES_DIR, ignore_errors=True)
        since, load = time.time(), [round(v, 1) for v in os.getloadavg()]
        argv = [sys.executable, "-m", "pipeline", *COMMANDS[name], "--features", str(path), "--cache-dir", str(cache)]
        r = measure(name, argv, logs / f"{name}.log")
        if name in SEARCHES:
            r[RECALL_KEY] = recall_of(cache, since)
            # the index's own recall@10, measured when it was built (500 of its rows as queries): the
            # figure that speaks for `neighbors`, whose answer is measured on its one query
            r[BUILD_RECALL_KEY] = recall_of(cache, since, ("build_recall",))
        result["commands"][name] = {**r, "load_average_before": load}
        print(f"{name:>12}: {r['wall_seconds']:.1f} s, peak RSS {r['peak_rss_mb']} MB, exit {r['exit_code']}"
              + (f", recall@10 {r[RECALL_KEY]}" if name in SEARCHES else ""), flush=True)
    from bench_features import environment          # heavy imports only now, after the last command
    from pipeline.foundation.outputs import write_json_atomic
    final = out / f"scale-{args.rows}.json"
    env = environment()
    for r in result["commands"].values():
        r["measured"] = {"date": env["date"], "commit": env["commit"], "load_average": env["load_average"]}
    write_json_atomic(final, {**result, "commands": {**earlier_commands(final, path), **result["commands"]},
                              "environment": env})
    print(final)


if __name__ == "__main__":
    main()
