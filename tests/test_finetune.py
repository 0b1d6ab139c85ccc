"""Stage three on a random-weight InceptionV3 at 75x75 and a few real images: what trains and what
does not, the starting point, cached vs end-to-end, resume, bad input; the run's record and lock on
the tiny backbone file. Float32 throughout, so comparisons can be tight."""
import json

import numpy as np
import pytest

from conftest import make_head
from pipeline.finetune import surgery
from pipeline.cli import main
from pipeline.sources.rows import load_splits
from pipeline.backbones.rebuild import rebuild_backbone
from pipeline.finetune.finetune import FinetuneSettings, run_finetune, training_model
from pipeline.store import read_rows

# Random InceptionV3 features are badly scaled; a small step keeps the plumbing tests finite.
LR = 1e-6


@pytest.fixture(scope="module")
def head(tiny_inception_features, tmp_path_factory):
    return make_head(tiny_inception_features, tmp_path_factory.mktemp("heads") / "dense-1", epochs=5)


def _capture(monkeypatch) -> dict:
    """What run_finetune hands the report writer (probabilities, history, comparison)."""
    seen = {}
    monkeypatch.setattr("pipeline.heads.evaluation.write_report", lambda out_dir, **kwargs: seen.update(kwargs) or {})
    return seen


@pytest.fixture
def captured(monkeypatch):
    return _capture(monkeypatch)


@pytest.fixture(scope="module")
def tuned(tiny_inception_features, head, tmp_path_factory):
    """One cached-mode run of two epochs: (model path, what the report got)."""
    import pipeline.finetune.finetune
    original = pipeline.finetune.finetune.save_model_atomically
    with pytest.MonkeyPatch.context() as mp:
        seen = _capture(mp)
        mp.setattr(pipeline.finetune.finetune, "save_model_atomically",
                   lambda model, path: (seen.update(in_memory=model), original(model, path)))
        path = run_finetune(settings(tiny_inception_features, head, tmp_path_factory.mktemp("tuned"), epochs=2),
                            log=quiet)
    return path, seen


@pytest.fixture(scope="module")
def tiny_tuned(tiny_backbone_features, tmp_path_factory):
    """(model path, head path): a two-epoch cached-mode run on the tiny backbone, for the tests of the
    run's record and lock, which need no InceptionV3 (seconds instead of a minute on 2 cores)."""
    cache = tmp_path_factory.mktemp("tiny-tuned")
    head = make_head(tiny_backbone_features, cache / "heads" / "dense-1", hidden=8, epochs=2)
    return run_finetune(settings(tiny_backbone_features, head, cache, epochs=2), log=quiet), head


def settings(features, head, cache, **kw):
    base = dict(features=str(features), start_from=str(head), mode="cached", epochs=1, batch_size=8, lr=LR,
                precision="float32", cache_dir=str(cache))
    return FinetuneSettings(**{**base, **kw})


def quiet(*args):
    pass


def network(model, name: str):
    """The layer `name` of a saved fine-tuned model, which may sit inside its image-to-probabilities
    part (two test-time views wrap that part once per view)."""
    for layer in model.layers:
        if layer.name == name:
            return layer
        if hasattr(layer, "layers"):
            try:
                return network(layer, name)
            except ValueError:
                pass
    raise ValueError(f"no layer {name} in {model.name}")


def fresh_parts(features, head_path):
    import keras
    attrs = read_rows(features, splits=()).attrs
    bb = rebuild_backbone(attrs)
    return attrs, bb, surgery.split(bb.model, keras.models.load_model(head_path), "mixed9")


@pytest.mark.slow
def test_only_the_top_blocks_train_and_batchnorm_statistics_never_move(tiny_inception_features, head, tuned):
    import keras
    path, seen = tuned
    trained = network(keras.models.load_model(path), "inception_v3")
    _, bb, parts = fresh_parts(tiny_inception_features, head)
    upper = {layer.name for layer in parts.upper.layers[1:]}
    assert parts.cut == "mixed8" and {"mixed9", "mixed10"} <= upper and "mixed8" not in upper
    changed = []
    # by position: auto-generated layer names (conv2d_N) differ between builds in one process
    for before, after in zip(parts.base.layers, trained.layers):
        for v0, v1 in zip(before.weights, after.weights):
            a, b = np.asarray(v0), np.asarray(v1)
            if before.name not in upper or "moving_" in v0.path:
                np.testing.assert_array_equal(a, b, err_msg=f"{v0.path} moved")
            elif v0.trainable:
                changed.append(not np.array_equal(a, b))
    assert len(changed) == len(parts.upper.trainable_weights) and all(changed)
    assert len(seen["history"]["loss"]) == 2 and np.isfinite(seen["history"]["loss"]).all()


