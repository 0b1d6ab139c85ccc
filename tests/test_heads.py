"""Stage two: both heads on synthetic and real features, saving and reloading, the CLI without a GPU
or InceptionV3, and every kind of bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import CLASSES, synthetic_features
from pipeline.heads import kinds, training
from pipeline.cli import main
from pipeline.foundation.errors import UserError
from pipeline.store.features import load_features

ROOT = Path(__file__).resolve().parents[1]
FAST_DENSE = {"hidden": 32, "epochs": 20, "patience": 3, "batch_size": 64, "min_epochs": 0, "lr": 1e-2}


def dense(**over):
    return kinds.make_settings("dense", **{**FAST_DENSE, **over})


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    return synthetic_features(tmp_path_factory.mktemp("sep"))


@pytest.fixture(scope="module")
def trained(separable, tmp_path_factory):
    """One run of each head kind on the separable file, shared by several tests."""
    cache = tmp_path_factory.mktemp("runs")
    fs = load_features(separable)
    return fs, cache, {"dense": training.run_head(fs, "dense", dense(), cache),
                       "logreg": training.run_head(fs, "logreg", kinds.make_settings("logreg"), cache),
                       "knn": training.run_head(fs, "knn", kinds.make_settings("knn", k=5), cache)}


def test_every_head_separates_separable_classes(trained):
    _, _, runs = trained
    for name, r in runs.items():
        assert r["metrics"]["val_accuracy"] > 0.95, name
        assert r["metrics"]["test_accuracy"] > 0.95, name


def test_shuffled_labels_stay_near_chance(tmp_path):
    fs = load_features(synthetic_features(tmp_path, shuffle=True, per_class=(40, 30, 30)))
    for head, s in (("dense", dense()), *((k, kinds.make_settings(k)) for k in ("logreg", "knn"))):
        r = training.run_head(fs, head, s, tmp_path)
        assert r["metrics"]["val_accuracy"] < 0.25, head    # chance is 0.10
        assert r["metrics"]["test_accuracy"] < 0.25, head


def test_saved_heads_reload_with_identical_predictions(trained):
    fs, _, runs = trained
    x = fs.splits["test"].features
    for r in runs.values():
        before = kinds.predict_proba(r["model"], x)
        after = kinds.predict_proba(kinds.load_head(r["run_dir"]), x)
        np.testing.assert_array_equal(before, after)


def test_dense_model_is_self_contained_for_stage_three(trained):
    import keras
    fs, _, runs = trained
    model = keras.models.load_model(Path(runs["dense"]["run_dir"]) / "model.keras")   # no custom objects
    assert tuple(model.input_shape) == (None, 16) and tuple(model.output_shape) == (None, 10)
    assert [layer.name for layer in model.layers[1:]] == ["standardize", "hidden", "dropout", "predictions"]
    probs = model.predict(fs.splits["val"].features, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_run_artifacts_follow_the_contract(trained):
    fs, cache, runs = trained
    for head, r in runs.items():
        run_dir = Path(r["run_dir"])
        assert run_dir.name == training.run_name(head, fs.attrs["settings_hash"], r["settings"])
        info = json.loads((run_dir / "run.json").read_text())
        assert info["head"] == head and info["settings"] == r["settings"]
        assert info["features"] == {"path": str(fs.path), "settings_hash": fs.attrs["settings_hash"],
                                    "feature_width": 16, "class_names": CLASSES, "views": 1}
        assert (run_dir / kinds.HEADS[head].artifact).is_file()
        report_dir = cache / "reports" / run_dir.name
        report = json.loads((report_dir / "report.json").read_text())
        assert report["val_accuracy"] == info["metrics"]["val_accuracy"]
        assert np.asarray(report["splits"]["test"]["confusion"]).sum() == len(fs.splits["test"].labels)
        assert set(report["splits"]["val"]["per_class"]["class3"]) == {"precision", "recall", "recall_interval", "f1",
                                                                        "support"}
        assert info["metrics"]["val_accuracy_interval"] == report["val_accuracy_interval"]
        assert (report_dir / "confusion.png").stat().st_size > 1000
        assert (report_dir / "curves.png").is_file() == (run_dir / "history.json").is_file() == (head == "dense")
        assert (report_dir / "reliability.png").is_file() and info["calibration"] == report["calibration"]
        assert ("temperature" in info["calibration"]) == kinds.HEADS[head].calibrated
    history = json.loads((Path(runs["dense"]["run_dir"]) / "history.json").read_text())
    assert len(history["val_loss"]) == runs["dense"]["metrics"]["epochs"]
    assert not [p for p in (cache / "heads").iterdir() if p.name.startswith(".")]   # no temp folders left


def test_rerun_is_up_to_date_and_best_head_is_chosen_on_val(trained):
    fs, cache, runs = trained
    run_json = Path(runs["dense"]["run_dir"]) / "run.json"
    stamp = run_json.stat().st_mtime_ns
    again = training.run_head(fs, "dense", dense(), cache)
    assert again["skipped"] and run_json.stat().st_mtime_ns == stamp
    # a worse run (no training to speak of) must not be picked; val accuracy decides
    weak = training.run_head(fs, "dense", dense(hidden=0, epochs=1, lr=1e-5), cache)
    assert weak["metrics"]["val_accuracy"] < runs["dense"]["metrics"]["val_accuracy"]
    assert training.find_best_head(cache, fs.attrs["settings_hash"]) == Path(runs["dense"]["run_dir"]) / "model.keras"
    assert training.find_best_head(cache, "000000000000") is None


def test_a_failed_run_leaves_nothing_under_a_final_name(separable, tmp_path, monkeypatch):
    import pipeline.heads.evaluation
    monkeypatch.setattr(pipeline.heads.evaluation, "_plot_confusion",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        training.run_head(load_features(separable), "logreg", kinds.make_settings("logreg"), tmp_path)
    assert list((tmp_path / "heads").iterdir()) == [] and list((tmp_path / "reports").iterdir()) == []


# ---------------------------------------------------------------- the CLI in a clean process

NO_INCEPTION = """
import sys, keras
from pipeline.backbones.table import BACKBONES
def refuse(*a, **k):
    raise AssertionError("a backbone was constructed")
