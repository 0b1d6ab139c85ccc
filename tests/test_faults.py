"""Fault tests: every command under kills, full disks, concurrent runs and bad or hand-corrupted
input. Each case ends in the correct result or in one `error:` line with exit code 2, with nothing
wrong under a final name and no process left behind. Tiny sizes throughout (synthetic features, the
logistic-regression head, which needs no TensorFlow, and a random InceptionV3 at 75x75)."""
import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import (alive, assert_one_error, fill_disk, run_cli, small_disk, spawn_cli, synthetic_cifar,
                      synthetic_features, write_batches)
from pipeline.foundation import errors, identity
from pipeline.heads import kinds, training
from pipeline.foundation import outputs
from pipeline import store
from pipeline.store.features import load_features

FAST_FEATURES = ["--weights", "none", "--size", "75", "--precision", "float32"]


def _no_leftovers(folder: Path):
    """Nothing of an interrupted write: no temporary names, no locks."""
    found = [p for p in folder.rglob("*") if outputs.TMP_TAG in p.name or p.name.endswith(".lock")]
    assert not found, found


def _corrupt(path: Path, how: str):
    with h5py.File(path, "r+") as f:
        if how == "nan row":
            f["val/features"][3] = np.nan
        elif how == "stale":
            f.attrs["settings"] = json.dumps({"dataset": "edited by hand"})
        elif how == "complete=no":
            f.attrs["complete"] = "no"
        elif how == "negative label":
            labels = f["train/labels"][...].astype(np.int64)
            labels[0] = -1
            del f["train/labels"]
            f["train/labels"] = labels
        elif how == "settings not json":
            f.attrs["settings"] = "{not json"


# ---------------------------------------------------------------- one mapping of storage errors

@pytest.mark.parametrize("exc", [
    OSError(28, "No space left on device", "/c/x.h5"),
    ValueError("Unable to synchronously create dataset (file write failed: time = now, filename = '/c/x.h5', "
               "file descriptor = 3, errno = 28, error message = 'No space left on device')"),
    RuntimeError("Can't decrement id ref count (file write failed: errno = 28, error message = "
                 "'No space left on device', filename = '/c/x.h5')"),
])
def test_full_disk_is_recognised_in_every_form(exc):
    message = errors.storage_message(exc)
    assert message.startswith("disk full while writing /c/x.h5") and "free space" in message
    assert errors.storage_message(ValueError("a plain bug")) is None


# ---------------------------------------------------------------- bad input, every command

@pytest.fixture(scope="module")
def features_file(tmp_path_factory):
    return synthetic_features(tmp_path_factory.mktemp("faults"), per_class=(8, 4, 4))


