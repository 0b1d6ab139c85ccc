"""Issue 22's reproductions: every record validated whole (a field any code reads is declared and
checked by the one reader), every output read back before "up to date", a checkpoint that carries its
run's identity, and the remaining single cases. Tiny synthetic features and logistic-regression runs."""
import json

import pytest

from conftest import assert_one_error, run_cli
from pipeline.foundation import layout
from pipeline.look import report as site
from test_finetune import tiny_tuned  # noqa: F401  (a fixture)
from test_records import cache, made, record_path  # noqa: F401  (fixtures: cache uses made)


def _edit(path, keys, value):
    data = json.loads(path.read_text())
    inner = data
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = value
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- 1: damaged fields never crash a command

FIELD_DAMAGES = [  # (record, keys, value): each a field some code reads, damaged in a way the shape forbids
    ("report", ("splits", "test", "per_class", "class3", "recall_interval"), "ab"),
    ("report", ("splits", "test", "per_class", "class3", "recall_interval"), [0.1]),
    ("report", ("splits", "test", "per_class", "class3", "recall_interval"), [None, 0.3]),
    ("report", ("splits", "val", "confusion"), "zz"),
    ("report", ("splits", "val", "confusion"), [[1, 2], [3, 4]]),
    ("report", ("data_fingerprint",), 5),
    ("run", ("comparison",), {"paired": "garbage"}),
    ("run", ("metrics", "val_accuracy_interval"), "xy"),
    ("run", ("metrics", "test_accuracy_interval"), [0.9, 0.1]),
]


@pytest.mark.parametrize("record, keys, value", FIELD_DAMAGES)
def test_a_damaged_field_is_a_warning_in_report_and_head(record, keys, value, cache, capsys):
    cache, features, name = cache
    path = record_path(cache, name, record)
    _edit(path, keys, value)
    code, out, err = run_cli(capsys, "report", "--cache-dir", cache)
    assert code == 0 and len(err) == 1 and err[0].startswith("warning: ") and f"{path} is damaged" in err[0], err
    # a second head run beside it: trains, names the damaged sibling once, never a traceback
    code, out, err = run_cli(capsys, "head", "--features", features, "--cache-dir", cache, "--head", "logreg",
                             "--C", "2")
    assert code == 0 and [e for e in err if e.startswith("warning: ")] == [e for e in err if str(path) in e], err
    assert "All runs (1)" in site.index_path(cache).read_text()


@pytest.mark.parametrize("record, keys, value", [d for d in FIELD_DAMAGES if d[0] == "report"])
def test_a_damaged_field_is_one_error_in_compare(record, keys, value, cache, capsys):
    cache, features, name = cache
    assert run_cli(capsys, "head", "--features", features, "--cache-dir", cache, "--head", "logreg", "--C", "2")[0] == 0
    path = record_path(cache, name, record)
    _edit(path, keys, value)
    other = next(p.name for p in (cache / layout.HEADS_DIR).iterdir() if p.name != name)
    code, _, err = run_cli(capsys, "compare", name, other, "--cache-dir", cache)
    assert_one_error(code, err, f"{path} is damaged")


@pytest.mark.parametrize("row", [{"run": ["x"], "recommended": True}, {"run": "x", "recommended": "yes"}, 5])
def test_a_damaged_leaderboard_row_is_a_warning(row, cache, capsys):
    cache, _, name = cache
    board = cache / layout.SWEEPS_DIR / "logreg-x.json"
    board.parent.mkdir(parents=True, exist_ok=True)
    board.write_text(json.dumps([{"run": name, "recommended": False}, row]))
    code, _, err = run_cli(capsys, "report", "--cache-dir", cache)
    assert code == 0 and len(err) == 1 and err[0].startswith("warning: ") and f"{board} is damaged" in err[0], err


@pytest.mark.parametrize("splits", [{}, {"val": {}}])
def test_a_damaged_comparison_is_one_error_never_up_to_date(splits, cache, capsys):
    cache, features, name = cache
    assert run_cli(capsys, "head", "--features", features, "--cache-dir", cache, "--head", "logreg", "--C", "2")[0] == 0
    other = next(p.name for p in (cache / layout.HEADS_DIR).iterdir() if p.name != name)
    assert run_cli(capsys, "compare", name, other, "--cache-dir", cache)[0] == 0
    saved = next((cache / layout.COMPARE_DIR).glob(f"*/{layout.COMPARE_JSON}"))
    _edit(saved, ("splits",), splits)
    code, _, err = run_cli(capsys, "compare", name, other, "--cache-dir", cache)
    assert_one_error(code, err, f"{saved} is damaged")


# ---------------------------------------------------------------- 4: up to date only when the output reads back

