"""`head --seeds N`: the same dense head trained with N seeds (--seed, --seed + 1, ...), each an
ordinary run (cached, up to date on rerun), summarised as the mean, sample standard deviation and
95% Student-t interval of the mean of the val and test accuracies (pipeline.foundation.stats.over_seeds):
how much of a difference between two settings the seed alone can make (Bouthillier et al., 2021).
The summary is saved as cache/seeds/<run name of the first seed>-x<N>.json.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.foundation import layout, stats
from pipeline.foundation.errors import UserError
from pipeline.foundation.outputs import write_json_atomic
from pipeline.foundation.tables import format_table
from pipeline.foundation.settings import SEED_MAX
from pipeline.heads import training


SEEDED = ("dense",)          # the other kinds are deterministic: a second seed gives the same run


def check(n: int, first_seed: int | None = None):
    """Before any training: the last seed is in range (that --seeds applies to the head kind is
    HeadSettings' rule)."""
    if first_seed is not None and first_seed + n - 1 > SEED_MAX:
        raise UserError(f"--seed {first_seed} --seeds {n} would train seeds up to {first_seed + n - 1}, past the "
                        f"largest seed {SEED_MAX}; give --seed at most {SEED_MAX - n + 1}")


def run_seeds(fs, head: str, settings: dict, cache_dir, n: int, verbose=0, log=training.NOTICE,
              exclude=None) -> tuple[dict, Path]:
    """Train (or find) the N seeded runs; return (the summary, where it was saved). `log`, `exclude`:
    as run_head's."""
    check(n, settings["seed"])
    runs = [training.run_head(fs, head, {**settings, "seed": settings["seed"] + i}, cache_dir, verbose=verbose, log=log,
                              exclude=exclude)
            for i in range(n)]
    summary = {"head": head, "settings": {k: v for k, v in settings.items() if k != "seed"},
               "seeds": [r["settings"]["seed"] for r in runs], "runs": [Path(r["run_dir"]).name for r in runs],
               "method": stats.SEEDS_METHOD}
    for split in ("val", "test"):
        values = [r["metrics"][f"{split}_accuracy"] for r in runs]
        summary[f"{split}_accuracy"] = {"per_seed": values, **stats.over_seeds(values)}
    path = layout.folder(cache_dir, layout.SEEDS_DIR) / f"{summary['runs'][0]}-x{n}.json"
    write_json_atomic(path, summary)
    return summary, path


def summary_text(summary: dict) -> str:
    rows = [[seed, run, *(summary[f"{s}_accuracy"]["per_seed"][i] for s in ("val", "test"))]
            for i, (seed, run) in enumerate(zip(summary["seeds"], summary["runs"]))]
    lines = [format_table(["seed", "run", "val acc", "test acc"], rows)]
    for split in ("val", "test"):
        a = summary[f"{split}_accuracy"]
        lines.append(f"{split} accuracy over {a['n']} seeds: mean {stats.interval_text(a['mean'], a['low'], a['high'])}"
                     f"  sd {a['sd']:.4f}")
    return "\n".join(lines + [f"({summary['method']})"])
