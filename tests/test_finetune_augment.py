"""Stage three's cached augmentation: stored views are the maps of the augmented images, the
per-step map shift moves maps by whole cells and approximates moving the image, and a resumed run
with both ends where an uninterrupted one does. Float32 throughout (--precision float32)."""
import json
import shutil

import numpy as np
import pytest

from conftest import make_head
from pipeline.backbones.rebuild import rebuild_backbone
from pipeline.finetune import augment
from pipeline.finetune import activations, surgery
from pipeline.finetune.finetune import FinetuneSettings, run_finetune
from pipeline.sources.rows import load_splits
from pipeline.store import read_rows

K = 3    # as is, mirrored, and one random flip + translation


def quiet(*args):
    pass


def _any_head(width: int):
    import keras
    return keras.Sequential([keras.Input((width,)), keras.layers.Dense(10)])


@pytest.fixture(scope="module")
def cache(tiny_inception_features, tmp_path_factory):
    """A 3-view activation cache of the tiny InceptionV3's mixed8 cut: (path, splits, image -> cut)."""
    from pipeline.backbones.folding import fast_extractor
    attrs = read_rows(tiny_inception_features, splits=()).attrs
    bb = rebuild_backbone(attrs)
    parts = surgery.split(bb.model, _any_head(bb.width), "mixed9")
    splits = load_splits(attrs, None)
    fn = fast_extractor(parts.image_to_cut(), "float32")
    path = activations.build(tmp_path_factory.mktemp("acts") / "acts.h5",
                             activations.settings(attrs, parts.cut, K, "float32"), splits, fn, 16, log=quiet)
    return path, splits, fn


def test_translated_view_is_a_flip_and_shift_of_the_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ids = np.array([7, 8, 9, 10])
    np.testing.assert_array_equal(augment.cached_view(images, ids, 0), images)
    np.testing.assert_array_equal(augment.cached_view(images, ids, 1), images[:, :, ::-1])
    moved = augment.cached_view(images, ids, 2)
    np.testing.assert_array_equal(moved, augment.cached_view(images, ids, 2))      # a function of (id, view)
    np.testing.assert_array_equal(moved[1:], augment.cached_view(images[1:], ids[1:], 2))   # not of the batch
    m = augment.MAX_SHIFT_PX
    for img, out in zip(images, moved):
        candidates = [augment.translate(src, dy, dx) for src in (img, img[:, ::-1])
                      for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
        assert any(np.array_equal(out, c) for c in candidates)
    # interior pixels of a translation are the image's, moved
    np.testing.assert_array_equal(augment.translate(images[0], 1, -2)[1:, :30], images[0][:31, 2:])


@pytest.mark.slow
def test_each_stored_view_is_the_map_of_that_view_of_the_image(cache):
    """Row K*i + v of the train split holds the cut of view v of image i (float16 storage: 2e-3
    of the largest magnitude); val and test hold one, unaugmented, row per image."""
    import h5py
    path, splits, fn = cache
    order = activations.train_order(len(splits["train"].y))[:5]
    images, ids = splits["train"].x[order], splits["train"].index[order]
    with h5py.File(path, "r") as f:
        scale = float(f.attrs["scale"])
        rows = f["train/features"][:5 * K].astype(np.float32) / scale
        assert len(f["val/features"]) == len(splits["val"].y)
    stored = rows.reshape(5, K, *rows.shape[1:])
    for v in range(K):
        expected = fn(augment.cached_view(images, ids, v))
        np.testing.assert_allclose(stored[:, v], expected, atol=2e-3 * np.abs(expected).max())
    assert not np.allclose(stored[:, 0], stored[:, 2])   # the third view is a different image


@pytest.mark.slow
def test_map_shift_moves_each_training_map_by_at_most_one_cell(cache):
    path, splits, _ = cache
    plain = activations.batches(path, "train", 8, shuffle=True, seed=3, shift=0)
    shifted = activations.batches(path, "train", 8, shuffle=True, seed=3, shift=1)
    moved = 0
    for i in range(len(plain)):
        (x0, y0), (x1, y1) = plain[i], shifted[i]
        np.testing.assert_array_equal(y0, y1)     # same images, same views: only the shift differs
        for a, b in zip(x0, x1):
            offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                       if np.array_equal(activations.shift_maps(a[None], [(dy, dx)], 1)[0], b)]
            assert offsets, "not a one-cell shift of the stored map"
            moved += offsets != [(0, 0)]
    assert moved > 0
    x_val, _ = activations.batches(path, "val", 8, shuffle=False, shift=1)[0]   # evaluation rows never move
    np.testing.assert_array_equal(x_val, activations.batches(path, "val", 8, shuffle=False)[0][0])


