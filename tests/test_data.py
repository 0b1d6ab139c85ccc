"""Data loading: every accepted format gives the same arrays; splits are balanced, seeded, disjoint."""
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import CIFAR_JPG, require_real_images, synthetic_cifar, write_batches, write_image_tree
from pipeline.sources import cifar, dataset, digest, partition
from pipeline.sources.images import FileImages
from pipeline.foundation.errors import UserError


def test_batches_folder_is_decoded_channel_major(batches_dir):
    train_x, train_y, test_x, test_y = synthetic_cifar()
    ds = dataset.load_dataset(batches_dir)
    np.testing.assert_array_equal(ds.train_x, train_x)
    np.testing.assert_array_equal(ds.train_y, train_y)
    np.testing.assert_array_equal(ds.test_x, test_x)
    np.testing.assert_array_equal(ds.test_index, np.arange(len(test_x)))
    assert ds.class_names == cifar.CIFAR10_CLASSES


def test_tarball_equals_folder(batches_dir, tmp_path):
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(batches_dir, arcname="cifar-10-batches-py")
    a, b = dataset.load_dataset(batches_dir), dataset.load_dataset(tar_path)
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)


def test_image_tree_equals_arrays_and_sorts_classes(tmp_path):
    train_x, train_y, test_x, test_y = synthetic_cifar(30, 10)
    classes = [f"c{i}" for i in range(10)]
    ds = dataset.load_dataset(write_image_tree(tmp_path / "tree", train_x, train_y, test_x, test_y, classes))
    assert ds.class_names == tuple(classes)
    order = np.argsort(train_y, kind="stable")          # files are read class by class
    np.testing.assert_array_equal(ds.train_x, train_x[order])
    np.testing.assert_array_equal(ds.train_y, train_y[order])


def test_mixed_sizes_are_listed_without_decoding_and_read_as_they_are(tmp_path):
    train_x, train_y, test_x, test_y = synthetic_cifar(10, 10)
    root = write_image_tree(tmp_path / "tree", train_x, train_y, test_x, test_y, [f"c{i}" for i in range(10)])
    odd = np.random.default_rng(2).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(odd).save(root / "test" / "c3" / "0003.png")
    ds = dataset.load_dataset(root)
    assert isinstance(ds.test.images, FileImages) and len(ds.test) == 10
    images = ds.test.read()
    np.testing.assert_array_equal(images[3], odd)
    assert images[2].shape == (32, 32, 3)
    with pytest.raises(UserError, match="differ in size"):
        ds.test_x