def _head(capsys, cache, features, *extra):
    return run_cli(capsys, "head", "--features", features, "--cache-dir", cache, "--head", "logreg", *extra)


@pytest.mark.parametrize("damage", ["model truncated", "model removed", "run.json of another run"])
def test_a_head_run_that_no_longer_reads_back_is_remade(damage, cache, capsys):
    cache, features, name = cache
    run_dir = cache / layout.HEADS_DIR / name
    model = run_dir / layout.MODEL_JOBLIB
    written = model.read_bytes()
    if damage == "model truncated":
        model.write_bytes(b"")
    elif damage == "model removed":
        model.unlink()
    else:
        assert _head(capsys, cache, features, "--C", "2")[0] == 0
        other = next(p for p in (cache / layout.HEADS_DIR).iterdir() if p.name != name)
        (run_dir / layout.RUN_JSON).write_bytes((other / layout.RUN_JSON).read_bytes())
    code, out, err = _head(capsys, cache, features)
    assert code == 0 and not any("up to date" in line for line in out + err), (out, err)
    assert model.read_bytes() == written          # the same settings, the same seeded model, whole again
    assert _head(capsys, cache, features)[1][0].startswith("up to date")


def test_a_damaged_model_is_named_by_the_commands_that_load_it(cache, capsys):
    cache, features, name = cache
    run_dir = cache / layout.HEADS_DIR / name
    assert _head(capsys, cache, features, "--C", "2")[0] == 0     # no model.keras: seal a stand-in one
    from pipeline.foundation import outputs, readback
    info = json.loads((run_dir / layout.RUN_JSON).read_text())
    outputs.write_json_atomic(run_dir / layout.RUN_JSON, readback.sealed(info, run_dir, layout.RUN_JSON, name))
    (run_dir / layout.MODEL).write_bytes(b"a stand-in")
    code, _, err = run_cli(capsys, "predict", "--model", run_dir, cache / "none.png")
    assert_one_error(code, err, f"{run_dir / layout.RUN_JSON} is damaged (the run's files do not read back: "
                                f"{layout.MODEL} is 10 bytes, written as")


def _sealed_export(cache, name):
    from pipeline.foundation import outputs, readback
    export = cache / layout.EXPORTS_DIR / f"{name}-keras"
    data = json.loads((export / layout.EXPORT_JSON).read_text())
    outputs.write_json_atomic(export / layout.EXPORT_JSON, readback.sealed(data, export, layout.EXPORT_JSON,
                                                                            export.name))
    return export


def test_a_damaged_export_is_never_up_to_date_and_predict_names_it(cache, capsys, monkeypatch):
    from pipeline.ship import export as exporting
    cache, _, name = cache
    export = _sealed_export(cache, name)
    (export / layout.MODEL).write_bytes(b"a stand")         # truncated
    code, _, err = run_cli(capsys, "predict", "--model", export / layout.MODEL, cache / "none.png")
    assert_one_error(code, err, f"{export / layout.EXPORT_JSON} is damaged (the export's files do not read back: "
                                f"{layout.MODEL} is 7 bytes")
    remade = []
    monkeypatch.setattr(exporting, "_export", lambda *a: remade.append(True))
    monkeypatch.setattr(exporting, "sha256_file", lambda path: json.loads(
        (export / layout.EXPORT_JSON).read_text())["model_sha256"])      # the run's model: a stand-in too
    code, out, err = run_cli(capsys, "export", cache / layout.HEADS_DIR / name, "--format", "keras", "--cache-dir", cache)
    assert remade and not any("up to date" in line for line in out + err), (out, err)


# ---------------------------------------------------------------- 6: an export's labels.txt agrees with export.json

@pytest.mark.parametrize("labels", ["blank line", "five lines", "renamed"])
def test_labels_that_disagree_with_the_export_record_are_one_error(labels, cache, capsys):
    cache, _, name = cache
    export = cache / layout.EXPORTS_DIR / f"{name}-keras"
    path = export / layout.LABELS
    names = path.read_text().splitlines()
    path.write_text({"blank line": "\n".join(names) + "\n\n", "five lines": "\n".join(names[:5]) + "\n",
                     "renamed": "\n".join(["zebra", *names[1:]]) + "\n"}[labels])
    code, _, err = run_cli(capsys, "predict", "--model", export / layout.MODEL, cache / "none.png")
    assert_one_error(code, err, f"{path} is damaged")


# ---------------------------------------------------------------- 3 and 4: a fine-tune run's identity and files