@pytest.mark.slow
def test_a_shifted_map_approximates_the_map_of_the_shifted_image(real_features):
    """EfficientNet-Lite0 (ImageNet weights) at its default cut (block10_add, 14x14, stride 16):
    moving the 224x224 network input by 16 px (one stride; about 2.3 px of the 32x32 image) moves
    the map by one cell. On the inner 8x8 cells (3 cells from every border, where padding does not
    reach in the same way) the one-cell shift of the stored map is within 25% relative L2 of the
    map of the moved image, and more than 4 times closer than the unmoved map. Measured on the
    2-core AMX Xeon, float32, at the default cut block08_project_bn: 0.076 vs 1.114 (0.147 vs 1.100 at block10_add)."""
    from conftest import PRETRAINED
    from pipeline.backbones.table import default_unfreeze
    attrs = read_rows(real_features, splits=()).attrs
    bb = rebuild_backbone(attrs, str(PRETRAINED))
    base = bb.model.layers[-1]
    parts = surgery.split(bb.model, _any_head(bb.width), default_unfreeze(base, bb.policy), bb.policy)
    assert parts.cut == "block08_project_bn"
    images = load_splits(attrs, None)["test"].x[:4]
    x = np.asarray(parts.front(images), np.float32)                      # 224x224 network input
    stride = x.shape[1] // parts.lower.output.shape[1]
    x_moved = np.pad(x, ((0, 0), (stride, 0), (stride, 0), (0, 0)), mode="edge")[:, :x.shape[1], :x.shape[2]]
    maps, maps_of_moved = (np.asarray(parts.lower(v)) for v in (x, x_moved))
    shifted = activations.shift_maps(maps, [(1, 1)] * len(maps), 1)
    inner = (slice(None), slice(3, -3), slice(3, -3))

    def gap(a):
        return np.linalg.norm(a[inner] - maps_of_moved[inner]) / np.linalg.norm(maps_of_moved[inner])
    assert gap(shifted) < 0.25 and gap(shifted) < gap(maps) / 4, (gap(shifted), gap(maps))


@pytest.mark.slow
def test_resume_with_cached_augmentation_gives_the_same_weights(tiny_inception_features, tmp_path, monkeypatch):
    """3 views and the map shift, killed after epoch 1 of 2 and resumed: the same exported weights
    as an uninterrupted run (a dropout-free head, so the data plan is the only randomness)."""
    import keras
    from pipeline.finetune import checkpoint
    monkeypatch.setattr("pipeline.heads.evaluation.write_report", lambda out_dir, **kwargs: {})
    head = make_head(tiny_inception_features, tmp_path / "heads" / "d", epochs=2, dropout=0.0)
    s = dict(features=str(tiny_inception_features), start_from=str(head), mode="cached", epochs=2, batch_size=8,
             lr=1e-4, views_per_image=K, map_shift=1, precision="float32", patience=5)
    whole = run_finetune(FinetuneSettings(**s, cache_dir=str(tmp_path / "a")), log=quiet)
    shutil.copytree(tmp_path / "a" / "activations", tmp_path / "b" / "activations")   # build the cache once

    original = checkpoint.Checkpoint.on_epoch_end

    def killed_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint.Checkpoint, "on_epoch_end", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(FinetuneSettings(**s, cache_dir=str(tmp_path / "b")), log=quiet)
    monkeypatch.setattr(checkpoint.Checkpoint, "on_epoch_end", original)
    lines = []
    resumed = run_finetune(FinetuneSettings(**s, cache_dir=str(tmp_path / "b"), resume=True), log=lines.append)
    assert any("resuming from epoch 1 of 2" in line for line in lines)
    assert json.loads((resumed.parent / "run.json").read_text())["epochs_run"] == 2
    a, b = (keras.models.load_model(p).get_weights() for p in (whole, resumed))
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=0, atol=1e-6)
