"""Training a sweep's configurations in parallel: local worker processes (joblib's loky) that end with
the sweep, or Ray tasks sharing one copy of the features."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Protocol

from pipeline.foundation.errors import UserError
from pipeline.heads import training
from pipeline.store.features import load_features


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
    result.pop("report_content", None)
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


class SweepPlan(Protocol):
    """What train_all reads of a sweep's settings (pipeline.heads.sweep.SweepSettings, which imports
    this module: named by its shape, not imported)."""
    head: str
    cache_dir: str
    jobs: int | None
    engine: str
    address: str | None


def train_all(s: SweepPlan, fs, configs) -> tuple[int, list[str]]:
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