@pytest.fixture
def tuned_copy(tiny_tuned, tiny_backbone_features, tmp_path):
    """A copy of a finished two-epoch fine-tune's cache: (settings of that run, its run folder)."""
    import shutil
    from test_finetune import settings
    model, head = tiny_tuned
    shutil.copytree(model.parents[2], tmp_path / "cache")
    return settings(tiny_backbone_features, head, tmp_path / "cache", epochs=2), \
        tmp_path / "cache" / layout.FINETUNE_DIR / model.parent.name


@pytest.mark.slow           # a fine-tune retrained: ~9 s of CPU (pyproject.toml's rule)
@pytest.mark.parametrize("damage", ["model truncated", "run.json of another run"])
def test_a_fine_tune_that_no_longer_reads_back_is_remade(damage, tuned_copy):
    from pipeline.finetune.finetune import run_finetune
    s, run_dir = tuned_copy
    if damage == "model truncated":
        (run_dir / layout.MODEL).write_bytes(b"")
    else:
        _edit(run_dir / layout.RUN_JSON, ("sealed", "name"), "another-run")
    lines = []
    run_finetune(s, log=lines.append)
    assert not any(line.startswith("up to date") for line in lines) and any("remaking" in line for line in lines), lines
    lines.clear()
    run_finetune(s, log=lines.append)
    assert any(line.startswith("up to date") for line in lines), lines


@pytest.mark.slow           # a one-epoch fine-tune first: ~8 s of CPU
def test_resume_refuses_another_runs_checkpoint(tuned_copy, capsys):
    """The issue's reproduction: a 2-epoch run's checkpoint in a killed 1-epoch run's folder."""
    import dataclasses
    from pipeline.finetune.finetune import run_finetune
    s, two_epochs = tuned_copy
    one = dataclasses.replace(s, epochs=1)
    one_epoch = run_finetune(one, log=lambda *a: None).parent
    for name in (layout.MODEL, layout.RUN_JSON):
        (one_epoch / name).unlink()
    (one_epoch / layout.CHECKPOINT).write_bytes((two_epochs / layout.CHECKPOINT).read_bytes())
    argv = ["finetune", "--features", s.features, "--start-from", s.start_from, "--mode", "cached", "--epochs", "1",
            "--batch-size", "8", "--lr", str(s.lr), "--precision", "float32", "--cache-dir", s.cache_dir, "--resume"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_error(code, err, f"it was written by run {two_epochs.name}, not this run {one_epoch.name}")
    assert not (one_epoch / layout.MODEL).exists()


# ---------------------------------------------------------------- 2: class names that do not fit the labels

@pytest.mark.parametrize("names, expect", [
    ([b"a", b"b", b"c"], "names 3 classes, but the batches' labels run 0..9"),
    ([b"cat"] * 10, "names the class 'cat' more than once"),
    ([b"a", b""] + [f"c{i}".encode() for i in range(8)], "must be a list of non-empty class names"),
])
def test_stage_one_refuses_class_names_that_do_not_fit_the_labels(names, expect, tmp_path, capsys):
    import pickle
    from conftest import synthetic_cifar, write_batches
    folder = write_batches(tmp_path / "batches", *synthetic_cifar())
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    code, _, err = run_cli(capsys, "features", "--data", folder, "--backbone", "resnet50", "--weights", "none",
                           "--size", "32", "--cache-dir", tmp_path / "cache")
    assert_one_error(code, err, expect)
    assert not list((tmp_path / "cache").rglob("*.h5"))


# ---------------------------------------------------------------- 8 and 9: seeds and -0

def test_a_seed_range_past_the_largest_seed_is_refused_before_training(cache, capsys):
    cache, features, _ = cache
    before = sorted((cache / layout.HEADS_DIR).iterdir())
    code, _, err = run_cli(capsys, "head", "--features", features, "--cache-dir", cache, "--head", "dense",
                           "--seed", "4294967295", "--seeds", "2")
    assert_one_error(code, err, "--seed 4294967295 --seeds 2 would train seeds up to 4294967296")
    assert sorted((cache / layout.HEADS_DIR).iterdir()) == before          # nothing trained


def test_minus_zero_is_zero_in_every_identity(cache, capsys):
    from pipeline.foundation import identity
    assert identity.digest({"l2": -0.0, "x": [(-0.0,)]}) == identity.digest({"l2": 0.0, "x": [[0.0]]})
    cache, features, _ = cache
    args = ["head", "--features", features, "--cache-dir", cache, "--head", "dense", "--epochs", "1", "--hidden", "4"]
    assert run_cli(capsys, *args, "--l2", "0")[0] == 0
    code, out, err = run_cli(capsys, *args, "--l2", "-0")
    assert code == 0 and out[0].startswith("up to date"), (out, err)


# ---------------------------------------------------------------- 10 and 12: library callers' None, inputs never ignored

def test_a_library_callers_none_is_the_declared_default():
    from pipeline.foundation import settings
    from pipeline.look.compare import CompareSettings
    from pipeline.extract.verify import DEFAULT_SAMPLE, VerifySettings
    assert settings.check(CompareSettings(cache_dir=None, split=None)) == CompareSettings()
    assert settings.check(VerifySettings(sample=None)).sample == DEFAULT_SAMPLE


@pytest.mark.parametrize("flag", ["--cache-dir", "--features"])
def test_an_empty_flag_is_refused_not_taken_for_its_default(flag, cache, capsys):
    cache, features, _ = cache
    args = {"--cache-dir": ["--features", features], "--features": ["--cache-dir", cache]}[flag]
    code, _, err = run_cli(capsys, "head", "--head", "logreg", *args, flag, "")
    assert_one_error(code, err, f"{flag} is empty; leave the flag out for its default")


def test_a_moved_file_flag_that_does_not_exist_is_refused(cache, capsys):
    cache, features, name = cache
    code, _, err = run_cli(capsys, "export", cache / layout.HEADS_DIR / name, "--data", "/nonexistent",
                           "--cache-dir", cache)
    assert_one_error(code, err, "--data: /nonexistent does not exist")


@pytest.mark.parametrize("flag", ["--backbone", "--weights"])
def test_a_backbone_or_weights_file_for_a_named_backbone_is_refused(flag, tmp_path):
    from pipeline.backbones.rebuild import rebuild_backbone
    from pipeline.foundation.errors import UserError
    attrs = {"backbone": "resnet50", "weights_source": "none", "weights_seed": 0, "weights_sha256": "",
             "image_shape": [32, 32, 3], "input_size": 32, "feature_width": 2048}
    (tmp_path / "x.keras").write_bytes(b"x")
    given = {"--backbone": (str(tmp_path / "x.keras"), None), "--weights": (None, str(tmp_path / "x.keras"))}[flag]
    with pytest.raises(UserError, match=f"{flag} .*x.keras: the features were made with .*leave {flag} out"):
        rebuild_backbone(attrs, *given)


# ---------------------------------------------------------------- 11: compare's messages

@pytest.mark.parametrize("cut", ["a line boundary", "empty"])
def test_compare_names_a_cut_predictions_file(cut, cache, capsys):
    cache, features, name = cache
    assert _head(capsys, cache, features, "--C", "2")[0] == 0
    other = next(p.name for p in (cache / layout.HEADS_DIR).iterdir() if p.name != name)
    csv_path = cache / layout.REPORTS_DIR / name / layout.PREDICTIONS
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-3]) if cut == "a line boundary" else "")
    code, _, err = run_cli(capsys, "compare", name, other, "--cache-dir", cache)
    assert_one_error(code, err, f"{csv_path} is damaged")