@pytest.mark.slow
def test_starting_model_predicts_what_the_head_does_on_the_stored_features(tiny_inception_features, head, tmp_path,
                                                                           captured):
    import keras
    path = run_finetune(settings(tiny_inception_features, head, tmp_path, epochs=0, test_views=1), log=quiet)
    fs = read_rows(tiny_inception_features)
    expected = keras.models.load_model(head).predict(fs.splits["val"].features, verbose=0)
    images = load_splits(fs.attrs, None)["val"].x
    # Stored features came from the BatchNorm-folded extractor (float32, ~1e-6 apart); the head's
    # standardization magnifies that on random-weight features' near-constant dimensions.
    np.testing.assert_allclose(keras.models.load_model(path).predict(images, verbose=0), expected, atol=5e-4)
    assert captured["extra"]["comparison"]["delta"] == {"val_accuracy": 0.0, "test_accuracy": 0.0}
    paired = captured["extra"]["comparison"]["paired"]["test"]       # stated as `compare` states it
    assert (paired["only_a"], paired["only_b"], paired["mcnemar_p"]) == (0, 0, 1.0)


@pytest.mark.slow
def test_exported_model_reloads_and_predicts_the_same(tiny_inception_features, tuned):
    import keras
    path, seen = tuned
    fs = read_rows(tiny_inception_features)
    images = load_splits(fs.attrs, None)["test"].x
    reloaded = keras.models.load_model(path)   # plain Keras: built-in layers only
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), seen["in_memory"].predict(images, verbose=0),
                               rtol=0, atol=1e-6)
    run = json.loads((path.parent / "run.json").read_text())
    assert run["class_names"] == fs.class_names and run["settings"]["cut"] == "mixed8"
    assert not list(path.parent.glob("*.partial*"))


def _reset_dropout(model, states):
    for layer, state in zip([l for l in model.layers if hasattr(l, "seed_generator")], states):
        layer.seed_generator.state.assign(state)