def test_fingerprint_is_the_same_for_any_batch_layout(tmp_path):
    train_x, train_y, test_x, test_y = synthetic_cifar(300, 140)
    ds = dataset.load_dataset(write_batches(tmp_path / "b", train_x, train_y, test_x, test_y))
    splits = partition.make_splits(ds, 0.1, seed=0)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes["test"] > digest.BLOCK_ROWS                  # several blocks in a split
    for step in (7, 128, 1000):                             # uneven batches, block-sized, one batch
        blocks = {}
        for name, split in splits.items():
            hasher, blocks[name] = digest.BlockHasher(split, 0), []
            for lo in range(0, len(split), step):
                blocks[name] += hasher.feed(split.read(lo, lo + step)).values()
            assert len(blocks[name]) == -(-len(split) // digest.BLOCK_ROWS)
        assert digest.combine_digests(blocks, sizes) == digest.fingerprint(splits)
    changed = train_x.copy()
    changed[-1, 0, 0, 0] ^= 1
    changed_source = dataset.load_dataset(write_batches(tmp_path / "c", changed, train_y, test_x, test_y))
    other = partition.make_splits(changed_source, 0.1, 0)
    assert digest.fingerprint(other) != digest.fingerprint(splits)


def test_limit_is_balanced_and_deterministic():
    labels = np.repeat(np.arange(10), 7)[np.random.default_rng(1).permutation(70)]
    keep = partition.balanced_subset(labels, 10, 23)
    counts = np.bincount(labels[keep], minlength=10)
    assert len(keep) == 23 and counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(keep, partition.balanced_subset(labels, 10, 23))
    # the first members of each class in source order
    for c in range(10):
        members = np.flatnonzero(labels == c)
        assert set(keep[labels[keep] == c]) == set(members[:counts[c]])


def test_splits_are_stratified_seeded_and_disjoint(batches_dir):
    ds = dataset.load_dataset(batches_dir)
    a = partition.make_splits(ds, 0.2, seed=0)
    b = partition.make_splits(ds, 0.2, seed=0)
    c = partition.make_splits(ds, 0.2, seed=1)
    np.testing.assert_array_equal(a["val"].index, b["val"].index)
    assert not np.array_equal(a["val"].index, c["val"].index)
    assert set(a["val"].index).isdisjoint(a["train"].index)
    assert len(a["val"].index) + len(a["train"].index) == len(ds.train_y)
    assert np.bincount(a["val"].y, minlength=10).tolist() == [1] * 10      # 20% of 5 per class
    np.testing.assert_array_equal(a["test"].index, np.arange(len(ds.test_y)))
    np.testing.assert_array_equal(a["train"].x, ds.train_x[a["train"].index])
    assert digest.fingerprint(a) == digest.fingerprint(b) != digest.fingerprint(c)


def test_limit_on_real_images_keeps_source_indices():
    require_real_images()
    ds = dataset.load_dataset(CIFAR_JPG, limit=30)
    assert ds.train_x.shape == (30, 32, 32, 3) and ds.test_x.shape == (30, 32, 32, 3)
    assert np.bincount(ds.train_y).tolist() == [3] * 10
    # image-folder order is class by class, 5,000 train images per class
    assert ds.train_index[ds.train_y == 1].tolist() == [5000, 5001, 5002]


def test_offline_keras_download_names_the_local_formats(monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(UserError, match="could not download CIFAR-10.*cifar-10-batches-py"):
        dataset.load_dataset(None)


def _float_image_tree(root):
    train_x, train_y, test_x, test_y = synthetic_cifar(10, 10)
    write_image_tree(root, train_x, train_y, test_x, test_y, [f"c{i}" for i in range(10)])
    Image.fromarray(train_x[0, :, :, 0].astype(np.float32)).save(root / "train" / "c0" / "0000.tif")
    return root


def test_images_in_other_modes_are_read_as_rgb(tmp_path):
    """A real photo folder mixes grayscale, palette, RGBA and 16-bit files: stage one reads each as the
    8-bit RGB image it shows, as predict does (one conversion, decode.rgb8)."""
    rgb = synthetic_cifar(4, 4)[0][:4]
    gray = rgb[0, :, :, 0]
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    cases = [(Image.fromarray(gray), as_rgb),                                          # L
             (Image.fromarray(rgb[1]).convert("RGBA"), rgb[1]),                        # RGBA: alpha dropped
             (Image.fromarray(gray.astype(np.uint16) * 257), as_rgb),                  # I;16, scaled to 8 bits
             (Image.fromarray(rgb[3]).quantize(64), None)]                             # P: its palette colours
    paths = []
    for k, (img, _) in enumerate(cases):
        paths.append(str(tmp_path / f"{k}.png"))
        img.save(paths[-1])
    got = FileImages(np.asarray(paths)).read()
    for (img, want), pixels in zip(cases, got):
        want = np.asarray(img.convert("RGB")) if want is None else want
        assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
        np.testing.assert_array_equal(pixels, want)


def _mismatched_tree(root):
    train_x, train_y, test_x, test_y = synthetic_cifar(10, 10)
    write_image_tree(root, train_x, train_y, test_x, test_y, [f"c{i}" for i in range(10)])
    (root / "test" / "c9").rename(root / "test" / "other")
    return root


def _corrupt_image_tree(root):
    train_x, train_y, test_x, test_y = synthetic_cifar(10, 10)
    write_image_tree(root, train_x, train_y, test_x, test_y, [f"c{i}" for i in range(10)])
    (root / "train" / "c2" / "0002.png").write_bytes(b"not an image")
    return root


def _batches_missing_one(root):
    write_batches(root, *synthetic_cifar())
    (root / "data_batch_3").unlink()
    return root


def _batches_wrong_shape(root):
    import pickle
    write_batches(root, *synthetic_cifar())
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    return root


def _unknown_file(root):
    root.mkdir()
    (root / "data.zip").write_bytes(b"PK")
    return root / "data.zip"


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nowhere", "does not exist"),
    (_unknown_file, "unknown data format"),
    (_float_image_tree, "floating-point image has no fixed pixel range"),
    (_mismatched_tree, r"class folders .* differ \(only in train: \['c9'\]; only in test: \['other'\]\)"),
    (_corrupt_image_tree, "cannot read image"),
    (_batches_missing_one, "lacks data_batch_3"),
    (_batches_wrong_shape, r"expected uint8 \(N, 3072\)"),
])
def test_bad_data_gives_one_clear_error(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        ds = dataset.load_dataset(make(tmp_path / "data"))
        ds.train.read(), ds.test.read()      # images are decoded only when read


def test_an_unreadable_file_is_named_when_stage_one_sizes_the_images(tmp_path):
    # stage one reads every file's header to choose the one size it decodes at, before any row
    ds = dataset.load_dataset(_corrupt_image_tree(tmp_path / "data"))
    with pytest.raises(UserError, match=r"cannot read image .*c2/0002\.png: "):
        ds.shape_for(32)


class _RunsCode:
    """What a hostile pickle holds: unpickling it calls os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return os.system, (self.command,)


def test_a_batch_whose_pickle_runs_code_is_refused_without_running_it(batches_dir, tmp_path, capsys):
    import pickle
    from conftest import assert_one_error, run_cli
    ran = tmp_path / "ran"
    with open(batches_dir / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _RunsCode(f"touch {ran}"), b"labels": [0]}, f)
    with pytest.raises(UserError, match=r"data_batch_1: its pickle calls (posix|os)\.system, which a CIFAR-10 batch"):
        dataset.load_dataset(batches_dir)
    code, _, err = run_cli(capsys, "features", "--data", batches_dir, "--weights", "none", "--size", "75",
                           "--cache-dir", tmp_path / "cache")
    assert_one_error(code, err, "refusing to load")
    assert not ran.exists()


@pytest.mark.parametrize("protocol, numpy_1", [(2, False), (2, True), (5, False)])
def test_batches_load_whichever_python_and_numpy_pickled_them(batches_dir, protocol, numpy_1):
    """Protocol 2 writes Python 3 bytes through _codecs.encode; numpy 1.x (and the original Python 2
    batches) name numpy.core.multiarray, numpy 2 numpy._core.multiarray."""
    import pickle
    for name in ("test_batch", "batches.meta"):
        with open(batches_dir / name, "rb") as f:
            raw = pickle.dumps(pickle.load(f), protocol=protocol)
        if numpy_1:
            raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (batches_dir / name).write_bytes(raw)
    ds = dataset.load_dataset(batches_dir)
    train_x, train_y, test_x, test_y = synthetic_cifar()
    np.testing.assert_array_equal(ds.test_x, test_x)
    np.testing.assert_array_equal(ds.test_y, test_y)
    assert ds.class_names == cifar.CIFAR10_CLASSES


def test_source_identity_keeps_the_value_of_its_first_formula(tmp_path):
    """The scandir walk gives the hash the rglob one gave (caches keyed by it stay valid): same
    order where a name sorts between a folder and its files ("a-b" vs "a/x"), hidden and
    symlinked files counted, symlinked folders not entered."""
    import hashlib
    import os

    def rglob_formula(path):
        files = sorted(p for p in path.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    root = tmp_path / "src"
    for rel, text in [("a/x", "1"), ("a-b", "22"), ("a/b/.hidden", "333"), ("B/y.jpg", ""), ("z", "4")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    os.symlink(root / "a", root / "linked-dir")
    os.symlink(root / "z", root / "linked-file")
    os.symlink(root / "gone", root / "broken")
    assert dataset.source_identity(root) == rglob_formula(root)
    assert dataset.source_identity(root / "z") != dataset.source_identity(root / "a-b")   # a single file: its own
