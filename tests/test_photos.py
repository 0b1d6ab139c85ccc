"""A user's own photos, start to finish (issue 21): a folder of class folders with no split, any size
and EXIF orientation, through every stage; the train/val/test folder layout; the offline front door."""
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import (PHOTO_CLASSES, STORED_AS, assert_one_error, run_cli, save_oriented, synthetic_cifar,
                      write_image_tree)
from pipeline.foundation.errors import UserError
from pipeline.sources import dataset, decode, partition


def source_of(features) -> str:
    from pipeline.store import read_rows
    return read_rows(features, splits=()).attrs["source"]


def split_files(root, **kwargs) -> dict[str, set[str]]:
    """{split: the relative paths of its files}, as stage one splits `root`."""
    ds = dataset.load_dataset(root)
    splits = partition.make_splits(ds, kwargs.get("val_fraction", 0.1), kwargs.get("seed", 0),
                                   kwargs.get("test_fraction"))
    return {k: {str(p).removeprefix(f"{root}/") for p in v.images.paths} for k, v in splits.items()}


# ---------------------------------------------------------------- a folder of class folders is a dataset

def test_a_folder_of_class_folders_splits_by_a_hash_of_each_path_and_adding_images_moves_none(photo_folder, tmp_path):
    root = shutil.copytree(photo_folder, tmp_path / "photos")
    before = split_files(root)
    every = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    assert sorted(sum((sorted(v) for v in before.values()), [])) == every      # each file in exactly one split
    assert all(before[k] for k in ("train", "val", "test"))
    for c in PHOTO_CLASSES:                                                    # every class trains
        assert any(p.startswith(f"{c}/") for p in before["train"])
    for c in PHOTO_CLASSES:                                                    # more photos arrive
        for i in range(10, 30):
            shutil.copy(root / c / "0000.jpg", root / c / f"new-{i}.jpg")
    after = split_files(root)
    for k in before:
        assert before[k] <= after[k], k
    assert split_files(root, seed=1) != before                                # the seed is the rule's
    bigger = split_files(root, test_fraction=0.5)
    assert len(bigger["test"]) > len(after["test"]) and after["test"] <= bigger["test"]


def test_the_hash_split_holds_its_fractions_per_class():
    """Stratified in expectation: over 4,000 paths of 4 classes each class's shares are within 3 points."""
    u = np.asarray([[partition.hash_unit(0, f"c{c}/{i:05d}.jpg") for i in range(1000)] for c in range(4)])
    assert np.all(np.abs((u < 0.2).mean(1) - 0.2) < 0.03)
    assert np.all(np.abs(((u >= 0.2) & ((u - 0.2) / 0.8 < 0.1)).mean(1) - 0.08) < 0.03)


def test_photos_features_record_the_split_and_orientation_and_info_shows_them(photo_features, capsys):
    code, out, _ = run_cli(capsys, "info", photo_features)
    assert code == 0
    shown = dict(line.split(":", 1) for line in out if ":" in line)
    assert "hash of each file's path" in shown["split"]
    assert shown["test_fraction"].strip() == "0.2" and shown["orientation"].strip() == "exif"
    assert shown["image_shape"].strip() == "[32, 32, 3]"          # mixed sizes: the network's input square


def test_stage_one_names_what_it_does_not_use(photo_folder, tiny_backbone, tmp_path, capsys):
    root = shutil.copytree(photo_folder, tmp_path / "photos")
    (root / "cat" / "thumbs.db").write_bytes(b"x")
    (root / "cat" / "older").mkdir()
    code, out, err = run_cli(capsys, "features", "--data", root, "--backbone", tiny_backbone,
                             "--cache-dir", tmp_path / "cache")
    assert code == 0
    [line] = [line for line in out + err if line.startswith("not used")]
    assert "3 entries" in line and "notes.txt" in line and "cat/thumbs.db" in line and "cat/older/" in line


