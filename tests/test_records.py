"""Damaged records (pipeline.foundation.records): each kind of damage to each kind of record, through each
command that reads it, gives one `error:` line and exit 2; the report site instead leaves the run
out, names it once in a warning and succeeds, also when a head run rebuilds it. Plus `info` on
files that are not features files, paths in old records, and the site's lock. Tiny synthetic
features and a logistic-regression run: seconds, no training of a Keras model."""
import hashlib
import json
import math
import shutil
from pathlib import Path

import h5py
import pytest

from conftest import assert_one_error, run_cli, spawn_cli, synthetic_features
from pipeline.foundation import layout, outputs, runs
from pipeline.look import report as site
from pipeline.foundation.errors import UserError


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A cache with one record of every kind: a head run (run.json, report.json), a cached
    neighbours answer and audit, and an export folder (export.json, labels.txt) beside a stand-in
    model file (the records are checked before any model loads). Tests damage a copy."""
    from pipeline.cli import main
    cache = tmp_path_factory.mktemp("records") / "cache"
    features = synthetic_features(cache, per_class=(8, 4, 4), image_shape=[32, 32, 3])
    common = ["--features", str(features), "--cache-dir", str(cache)]
    assert main(["head", *common, "--head", "logreg"]) == 0
    assert main(["neighbors", *common, "--split", "val", "--row", "0"]) == 0
    assert main(["audit", *common, "--no-exact"]) == 0
    run_dir = next((cache / layout.HEADS_DIR).iterdir())
    (run_dir / layout.MODEL).write_bytes(b"a stand-in model")
    export = cache / layout.EXPORTS_DIR / f"{run_dir.name}-keras"
    export.mkdir(parents=True)
    (export / layout.MODEL).write_bytes(b"a stand-in model")
    names = json.loads((run_dir / layout.RUN_JSON).read_text())["features"]["class_names"]
    (export / layout.LABELS).write_text("".join(f"{c}\n" for c in names))
    outputs.write_json_atomic(export / layout.EXPORT_JSON, {
        "run": run_dir.name, "format": "keras", "file": layout.MODEL, "temperature": 1.0,
        "model_sha256": hashlib.sha256(b"a stand-in model").hexdigest(), "class_names": names})
    return cache, features, run_dir.name


@pytest.fixture
def cache(made, tmp_path):
    """A fresh copy of the module's cache: (cache, features file, head run name)."""
    source, features, name = made
    copy = tmp_path / "cache"
    shutil.copytree(source, copy)
    return copy, features, name


def record_path(cache: Path, name: str, kind: str) -> Path:
    return {"run": cache / layout.HEADS_DIR / name / layout.RUN_JSON,
            "report": cache / layout.REPORTS_DIR / name / layout.REPORT_JSON,
            "export": cache / layout.EXPORTS_DIR / f"{name}-keras" / layout.EXPORT_JSON,
            "neighbors": next((cache / layout.LOOKING_DIR).glob("neighbors-*.json")),
            "audit": next((cache / layout.AUDIT_DIR).glob(f"*/{layout.AUDIT_JSON}"))}[kind]


# per record kind: (a required key, a key given a value of the wrong type, a number)
KEYS = {
    "run": (("metrics",), ("features",), ("metrics", "val_accuracy")),
    "report": (("splits",), ("class_names",), ("splits", "val", "accuracy")),
    "export": (("model_sha256",), ("class_names",), ("temperature",)),
    "neighbors": (("queries",), ("search",), ("queries", 0, "neighbors", 0, "similarity")),
    "audit": (("summary",), ("exact_check",), ("threshold",)),
}


def _set(data, keys, value):
    for key in keys[:-1]:
        data = data[key]
    if value is KeyError:
        del data[keys[-1]]
    else:
        data[keys[-1]] = value


