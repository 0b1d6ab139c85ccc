"""Stage two: train a grid of head settings in parallel processes and rank them.

  python -m pipeline sweep --grid hidden=256,512,1024 dropout=0.2,0.5 lr=1e-3,3e-4 --jobs 2

Every combination of the grid values (other settings from the flags or their defaults) is one
`head` run, saved exactly as `python -m pipeline head` saves it; a combination whose run already
exists is skipped, so an interrupted or extended sweep only trains what is new. The leaderboard,
sorted by validation accuracy (test accuracy is shown, never used to rank), with each accuracy's
95% Wilson interval, is printed and saved as JSON and CSV in cache/sweeps/. Configurations whose
val accuracy is not distinguishable from the best (McNemar's exact test on the same val images,
p >= 0.05) are marked as ties, and the most regularized of them (HeadKind.simpler) is recommended.

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
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.foundation import identity, layout, records, runs, settings, stats
from pipeline.foundation.errors import UserError, warn
from pipeline.foundation.outputs import Lock, write_text_atomic
from pipeline.foundation.settings import Choice, Interval, setting
from pipeline.foundation.stats import ACCURACY_METHOD, interval_text
from pipeline.foundation.tables import format_table
from pipeline.heads import kinds, training
from pipeline.heads.evaluation import recorded_interval
from pipeline.heads.kinds import TIE_LEVEL, TIE_RULE, StageTwoSettings
from pipeline.heads.mistakes import read_predictions
from pipeline.store.features import features_from_args, load_features


@dataclass
class SweepSettings(StageTwoSettings):
    grid: list | None = setting(None, None, "settings to vary, e.g. hidden=256,512 dropout=0.2,0.5 (dense), "
                                "C=0.01,0.1,1 (logreg) or k=5,10,20 (knn); default: just the base settings. Which "
                                "settings each head lets a sweep vary: " + "; ".join(
                                    f"{k.name}: {', '.join(k.sweep)}" for k in kinds.HEADS.values()),
                                metavar="KEY=V1,V2", nargs="+")
    # no default here: it depends on the machine, and docs/reference.md must not
    jobs: int | None = setting(None, Interval(int, 1), "parallel worker processes (default: min(4, cores))")
    engine: str = setting("local", Choice(("local", "ray")), "local: joblib processes; ray: Ray tasks sharing one "
                          "copy of the features")
    address: str | None = setting(None, None, "ray: the cluster to join (default: start a local instance for this "
                                  "sweep)", metavar="auto|ray://HOST:PORT")


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
        parsed = [kinds.parse_setting(head, key, v.strip()) for v in values.split(",")]
        if key not in kinds.HEADS[head].sweep:
            raise UserError(f"a {head} sweep may vary {', '.join(kinds.HEADS[head].sweep)}; not {key}")
        grid[key] = list(dict.fromkeys(parsed))       # drop repeats, keep order
    return grid


def configurations(head: str, base: dict, grid: dict) -> list[dict]:
    """Every combination of the grid over `base`; combinations that are the same run appear once."""
    keys, out = list(grid), []
    for combo in itertools.product(*(grid[k] for k in keys)):
        config = kinds.canonical(head, {**base, **dict(zip(keys, combo))})
        if config not in out:
            out.append(config)
    return out


def _die_with_parent(sweep_pid: int):
    """Run in each worker process as it starts (loky's initializer): exit as soon as the sweep that
    started it is gone. loky workers outlive a SIGKILLed parent: they finish the configurations already
    handed to them, then idle for loky's idle timeout (300 s; measured: a sweep killed while its workers
    were still starting left them, and the pipes they hold, for 340 s). PR_SET_PDEATHSIG is no cure here
    (it fires when the parent *thread* that started the worker ends, and loky starts workers from
    whichever thread is running), so a daemon thread polls the parent id instead: once it is no longer
    the sweep (dead already, or re-parented since), the worker ends itself."""
    def watch():
        while os.getppid() == sweep_pid:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)   # half-written run folders are removed by the next run
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _train(fs, head: str, settings: dict, cache_dir: str, threads: int) -> dict:
    """One configuration: run.json's content, or {"error", "run_dir"} when it failed as a user
    error (e.g. one learning rate of the grid diverged: the others still count). A configuration
    that another run (a `head`, another sweep) is training right now is waited for, then read."""
    try:
        result = training.run_head(fs, head, settings, cache_dir, verbose=0, threads=threads, wait=True)
    except UserError as exc:
        return {"error": str(exc), "run_dir": training.run_name(head, fs.attrs["settings_hash"], settings)}
    result.pop("model", None)
    return result


def _train_one(features_path: str, head: str, settings: dict, cache_dir: str, threads: int) -> dict:
    """One configuration, in a worker process: it reads the features itself (cheaper than
    shipping the arrays)."""
    return _train(load_features(features_path), head, settings, cache_dir, threads)


def _train_shared(fs, head: str, settings: dict, cache_dir: str, threads: int) -> dict:
    """One configuration as a Ray task: `fs` comes from the object store (read-only arrays)."""
    return _train(fs, head, settings, cache_dir, threads)


def _ray_results(fs, head, todo, cache_dir, threads, address):
    from pipeline.extract import ray_engine
    with ray_engine.Session(address) as session:
        ray = session.ray
        shared = ray.put(fs)
        task = ray.remote(num_cpus=threads, max_retries=1)(_train_shared)
        pending = [task.remote(shared, head, c, cache_dir, threads) for c in todo]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            yield ray.get(finished[0])


def leaderboard(runs: list[dict], keys, ties: bool = False) -> list[dict]:
    """Rows sorted by val accuracy, each with its accuracies' 95% intervals; with `ties` the ties
    with the best are marked (TIE_RULE, from the runs' per-image predictions)."""
    simplest_first = {Path(r["run_dir"]).name: tuple(sign * r["settings"][key] for key, sign in
                                                     kinds.HEADS[r["head"]].simpler) for r in runs}
    rows = [{"run": Path(r["run_dir"]).name, **{k: r["settings"][k] for k in keys},
             "val_accuracy": r["metrics"]["val_accuracy"], **_interval(r, "val"),
             "test_accuracy": r["metrics"]["test_accuracy"], **_interval(r, "test"),
             "wall_seconds": r["metrics"].get("wall_seconds"), "run_dir": r["run_dir"]}
            for r in runs]
    rows.sort(key=lambda row: (-row["val_accuracy"], row["run"]))
    return mark_ties(rows, simplest_first) if ties else rows


def _interval(run: dict, split: str) -> dict:
    report = {}
    if not run["metrics"].get(f"{split}_accuracy_interval") and run.get("report"):   # a run from before intervals
        try:
            report = records.read(Path(run["report"], layout.REPORT_JSON), records.REPORT)
        except UserError:
            pass            # no interval for a run whose report is gone or damaged
    low, high = recorded_interval(run["metrics"], report, split) or (None, None)
    return {f"{split}_accuracy_low": low, f"{split}_accuracy_high": high}


def val_correct(run_dir) -> np.ndarray | None:
    """Which val images a run gets right, in source order (its report's predictions.csv); None
    when they are missing (a report from before they were written) or unreadable."""
    try:
        rows = read_predictions(runs.Run.read(run_dir).report / layout.PREDICTIONS)
    except (UserError, OSError):
        return None
    return np.array([r["correct"] for r in sorted(rows, key=lambda r: r["source_index"]) if r["split"] == "val"],
                    bool)


def mark_ties(rows: list[dict], simplest_first: dict) -> list[dict]:
    """Adds val_p_vs_best (McNemar's exact p of each run against the best, on the same val
    images), tied_with_best and recommended (TIE_RULE; `simplest_first`: run name -> sort key,
    smallest = most regularized); None where a run's per-image predictions are missing."""
    best = val_correct(rows[0]["run_dir"])
    for row in rows:
        right = None if best is None else val_correct(row["run_dir"])
        row["val_p_vs_best"] = (None if right is None or right.shape != best.shape else
                                stats.mcnemar_exact(int(np.sum(best & ~right)), int(np.sum(right & ~best))))
        row["tied_with_best"] = None if row["val_p_vs_best"] is None else row["val_p_vs_best"] >= TIE_LEVEL
    tied = [r for r in rows if r["tied_with_best"]] or rows[:1]
    pick = min(tied, key=lambda r: (simplest_first[r["run"]],
                                    r["wall_seconds"] if r["wall_seconds"] is not None else float("inf"), r["run"]))
    for row in rows:
        row["recommended"] = row is pick
    return rows


def save_leaderboard(rows: list[dict], path_stem: Path) -> tuple[Path, Path]:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    json_path, csv_path = path_stem.with_suffix(".json"), path_stem.with_suffix(".csv")
    write_text_atomic(json_path, json.dumps(rows, indent=2))
    write_text_atomic(csv_path, out.getvalue())
    return json_path, csv_path


def add_arguments(p):
    kinds.add_arguments(p, SweepSettings)


def run(args):
    s = settings.from_args(SweepSettings, args)
    run_sweep(s, kinds.settings_from_args(args, s.head))


def run_sweep(s: SweepSettings, base: dict):
    """Train the grid over `base` (the head kind's settings), rank it, save and print the leaderboard."""
    s, base = settings.check(s), kinds.make_settings(s.head, **base)
    grid = parse_grid(s.head, s.grid)                  # grid mistakes surface before any loading
    if s.engine == "local" and s.address is not None:
        raise UserError("--address applies to --engine ray only")
    fs = features_from_args(s)
    configs = configurations(s.head, base, grid)
    features_hash = fs.attrs["settings_hash"]
    configs = _readable(s.cache_dir, s.head, features_hash, configs)
    stem = layout.folder(s.cache_dir, layout.SWEEPS_DIR) / identity.name({"base": base, "grid": grid}, s.head,
                                                                       features_hash)
    started = time.perf_counter()
    # One sweep per grid at a time; a configuration shared with another sweep or a `head` run
    # is trained once, under that run's own lock.
    with Lock(stem, also=[stem.with_suffix(".json"), stem.with_suffix(".csv")]):
        trained, failed = _train_all(s, fs, configs)
        runs = [r for r in (training.finished_run(s.cache_dir, s.head, features_hash, c) for c in configs) if r]
        if not runs:
            raise UserError(f"no configuration of the sweep finished: {failed[0]}")
        keys = list(grid) or list(kinds.HEADS[s.head].sweep)
        rows = leaderboard(runs, keys, ties=True)
        json_path, csv_path = save_leaderboard(rows, stem)
    shown = [[i, r["run"], *(r[k] for k in keys),
              interval_text(r["val_accuracy"], r["val_accuracy_low"], r["val_accuracy_high"]),
              interval_text(r["test_accuracy"], r["test_accuracy_low"], r["test_accuracy_high"]),
              "" if r["val_p_vs_best"] is None else f"{r['val_p_vs_best']:.3g}",
              ("*" if r["recommended"] else "") + ("=" if r["tied_with_best"] else "")] for i, r in enumerate(rows, 1)]
    print(format_table(["rank", "run", *keys, "val acc [95% CI]", "test acc [95% CI]", "p vs best", "tie"], shown))
    print(f"tie: = tied with the best, * recommended; {TIE_RULE}; intervals: {ACCURACY_METHOD}")
    print(f"recommended: {next(r['run'] for r in rows if r['recommended'])}")
    note = f" ({len(failed)} failed, left out)" if failed else ""
    print(f"trained {trained} in {time.perf_counter() - started:.1f} s{note}; leaderboard: {json_path} and {csv_path}")


def _readable(cache_dir, head: str, features_hash: str, configs: list[dict]) -> list[dict]:
    """The configurations whose existing run (if any) can be read: one whose run.json is damaged
    is left out with one warning naming it (as the site does), since it can be neither trained
    again in its folder nor ranked; only when that leaves none is it an error."""
    keep, problems = [], []
    for c in configs:
        try:
            training.finished_run(cache_dir, head, features_hash, c)
        except UserError as exc:
            problems.append(str(exc))
        else:
            keep.append(c)
    if not keep:
        raise UserError(f"every configuration of the sweep has a damaged run: {problems[0]}")
    for problem in problems:
        warn(f"left out of the sweep: {problem}")
    return keep


def _train_all(s: SweepSettings, fs, configs) -> tuple[int, list[str]]:
    """Train the configurations not finished yet (local processes or Ray tasks); returns (how
    many were trained, error lines of those that failed)."""
    from joblib import Parallel, delayed
    features_hash = fs.attrs["settings_hash"]
    todo = [c for c in configs if not training.finished_run(s.cache_dir, s.head, features_hash, c)]
    print(f"sweep: {len(configs)} configurations of the {s.head} head on {fs.path.name}; "
          f"{len(configs) - len(todo)} already done, {len(todo)} to train")
    jobs = min(s.jobs or min(4, os.cpu_count() or 1), max(1, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs)    # split the cores; do not oversubscribe them
    if s.engine == "ray":
        results = _ray_results(fs, s.head, todo, s.cache_dir, threads, s.address) if todo else []
    else:
        tasks = (delayed(_train_one)(str(fs.path), s.head, c, s.cache_dir, threads) for c in todo)
        results = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered",
                           initializer=_die_with_parent, initargs=(os.getpid(),))(tasks)
    failed = []
    for i, r in enumerate(results, 1):
        if "error" in r:
            failed.append(f"{r['run_dir']}: {r['error']}")
            print(f"[{i}/{len(todo)}] {r['run_dir']}  failed: {r['error']}", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {Path(r['run_dir']).name}  val {r['metrics']['val_accuracy']:.4f}  "
              f"({r['metrics']['wall_seconds']:.1f} s)", flush=True)
    return len(todo) - len(failed), failed
