"""Stage one end to end: the CLI, the HDF5 schema, caching, resume after a kill, and bad input."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT, done_rows, synthetic_cifar, write_batches
from pipeline.foundation import outputs
from pipeline import store
from pipeline.cli import main

FAST = ["--weights", "none", "--size", "75"]


def features(capsys, data, cache, *extra, backbone=FAST):
    """Run `python -m pipeline features` in-process; return (exit code, stdout lines, stderr).
    `backbone`: the flags naming it (a random InceptionV3 at 75x75 unless a test needs none in particular)."""
    code = main(["features", "--data", str(data), "--cache-dir", str(cache), *backbone, *extra])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


def test_writes_the_documented_schema(capsys, batches_dir, tmp_path):
    code, out, _ = features(capsys, batches_dir, tmp_path / "cache", "--val-fraction", "0.2")
    assert code == 0
    path = Path(out[-1])
    assert path.parent == tmp_path / "cache" / "features" and path.suffix == ".h5"
    assert "-inception_v3-75-" in path.name
    with h5py.File(path) as f:
        assert f.attrs["complete"] and f.attrs["schema_version"] == store.SCHEMA_VERSION == 2
        for key in ("backbone", "weights", "weights_source", "weights_seed", "weights_sha256", "input_size",
                    "preprocessing", "precision", "data_fingerprint", "versions", "created", "settings_hash", "class_names", "feature_width"):
            assert key in f.attrs, key
        assert f.attrs["settings_hash"] in path.name
        sizes = {}
        for split in ("train", "val", "test"):
            g = f[split]
            assert g["features"].dtype == np.float32 and g["labels"].dtype == np.uint8
            assert g["features"].shape == (len(g["labels"]), 2048) == (len(g["index"]), 2048)
            assert np.isfinite(g["features"][...]).all()
            sizes[split] = len(g["labels"])
        assert "progress" not in f
    assert sizes == {"train": 40, "val": 10, "test": 20}
    assert not list(path.parent.glob("*.partial")) and not list(path.parent.glob("*.lock"))
    assert main(["info", str(path)]) == 0
    assert "complete:          yes" in capsys.readouterr().out


@pytest.mark.slow
def test_rerun_is_up_to_date_and_changed_settings_give_a_new_file(capsys, batches_dir, tmp_path, monkeypatch):
    from pipeline.extract import engine
    from pipeline.extract import features as stage_one
    from pipeline.backbones.precision import resolve_precision
    cache = tmp_path / "cache"
    _, out, _ = features(capsys, batches_dir, cache)
    first = Path(out[-1])
    stamp = first.stat().st_mtime_ns
    with monkeypatch.context() as m:        # the rerun must decode no image and build no backbone
        m.setattr(stage_one.dataset, "load_dataset", lambda *a, **k: pytest.fail("decoded images"))
        m.setattr(engine, "build_backbone", lambda *a, **k: pytest.fail("built the backbone"))
        _, out, _ = features(capsys, batches_dir, cache)
    assert out[0].startswith("up to date") and Path(out[-1]) == first and first.stat().st_mtime_ns == stamp
    # a precision other than the one `auto` resolves to on this machine (GPU, bf16 CPU or neither)
    other = "bfloat16" if resolve_precision("auto")[0] == "float32" else "float32"
    _, out, _ = features(capsys, batches_dir, cache, "--precision", other)
    _, out2, _ = features(capsys, batches_dir, cache, "--size", "80")
    assert len({first, Path(out[-1]), Path(out2[-1])}) == 3


@pytest.mark.slow
def test_stored_features_equal_the_plain_keras_model_on_real_images(tiny_inception_features, small_cifar):
    from pipeline.backbones.build import build_backbone
    from pipeline.sources.dataset import load_dataset
    fs = store.read_rows(tiny_inception_features)
    assert fs.attrs["precision"] == "float32" and (fs.attrs["weights_source"], fs.attrs["weights_seed"]) == ("none", 0)
    images = load_dataset(small_cifar).test_x
    np.testing.assert_array_equal(fs.splits["test"].index, np.arange(40))      # 4 per class, class by class
    reference = build_backbone("inception_v3", "none", 75, seed=0).model.predict(images, verbose=0)
    got = fs.splits["test"].features
    assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()


def _cli(*args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_killed_run_resumes_to_an_identical_file(tmp_path):
    data = write_batches(tmp_path / "batches", *synthetic_cifar(1000, 200))
    args = ["features", "--data", str(data), *FAST, "--batch-size", "16"]
    reference = _cli(*args, "--cache-dir", str(tmp_path / "ref"))
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    ref_path = Path(out.splitlines()[-1])

    cache = tmp_path / "run"
    final = cache / "features" / ref_path.name
    partial = store.partial_path(final)
    victim = _cli(*args, "--cache-dir", str(cache))
    deadline = time.time() + 240
    while done_rows(partial) < 64 and time.time() < deadline and victim.poll() is None:
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    written = done_rows(partial)
    assert 64 <= written < 1200, "the run must be killed mid-way"
    assert not final.exists()

    resumed = _cli(*args, "--cache-dir", str(cache))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming {partial.name}" in out and Path(out.splitlines()[-1]) == final
    with h5py.File(ref_path) as a, h5py.File(final) as b:
        for split in ("train", "val", "test"):
            for name in ("features", "labels", "index"):
                np.testing.assert_array_equal(a[split][name][...], b[split][name][...])
        volatile = {"created", "elapsed_seconds", "images_per_second"}
        assert {k: str(v) for k, v in a.attrs.items() if k not in volatile} == \
               {k: str(v) for k, v in b.attrs.items() if k not in volatile}


def test_second_concurrent_run_is_refused(capsys, batches_dir, tiny_backbone, tmp_path):
    cache, tiny = tmp_path / "cache", ["--backbone", str(tiny_backbone)]
    _, out, _ = features(capsys, batches_dir, cache, backbone=tiny)
    final = Path(out[-1])
    final.unlink()
    with outputs.Lock(final):
        code, _, err = features(capsys, batches_dir, cache, backbone=tiny)
    assert code == 2 and "another run is writing" in err
    assert not final.exists()


@pytest.mark.slow
def test_disk_full_leaves_no_final_file_and_resumes(capsys, batches_dir, tmp_path, monkeypatch):
    real_write = store.RowWriter.write
    calls = []

    def fill_up(self, split, start, rows, blocks=None):
        calls.append(split)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.partial))
        return real_write(self, split, start, rows)
    monkeypatch.setattr(store.RowWriter, "write", fill_up)
    code, out, err = features(capsys, batches_dir, tmp_path / "cache", "--batch-size", "16")
    assert code == 2 and err.strip().startswith("error: disk full") and len(err.strip().splitlines()) == 1
    folder = tmp_path / "cache" / "features"
    assert not list(folder.glob("*.h5")) and len(list(folder.glob("*.partial"))) == 1
    monkeypatch.setattr(store.RowWriter, "write", real_write)
    code, out, _ = features(capsys, batches_dir, tmp_path / "cache", "--batch-size", "16")
    assert code == 0 and any(line.startswith("resuming") for line in out)


@pytest.mark.parametrize("garbage, message", [
    (lambda p: p.write_bytes(b"definitely not hdf5"), "is not a readable HDF5 file"),
    (lambda p: h5py.File(p, "w").close(), "is not a features file of this pipeline"),
])
def test_foreign_file_under_the_cache_name_is_refused_and_kept(capsys, batches_dir, tiny_backbone, tmp_path, garbage,
                                                               message):
    cache, tiny = tmp_path / "cache", ["--backbone", str(tiny_backbone)]
    _, out, _ = features(capsys, batches_dir, cache, backbone=tiny)
    final = Path(out[-1])
    final.unlink()
    garbage(final)
    before = final.read_bytes()
    code, _, err = features(capsys, batches_dir, cache, backbone=tiny)
    assert code == 2 and message in err and final.read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--data", "/no/such/folder"], "does not exist"),
    (["--size", "60"], "at least 75"),
    (["--weights", "/no/such/weights.h5"], "not a file"),
    (["--val-fraction", "1.5"], "--val-fraction must be in (0, 1), got '1.5'"),
    # the local engine is one process: Ray's flags are refused, not ignored
    (["--workers", "3"], "--workers applies to --engine ray only"),
    (["--gpus-per-worker", "1", "--address", "auto"], "--address and --gpus-per-worker apply to --engine ray only"),
    (["--shard-rows", "100"], "--shard-rows must be a positive multiple of 128 (the fingerprint block), got '100'"),
])
def test_bad_flags_give_one_error_line_and_exit_2(capsys, batches_dir, tmp_path, extra, message):
    code = main(["features", "--data", str(batches_dir), "--cache-dir", str(tmp_path), *FAST, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.rglob("*.h5"))


def test_a_library_caller_gets_the_flags_message(tmp_path):
    """run_features checks a FeatureSettings built in code as the CLI checks its flags."""
    from pipeline.extract.features import FeatureSettings, run_features
    from pipeline.foundation.errors import UserError
    with pytest.raises(UserError, match=r"^--val-fraction must be in \(0, 1\), got 1\.5$"):
        run_features(FeatureSettings(val_fraction=1.5, cache_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_unreadable_weights_file_exits_2_without_traceback(tmp_path):
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"garbage")
    proc = _cli("features", "--data", str(tmp_path), "--weights", str(junk), "--size", "75",
                "--cache-dir", str(tmp_path / "cache"))
    write_batches(tmp_path, *synthetic_cifar())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err and "cannot load inception_v3 weights" in err


def test_progress_after_a_resume_never_passes_the_total(batches_dir, tiny_backbone, tmp_path, capsys, monkeypatch):
    """A resumed shard restarts at a block boundary, recomputing rows already written: the count
    starts from the plan's rows still to compute (it read 240/200 before)."""
    import re
    from pipeline.extract import engine
    from pipeline.foundation.progress import INTERVAL_ENV
    args = ["features", "--data", batches_dir, "--backbone", tiny_backbone, "--batch-size", "8",
            "--cache-dir", tmp_path]
    whole = engine.shard_batches

    def dies_after_three_batches(*a, **kw):
        for i, batch in enumerate(whole(*a, **kw)):
            if i == 3:
                raise KeyboardInterrupt          # killed mid-block: 24 of train's 45 rows written
            yield batch
    monkeypatch.setattr(engine, "shard_batches", dies_after_three_batches)
    assert main([str(a) for a in args]) == 130
    monkeypatch.setattr(engine, "shard_batches", whole)
    monkeypatch.setenv(INTERVAL_ENV, "0")                # a line after every batch
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    counts = [tuple(map(int, m)) for m in re.findall(r"features: (\d+)/(\d+) rows", capsys.readouterr().err)]
    assert counts and all(done <= total for done, total in counts) and counts[-1] == (70, 70), counts