for entry in BACKBONES.values():
    setattr(keras.applications, entry.architecture.constructor, refuse)
from pipeline.cli import main
for argv in sys.argv[1:]:
    rc = main(argv.split())
    assert rc == 0, (argv, rc)
import tensorflow as tf
assert not tf.config.list_physical_devices("GPU")
print("NO-BACKBONE-OK")
"""


@pytest.mark.slow
def test_cli_runs_without_gpu_or_inception(tmp_path):
    # made like `make features` by default, so `head` finds it without --features
    synthetic_features(tmp_path, backbone="inception_v3", weights_source="imagenet", input_size=299)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [f"head --cache-dir {tmp_path} --hidden 8 --epochs 2",
            f"head --cache-dir {tmp_path} --head logreg",
            f"sweep --cache-dir {tmp_path} --head logreg --grid C=0.1,1 --jobs 1"]
    proc = subprocess.run([sys.executable, "-c", NO_INCEPTION, *runs], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NO-BACKBONE-OK" in proc.stdout
    assert "test accuracy" in proc.stdout and "leaderboard" in proc.stdout
    assert len(list((tmp_path / "heads").glob("logreg-*"))) == 2      # C=0.1 reused by the sweep


def test_help_does_not_import_tensorflow():
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom pipeline.cli import main\n"
                           "try:\n    main(['head', '--help'])\nexcept SystemExit:\n    pass\n"
                           "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--hidden" in proc.stdout and "--max-iter" in proc.stdout


# ---------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "text.h5").write_text("not hdf5")
    with h5py.File(tmp / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    stale = synthetic_features(tmp / "stale")
    with h5py.File(stale, "r+") as f:                     # settings changed after the hash was taken
        f.attrs["settings"] = json.dumps({"dataset": "something else"})
    return {
        "missing": (tmp / "nope.h5", "does not exist"),
        "not hdf5": (tmp / "text.h5", "not a readable HDF5 file"),
        "foreign": (tmp / "foreign.h5", "not a features file"),
        "incomplete": (synthetic_features(tmp / "partial", finish=False), "incomplete"),
        "stale": (stale, "stale"),
        "width mismatch": (synthetic_features(tmp / "w", feature_width=64), "feature_width"),
        "not vectors": (synthetic_features(tmp / "maps", width=16, row_shape=(2, 2, 4)), "(N, D)"),
        "labels beyond classes": (synthetic_features(tmp / "lab", class_names=["a", "b", "c"]), "class names"),
    }


BAD_FILE_KINDS = ["missing", "not hdf5", "foreign", "incomplete", "stale", "width mismatch", "not vectors",
                  "labels beyond classes"]


def _fails_cleanly(argv, capsys, cache: Path, expect: str):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expect in err[0], err[0]
    for sub in ("heads", "reports", "sweeps"):
        assert not (cache / sub).exists() or not any((cache / sub).iterdir()), sub


@pytest.mark.parametrize("kind", BAD_FILE_KINDS)
@pytest.mark.parametrize("stage", ["head", "sweep"])
def test_bad_features_files(kind, stage, bad_files, tmp_path, capsys):
    path, expect = bad_files[kind]
    _fails_cleanly([stage, "--features", str(path), "--cache-dir", str(tmp_path / "c"), "--head", "logreg"],
                   capsys, tmp_path / "c", expect)


def test_no_complete_features_file_says_run_make_features(tmp_path, capsys):
    synthetic_features(tmp_path, finish=False)     # a partial file is not a candidate
    _fails_cleanly(["head", "--cache-dir", str(tmp_path)], capsys, tmp_path, "run `make features`")


def test_without_features_the_newest_complete_file_is_used_whatever_its_settings_and_named(tmp_path, capsys):
    older = synthetic_features(tmp_path, seed=1)
    newer = synthetic_features(tmp_path, seed=2, width=8)
    os.utime(older, (1, 1))
    code = main(["head", "--head", "logreg", "--cache-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"features: {newer} (the newest in {tmp_path / 'features'}; --features chooses another)" in captured.err
    assert newer.name in captured.out and older.name not in captured.out


@pytest.mark.parametrize("flags, expect", [
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got '1.5'"),
    (["--hidden", "abc"], "--hidden must be a whole number >= 0, got 'abc'"),
    (["--hidden", "-1"], "--hidden must be"),
    (["--lr", "0"], "--lr must be positive"),
    (["--head", "logreg", "--C", "-1"], "--C must be positive"),
    (["--head", "logreg", "--max-iter", "2.5"], "--max-iter must be"),
    (["--lr", "inf"], "--lr must be positive (a finite number > 0), got 'inf'"),
    (["--l2", "nan"], "--l2 must be a finite number >= 0, got 'nan'"),
    (["--seed", "-1"], "--seed must be a whole number in [0, 4294967295], got '-1'"),
    (["--head", "knn", "--k", "0"], "--k must be a whole number >= 1"),
    (["--head", "knn", "--weighting", "gaussian"], "--weighting: invalid choice: 'gaussian'"),  # argparse's choices
    (["--head", "logreg", "--seeds", "0"], "--seeds must be a whole number >= 1, got '0'"),
    (["--head", "knn", "--k", "401"], "k must be at most the number of training rows (400)"),
    # another kind's flag is refused, not ignored
    (["--head", "knn", "--hidden", "5"], "--hidden applies to --head dense, not --head knn"),
    (["--head", "knn", "--lr", "7"], "--lr applies to --head dense, not --head knn"),
    (["--head", "knn", "--C", "3"], "--C applies to --head logreg, not --head knn"),
    (["--C", "3"], "--C applies to --head logreg, not --head dense"),
    (["--head", "logreg", "--k", "3"], "--k applies to --head knn, not --head logreg"),
    (["--head", "logreg", "--batch-size", "3"], "--batch-size applies to --head dense, not --head logreg"),
])
def test_bad_head_settings(flags, expect, separable, tmp_path, capsys):
    _fails_cleanly(["head", "--features", str(separable), "--cache-dir", str(tmp_path), *flags],
                   capsys, tmp_path, expect)


@pytest.mark.parametrize("grid, expect", [
    (["width=1,2"], "unknown dense setting 'width'"),
    (["C=0.1,1"], "unknown dense setting 'C'"),          # a logreg setting on the dense head
    (["hidden=64,lots"], "hidden must be a whole number"),
    (["dropout=0.2,2"], "dropout must be in [0, 1)"),
    (["hidden"], "KEY=V1,V2"),
    (["hidden=8", "hidden=16"], "twice"),
    (["lr=1e-3,inf"], "lr must be positive"),
    (["epochs=5,10"], "a dense sweep may vary hidden, dropout"),
])
def test_bad_grids(grid, expect, separable, tmp_path, capsys):
    _fails_cleanly(["sweep", "--features", str(separable), "--cache-dir", str(tmp_path), "--grid", *grid],
                   capsys, tmp_path, expect)


def test_sweep_refuses_another_kinds_flag(separable, tmp_path, capsys):
    _fails_cleanly(["sweep", "--features", str(separable), "--cache-dir", str(tmp_path), "--head", "logreg",
                    "--hidden", "5", "--grid", "C=0.1,1"], capsys, tmp_path, "--hidden applies to --head dense")


def test_settings_table_checks_every_default():
    """Every row's defaults pass its own ranges: the tables agree."""
    for kind in kinds.HEADS.values():
        for key, default in kind.defaults.items():
            assert kinds.parse_setting(kind.name, key, default) == default, (kind.name, key)
        assert kind.canonical(dict(kind.defaults)) == kind.defaults      # written the one way already
        assert set(kind.sweep) <= set(kind.defaults)


