"""The `sweep` command: a grid (grid.py) of head runs trained in parallel (parallel.py) and ranked
(leaderboard.py); a configuration's run is exactly `head`'s (training.run_head)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline.foundation import flags, identity, layout, settings
from pipeline.foundation.errors import UserError, warn
from pipeline.foundation.outputs import Lock
from pipeline.foundation.settings import Interval, OnlyWith, setting
from pipeline.foundation.stats import ACCURACY_METHOD, interval_text
from pipeline.foundation.tables import format_table
from pipeline.heads import kinds, training
from pipeline.heads.grid import configurations, parse_grid
from pipeline.heads.kinds import TIE_LEVEL, TIE_RULE, StageTwoSettings
from pipeline.heads.leaderboard import leaderboard, save_leaderboard
from pipeline.heads.parallel import train_all
from pipeline.store.features import features_from_args


@dataclass
class SweepSettings(StageTwoSettings):
    grid: list | None = setting(None, None, "settings to vary, e.g. hidden=256,512 dropout=0.2,0.5 (dense), "
                                "C=0.01,0.1,1 (logreg) or k=5,10,20 (knn); default: just the base settings. Which "
                                "settings each head lets a sweep vary: " + "; ".join(
                                    f"{k.name}: {', '.join(k.sweep)}" for k in kinds.HEADS.values()),
                                metavar="KEY=V1,V2", nargs="+")
    # no number as the default: it depends on the machine, and docs/reference.md must not
    jobs: int | None = setting(None, Interval(int, 1), "parallel worker processes", auto="min(4, cores)")
    engine: str = flags.engine_setting("joblib processes", "Ray tasks sharing one copy of the features")
    address: str | None = flags.address_setting("sweep")
    RULES = (OnlyWith(("address",), lambda s: s.engine == "ray", "--engine ray"),)


HELP = f"""Stage two: train a grid of head settings in parallel processes and rank them.

  python -m pipeline sweep --grid hidden=256,512,1024 dropout=0.2,0.5 lr=1e-3,3e-4 --jobs 2

Every combination of the grid values (other settings from the flags or their defaults) is one
`head` run, saved exactly as `python -m pipeline head` saves it; a combination whose run already
exists is skipped, so an interrupted or extended sweep only trains what is new. The leaderboard,
sorted by validation accuracy (test accuracy is shown, never used to rank), with each accuracy's
95% Wilson interval, is printed and saved as JSON and CSV in <cache-dir>/sweeps/. Configurations
whose val accuracy is not distinguishable from the best (McNemar's exact test on the same val
images, p >= {TIE_LEVEL}) are marked as ties, and the most regularized of them is recommended.

With `--engine ray` the configurations are Ray tasks and the features go into Ray's object store
once, shared by every task. The tasks write their runs under --cache-dir, so on a multi-node
cluster that folder must be shared.
"""


def add_arguments(p):
    kinds.add_arguments(p, SweepSettings)


def run(args):
    s = settings.from_args(SweepSettings, args)
    run_sweep(s, kinds.settings_from_args(args, s.head))


def run_sweep(s: SweepSettings, base: dict):
    """Train the grid over `base` (the head kind's settings), rank it, save and print the leaderboard."""
    s, base = settings.check(s), kinds.make_settings(s.head, **base)
    grid = parse_grid(s.head, s.grid)                  # grid mistakes surface before any loading
    fs = features_from_args(s)
    # auto settings resolved from the data size, as `head` records them; then one run is listed once
    configs = [kinds.resolve(s.head, c, fs) for c in configurations(s.head, base, grid)]
    configs = [c for i, c in enumerate(configs) if c not in configs[:i]]
    features_hash = fs.attrs["settings_hash"]
    configs = _readable(s.cache_dir, s.head, features_hash, configs)
    stem = (layout.folder(s.cache_dir, layout.SWEEPS_DIR)
            / identity.name({"base": base, "grid": grid}, s.head, features_hash))
    started = time.perf_counter()
    # One sweep per grid at a time; a configuration shared with another sweep or a `head` run
    # is trained once, under that run's own lock.
    with Lock(stem, also=[stem.with_suffix(".json"), stem.with_suffix(".csv")]):
        trained, failed = train_all(s, fs, configs)
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