def test_the_same_backbone_file_at_a_new_path_is_recorded_when_up_to_date(mixed_features, tiny_backbone, tmp_path,
                                                                          capsys):
    """Up to date (the settings hold the file's name and sha256), and the new path replaces the
    recorded one, so later commands find the backbone without --backbone."""
    import shutil
    from pipeline.backbones.rebuild import rebuild_backbone
    made, root = mixed_features
    (tmp_path / "cache" / "features").mkdir(parents=True)
    path = shutil.copy(made, tmp_path / "cache" / "features" / made.name)     # the cache of the old path
    (tmp_path / "moved").mkdir()
    moved = Path(shutil.copy(tiny_backbone, tmp_path / "moved" / tiny_backbone.name))    # the name is a setting
    argv = ["features", "--data", str(root), "--backbone", str(moved), "--precision", "float32",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == str(path) and f"up to date: {path}" in out + err
    assert f"recorded backbone_file: {moved} (was {tiny_backbone}" in out + err
    attrs = store.read_rows(path, splits=(), values=False).attrs
    assert attrs["backbone_file"] == str(moved) and attrs["complete"] is True
    assert rebuild_backbone(attrs).weights.sha256 == attrs["weights_sha256"]       # found there, no flag
    assert main(argv) == 0 and "recorded" not in "".join(capsys.readouterr())     # once


def test_a_new_backbone_path_that_cannot_be_recorded_is_a_warning(mixed_features, tmp_path, capsys, monkeypatch):
    """A read-only cache (faked: root may write anywhere): still up to date, and it says so."""
    import shutil
    made, root = mixed_features
    (tmp_path / "cache" / "features").mkdir(parents=True)
    path = shutil.copy(made, tmp_path / "cache" / "features" / made.name)
    recorded = store.read_rows(path, splits=(), values=False).attrs["backbone_file"]
    (tmp_path / "moved").mkdir()
    moved = shutil.copy(recorded, tmp_path / "moved")
    real = h5py.File

    def read_only(name, mode="r", *a, **k):
        if mode != "r":
            raise OSError(30, "Read-only file system")
        return real(name, mode, *a, **k)
    monkeypatch.setattr(h5py, "File", read_only)
    assert main(["features", "--data", str(root), "--backbone", str(moved), "--precision", "float32",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == str(path)
    assert err.strip().splitlines() == [f"warning: could not record the new path in {made.name} ([Errno 30] "
                                        f"Read-only file system); later commands ask for it again (backbone_file "
                                        f"stays {recorded})"]