def test_test_fraction_is_refused_where_the_data_has_its_own_test_set(tmp_path, capsys):
    root = write_image_tree(tmp_path / "tree", *synthetic_cifar(10, 10), [f"c{i}" for i in range(10)])
    code, _, err = run_cli(capsys, "features", "--data", root, "--test-fraction", "0.3", "--weights", "none",
                           "--cache-dir", tmp_path / "cache")
    assert_one_error(code, err, "--test-fraction applies to a folder of class folders")


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_a_val_folder_beside_train_and_test_is_the_val_split(tmp_path, val_name):
    train_x, train_y, test_x, test_y = synthetic_cifar(20, 10)
    classes = [f"c{i}" for i in range(10)]
    root = write_image_tree(tmp_path / "tree", train_x, train_y, test_x, test_y, classes)
    write_image_tree(tmp_path / "v", test_x, test_y, test_x[:0], test_y[:0], classes)
    shutil.move(tmp_path / "v" / "train", root / val_name)
    (root / "extra").mkdir()
    ds = dataset.load_dataset(root)
    splits = partition.make_splits(ds, 0.1, 0)
    assert {str(p).split("/")[-3] for p in splits["val"].images.paths} == {val_name}
    assert len(splits["val"]) == 10 and len(splits["train"]) == 20 and len(splits["test"]) == 10
    assert ds.notes and "extra/" in ds.notes[0] and len(ds.notes) == 1


# ---------------------------------------------------------------- EXIF orientation, one decode everywhere

@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_each_exif_orientation_is_turned_upright(tmp_path, orientation):
    upright = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8))
    path = save_oriented(upright, tmp_path / f"o{orientation}.png", orientation)
    got = decode.read_image(path)
    np.testing.assert_array_equal(got, np.asarray(upright))
    assert decode.shown_size(path) == (6, 10)
    np.testing.assert_array_equal(decode.read_image(path, size=(3, 5)), np.asarray(upright.resize((5, 3), Image.BILINEAR)))


