"""`export`: a dense head run (backbone + head) and a stage-three run as SavedModel, TFLite and Keras
files, each reloaded in a fresh process that does not import the project, and matching the Keras
model within the stated tolerances; labels.txt, export.json, up to date, bad input. On a tiny
backbone file so that every format exports in seconds; the images are real CIFAR-10 JPEGs."""
import json
import os
import subprocess
import sys
import textwrap

from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.ship.formats import FORMATS
from pipeline.ship.export import ExportSettings, export_run
from pipeline.ship.models import features_attrs, image_model, shipped_run, sample_test_images

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def head_run(tiny_backbone, tiny_backbone_features, tmp_path_factory):
    """(cache, dense head run folder, backbone file) on the tiny backbone's features of 80 real images."""
    from pipeline.store.features import load_features
    from pipeline.heads.kinds import make_settings
    from pipeline.heads.training import run_head
    cache = tmp_path_factory.mktemp("export")
    head = run_head(load_features(tiny_backbone_features), "dense", make_settings("dense", hidden=32, epochs=5), cache)
    return cache, Path(head["run_dir"]), str(tiny_backbone)


@pytest.fixture(scope="module")
def runs(head_run, tiny_backbone_features):
    """(cache, head run folder, stage-three run folder, backbone file): `head_run` and one epoch of
    stage three from it (only the slow tests need that run)."""
    from pipeline.finetune.finetune import FinetuneSettings, run_finetune
    cache, head, backbone = head_run
    tuned = run_finetune(FinetuneSettings(features=str(tiny_backbone_features), start_from=str(head / "model.keras"),
                                          backbone=backbone, mode="cached", epochs=1, batch_size=8,
                                          precision="float32", cache_dir=str(cache)), log=quiet)
    return cache, head, tuned.parent, backbone


# The fresh process: TensorFlow (and, for the .keras file, Keras) only; the project is not on its path.
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    jobs, images = json.loads(sys.argv[1]), np.load(sys.argv[2])
    out = {}
    for key, (fmt, path) in jobs.items():
        if fmt == "savedmodel":
            loaded = tf.saved_model.load(path)     # keep it referenced while serving
            out[key] = loaded.serve(tf.constant(images)).numpy()
        elif fmt == "tflite":
            interpreter = tf.lite.Interpreter(model_path=path)
            inp = interpreter.get_input_details()[0]
            interpreter.resize_tensor_input(inp["index"], images.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(inp["index"], images)
            interpreter.invoke()
            out[key] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        else:
            import keras
            out[key] = keras.models.load_model(path).predict(images, verbose=0)
    assert not any(m == "pipeline" or m.startswith("pipeline.") for m in sys.modules)
    np.savez(sys.argv[3], **out)
""")


@pytest.mark.slow
def test_every_format_reloads_without_the_project_and_matches_the_keras_model(runs, tmp_path, capsys):
    cache, head_run, tuned_run, backbone = runs
    exported, expected = {}, {}
    for kind, run_dir, formats in (("head", head_run, FORMATS), ("tuned", tuned_run, ("savedmodel",))):
        run = shipped_run(run_dir)
        attrs = features_attrs(run)
        images = sample_test_images(attrs, None, 64)     # all 40 test images, the same for both runs
        expected[kind] = image_model(run, attrs, backbone=backbone).predict(images, verbose=0)
        for fmt in formats:
            code = main(["export", str(run_dir), "--format", fmt, "--backbone", backbone,
                         "--cache-dir", str(cache)])
            out = capsys.readouterr().out.strip().splitlines()
            path = cache / "exports" / f"{run_dir.name}-{fmt}" / FORMATS[fmt][0]
            assert code == 0 and out[-1] == str(path)
            meta = json.loads((path.parent / "export.json").read_text())
            assert meta["check"]["passed"] and meta["check"]["max_abs_diff"] <= FORMATS[fmt][1]
            assert meta["check"]["images"] == 40 and meta["temperature"] == run.record["calibration"]["temperature"]
            assert (path.parent / "labels.txt").read_text().splitlines() == CLASSES
            exported[f"{kind}-{fmt}"] = (fmt, str(path))
    np.save(tmp_path / "images.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(exported), str(tmp_path / "images.npy"),
                            str(tmp_path / "out.npz")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for key, (fmt, _) in exported.items():
        diff = np.abs(got[key] - expected[key.split("-")[0]]).max()
        assert diff <= FORMATS[fmt][1], (key, diff)
        np.testing.assert_allclose(got[key].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_the_exported_model_is_the_run_with_its_temperature(runs):
    """Backbone + head, and softmax(log p / T) of that with the run's fitted T."""
    import keras
    from pipeline.heads.calibration import as_logits, scaled_probs
    from pipeline.backbones.rebuild import rebuild_backbone
    from pipeline.backbones.compose import image_model as stack
    cache, head_run, _, backbone = runs
    run = shipped_run(head_run)
    attrs = features_attrs(run)
    images = sample_test_images(attrs, None, 16)
    t = run.record["calibration"]["temperature"]
    assert t != 1.0
    raw = stack(rebuild_backbone(attrs, backbone).model,
                keras.models.load_model(run.folder / "model.keras")).predict(images, verbose=0)
    calibrated = image_model(run, attrs, backbone=backbone).predict(images, verbose=0)
    np.testing.assert_allclose(calibrated, scaled_probs(as_logits(raw), t), atol=1e-5)


def test_rerun_is_up_to_date_and_bad_runs_are_one_error_line(head_run, tmp_path, capsys):
    cache, head_run, backbone = head_run
    lines = []
    keras_export = ExportSettings(format="keras", cache_dir=str(cache), backbone=backbone)
    export_run(head_run, keras_export, log=lines.append)
    lines.clear()
    export_run(head_run, keras_export, log=lines.append)
    assert lines == [f"up to date: {cache / 'exports' / (head_run.name + '-keras') / 'model.keras'}"]

    knn = tmp_path / "knn-x"       # a knn vote is no model to ship; a logreg run without its model did not finish
    logreg = tmp_path / "logreg-x"
    for folder, head in ((knn, "knn"), (logreg, "logreg")):
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"head": head, "settings": {}, "metrics": {"val_accuracy": 0.5},
                                                     "features": {"path": "f.h5", "settings_hash": "0"}}))
    for bad, message in ((knn, "only dense and logreg head runs and stage-three runs"),
                         (logreg, "holds no model.joblib"), (tmp_path, "not a run folder")):
        code = main(["export", str(bad), "--cache-dir", str(cache)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
    code = main(["export", str(head_run), "--cache-dir", str(tmp_path / "fresh"), "--format", "keras"])
    assert code == 0      # no --backbone: the features file recorded where it is
    assert not list((cache / "exports").glob(".*tmp*"))


def test_a_second_export_of_the_same_run_and_format_is_refused(runs, tmp_path):
    """One lock per export (outputs.produce): refused before any model is built."""
    from pipeline.foundation import outputs
    from pipeline.foundation.errors import UserError
    _, head_run, _, backbone = runs
    with outputs.Lock(tmp_path / "exports" / f"{head_run.name}-tflite"):
        with pytest.raises(UserError, match="another run is writing"):
            export_run(head_run, ExportSettings(format="tflite", cache_dir=str(tmp_path), backbone=backbone))
    assert not (tmp_path / "exports" / f"{head_run.name}-tflite").exists()
