"""`features --views 2`: the mirrored view beside each embedding, validated, hashed; heads train on both
views and evaluate on the mean of their probabilities; `--views 1` files stay exactly as before."""
import json

import h5py
import numpy as np
import pytest

from conftest import assert_close_at
from pipeline.cli import main
from pipeline.foundation.errors import UserError
from pipeline.store import MIRRORED, read_rows


@pytest.fixture(scope="module")
def two_views(tiny_backbone, tiny_backbone_features, small_cifar):
    cache = tiny_backbone_features.parents[1]        # the 1-view file's cache: same images, same backbone
    code = main(["features", "--data", str(small_cifar), "--backbone", str(tiny_backbone),
                 "--views", "2", "--cache-dir", str(cache)])
    assert code == 0
    return next((cache / "features").glob("*2views*.h5"))


def test_two_view_files_validate_and_hold_the_mirrored_images_embeddings(two_views, tiny_backbone_features,
                                                                         tiny_backbone):
    from pipeline.backbones.build import build_backbone
    from pipeline.sources.rows import load_splits
    one, two = read_rows(tiny_backbone_features), read_rows(two_views)
    assert two.attrs["views"] == 2 and "views" not in one.attrs and "views" not in one.attrs["settings"]
    assert two.attrs["settings"] == {**one.attrs["settings"], "views": 2}
    assert two.attrs["settings_hash"] != one.attrs["settings_hash"]
    model = build_backbone(str(tiny_backbone)).model
    splits = load_splits(two.attrs, None)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(two.splits[name].features, one.splits[name].features)   # view 1 unchanged
        assert one.splits[name].mirrored is None
        mirrored = model.predict(splits[name].x[:, :, ::-1], verbose=0)      # float32
        assert_close_at(two.attrs["precision"], two.splits[name].mirrored, mirrored)
        assert np.abs(two.splits[name].mirrored - two.splits[name].features).max() > 1e-3


def test_a_two_view_file_missing_a_view_is_refused(two_views, tmp_path, capsys):
    broken = tmp_path / two_views.name
    broken.write_bytes(two_views.read_bytes())
    with h5py.File(broken, "r+") as f:
        del f["val"][MIRRORED]
    with pytest.raises(UserError, match="val lacks features_mirrored"):
        read_rows(broken)
    assert main(["head", "--features", str(broken), "--cache-dir", str(tmp_path)]) == 2
    assert "lacks features_mirrored" in capsys.readouterr().err


def test_knn_k_may_reach_the_rows_of_both_views(two_views, tmp_path):
    from pipeline.store.features import load_features
    from pipeline.heads.kinds import make_settings
    from pipeline.heads.training import run_head
    fs = load_features(two_views)
    rows = 2 * len(fs.splits["train"].labels)
    assert run_head(fs, "knn", make_settings("knn", k=rows), tmp_path)["metrics"]["train_rows"] == rows
    with pytest.raises(UserError, match=rf"k must be at most the number of training rows \({rows}\), got {rows + 1}"):
        run_head(fs, "knn", make_settings("knn", k=rows + 1), tmp_path)


@pytest.mark.slow
def test_heads_train_on_both_views_and_evaluate_on_their_mean(two_views, tmp_path):
    from pipeline.store.features import load_features
    from pipeline.heads.kinds import make_settings, predict_proba
    from pipeline.heads.training import run_head
    fs = load_features(two_views)
    train = fs.splits["train"]
    dense = run_head(fs, "dense", make_settings("dense", hidden=16, epochs=2), tmp_path)
    norm = dense["model"].get_layer("standardize")
    both = np.concatenate([train.features, train.mirrored])
    np.testing.assert_allclose(np.asarray(norm.mean).ravel(), both.mean(axis=0), rtol=1e-4, atol=1e-5)
    logreg = run_head(fs, "logreg", make_settings("logreg"), tmp_path)
    assert logreg["model"][0].n_samples_seen_ == 2 * len(train.labels)
    for result in (dense, logreg):
        test = fs.splits["test"]
        mean = (predict_proba(result["model"], test.features) + predict_proba(result["model"], test.mirrored)) / 2
        assert result["metrics"]["test_accuracy"] == pytest.approx(np.mean(mean.argmax(1) == test.labels))
        assert result["features"]["views"] == 2
        report = json.loads((tmp_path / "reports" / result["run_dir"].rsplit("/", 1)[1] / "report.json").read_text())
        assert report["features"]["views"] == 2