def test_predict_gives_a_photo_and_its_exif_rotated_copy_the_same_answer(photo_features, tmp_path, capsys):
    cache = photo_features.parent.parent
    assert run_cli(capsys, "head", "--features", photo_features, "--cache-dir", cache, "--epochs", "3")[0] == 0
    photo = source_of(photo_features) + "/cat/0003.jpg"             # stored sideways: EXIF orientation 6
    with Image.open(photo) as img:
        save_oriented(img.convert("RGB"), tmp_path / "turned.jpg", 6, quality=100)
    shutil.copy(photo, tmp_path / "as-is.jpg")
    code, out, err = run_cli(capsys, "predict", tmp_path / "as-is.jpg", tmp_path / "turned.jpg", "--cache-dir", cache,
                             "--out", tmp_path / "p.csv")
    assert code == 0, err
    rows = [line.split(",") for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    assert rows[0][1] == rows[1][1]
    np.testing.assert_allclose(float(rows[0][2]), float(rows[1][2]), atol=0.02)   # JPEG re-encoding: close


# ---------------------------------------------------------------- any size in every stage

def test_stage_three_reads_the_photos_a_batch_at_a_time(photo_features, monkeypatch):
    """End-to-end mode's feed: batches of one size, each image as stage one decoded it, and never more
    files decoded at once than a batch holds (the whole folder is never one array)."""
    from pipeline.finetune.feeds import image_dataset
    from pipeline.sources import images, rows
    from pipeline.store import read_rows
    attrs = read_rows(photo_features, splits=()).attrs
    train = rows.load_splits(attrs, None)["train"]
    asked = []
    real = images.read_images
    monkeypatch.setattr(images, "read_images", lambda files, *a: asked.append(len(files)) or real(files, *a))
    got = np.concatenate([x for x, _ in image_dataset(train, 4, shuffle=False, augment=True, seed=0)])
    assert got.shape == (len(train), 32, 32, 3) and max(asked) <= 4
    plain = np.concatenate([x for x, _ in image_dataset(train, 4, shuffle=False, augment=False, seed=0)])
    np.testing.assert_array_equal(plain, train.read())
    mirrored = np.concatenate([x for x, _ in image_dataset(train, 4, False, False, 0, mirrored=True)])
    np.testing.assert_array_equal(mirrored, plain[:, :, ::-1])      # the test-time view


@pytest.mark.slow
def test_finetune_takes_mixed_sizes_and_a_bad_file_is_named_with_no_run_folder(photo_folder, tiny_backbone, tmp_path,
                                                                               capsys):
    root = shutil.copytree(photo_folder, tmp_path / "photos")
    cache = tmp_path / "cache"
    common = ["--cache-dir", cache]
    assert run_cli(capsys, "features", "--data", root, "--backbone", tiny_backbone, *common)[0] == 0
    assert run_cli(capsys, "head", *common, "--epochs", "2")[0] == 0
    for mode in ("cached", "end-to-end"):
        code, _, err = run_cli(capsys, "finetune", "--mode", mode, "--epochs", "1", *common)
        assert code == 0, err
    assert len(list((cache / "finetune").iterdir())) == 2
    shutil.rmtree(cache / "finetune")
    shutil.rmtree(cache / "activations")
    (root / "ship" / "0004.jpg").write_bytes(b"not a jpeg")     # the source damaged after stage one
    for mode in ("cached", "end-to-end"):
        code, _, err = run_cli(capsys, "finetune", "--mode", mode, "--epochs", "1", *common)
        assert code == 2 and err[-1].startswith("error: cannot read image") and "ship/0004.jpg" in err[-1], err
        assert not [line for line in err if "Traceback" in line]
        assert not [p for p in (cache / "finetune").glob("*") if p.is_dir()]


def test_audit_map_export_and_neighbors_take_the_photos(photo_features, tmp_path, capsys):
    cache = photo_features.parent.parent
    photo = source_of(photo_features)
    assert run_cli(capsys, "head", "--features", photo_features, "--cache-dir", cache, "--epochs", "3")[0] == 0
    for argv in (["audit"], ["map", "--per-class", "3", "--perplexity", "2", "--projector", tmp_path / "proj"],
                 ["export"], ["neighbors", f"{photo}/cat/0002.jpg"]):
        code, _, err = run_cli(capsys, *argv, "--cache-dir", cache)
        assert code == 0, (argv, err)


# ---------------------------------------------------------------- the offline front door

def test_a_failed_weights_download_names_the_offline_ways_and_leaves_no_partial(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure")
    monkeypatch.setattr("keras.src.applications.inception_v3.file_utils.get_file", offline)
    root = write_image_tree(tmp_path / "tree", *synthetic_cifar(30, 10), [f"c{i}" for i in range(10)])
    code, _, err = run_cli(capsys, "features", "--data", root, "--backbone", "inception_v3", "--size", "75",
                           "--cache-dir", tmp_path / "cache")
    assert_one_error(code, err, "could not download")
    for way in ("--backbone FILE.keras", "--data FOLDER", "--weights PATH|none"):
        assert way in err[0]
    assert not list((tmp_path / "cache").rglob("*.partial"))


def test_a_failed_cifar_download_names_the_offline_ways(monkeypatch):
    import keras

    def offline():
        raise OSError("no route to host")
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(UserError) as caught:
        dataset.load_dataset(None)
    assert "--backbone FILE.keras" in str(caught.value) and "--data FOLDER" in str(caught.value)


def test_a_batch_of_an_older_files_mixed_sizes_names_the_odd_file(photo_folder):
    """Files made before per-file resizing decode each image at its own size: stage three then names a
    file whose size differs and says how to get one that takes any size."""
    from pipeline.sources.images import Decoding
    train = dataset.load_dataset(photo_folder, decoding=Decoding(exif=False)).train
    with pytest.raises(UserError, match=r"image .*airplane/0001.jpg is 128x96, another 32x32.*rerun `features`"):
        train.batch(np.arange(3))
