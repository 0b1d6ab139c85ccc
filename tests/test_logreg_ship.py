"""A logreg head ships: its StandardScaler + LogisticRegression folded into one softmax layer equals
scikit-learn's predict_proba (pipeline.heads.affine.AFFINE_TOLERANCE) on random and real features;
`predict` and `export` take a logreg run, and with no run named take the newest run that ships,
whatever its kind, and say which."""
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from pipeline.heads.affine import AFFINE_TOLERANCE, keras_head


def fitted(x, y, C=0.1):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    return Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(C=C, max_iter=1000))]).fit(x, y)


def max_gap(pipeline, x):
    return float(np.abs(keras_head(pipeline).predict(x, verbose=0) - pipeline.predict_proba(x)).max())


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_the_affine_layer_is_predict_proba_on_random_features(n_classes):
    """Non-negative, skewed features like pooled ReLU ones, one constant column (scale 1), and a
    weak penalty so that the logits are large: the hard case for float32."""
    rng = np.random.default_rng(n_classes)
    x = (rng.gamma(1.0, 1.0, (400, 64)) * rng.uniform(0.01, 20, 64)).astype(np.float32)
    x[:, 3] = 2.5
    pipeline = fitted(x, np.arange(400) % n_classes, C=10.0)
    test = (rng.gamma(1.0, 1.0, (200, 64)) * 5).astype(np.float32)
    assert max_gap(pipeline, test) <= AFFINE_TOLERANCE
    assert max_gap(pipeline, x) <= AFFINE_TOLERANCE


def test_the_affine_layer_is_predict_proba_on_real_features(tiny_backbone_features):
    """Real CIFAR-10 images through a (random-weight) backbone file."""
    from pipeline.store import read_rows
    fs = read_rows(tiny_backbone_features)
    pipeline = fitted(fs.splits["train"].features, fs.splits["train"].labels)
    assert max_gap(pipeline, fs.splits["test"].features) <= AFFINE_TOLERANCE


@pytest.mark.slow
def test_the_affine_layer_is_predict_proba_on_pretrained_features(real_features):
    """EfficientNet-Lite0 (ImageNet) features of real CIFAR-10 images, 1280 wide."""
    from pipeline.store import read_rows
    fs = read_rows(real_features)
    pipeline = fitted(fs.splits["train"].features, fs.splits["train"].labels)
    assert max_gap(pipeline, fs.splits["test"].features) <= AFFINE_TOLERANCE


@pytest.fixture(scope="module")
def three_runs(tiny_backbone_features, tmp_path_factory):
    """(cache, logreg run): a dense, then a logreg, then a knn head run on the tiny backbone's features."""
    from pipeline.heads.kinds import make_settings
    from pipeline.heads.training import run_head
    from pipeline.store.features import load_features
    cache = tmp_path_factory.mktemp("three-runs")
    fs = load_features(tiny_backbone_features)
    quiet = lambda *a: None     # noqa: E731
    run_head(fs, "dense", make_settings("dense", hidden=8, epochs=2), cache, log=quiet)
    logreg = run_head(fs, "logreg", make_settings("logreg"), cache, log=quiet)
    run_head(fs, "knn", make_settings("knn", k=3), cache, log=quiet)
    return cache, Path(logreg["run_dir"])


def test_predict_takes_the_newest_run_that_ships_a_logreg_one_included(
        three_runs, tiny_backbone, tiny_backbone_features, small_cifar, tmp_path, capsys):
    """dense, then logreg, then knn: with no run named, predict takes the logreg run and says so
    (its kind, and the newer knn run that does not ship); its probabilities of the test images are
    predict_proba of their stored rows. Before, the logreg run was skipped silently."""
    import csv
    cache, logreg_run = three_runs
    test_dir = small_cifar / "test"
    code, out, err = run_cli(capsys, "predict", test_dir, "--cache-dir", cache, "--out", tmp_path / "p.csv",
                             "--top-k", "10", "--backbone", tiny_backbone)
    assert code == 0, err
    picked = [line for line in err if line.startswith("model: ")]
    assert len(picked) == 1 and picked[0].startswith(f"model: {logreg_run} (the newest dense, logreg or fine-tune")
    assert "a logreg run" in picked[0] and "1 newer run(s) do not ship" in picked[0]

    from pipeline.heads.classifiers import load_joblib
    from pipeline.store import read_rows
    fs = read_rows(tiny_backbone_features)
    expected = load_joblib(logreg_run / "model.joblib").predict_proba(fs.splits["test"].features)
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    got = {}
    for row in rows:
        probs = dict(zip(row[1::2], map(float, row[2::2])))
        got[Path(row[0]).relative_to(test_dir).as_posix()] = [probs[c] for c in fs.class_names]
    files = sorted(got)        # the stored test rows' order: class by class, files sorted
    assert len(files) == len(expected)
    # the rows recomputed from the images as stage one did; probabilities written with 6 decimals
    assert np.abs(np.array([got[f] for f in files]) - expected).max() <= AFFINE_TOLERANCE + 1e-6


@pytest.mark.slow
def test_export_takes_the_newest_run_that_ships_a_logreg_one_included(three_runs, tiny_backbone, capsys):
    cache, logreg_run = three_runs
    code, out, err = run_cli(capsys, "export", "--cache-dir", cache, "--format", "keras", "--backbone", tiny_backbone)
    assert code == 0, err
    assert any(line.startswith(f"model: {logreg_run} (the newest") for line in err)
    assert Path(out[-1]).is_file() and "logreg" in Path(out[-1]).parent.name