@pytest.mark.slow
def test_one_step_cached_equals_one_step_end_to_end(tiny_inception_features, head, tmp_path):
    """Same weights, same batch, one SGD step: fed the float32 cut activations, the cached-mode update
    equals the end-to-end one to 1e-4 (relative L2 over all trainable variables); from the float16
    cache, to 5% (the storage rounds each value by ~5e-4 relative)."""
    import keras
    from pipeline.finetune import activations
    from pipeline.backbones.folding import fast_extractor
    attrs, bb, parts = fresh_parts(tiny_inception_features, head)
    splits = load_splits(attrs, None)
    cs = activations.settings(attrs, parts.cut, 1, "float32")
    cache = activations.build(tmp_path / "acts.h5", cs, splits, fast_extractor(parts.image_to_cut(), "float32"),
                                 16, log=quiet)
    first = activations.batches(cache, "train", 16, shuffle=False)
    x_cut, y = first[0]
    rows = activations.train_order(len(splits["train"].y))[:16]     # the cache's first 16 train rows
    images = splits["train"].x[rows]
    np.testing.assert_array_equal(y, splits["train"].y[rows])

    dropout_states = [np.asarray(l.seed_generator.state) for l in parts.head.layers if hasattr(l, "seed_generator")]
    start = [np.asarray(w) for w in parts.head.weights]
    deltas = {}
    exact_cut = parts.image_to_cut().predict(images, verbose=0)           # float32, never stored
    for run, mode, x in (("cached", "cached", x_cut), ("cached, float32 input", "cached", exact_cut),
                         ("end-to-end", "end-to-end", images)):
        parts.head.set_weights(start)
        _reset_dropout(parts.head, dropout_states)
        model, upper = training_model(parts, mode, "float32")
        model.compile(keras.optimizers.SGD(1e-3, momentum=0.9), "sparse_categorical_crossentropy")
        before = [np.asarray(v) for v in model.trainable_variables]
        model.train_on_batch(x, y)
        deltas[run] = np.concatenate([(np.asarray(v) - b).ravel() for v, b in zip(model.trainable_variables, before)])
    assert np.linalg.norm(deltas["cached"]) > 0
    def gap(run):
        return np.linalg.norm(deltas[run] - deltas["end-to-end"]) / np.linalg.norm(deltas["end-to-end"])
    # Measured on the 2-core AMX Xeon: 5e-6 and 0.019.
    assert gap("cached, float32 input") < 1e-4, gap("cached, float32 input")   # the same computation
    assert gap("cached") < 0.05, gap("cached")                                  # plus float16 storage


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tiny_inception_features, head, tmp_path, monkeypatch, captured):
    from pipeline.finetune import checkpoint
    original = checkpoint.Checkpoint.on_epoch_end

    def killed_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt
    s = settings(tiny_inception_features, head, tmp_path, epochs=3, patience=5)
    monkeypatch.setattr(checkpoint.Checkpoint, "on_epoch_end", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(s, log=quiet)
    run_dir = next((tmp_path / "finetune").iterdir())
    assert not (run_dir / "model.keras").exists() and (run_dir / "checkpoint.npz").exists()
    with np.load(run_dir / "checkpoint.npz") as z:
        first_loss = json.loads(str(z["state"]))["history"]["loss"]
        iterations_after_one = int(z["o0"])
    assert len(first_loss) == 1 and iterations_after_one == 4   # 30 train images / batch 8

    monkeypatch.setattr(checkpoint.Checkpoint, "on_epoch_end", original)
    lines = []
    s.resume = True
    run_finetune(s, log=lines.append)
    assert any("resuming from epoch 1 of 3" in line for line in lines)
    assert captured["history"]["loss"][0] == first_loss[0] and len(captured["history"]["loss"]) == 3
    with np.load(run_dir / "checkpoint.npz") as z:
        assert int(z["o0"]) == 12    # the optimizer's step count carried over: 3 epochs x 4 steps
    assert (run_dir / "model.keras").is_file()


def test_unknown_unfreeze_layer_lists_the_blocks(tiny_inception_features, head, tmp_path, capsys):
    code = main(["finetune", "--features", str(tiny_inception_features), "--start-from", str(head),
                 "--unfreeze-from", "mixed99", "--cache-dir", str(tmp_path), "--precision", "float32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "mixed99" in err[0] and "mixed8, mixed9, mixed10" in err[0]


def _wrong_head(tmp_path, width, classes):
    import keras
    model = keras.Sequential([keras.Input((width,)), keras.layers.Dense(classes, activation="softmax")])
    model.save(tmp_path / "wrong.keras")
    return tmp_path / "wrong.keras"


@pytest.mark.parametrize("case, message", [
    ("no features", "does not exist; run `make features`"),
    ("no head", "does not exist; run `make head` first"),
    ("no head found", "run `make head` first"),
    ("head width", "maps 10 features to 10 classes, but the backbone gives 2048"),
    ("head classes", "maps 2048 features to 3 classes"),
    ("not a head", "cannot load head"),
])
def test_bad_input_gives_one_error_line_and_exit_2(tiny_inception_features, head, tmp_path, capsys, case, message):
    head_arg = {"no head": str(tmp_path / "missing.keras"),
                "head width": str(_wrong_head(tmp_path, 10, 10)) if case == "head width" else None,
                "head classes": str(_wrong_head(tmp_path, 2048, 3)) if case == "head classes" else None,
                "not a head": str(tiny_inception_features)}.get(case, str(head))
    features = str(tmp_path / "missing.h5") if case == "no features" else str(tiny_inception_features)
    argv = ["finetune", "--features", features, "--cache-dir", str(tmp_path), "--precision", "float32"]
    if case != "no head found":
        argv += ["--start-from", head_arg]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.slow
def test_resnet50_fine_tunes_from_its_default_block(tmp_path):
    """Another row of the backbone table through stage three: its default --unfreeze-from, its
    caffe-style preprocessing in the exported model."""
    import keras
    from conftest import CIFAR_JPG, require_real_images
    from pipeline.extract.features import FeatureSettings, run_features
    require_real_images()
    features = run_features(FeatureSettings(data=str(CIFAR_JPG), backbone="resnet50", weights="none", size=32,
                                            limit=20, precision="float32", cache_dir=str(tmp_path)), log=quiet)
    head = make_head(features, tmp_path / "heads" / "dense-1", hidden=8, epochs=2)
    path = run_finetune(settings(features, head, tmp_path, epochs=1), log=quiet)
    run = json.loads((path.parent / "run.json").read_text())
    assert (run["settings"]["unfreeze_from"], run["settings"]["cut"]) == ("conv5_block2_1_conv", "conv5_block1_out")
    attrs = read_rows(features, splits=()).attrs
    before = rebuild_backbone(attrs).model.get_layer("resnet50")
    after = network(keras.models.load_model(path), "resnet50")
    moved = {a.name for a, b in zip(before.layers, after.layers)
             if any(not np.array_equal(np.asarray(v), np.asarray(w)) for v, w in zip(a.weights, b.weights))}
    assert moved and all(name.startswith(("conv5_block2", "conv5_block3")) for name in moved), moved


@pytest.mark.slow
def test_a_run_killed_while_exporting_resumes_to_the_best_epoch(tiny_inception_features, head, tmp_path, monkeypatch):
    """Every epoch done, killed while exporting: `--resume` trains nothing and must export the best
    epoch's weights, as fit's end restores them in an uninterrupted run (it used to export the last
    epoch's). Compared with the checkpoint's best weights, not with a second training run: the
    head's dropout draws from the process's random state, so two runs in one process differ."""
    import pipeline.finetune.finetune as ft
    save, compile_ = ft.save_model_atomically, ft.compile_model
    monkeypatch.setattr(ft, "save_model_atomically", lambda model, path: (_ for _ in ()).throw(KeyboardInterrupt))
    s = settings(tiny_inception_features, head, tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(s, log=quiet)
    run_dir = next((tmp_path / "finetune").iterdir())
    assert not (run_dir / "model.keras").exists() and not list(run_dir.glob(".*tmp*"))

    seen, lines = {}, []
    monkeypatch.setattr(ft, "save_model_atomically", save)
    monkeypatch.setattr(ft, "compile_model", lambda model, *a: (seen.update(model=model), compile_(model, *a)))
    ckpt = run_dir / "checkpoint.npz"
    with np.load(ckpt) as z:
        arrays = {k: z[k] for k in z.files}
    # Discriminating even when the last epoch was the best: best weights that differ from the last ones.
    for k in [k for k in arrays if k.startswith("b") and arrays[k].dtype.kind == "f"]:
        arrays[k] = arrays[k] + np.asarray(0.01, arrays[k].dtype)
    np.savez(ckpt, **arrays)
    s.resume = True
    run_finetune(s, log=lines.append)
    assert any("resuming from epoch 2 of 2" in line for line in lines) and (run_dir / "model.keras").is_file()
    got = seen["model"].get_weights()
    assert len(got) == sum(k.startswith("b") for k in arrays)
    for i, w in enumerate(got):
        np.testing.assert_array_equal(w, arrays[f"b{i}"])


def test_a_second_identical_finetune_is_refused(tiny_backbone_features, tiny_tuned, tmp_path, monkeypatch, capsys):
    import pipeline.finetune.finetune as ft
    argv = ["finetune", "--features", str(tiny_backbone_features), "--start-from", str(tiny_tuned[1]), "--mode", "cached",
            "--epochs", "1", "--batch-size", "8", "--lr", str(LR), "--precision", "float32", "--cache-dir", str(tmp_path)]
    second = {}

    def start_a_second_run(*args):          # the first run holds its lock here
        capsys.readouterr()
        second["code"] = main(argv)
        second["err"] = capsys.readouterr().err.strip().splitlines()
        raise KeyboardInterrupt
    monkeypatch.setattr(ft, "training_data", start_a_second_run)
    assert main(argv) == 130
    assert second["code"] == 2 and len(second["err"]) == 1 and "another run is writing" in second["err"][0]
    assert "--resume" in capsys.readouterr().err          # Ctrl-C names the flag that continues


def test_a_damaged_field_in_a_finished_runs_record_is_one_error_not_up_to_date(tiny_backbone_features, tiny_tuned,
                                                                             tmp_path, capsys):
    argv = ["finetune", "--features", str(tiny_backbone_features), "--start-from", str(tiny_tuned[1]), "--mode",
            "cached", "--epochs", "1", "--batch-size", "8", "--lr", str(LR), "--precision", "float32",
            "--cache-dir", str(tmp_path)]
    assert main(argv) == 0
    record = next((tmp_path / "finetune").glob("*/run.json"))
    run = json.loads(record.read_text())
    run["as_is_view"]["test_accuracy"] = "high"
    record.write_text(json.dumps(run))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "as_is_view.test_accuracy" in err[0], err


@pytest.mark.slow
def test_a_corrupt_checkpoint_or_a_nan_activation_is_one_error(tiny_inception_features, head, tuned, tmp_path,
                                                                capsys):
    import shutil
    import h5py
    source_cache = tuned[0].parents[2]
    shutil.copytree(source_cache / "activations", tmp_path / "activations")
    run_dir = tmp_path / "finetune" / tuned[0].parent.name
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.npz").write_bytes(b"PK\x03\x04 truncated by a full disk")
    argv = ["finetune", "--features", str(tiny_inception_features), "--start-from", str(head), "--mode", "cached",
            "--epochs", "2", "--batch-size", "8", "--lr", str(LR), "--precision", "float32", "--cache-dir", str(tmp_path)]
    code = main([*argv, "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "checkpoint.npz cannot be used" in err[0] and "--resume" in err[0], err

    cache = next((tmp_path / "activations").glob("*.h5"))
    with h5py.File(cache, "r+") as f:
        f["train/features"][5] = np.nan
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train row 5 holds NaN" in err[0], err
    assert "the next `finetune` run rebuilds it" in err[0] and "make features" not in err[0], err
    assert not (run_dir / "model.keras").exists()


def test_auto_epochs_are_about_2000_steps_within_3_to_10():
    from pipeline.finetune.recipe import auto_epochs
    assert auto_epochs(45_000, 64) == 3      # all of CIFAR-10's train split: 704 steps an epoch
    assert auto_epochs(18_000, 64) == 7      # 282 steps: 7.1 epochs' worth
    assert auto_epochs(4_050, 64) == 10      # 64 steps: capped
    assert auto_epochs(1_000_000, 64) == 3   # a large set still gets 3 passes
    assert auto_epochs(45_000, 16) == 3 and auto_epochs(45_000, 256) == 10


def test_epochs_auto_is_recorded_as_its_number_and_is_the_same_run(tiny_backbone_features, tiny_tuned, monkeypatch):
    """`tiny_tuned` ran --epochs 2; auto resolving to 2 is that run, found up to date."""
    import pipeline.finetune.finetune as finetune
    path, head = tiny_tuned
    assert json.loads((path.parent / "run.json").read_text())["settings"]["epochs"] == 2
    monkeypatch.setattr(finetune, "auto_epochs", lambda rows, batch: 2)   # the rule itself is tested above
    lines = []
    cache = path.parent.parent.parent
    assert run_finetune(settings(tiny_backbone_features, head, cache, epochs=None), log=lines.append) == path
    assert lines[0].startswith("--epochs auto: 2 epochs of ") and lines[1:] == [f"up to date: {path}"], lines


@pytest.mark.parametrize("flag, value", [("--label-smoothing", "1"), ("--weight-decay", "-0.1"),
                                         ("--warmup-epochs", "nan"), ("--backbone-lr-scale", "inf")])
def test_recipe_settings_out_of_range_are_one_error_line(tiny_inception_features, tmp_path, capsys, flag, value):
    code = main(["finetune", "--features", str(tiny_inception_features), "--cache-dir", str(tmp_path), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and flag in err[0], err


def test_head_is_the_old_name_of_start_from(capsys, monkeypatch):
    """finetune's --head (a model file) is now --start-from, since --head names a head kind in `head`
    and `sweep`: the old spelling still works, with one warning line; both at once are refused."""
    from conftest import assert_one_error, run_cli
    from pipeline.cli import build_parser
    from pipeline.finetune import finetune
    code, _, err = run_cli(capsys, "finetune", "--head", "missing.keras", "--start-from", "other.keras")
    assert_one_error(code, err, "--head is the old name of --start-from")
    seen = []
    monkeypatch.setattr(finetune, "run_finetune", lambda s: seen.append(s.start_from))
    finetune.run(build_parser().parse_args(["finetune", "--head", "h.keras"]))
    assert seen == ["h.keras"]
    assert capsys.readouterr().err.strip().splitlines() == [
        "warning: finetune --head FILE is now --start-from FILE (--head names a head kind in `head` and `sweep`)"]