def damage(path: Path, kind: str, how: str):
    text = path.read_text()
    missing, wrong, number = KEYS[kind]
    data = json.loads(text)
    if how == "truncated":
        path.write_text(text[: len(text) // 2])
    elif how == "not UTF-8":
        path.write_bytes(b"\xff\xfe" + text.encode())
    elif how == "wrong JSON type":
        path.write_text("[1, 2]")
    else:
        keys, value = {"missing key": (missing, KeyError), "wrong value type": (wrong, [1]),
                       "non-finite number": (number, math.nan)}[how]
        _set(data, keys, value)
        path.write_text(json.dumps(data))          # NaN is written as JSON's NaN


DAMAGES = ["truncated", "not UTF-8", "wrong JSON type", "missing key", "wrong value type", "non-finite number"]


def command(kind_reader: str, cache: Path, features: Path, name: str) -> list:
    run_dir, common = cache / layout.HEADS_DIR / name, ["--features", features, "--cache-dir", cache]
    return {
        "head": ["head", *common, "--head", "logreg"],          # the same run: up to date, reads its records
        "export": ["export", run_dir, "--format", "keras", "--cache-dir", cache],
        "predict": ["predict", "--model", run_dir / layout.MODEL, cache / "none.png"],
        "predict export": ["predict", "--model", cache / layout.EXPORTS_DIR / f"{name}-keras" / layout.MODEL,
                           cache / "none.png"],
        "finetune": ["finetune", *common, "--start-from", run_dir / layout.MODEL],
        "neighbors": ["neighbors", *common, "--split", "val", "--row", "0"],
        "audit": ["audit", *common, "--no-exact"],
    }[kind_reader]


READERS = [("run", "head"), ("run", "export"), ("run", "predict"),
           pytest.param("run", "finetune", marks=pytest.mark.slow),     # imports TensorFlow: ~15 s alone
           ("report", "head"),
           ("export", "export"), ("export", "predict export"), ("neighbors", "neighbors"), ("audit", "audit")]


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind, reader", READERS)
def test_a_damaged_record_is_one_error_in_every_command_that_reads_it(kind, reader, how, cache, capsys):
    cache, features, name = cache
    path = record_path(cache, name, kind)
    damage(path, kind, how)
    code, _, err = run_cli(capsys, *command(reader, cache, features, name))
    assert_one_error(code, err, f"{path} is damaged")
    assert "delete" in err[0]


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", ["run", "report"])
def test_the_site_leaves_a_damaged_run_out_names_it_once_and_succeeds(kind, how, cache, capsys):
    cache, _, name = cache
    path = record_path(cache, name, kind)
    damage(path, kind, how)
    code, out, err = run_cli(capsys, "report", "--cache-dir", cache)
    assert code == 0 and out == [str(cache / layout.REPORTS_DIR / layout.INDEX)], (out, err)
    assert len(err) == 1 and err[0].startswith("warning: ") and f"{path} is damaged" in err[0], err
    assert "All runs (0)" in site.index_path(cache).read_text()


@pytest.mark.parametrize("kind, how", [("run", "truncated"), ("report", "wrong value type")])
def test_a_damaged_sibling_never_fails_a_head_run(kind, how, cache, capsys):
    cache, features, name = cache
    path = record_path(cache, name, kind)
    damage(path, kind, how)
    code, out, err = run_cli(capsys, "head", "--features", features, "--cache-dir", cache, "--head", "logreg",
                             "--C", "1")
    assert code == 0, err
    assert [line for line in err if str(path) in line] == [e for e in err if e.startswith("warning: ")], err
    assert len([line for line in err if str(path) in line]) == 1
    assert "All runs (1)" in site.index_path(cache).read_text()


def test_a_damaged_configuration_run_is_left_out_of_a_sweep_with_one_warning(cache, capsys):
    """The grid's C=0.1 is the cached run, damaged: the sweep ranks the rest and names it once."""
    cache, features, name = cache
    path = record_path(cache, name, "run")
    damage(path, "run", "truncated")
    code, out, err = run_cli(capsys, "sweep", "--features", features, "--cache-dir", cache, "--head", "logreg",
                             "--grid", "C=0.1,1", "--jobs", "1")
    assert code == 0, err
    named = [line for line in err if "left out of the sweep" in line]
    assert len(named) == 1 and named[0].startswith(f"warning: left out of the sweep: {path} is damaged"), err
    board = json.loads(next((cache / layout.SWEEPS_DIR).glob("*.json")).read_text())
    assert [row["C"] for row in board] == [1]


def test_the_best_head_search_leaves_a_damaged_run_out_with_one_warning(tmp_path, capsys):
    """finetune's default head: a damaged sibling run.json is skipped, not fatal; the best of the rest wins."""
    from pipeline.heads.training import find_best_head
    runs = tmp_path / layout.HEADS_DIR
    for tag, acc in [("a", 0.5), ("b", 0.9), ("c", 0.7)]:
        (runs / f"dense-h-{tag}").mkdir(parents=True)
        (runs / f"dense-h-{tag}" / layout.MODEL).write_bytes(b"a stand-in model")
        outputs.write_json_atomic(runs / f"dense-h-{tag}" / layout.RUN_JSON, {
            "head": "dense", "settings": {}, "features": {"path": "x.h5", "settings_hash": "h"},
            "metrics": {"val_accuracy": acc}})
    damaged = runs / "dense-h-b" / layout.RUN_JSON
    damaged.write_text("{")
    assert find_best_head(tmp_path, "h") == runs / "dense-h-c" / layout.MODEL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and f"{damaged} is damaged" in err[0], err


def test_the_site_rebuild_never_fails_a_finished_run(cache, capsys, monkeypatch):
    """Even a bug in the rebuild is a warning after a run that trained and saved."""
    cache, features, _ = cache

    def broken(*a, **k):
        raise TypeError("a bug")
    monkeypatch.setattr(site, "collect_runs", broken)
    code, _, err = run_cli(capsys, "head", "--features", features, "--cache-dir", cache, "--head", "logreg")
    assert code == 0 and len(err) == 1 and "not rebuilt (TypeError: a bug)" in err[0], err


@pytest.mark.parametrize("record, text, expect", [
    ("run", '{"calibration": {"temperature": 0}}', "calibration.temperature must be a finite number > 0"),
    ("run", '{"calibration": {"temperature": -1.5}}', "calibration.temperature must be a finite number > 0"),
    ("run", '{"metrics": {"val_accuracy": "high"}}', "metrics.val_accuracy must be a finite number"),
    ("run", '{"settings": [1]}', "settings must be a JSON object"),
    ("export", '{"temperature": 1e999}', "temperature must be a finite number > 0"),
])
def test_values_a_reader_relies_on_are_checked(record, text, expect, cache, capsys):
    """The issue's reproductions: a zero temperature printed NaN probabilities with exit 0."""
    cache, _, name = cache
    path = record_path(cache, name, record)
    data = json.loads(path.read_text())
    data.update(json.loads(text))
    path.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, *command("predict" if record == "run" else "predict export", cache, None, name))
    assert_one_error(code, err, expect)


def test_labels_that_are_not_utf8_are_one_error(cache, capsys):
    cache, _, name = cache
    labels = cache / layout.EXPORTS_DIR / f"{name}-keras" / layout.LABELS
    labels.write_bytes(b"cat\n\xff\xfedog\n")
    assert_one_error(*run_cli(capsys, *command("predict export", cache, None, name))[::2],
                     f"{labels} is damaged (not UTF-8 text)")


# ---------------------------------------------------------------- paths in records

def test_relative_paths_of_old_records_resolve_from_any_directory(cache, tmp_path, capsys, monkeypatch):
    """A run made with --cache-dir cache stored "cache/features/x.h5": the report shows its backbone
    and writes the same page from the project folder and from elsewhere (issue 16, defect 5)."""
    cache, features, name = cache
    run_json = record_path(cache, name, "run")
    info = json.loads(run_json.read_text())
    info["features"]["path"] = f"cache/features/{Path(features).name}"
    run_json.write_text(json.dumps(info))
    shutil.copy(features, cache / layout.FEATURES_DIR / Path(features).name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run_cli(capsys, "report", "--cache-dir", cache)[0] == 0
    page = site.index_path(cache).read_text()
    assert "<td>synthetic</td>" in page                     # the backbone, not "?"
    monkeypatch.chdir(cache.parent)
    code, out, _ = run_cli(capsys, "report", "--cache-dir", "cache")
    assert code == 0 and out[0].startswith("up to date:")
    assert runs.Run.read(cache / layout.HEADS_DIR / name).record["features"]["path"] == str(
        cache / layout.FEATURES_DIR / Path(features).name)


def test_new_records_store_absolute_paths(made):
    cache, _, name = made
    run_json = cache / layout.HEADS_DIR / name / layout.RUN_JSON
    assert Path(json.loads(run_json.read_text())["features"]["path"]).is_absolute()
    assert Path(json.loads(record_path(cache, name, "neighbors").read_text())["features"]).is_absolute()


# ---------------------------------------------------------------- the site's lock

def test_the_site_is_rebuilt_under_its_lock(cache, monkeypatch):
    """Two `report` runs at once take turns (issue 16, defect 3: one failed pruning a page the
    other had removed): while one rebuilds, the lock is held."""
    cache, _, _ = cache
    collect = site.collect_runs
    seen = []

    def checking(*a, **k):
        with pytest.raises(UserError, match="another run is writing"):
            with outputs.Lock(site.index_path(cache).parent / layout.RUN_PAGES):
                pass
        seen.append(True)
        return collect(*a, **k)
    monkeypatch.setattr(site, "collect_runs", checking)
    site.rebuild(cache, warn=lambda m: None)
    assert seen


def test_two_reports_at_once_both_succeed(cache):
    """The issue's reproduction: two `report` runs pruning stale pages at once (one failed with
    FileNotFoundError in 2 of 8 tries before the lock)."""
    cache, _, _ = cache
    for _ in range(3):
        for i in range(20):
            (site.index_path(cache).parent / layout.RUN_PAGES / f"stale{i}.html").write_text("x")
        procs = [spawn_cli("report", "--cache-dir", cache) for _ in range(2)]
        results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
        assert all(code == 0 and not err for code, err in results), results
    assert sorted(p.name for p in (site.index_path(cache).parent / layout.RUN_PAGES).iterdir()) == [
        f"{next((cache / layout.HEADS_DIR).iterdir()).name}.html"]


# ---------------------------------------------------------------- info on files that are not features files

def _set_attr(path: Path, key: str, value):
    with h5py.File(path, "r+") as f:
        if value is None:
            del f.attrs[key]
        else:
            f.attrs[key] = value


@pytest.mark.parametrize("key, value, expect", [
    ("versions", "[1,2]", "its versions attribute is not a JSON object"),
    ("versions", "null", "its versions attribute is not a JSON object"),
    ("settings", "[1]", "its settings attribute is not a JSON object"),
    ("settings_hash", None, "has no settings_hash attribute, so it is not a whole features file"),
    ("schema_version", None, "is not a features file of this pipeline (it has no schema_version attribute)"),
])
def test_info_says_what_is_wrong_with_the_attributes(key, value, expect, tmp_path, capsys):
    path = synthetic_features(tmp_path, per_class=(2, 1, 1))
    _set_attr(path, key, value)
    assert_one_error(*run_cli(capsys, "info", path)[::2], expect)


def test_info_on_a_file_that_is_not_a_features_file_says_so(cache, capsys):
    cache, _, name = cache
    joblib = cache / layout.HEADS_DIR / name / "model.joblib"
    code, _, err = run_cli(capsys, "info", joblib)
    assert_one_error(code, err, f"{joblib} is not a readable HDF5 file, so not a features file")


@pytest.mark.parametrize("record, kind", [
    ({"head": "dense"}, "dense"),
    ({"stage": "finetune", "head": {"path": "/c/heads/dense-1/model.keras"}}, "finetune"),
])
def test_head_and_fine_tune_runs_are_both_run_records(record, kind, tmp_path):
    run_dir = tmp_path / "cache" / layout.HEADS_DIR / "r"
    run_dir.mkdir(parents=True)
    (run_dir / layout.RUN_JSON).write_text(json.dumps({
        **record, "settings": {}, "metrics": {"val_accuracy": 0.5},
        "features": {"path": "cache/features/f.h5", "settings_hash": "0"}}))
    info = runs.Run.read(run_dir).record
    assert runs.run_kind(info) == kind
    assert info["features"]["path"] == str(tmp_path / "cache" / layout.FEATURES_DIR / "f.h5")