def test_compare_finds_a_bare_name_in_the_cache_first_and_stores_absolute_paths(cache, capsys, tmp_path,
                                                                                 monkeypatch):
    cache, features, name = cache
    assert _head(capsys, cache, features, "--C", "2")[0] == 0
    other = next(p.name for p in (cache / layout.HEADS_DIR).iterdir() if p.name != name)
    decoy = tmp_path / "elsewhere"
    (decoy / name).mkdir(parents=True)
    (decoy / name / layout.PREDICTIONS).write_text("split,row\n")       # not the run --cache-dir names
    monkeypatch.chdir(decoy)
    code, _, err = run_cli(capsys, "compare", name, other, "--cache-dir", cache)
    assert code == 0, err
    saved = json.loads(next((cache / layout.COMPARE_DIR).glob(f"*/{layout.COMPARE_JSON}")).read_text())
    assert saved["a"]["report"] == str(cache / layout.REPORTS_DIR / name)


# ---------------------------------------------------------------- 13: verify and info on what is not a features file

def test_verify_and_info_name_an_activation_cache_and_a_folder(tmp_path, capsys):
    from conftest import synthetic_features
    path = synthetic_features(tmp_path, per_class=(2, 1, 1), row_shape=(2, 2, 4), rows_per_image=[1, 1, 1])
    assert_one_error(*run_cli(capsys, "verify", path)[::2], f"{path} is an activation cache, not a features file")
    code, out, _ = run_cli(capsys, "info", path)
    assert code == 0 and out[0].endswith("(activation cache)") and not any("outside" in line for line in out), out
    assert_one_error(*run_cli(capsys, "verify", tmp_path)[::2], f"{tmp_path} is a folder, not a features file")


def test_verify_samples_exactly_the_rows_asked_for():
    from pipeline.extract.verify import sample_rows
    for n in (1, 2, 3, 7, 200):
        assert sum(map(len, sample_rows({"train": 90, "val": 10, "test": 100}, n, 0).values())) == n
