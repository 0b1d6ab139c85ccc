"""Stage two: train a grid of head settings in parallel processes and rank them.

  python -m pipeline sweep --grid hidden=256,512,1024 dropout=0.2,0.5 lr=1e-3,3e-4 --jobs 2

Every combination of the grid values (other settings from the flags or their defaults) is one
`head` run, saved exactly as `python -m pipeline head` saves it; a combination whose run already
exists is skipped, so an interrupted or extended sweep only trains what is new. The leaderboard,
sorted by validation accuracy (test accuracy is shown, never used to rank), is printed and saved
as JSON and CSV in cache/sweeps/.

With `--engine ray` the configurations are Ray tasks and the features go into Ray's object store
once, shared by every task (the local engine's processes each read their own copy). The tasks
write their runs under --cache-dir, so on a multi-node cluster that folder must be shared.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import time
from pathlib import Path

from pipeline import heads, store
from pipeline.errors import UserError


def parse_grid(head: str, items) -> dict:
    """["hidden=256,512", "lr=1e-3"] -> {"hidden": [256, 512], "lr": [0.001]}, every value checked."""
    grid = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values:
            raise UserError(f"--grid entries look like KEY=V1,V2; got {item!r}")
        if key in grid:
            raise UserError(f"--grid names {key} twice")
        parsed = [heads.parse_setting(head, key, v.strip()) for v in values.split(",")]
        if key not in heads.HEADS[head].sweep:
            raise UserError(f"a {head} sweep may vary {', '.join(heads.HEADS[head].sweep)}; not {key}")
        grid[key] = list(dict.fromkeys(parsed))       # drop repeats, keep order
    return grid


def configurations(head: str, base: dict, grid: dict) -> list[dict]:
    """Every combination of the grid over `base`; combinations that are the same run appear once."""
    keys, out = list(grid), []
    for combo in itertools.product(*(grid[k] for k in keys)):
        config = heads.canonical(head, {**base, **dict(zip(keys, combo))})
        if config not in out:
            out.append(config)
    return out


def _train_one(features_path: str, head: str, settings: dict, cache_dir: str, threads: int) -> dict:
    """One configuration, in a worker process: it reads the features itself (cheaper than
    shipping the arrays) and returns run.json's content."""
    fs = heads.load_features(features_path)
    result = heads.run_head(fs, head, settings, cache_dir, verbose=0, threads=threads)
    result.pop("model", None)
    return result


def _train_shared(fs, head: str, settings: dict, cache_dir: str, threads: int) -> dict:
    """One configuration as a Ray task: `fs` comes from the object store (read-only arrays)."""
    result = heads.run_head(fs, head, settings, cache_dir, verbose=0, threads=threads)
    result.pop("model", None)
    return result


def _ray_results(fs, head, todo, cache_dir, threads, address):
    from pipeline import ray_engine
    with ray_engine.Session(address) as session:
        ray = session.ray
        shared = ray.put(fs)
        task = ray.remote(num_cpus=threads, max_retries=1)(_train_shared)
        pending = [task.remote(shared, head, c, cache_dir, threads) for c in todo]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            yield ray.get(finished[0])


def leaderboard(runs: list[dict], keys) -> list[dict]:
    rows = [{"run": Path(r["run_dir"]).name, **{k: r["settings"][k] for k in keys},
             "val_accuracy": r["metrics"]["val_accuracy"], "test_accuracy": r["metrics"]["test_accuracy"],
             "wall_seconds": r["metrics"].get("wall_seconds"), "run_dir": r["run_dir"]}
            for r in runs]
    return sorted(rows, key=lambda row: (-row["val_accuracy"], row["run"]))


def save_leaderboard(rows: list[dict], path_stem: Path) -> tuple[Path, Path]:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    json_path, csv_path = path_stem.with_suffix(".json"), path_stem.with_suffix(".csv")
    store.write_text_atomic(json_path, json.dumps(rows, indent=2))
    store.write_text_atomic(csv_path, out.getvalue())
    return json_path, csv_path


def add_arguments(p):
    heads.add_common_arguments(p)
    p.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", help="settings to vary, e.g. hidden=256,512 "
                   "dropout=0.2,0.5 (dense), C=0.01,0.1,1 (logreg) or k=5,10,20 (knn); default: just the base "
                   "settings. Which settings each head lets a sweep vary: " + "; ".join(
                       f"{k.name}: {', '.join(k.sweep)}" for k in heads.HEADS.values()))
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="parallel worker processes (default: min(4, cores))")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: joblib processes (default); ray: Ray tasks sharing one copy of the features")
    p.add_argument("--address", metavar="auto|ray://HOST:PORT",
                   help="ray: the cluster to join (default: start a local instance for this sweep)")


def run(args):
    from joblib import Parallel, delayed
    from pipeline.report import format_table
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    base = heads.settings_from_args(args)
    grid = parse_grid(args.head, args.grid)            # grid mistakes surface before any loading
    fs = heads.features_from_args(args)
    configs = configurations(args.head, base, grid)
    features_hash = fs.attrs["settings_hash"]
    todo = [c for c in configs if not heads.finished_run(args.cache_dir, args.head, features_hash, c)]
    print(f"sweep: {len(configs)} configurations of the {args.head} head on {fs.path.name}; "
          f"{len(configs) - len(todo)} already done, {len(todo)} to train")
    if args.engine == "local" and args.address is not None:
        raise UserError("--address applies to --engine ray only")
    jobs = min(args.jobs, max(1, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs)    # split the cores; do not oversubscribe them
    started = time.perf_counter()
    if args.engine == "ray":
        results = _ray_results(fs, args.head, todo, args.cache_dir, threads, args.address) if todo else []
    else:
        features_path = str(fs.path)
        del fs                                         # workers read the file themselves
        tasks = (delayed(_train_one)(features_path, args.head, c, args.cache_dir, threads) for c in todo)
        results = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(tasks)
    for i, r in enumerate(results, 1):
        print(f"[{i}/{len(todo)}] {Path(r['run_dir']).name}  val {r['metrics']['val_accuracy']:.4f}  "
              f"({r['metrics']['wall_seconds']:.1f} s)", flush=True)

    runs = [heads.finished_run(args.cache_dir, args.head, features_hash, c) for c in configs]
    keys = list(grid) or list(heads.HEADS[args.head].sweep)
    rows = leaderboard(runs, keys)
    stem = Path(args.cache_dir) / "sweeps" / f"{args.head}-{features_hash}-{store.settings_hash({'base': base, 'grid': grid})}"
    json_path, csv_path = save_leaderboard(rows, stem)
    shown = [[i, r["run"], *(r[k] for k in keys), r["val_accuracy"], r["test_accuracy"]] for i, r in enumerate(rows, 1)]
    print(format_table(["rank", "run", *keys, "val acc", "test acc"], shown))
    print(f"trained {len(todo)} in {time.perf_counter() - started:.1f} s; leaderboard: {json_path} and {csv_path}")
