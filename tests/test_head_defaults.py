"""Dense-head defaults that fit the data (pipeline.heads.autosize): batch size, patience and the
epochs before early stopping watches are derived from the number of training rows and recorded as
numbers, so the same numbers given by hand are the same run."""
import json

from conftest import run_cli, synthetic_features
from pipeline.heads import autosize


def test_the_batch_gives_about_fifty_steps_an_epoch_on_any_set():
    assert autosize.auto_batch_size(45_000) == 1024          # all of CIFAR-10: as before
    assert autosize.auto_batch_size(1_553) == 32              # a fixed 1,024 gave this set 2 steps an epoch
    assert autosize.auto_batch_size(10) == 32
    for rows in (1_600, 3_000, 12_345, 51_200):
        assert 25 <= autosize.steps_per_epoch(rows, autosize.auto_batch_size(rows)) <= 100, rows


def test_small_sets_are_watched_after_a_few_hundred_steps_and_large_ones_as_soon():
    small = autosize.dense({"batch_size": None, "patience": None, "min_epochs": None, "epochs": 100}, 900)
    assert (small["batch_size"], small["min_epochs"], small["patience"]) == (32, 11, 7)    # 29 steps an epoch
    large = autosize.dense({"batch_size": None, "patience": None, "min_epochs": None, "epochs": 100}, 45_000)
    assert (large["batch_size"], large["min_epochs"], large["patience"]) == (1024, 7, 5)  # 44 steps an epoch
    short = autosize.dense({"batch_size": 8, "patience": 2, "min_epochs": None, "epochs": 4}, 900)
    assert (short["batch_size"], short["min_epochs"], short["patience"]) == (8, 2, 2)     # at most half the run


def test_auto_settings_are_recorded_as_numbers_and_an_explicit_equal_value_is_the_same_run(tmp_path, capsys):
    features = synthetic_features(tmp_path, width=16, per_class=(40, 20, 20))      # 400 train rows
    common = ["head", "--features", features, "--cache-dir", tmp_path, "--hidden", "8", "--epochs", "6"]
    code, out, err = run_cli(capsys, *common)
    assert code == 0, err
    run_dir, = (tmp_path / "heads").glob("dense-*")
    record = json.loads((run_dir / "run.json").read_text())
    s = record["settings"]
    assert (s["batch_size"], s["min_epochs"], s["patience"]) == (32, 3, 16)    # 13 steps an epoch
    assert record["metrics"]["steps_per_epoch"] == 13 and record["metrics"]["best_epoch"] > s["min_epochs"]
    code, out, err = run_cli(capsys, *common, "--batch-size", "32", "--min-epochs", "3", "--patience", "16")
    assert code == 0 and any(line == f"up to date: {run_dir}" for line in out + err), out + err
    code, out, err = run_cli(capsys, *common, "--batch-size", "auto")
    assert code == 0 and any(line == f"up to date: {run_dir}" for line in out + err), out + err