def test_a_library_callers_settings_are_checked_as_a_flags_are(separable, tmp_path):
    """run_head checks the settings it is given with the same declarations and message, naming the
    setting (a flag's message names the flag)."""
    fs = load_features(separable)
    with pytest.raises(UserError, match=r"^C must be positive \(a finite number > 0\), got -1$"):
        training.run_head(fs, "logreg", {"C": -1, "max_iter": 10}, tmp_path)
    with pytest.raises(UserError, match="unknown logreg setting 'hidden'"):
        training.run_head(fs, "logreg", {"hidden": 5}, tmp_path)
    assert not (tmp_path / "heads").exists()


def test_a_finished_run_is_up_to_date_on_the_command_line(trained, separable, capsys):
    _, cache, runs = trained
    assert main(["head", "--features", str(separable), "--cache-dir", str(cache), "--head", "knn", "--k", "5"]) == 0
    assert f"up to date: {runs['knn']['run_dir']}" in capsys.readouterr().out.splitlines()


def test_bad_jobs(separable, tmp_path, capsys):
    _fails_cleanly(["sweep", "--features", str(separable), "--cache-dir", str(tmp_path), "--jobs", "0"],
                   capsys, tmp_path, "--jobs must be a whole number >= 1, got '0'")


# ---------------------------------------------------------------- real transfer

@pytest.mark.slow
def test_real_transfer_reaches_the_floors(real_features, tmp_path):
    from conftest import DENSE_FLOOR, LOGREG_FLOOR
    fs = load_features(real_features)
    logreg = training.run_head(fs, "logreg", kinds.make_settings("logreg", C=0.1), tmp_path)
    dense_run = training.run_head(fs, "dense", kinds.make_settings("dense", hidden=1024, dropout=0.5), tmp_path)
    print(f"real transfer: logreg test {logreg['metrics']['test_accuracy']:.4f}, "
          f"dense test {dense_run['metrics']['test_accuracy']:.4f}")
    assert logreg["metrics"]["test_accuracy"] >= LOGREG_FLOOR
    assert dense_run["metrics"]["test_accuracy"] >= DENSE_FLOOR
