"""Stage two sweeps: a small grid in parallel processes, a sorted and complete leaderboard, reruns
that skip finished configurations."""
import csv
import itertools
import json
from pathlib import Path

import pytest

from pipeline.heads import kinds
from pipeline.cli import main
from pipeline.heads.grid import configurations, parse_grid
from conftest import synthetic_features


def _sweep(capsys, features, cache, *grid, head="dense", extra=()):
    capsys.readouterr()
    assert main(["sweep", "--features", str(features), "--cache-dir", str(cache), "--head", head,
                 "--jobs", "2", *extra, "--grid", *grid]) == 0
    return capsys.readouterr().out


def _leaderboard(cache: Path, grid_keys: dict) -> list:
    """The saved leaderboard whose rows cover exactly this grid."""
    for path in (cache / "sweeps").glob("*.json"):
        rows = json.loads(path.read_text())
        if {tuple(r[k] for k in grid_keys) for r in rows} == set(itertools.product(*grid_keys.values())):
            return rows
    raise AssertionError(f"no leaderboard for {grid_keys}")


@pytest.mark.slow
def test_sweep_runs_in_parallel_ranks_on_val_and_skips_finished(tmp_path, capsys):
    features = synthetic_features(tmp_path, width=16, per_class=(30, 20, 20))
    cache = tmp_path / "cache"
    fast = ["--epochs", "3", "--batch-size", "32", "--patience", "1"]
    grid = {"hidden": (0, 8), "lr": (0.01, 0.001)}
    out = _sweep(capsys, features, cache, "hidden=0,8", "lr=0.01,0.001", extra=fast)
    assert "0 already done, 4 to train" in out
    rows = _leaderboard(cache, grid)
    assert len(rows) == 4
    vals = [r["val_accuracy"] for r in rows]
    assert vals == sorted(vals, reverse=True)
    for r in rows:                                   # every row is a finished run with its report
        run = json.loads((Path(r["run_dir"]) / "run.json").read_text())
        assert run["metrics"]["val_accuracy"] == r["val_accuracy"] and run["settings"]["epochs"] == 3
        assert (cache / "reports" / r["run"] / "report.json").is_file()
    with open(next((cache / "sweeps").glob("*.csv"))) as f:
        assert [row["run"] for row in csv.DictReader(f)] == [r["run"] for r in rows]
    assert out.index(rows[0]["run"], out.index("rank")) < out.index(rows[-1]["run"], out.index("rank"))

    stamps = {r["run"]: (Path(r["run_dir"]) / "run.json").stat().st_mtime_ns for r in rows}
    out = _sweep(capsys, features, cache, "hidden=0,8", "lr=0.01,0.001", extra=fast)
    assert "4 already done, 0 to train" in out
    assert {r["run"]: (Path(r["run_dir"]) / "run.json").stat().st_mtime_ns for r in rows} == stamps

    out = _sweep(capsys, features, cache, "hidden=0,8,16", "lr=0.01,0.001", extra=fast)
    assert "4 already done, 2 to train" in out
    assert len(_leaderboard(cache, {"hidden": (0, 8, 16), "lr": (0.01, 0.001)})) == 6


def test_logreg_sweep(tmp_path, capsys):
    features = synthetic_features(tmp_path, width=8, per_class=(20, 10, 10))
    _sweep(capsys, features, tmp_path, "C=0.01,0.1,1", head="logreg", extra=["--max-iter", "200"])
    rows = _leaderboard(tmp_path, {"C": (0.01, 0.1, 1.0)})
    assert [r["val_accuracy"] for r in rows] == sorted((r["val_accuracy"] for r in rows), reverse=True)
    assert all(json.loads((Path(r["run_dir"]) / "run.json").read_text())["settings"]["max_iter"] == 200
               for r in rows)


def test_grid_parsing_and_duplicate_configurations():
    grid = parse_grid("dense", ["hidden=0,256", "dropout=0.2,0.5", "lr=1e-3,0.001"])
    assert grid == {"hidden": [0, 256], "dropout": [0.2, 0.5], "lr": [0.001]}
    configs = configurations("dense", kinds.make_settings("dense"), grid)
    # without a hidden layer dropout means nothing: (0, 0.2) and (0, 0.5) are one run
    assert [(c["hidden"], c["dropout"]) for c in configs] == [(0, 0.0), (256, 0.2), (256, 0.5)]
    assert parse_grid("dense", ["batch-size=32"]) == {"batch_size": [32]}


def test_knn_sweep_over_k(tmp_path, capsys):
    features = synthetic_features(tmp_path, width=8, per_class=(20, 10, 10))
    out = _sweep(capsys, features, tmp_path, "k=1,5,25", "weighting=uniform,distance", head="knn")
    rows = _leaderboard(tmp_path, {"k": (1, 5, 25), "weighting": ("uniform", "distance")})
    assert len(rows) == 6 and "weighting" in out
    assert all(json.loads((Path(r["run_dir"]) / "run.json").read_text())["head"] == "knn" for r in rows)