@pytest.mark.parametrize("argv, expect", [
    (["features", "--cache-dir", "{file}"], "is a file, not a folder"),
    (["head", "--cache-dir", "{file}"], "is a file, not a folder"),
    (["sweep", "--cache-dir", "{file}"], "is a file, not a folder"),
    (["finetune", "--cache-dir", "{file}"], "is a file, not a folder"),
    (["features", "--seed", "-1"], "--seed must be a whole number in [0, 4294967295], got '-1'"),
    (["head", "--features", "{features}", "--seed", "-1"],
     "--seed must be a whole number in [0, 4294967295], got '-1'"),
    (["sweep", "--features", "{features}", "--grid", "seed=0,-1"],
     "error: seed must be a whole number in [0, 4294967295], got '-1'"),
    (["finetune", "--seed", "-1"], "--seed must be a whole number in [0, 4294967295], got '-1'"),
    (["head", "--features", "{features}", "--lr", "inf"], "--lr must be positive (a finite number > 0), got 'inf'"),
    (["head", "--features", "{features}", "--head", "logreg", "--C", "nan"],
     "--C must be positive (a finite number > 0), got 'nan'"),
    (["finetune", "--lr", "inf"], "--lr must be positive (a finite number > 0), got 'inf'"),
    (["features", "--val-fraction", "nan"], "--val-fraction must be in (0, 1), got 'nan'"),
    (["features", "--size", "100000", "--weights", "none"], "GiB of memory per batch"),
    (["finetune", "--features", "{features}", "--epochs", "-1"], "--epochs must be a whole number >= 0, got '-1'"),
    (["finetune", "--features", "{features}", "--epochs", "many"], "--epochs must be a whole number >= 0, got 'many'"),
    (["neighbors", "--features", "{features}", "--split", "val", "--row", "-1"],
     "--row must be a whole number >= 0, got '-1'"),
    (["audit", "--features", "{features}", "--threshold", "inf"], "--threshold must be in (0, 1], or auto, got 'inf'"),
    (["map", "--features", "{features}", "--perplexity", "nan"],
     "--perplexity must be positive (a finite number > 0), got 'nan'"),
    (["map", "--cache-dir", "{file}"], "is a file, not a folder"),
    (["export", "--check-images", "0"], "--check-images must be a whole number >= 1, got '0'"),
    (["predict", "x.png", "--top-k", "two"], "--top-k must be a whole number >= 1, got 'two'"),
    (["compare", "a", "b", "--cache-dir", "{file}"], "is a file, not a folder"),
])
def test_flag_mistakes_are_one_error_line(argv, expect, features_file, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    argv = [a.format(file=tmp_path / "a-file", features=features_file) for a in argv]
    if "--cache-dir" not in argv:
        argv += ["--cache-dir", str(tmp_path / "cache")]
    assert_one_error(*run_cli(capsys, *argv)[::2], expect)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))


def test_a_left_out_flag_is_its_declared_default():
    """What cli.main reads from the parsed flags (the cache the report site is rebuilt in, after
    `finetune` too) is the declared default when the flag is left out, never None."""
    from pipeline.cli import REBUILDS_SITE, build_parser
    assert [build_parser().parse_args([stage]).cache_dir for stage in REBUILDS_SITE] == ["cache"] * len(REBUILDS_SITE)


def test_library_callers_get_the_flags_checks(features_file, tmp_path):
    """run_x(settings) checks a caller's settings as the flags are checked, in the same words."""
    from pipeline.look import audit, compare, map as map_, neighbors
    from pipeline.ship import export, predict
    calls = [
        (lambda: neighbors.run_neighbors(neighbors.NeighborsSettings(features=str(features_file), split="val",
                                                                     row=0, k=0)), "--k must be a whole number >= 1"),
        (lambda: audit.run_audit(audit.AuditSettings(threshold=1.5)), "--threshold must be in (0, 1], or auto, got 1.5"),
        (lambda: map_.run_map(map_.MapSettings(seed=-1)), "--seed must be a whole number in [0, 4294967295]"),
        (lambda: compare.run_compare("a", "b", compare.CompareSettings(split="train")),
         "--split must be one of val, test, got 'train'"),
        (lambda: export.export_run(tmp_path, export.ExportSettings(format="onnx")),
         "--format must be one of savedmodel, tflite, keras, got 'onnx'"),
        (lambda: predict.run_predict(predict.PredictSettings(batch_size=0), ["x.png"]),
         "--batch-size must be a whole number >= 1, got 0"),
    ]
    for call, message in calls:
        with pytest.raises(errors.UserError) as caught:
            call()
        assert message in str(caught.value)


@pytest.mark.parametrize("how, expect", [
    ("nan row", "val row 3 holds NaN or infinite values; delete it and rerun `python -m pipeline features`"),
    ("stale", "is stale"),
    ("complete=no", "is incomplete (its complete attribute is 'no'); delete it and rerun"),
    ("negative label", "has label -1 but only 10 class names"),
    ("settings not json", "settings attribute is not valid JSON"),
])
@pytest.mark.parametrize("stage", ["head", "sweep", "finetune"])
def test_every_stage_applies_the_same_features_checks(stage, how, expect, tmp_path, capsys):
    path = synthetic_features(tmp_path / "f", per_class=(8, 4, 4))
    _corrupt(path, how)
    extra = ["--head", "logreg"] if stage != "finetune" else ["--start-from", str(tmp_path / "none.keras")]
    code, _, err = run_cli(capsys, stage, "--features", path, "--cache-dir", tmp_path / "c", *extra)
    assert_one_error(code, err, expect)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.*"))


