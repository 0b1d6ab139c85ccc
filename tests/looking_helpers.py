"""A small real dataset for the looking-at-results tests: real CIFAR-10 JPEGs in an image-folder tree,
with exact copies of some train images planted in test, embedded by the pretrained EfficientNet-Lite0."""
import shutil
from pathlib import Path

from conftest import CIFAR_JPG, PRETRAINED, require_pretrained

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 4
PLANTED = {c: "0001.jpg" for c in CLASSES[:5]}     # train/<c>/0001.jpg copied into test/<c>/


def make_tree(root: Path) -> Path:
    """train: 8 per class, test: 4 per class plus a byte copy of train/<c>/0001.jpg for five classes
    (named zz-copy.jpg so it sorts last in its class folder)."""
    for c in CLASSES:
        for part, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                shutil.copy(CIFAR_JPG / part / c / f"{i:04d}.jpg", root / part / c / f"{i:04d}.jpg")
    for c, name in PLANTED.items():
        shutil.copy(root / "train" / c / name, root / "test" / c / "zz-copy.jpg")
    return root


def planted_pairs(fs):
    """{(test source index, train-set source index)} of the planted copies, from the folder order
    (class by class, sorted names), independent of the code under test."""
    test_start, train_start, pairs = 0, 0, set()
    for c in CLASSES:
        n_test = TEST_PER_CLASS + (c in PLANTED)
        if c in PLANTED:
            pairs.add((test_start + n_test - 1, train_start + int(PLANTED[c][:4])))
        test_start += n_test
        train_start += TRAIN_PER_CLASS
    return pairs


def build(tmp: Path):
    """(features file path, data root). Stage one at the backbone's own 224 px, float32."""
    require_pretrained()
    from pipeline.extract.features import FeatureSettings, run_features
    root = make_tree(tmp / "planted")
    path = run_features(FeatureSettings(data=str(root), backbone=str(PRETRAINED), precision="float32",
                                        cache_dir=str(tmp / "cache")), log=lambda *a: None)
    return path, root
