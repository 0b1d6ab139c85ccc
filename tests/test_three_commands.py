"""The newcomer's path: on a folder of images (of two sizes) and a backbone file, `features --data DIR
--backbone FILE`, then `head`, then `predict IMAGES --out preds.csv`, with no other flag. Each later
command finds the newest features file or run and names it; the backbone is found where the features
file recorded it, and only asked for when it moved. Then the head run's default export (a SavedModel,
checked on images of both sizes) is one `predict` reads, and gives the run's probabilities on images
of the size it takes."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_error, run_cli, save_tiny_backbone

CLASSES = ["cat", "dog", "ship"]


def image_tree(root: Path, per_class=(12, 4)) -> Path:
    """train/<class>/ and test/<class>/ PNGs of noise, every second one 48x40 instead of 32x32. Noise:
    nothing to learn, so that `head` with its default settings stops early (in seconds)."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                shape = (32, 32, 3) if i % 2 == 0 else (48, 40, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / split / name / f"{i:02d}.png")
    return root


@pytest.fixture
def newcomer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image_tree(tmp_path / "photos")
    (tmp_path / "models").mkdir()
    save_tiny_backbone(tmp_path / "models" / "tiny.keras")
    return tmp_path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_features_head_predict_need_no_other_flags_and_say_what_they_picked(newcomer, capsys):
    code, out, err = run_cli(capsys, "features", "--data", "photos", "--backbone", "models/tiny.keras")
    assert code == 0, err
    features = Path(out[-1])
    from pipeline.store import read_rows
    recorded = read_rows(features, splits=(), values=False).attrs["backbone_file"]
    assert recorded == str(newcomer / "models" / "tiny.keras")      # absolute, though given relative

    code, out, err = run_cli(capsys, "head")
    assert code == 0, err
    assert f"features: {features} (the newest in cache/features; --features chooses another)" in err
    run_dir = next(Path("cache", "heads").glob("dense-*"))

    code, out, err = run_cli(capsys, "predict", "photos/test", "--out", "preds.csv")
    assert code == 0, err
    assert any(line.startswith(f"model: {run_dir} (the newest dense, logreg or fine-tune run in cache: a dense run")
               and line.endswith("; --model chooses another)") for line in err), err
    rows = read_csv("preds.csv")
    assert len(rows) == 1 + 12 and {r[1] for r in rows[1:]} <= set(CLASSES)

    # The backbone moved, or another file took its place: asked for by name, once; found with --backbone.
    shutil.move("models", "moved")
    code, out, err = run_cli(capsys, "predict", "photos/test", "--out", "again.csv")
    assert_one_error(code, err, "no longer there; pass --backbone PATH")
    Path("models").mkdir()
    save_tiny_backbone(Path("models", "tiny.keras"), size=40)
    code, out, err = run_cli(capsys, "predict", "photos/test", "--out", "again.csv")
    assert_one_error(code, err, "changed since the features were made with it")
    code, out, err = run_cli(capsys, "predict", "photos/test", "--out", "again.csv", "--backbone", "moved/tiny.keras")
    assert code == 0 and read_csv("again.csv") == rows, err


@pytest.mark.slow
def test_the_default_export_of_a_mixed_size_run_is_one_predict_reads(newcomer, capsys):
    for argv in (["features", "--data", "photos", "--backbone", "models/tiny.keras", "--precision", "float32"],
                 ["head"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, err
    run_dir = next(Path("cache", "heads").glob("dense-*"))
    code, out, err = run_cli(capsys, "export")        # the newest run as a SavedModel, checked on 32x32 and 48x40
    assert code == 0 and any(line.startswith(f"model: {run_dir} (the newest dense, logreg or fine-tune run")
                            and line.endswith("; RUN chooses another)") for line in err), err
    saved = Path(out[-1])
    assert saved.name == "saved_model"
    models = {run_dir: 1e-4, run_dir / "model.keras": 1e-4, saved.parent: 1e-4, saved: 1e-4}
    for fmt, tolerance in (("keras", 1e-4), ("tflite", 1e-3)):
        code, out, err = run_cli(capsys, "export", run_dir, "--format", fmt)
        assert code == 0, err
        models[Path(out[-1])] = tolerance
    got = {}
    for model in models:
        code, out, err = run_cli(capsys, "predict", "photos/test", "--model", model, "--out", "p.csv")
        assert code == 0, err
        got[model] = {r[0]: dict(zip(r[1::2], map(float, r[2::2]))) for r in read_csv("p.csv")[1:]}
    # the run itself embeds each image as stage one did (alone, straight to the backbone's input);
    # an export takes one size, the first image's, and resizes the others to it first
    reference, exported = got[run_dir], got[saved]
    assert len(reference) == 12
    for model, probs in got.items():
        expect = reference if model in (run_dir, run_dir / "model.keras") else exported
        assert probs.keys() == expect.keys(), model
        for image, p in probs.items():
            np.testing.assert_allclose([p[c] for c in CLASSES], [expect[image][c] for c in CLASSES],
                                       atol=models[model])
    for image, p in reference.items():
        if Image.open(image).size == (32, 32):       # the export's own size: the same answer
            np.testing.assert_allclose([p[c] for c in CLASSES], [exported[image][c] for c in CLASSES], atol=1e-4)