def test_an_activation_cache_is_not_a_features_file(tmp_path, capsys):
    path = synthetic_features(tmp_path, width=16, row_shape=(2, 2, 4), kind="cut activations")
    code, _, err = run_cli(capsys, "finetune", "--features", path, "--cache-dir", tmp_path / "c")
    assert_one_error(code, err, "holds rows of shape (2, 2, 4) (cut activations), not one feature vector")


@pytest.mark.parametrize("how, expect", [
    ("complete=no", "complete:          no"),
    ("negative label", "1 labels outside 0..9"),
])
def test_info_describes_damaged_files(how, expect, tmp_path, capsys):
    path = synthetic_features(tmp_path, per_class=(8, 4, 4))
    _corrupt(path, how)
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0 and any(expect in line for line in out), out


def test_info_on_non_json_settings_is_one_error(tmp_path, capsys):
    path = synthetic_features(tmp_path, per_class=(8, 4, 4))
    _corrupt(path, "settings not json")
    assert_one_error(*run_cli(capsys, "info", path)[::2], "settings attribute is not valid JSON")


@pytest.mark.slow
def test_a_damaged_final_features_file_is_never_up_to_date(batches_dir, tmp_path, capsys):
    """`features` reports a damaged file (NaN rows here) with the fix instead of "up to date", and
    the fix works: deleting it and rerunning recomputes the same file."""
    argv = ["features", "--data", batches_dir, "--cache-dir", tmp_path, *FAST_FEATURES]
    code, out, _ = run_cli(capsys, *argv)
    final = Path(out[-1])
    with h5py.File(final, "r") as f:
        good = f["val/features"][...]
    _corrupt(final, "nan row")
    code, out, err = run_cli(capsys, *argv)
    assert_one_error(code, err, "holds NaN or infinite values; delete it and rerun")
    final.unlink()
    code, out, _ = run_cli(capsys, *argv)
    with h5py.File(final, "r") as f:
        assert code == 0 and np.array_equal(f["val/features"][...], good)


def test_a_head_run_json_that_is_damaged_is_one_error(features_file, tmp_path, capsys):
    argv = ["head", "--features", features_file, "--cache-dir", tmp_path, "--head", "logreg"]
    assert run_cli(capsys, *argv)[0] == 0
    run_json = next((tmp_path / "heads").glob("*/run.json"))
    run_json.write_text("{truncated")
    assert_one_error(*run_cli(capsys, *argv)[::2], "run.json is damaged")
    (run_json.parent / "model.joblib").unlink()       # run.json without a model: not a finished run
    run_json.unlink()
    (run_json.parent / "run.json").write_text("{}")
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and not any(line.startswith("up to date") for line in out)


