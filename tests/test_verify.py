"""`python -m pipeline verify FILE`: a fresh features file passes; an altered stored row, a replaced
source image and a different backbone file are each caught with one `error:` line."""
import shutil

import h5py
import numpy as np
import pytest

from conftest import CIFAR_JPG, PRETRAINED, copy_cifar, require_pretrained
from pipeline.extract import verify
from pipeline.cli import main

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_sample_is_seeded_and_spread_over_the_splits():
    sizes = {"train": 900, "val": 100, "test": 1000}
    picked = verify.sample_rows(sizes, 200, seed=0)
    assert {s: len(r) for s, r in picked.items()} == {"train": 90, "val": 10, "test": 100}
    assert all(len(set(r)) == len(r) and r.max() < sizes[s] for s, r in picked.items())
    assert all(np.array_equal(picked[s], verify.sample_rows(sizes, 200, seed=0)[s]) for s in sizes)
    assert not np.array_equal(picked["test"], verify.sample_rows(sizes, 200, seed=1)["test"])
    assert {s: len(r) for s, r in verify.sample_rows({"train": 5, "val": 1, "test": 4}, 100, 0).items()} == \
        {"train": 5, "val": 1, "test": 4}                 # a sample larger than the file: every row


def test_differences_name_what_changed():
    text = verify.differences({"tensorflow": "2.20.0", "cpu": "A"}, {"tensorflow": "2.21.0", "cpu": "A"})
    assert text == "tensorflow 2.20.0 -> 2.21.0"
    assert "same" in verify.differences({"cpu": "A"}, {"cpu": "A"})


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(features file, its source): 2 train and 2 test real images per class, the shared
    EfficientNet-Lite0, float32."""
    require_pretrained()
    from pipeline.extract.features import FeatureSettings, run_features
    tmp = tmp_path_factory.mktemp("verify")
    copy_cifar(tmp / "src", 2, 2, CLASSES)
    path = run_features(FeatureSettings(data=str(tmp / "src"), backbone=str(PRETRAINED), precision="float32",
                                        cache_dir=str(tmp / "cache")), log=lambda *a: None)
    return path, tmp / "src"


def _verify(capsys, path, *extra):
    capsys.readouterr()
    code = main(["verify", str(path), "--backbone", str(PRETRAINED), "--sample", "1000", *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_a_fresh_file_passes(made, capsys):
    code, out, err = _verify(capsys, made[0])
    assert code == 0 and "40 rows re-embedded" in out and out.rstrip().endswith("what the backbone gives today")


@pytest.mark.slow
def test_an_altered_row_is_named(made, tmp_path, capsys):
    copy = shutil.copy(made[0], tmp_path / "altered.h5")
    with h5py.File(copy, "r+") as f:
        f["test/features"][3] = f["test/features"][4]     # row 3 now holds another image's features
    code, _, err = _verify(capsys, copy)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "test row 3 " in err and "recorded vs today: same library versions" in err


@pytest.mark.slow
def test_a_replaced_source_image_is_named(made, tmp_path, capsys):
    source = shutil.copytree(made[1], tmp_path / "src")
    shutil.copy(CIFAR_JPG / "test" / "ship" / "0005.jpg", source / "test" / "bird" / "0001.jpg")
    code, _, err = _verify(capsys, made[0], "--data", str(source))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "source index 5 " in err and "bird/0001.jpg" in err         # bird is the 3rd class: 2 + 2 + 1


@pytest.mark.slow
def test_a_different_backbone_file_is_refused(made, tmp_path, capsys):
    other = shutil.copy(PRETRAINED, tmp_path / "other.keras")
    with open(other, "ab") as f:
        f.write(b"another file")                     # still loads; a different file by its sha256
    capsys.readouterr()
    assert main(["verify", str(made[0]), "--backbone", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not the one the features were made with" in err


def test_swapped_labels_are_named(tiny_backbone_features, tmp_path, capsys):
    """Issue 22.13: two test rows' labels swapped passed verify (it compared rows, not labels)."""
    copy = shutil.copy(tiny_backbone_features, tmp_path / "swapped.h5")
    with h5py.File(copy, "r+") as f:
        labels = f["test/labels"][...]
        other = int(np.flatnonzero(labels != labels[0])[0])
        labels[[0, other]] = labels[[other, 0]]
        f["test/labels"][...] = labels
    capsys.readouterr()
    code = main(["verify", str(copy), "--sample", "1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "test row 0 " in err[0] and "labels changed" in err[0], err
