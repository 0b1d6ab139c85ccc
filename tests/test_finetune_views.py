"""Test-time views in stage three: the run's reported accuracy is the mean of the image's and its mirror
image's probabilities, the exported model computes exactly that, and the activation cache holds both."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_head
from pipeline.backbones.compose import image_model
from pipeline.finetune import activations
from pipeline.finetune.finetune import FinetuneSettings, run_finetune
from pipeline.sources.rows import load_splits
from pipeline.store import read_rows


def _tiny_classifier():
    import keras
    inputs = keras.Input((12, 16, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2)(x)          # not mirror-symmetric: the two views differ
    backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    return backbone, head


def test_the_two_view_model_is_the_mean_of_the_image_and_its_mirror_and_loads_with_plain_keras(tmp_path):
    import keras
    backbone, head = _tiny_classifier()
    one, two = image_model(backbone, head), image_model(backbone, head, views=2)
    images = np.random.default_rng(0).integers(0, 256, (6, 12, 16, 3)).astype(np.uint8)
    expected = (one.predict(images, verbose=0) + one.predict(images[:, :, ::-1], verbose=0)) / 2
    assert np.abs(one.predict(images, verbose=0) - expected).max() > 1e-4     # the mirror changes something
    two.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def two_view_run(tiny_backbone_features, tmp_path_factory):
    """A one-epoch cached run on the tiny backbone with the default two test-time views."""
    cache = tmp_path_factory.mktemp("views")
    head = make_head(tiny_backbone_features, cache / "heads" / "dense-1", hidden=8, epochs=2)
    s = FinetuneSettings(features=str(tiny_backbone_features), start_from=str(head), mode="cached", epochs=1,
                         batch_size=8, lr=1e-3, precision="float32", cache_dir=str(cache))
    assert s.test_views == 2                                   # the default
    return run_finetune(s, log=lambda *a: None), cache


def test_the_run_reports_what_its_exported_model_predicts(tiny_backbone_features, two_view_run):
    import keras
    path, _ = two_view_run
    fs = read_rows(tiny_backbone_features)
    images = load_splits(fs.attrs, None)["test"].x
    model = keras.models.load_model(path)
    run = json.loads((path.parent / "run.json").read_text())
    accuracy = float(np.mean(model.predict(images, verbose=0).argmax(1) == fs.splits["test"].labels))
    # the run evaluated float16-stored activations, the model computes in float32: at most one image apart
    assert abs(accuracy - run["metrics"]["test_accuracy"]) <= 1 / len(images) + 1e-9
    assert run["settings"]["test_views"] == 2 and set(run["as_is_view"]) == {"val_accuracy", "test_accuracy"}


def test_the_cache_holds_each_eval_image_and_its_mirror(two_view_run):
    import h5py
    _, cache = two_view_run
    (path,) = (cache / "activations").glob("*.h5")
    with h5py.File(path, "r") as f:
        assert list(f.attrs["rows_per_image"])[1:] == [2, 2] and f.attrs["test_views"] == 2
        stored = f["val"]["features"][:8].astype(np.float32) / float(f.attrs["scale"])
    as_is = activations.batches(path, "val", 4, shuffle=False)[0][0]
    mirrored = activations.batches(path, "val", 4, shuffle=False, view=1)[0][0]
    np.testing.assert_array_equal(as_is, stored[0::2])      # rows 2i: as is
    np.testing.assert_array_equal(mirrored, stored[1::2])   # rows 2i+1: mirrored
    assert not np.allclose(as_is, mirrored)