def test_a_diverged_head_is_not_saved(features_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(training, "predict_proba", lambda model, x: np.full((len(x), 10), np.nan))
    code, _, err = run_cli(capsys, "head", "--features", features_file, "--cache-dir", tmp_path, "--head", "logreg")
    assert_one_error(code, err, "diverged")
    assert not any((tmp_path / "heads").iterdir()) and not (tmp_path / "reports").exists()
    _no_leftovers(tmp_path)


# ---------------------------------------------------------------- full disk

def test_atomic_writes_leave_nothing_on_a_full_disk():
    with small_disk(0.5) as disk:
        fill_disk(disk, leave_kb=8)
        with pytest.raises(OSError) as caught:
            outputs.write_text_atomic(disk / "run.json", "x" * 100_000)
        assert errors.storage_message(caught.value).startswith("disk full while writing")
        with pytest.raises(OSError):
            with outputs.atomic_dir(disk / "run") as tmp:
                (tmp / "model.bin").write_bytes(b"x" * 100_000)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_head_and_sweep_on_a_full_disk_then_freed(features_file, tmp_path, capsys):
    with small_disk(2) as disk:
        filler = fill_disk(disk, leave_kb=24)
        for extra in (["head"], ["sweep", "--jobs", "1"]):
            code, _, err = run_cli(capsys, *extra, "--features", features_file, "--cache-dir", disk / "c",
                                   "--head", "logreg")
            assert_one_error(code, err, "disk full while writing")
            assert not list((disk / "c" / "heads").glob("*/run.json"))
            _no_leftovers(disk / "c")
        filler.unlink()
        assert run_cli(capsys, "sweep", "--features", features_file, "--cache-dir", disk / "c", "--head", "logreg",
                       "--jobs", "1")[0] == 0
        assert len(list((disk / "c" / "heads").glob("*/run.json"))) == 1


@pytest.mark.slow
def test_features_on_a_full_disk_exits_2_and_resumes_bit_equal(tmp_path):
    """The reproduction from the issue, in a real process: h5py's ValueError on ENOSPC used to be
    reported as a bug and then crash the process (exit 139) while HDF5 closed the file."""
    data = write_batches(tmp_path / "data", *synthetic_cifar())
    reference = spawn_cli("features", "--data", data, "--cache-dir", tmp_path / "ref", *FAST_FEATURES)
    with small_disk(3) as disk:
        filler = fill_disk(disk, leave_kb=40)
        proc = spawn_cli("features", "--data", data, "--cache-dir", disk / "c", *FAST_FEATURES)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("error: disk full while writing"), err
        assert not list((disk / "c").rglob("*.h5"))
        filler.unlink()
        proc = spawn_cli("features", "--data", data, "--cache-dir", disk / "c", *FAST_FEATURES)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        ref_out, _ = reference.communicate(timeout=300)
        with h5py.File(out.splitlines()[-1], "r") as a, h5py.File(ref_out.splitlines()[-1], "r") as b:
            for split in store.SPLITS:
                assert np.array_equal(a[split]["features"][...], b[split]["features"][...])


# ---------------------------------------------------------------- concurrent runs

def test_a_second_identical_head_is_refused_and_a_waiting_one_reads_the_result(features_file, tmp_path,
                                                                                 monkeypatch, capsys):
    fs = load_features(features_file)
    settings = kinds.make_settings("logreg")
    entered, release = threading.Event(), threading.Event()
    original = kinds.HEADS["logreg"].train

    def slow(*args):
        entered.set()
        release.wait(30)
        return original(*args)
    monkeypatch.setitem(kinds.HEADS, "logreg", dataclasses.replace(kinds.HEADS["logreg"], train=slow))
    first = threading.Thread(target=training.run_head, args=(fs, "logreg", settings, tmp_path))
    first.start()
    try:
        assert entered.wait(30)
        code, _, err = run_cli(capsys, "head", "--features", features_file, "--cache-dir", tmp_path, "--head", "logreg")
        assert_one_error(code, err, "another run is writing")
        waited = {}
        second = threading.Thread(target=lambda: waited.update(
            training.run_head(fs, "logreg", settings, tmp_path, wait=True)))
        second.start()
        time.sleep(0.3)
        assert second.is_alive()                  # waiting for the first, not training
    finally:
        release.set()
        first.join(60)
    second.join(60)
    assert waited["skipped"] and len(list((tmp_path / "heads").iterdir())) == 1
    _no_leftovers(tmp_path)


def test_a_killed_head_leaves_a_folder_that_the_next_run_removes(features_file, tmp_path, capsys):
    name = training.run_name("logreg", load_features(features_file).attrs["settings_hash"],
                          kinds.make_settings("logreg"))
    leftover = tmp_path / "heads" / f".{name}.tmp-999999"
    (leftover / "sub").mkdir(parents=True)
    code, out, err = run_cli(capsys, "head", "--features", features_file, "--cache-dir", tmp_path, "--head", "logreg")
    assert code == 0 and not leftover.exists()
    # said on the command's log (stdout, with "up to date", as outputs.produce logs both)
    assert any(f"removed {leftover}" in line for line in out + err), (out, err)


# ---------------------------------------------------------------- kills

def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


@pytest.mark.slow
def test_sigkill_of_a_sweep_takes_its_workers_along_and_the_rerun_finishes(tmp_path):
    path = synthetic_features(tmp_path / "f", width=64, per_class=(200, 20, 20))
    argv = ["sweep", "--features", path, "--cache-dir", tmp_path / "c", "--head", "logreg", "--jobs", "2",
            "--grid", "C=0.001,0.01,0.1,1,10,100", "--max-iter", "3000"]
    victim = spawn_cli(*argv)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and len(workers) < 2 and victim.poll() is None:
        workers = [p for p in _children(victim.pid) if "popen_loky" in _cmdline(p)]
        time.sleep(0.1)
    assert len(workers) == 2, "the sweep never started its workers"
    victim.send_signal(signal.SIGKILL)
    victim.wait()            # not communicate(): a surviving worker would hold the pipes open
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    try:
        assert not any(alive(w) for w in workers), "workers outlived the killed sweep"
    finally:
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
        victim.communicate(timeout=30)
    rerun = spawn_cli(*argv)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert len(list((tmp_path / "c" / "heads").glob("*/run.json"))) == 6
    _no_leftovers(tmp_path / "c")


def test_a_second_identical_sweep_is_refused(features_file, tmp_path, capsys):
    from pipeline.heads.grid import parse_grid
    base = kinds.make_settings("logreg")
    fs = load_features(features_file)
    stem = tmp_path / "sweeps" / (f"logreg-{fs.attrs['settings_hash']}-"
                                  f"{identity.digest({'base': base, 'grid': parse_grid('logreg', ['C=1,2'])})}")
    with outputs.Lock(stem):
        code, _, err = run_cli(capsys, "sweep", "--features", features_file, "--cache-dir", tmp_path,
                               "--head", "logreg", "--grid", "C=1,2")
    assert_one_error(code, err, "another run is writing")
    assert not (tmp_path / "heads").exists()


# ---------------------------------------------------------------- predict's images

def test_sixteen_bit_images_are_scaled_and_float_images_refused(tmp_path):
    from PIL import Image
    from pipeline.foundation.errors import UserError
    from pipeline.sources.files import load_image
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    pixels = load_image(tmp_path / "deep.png", (32, 32))
    assert np.array_equal(pixels[..., 0], np.round(ramp / 257).astype(np.uint8))   # not all white
    Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)).save(tmp_path / "float.tiff")
    with pytest.raises(UserError, match="floating-point image has no fixed pixel range"):
        load_image(tmp_path / "float.tiff", (32, 32))


# ---------------------------------------------------------------- where the images are

def test_the_data_source_is_stored_absolute_and_a_moved_one_names_the_flag(batches_dir, tmp_path, monkeypatch):
    from pipeline.sources import dataset
    from pipeline.foundation.errors import UserError
    monkeypatch.chdir(batches_dir.parent)
    ds = dataset.load_dataset(batches_dir.name)                       # given relative to the working directory
    assert Path(ds.source).is_absolute() and Path(ds.source) == batches_dir.resolve()
    monkeypatch.chdir(tmp_path.parent)                             # later stages run from anywhere
    assert dataset.source_of({"source": ds.source}) == ds.source
    with pytest.raises(UserError, match="no longer at .*; pass --data PATH"):
        dataset.source_of({"source": str(tmp_path / "moved-away")})
