"""A sweep's leaderboard: its runs ranked by validation accuracy with intervals, the ties with the best
marked from the runs' per-image predictions, saved as JSON and CSV."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from pipeline.foundation import layout, records, runs, stats
from pipeline.foundation.errors import UserError
from pipeline.foundation.outputs import write_text_atomic
from pipeline.heads import kinds
from pipeline.heads.evaluation import recorded_interval
from pipeline.heads.kinds import TIE_LEVEL
from pipeline.heads.mistakes import read_predictions


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
