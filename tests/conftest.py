"""Shared test fixtures: paths to the real data in ../shared, and stage-one files built once per session."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR_JPG = SHARED / "data" / "cifar10-jpg"
PRETRAINED = SHARED / "models" / "efficientnet_lite0_imagenet.keras"
# ../shared/models/README.md: with >= 100 training images per class, logistic regression reaches
# >= 0.65 test accuracy and a dense head >= 0.55 on this backbone's features; random features stay far below.
REAL_LIMIT = 1120            # 112 per class -> 101 train + 11 val per class, 112 test per class
LOGREG_FLOOR, DENSE_FLOOR = 0.65, 0.55


def require_real_images():
    if not CIFAR_JPG.is_dir():
        pytest.skip(f"real CIFAR-10 JPEGs not found at {CIFAR_JPG} (see ../shared/data/README.md)")


def require_pretrained():
    require_real_images()
    if not PRETRAINED.is_file():
        pytest.skip(f"pretrained backbone not found at {PRETRAINED} (see ../shared/models/README.md)")


@pytest.fixture(scope="session")
def real_features(tmp_path_factory) -> Path:
    """Stage one with the real ImageNet-pretrained backbone on a balanced subset of real CIFAR-10."""
    require_pretrained()
    from pipeline.features import FeatureSettings, run_features
    cache = tmp_path_factory.mktemp("real-cache")
    return run_features(FeatureSettings(data=str(CIFAR_JPG), backbone=str(PRETRAINED), limit=REAL_LIMIT,
                                        cache_dir=str(cache)), log=lambda *a: None)


@pytest.fixture(scope="session")
def tiny_inception_features(tmp_path_factory) -> Path:
    """Stage one with a random-weight InceptionV3 at 75x75 on 60 real images (fast; for plumbing tests)."""
    require_real_images()
    from pipeline.features import FeatureSettings, run_features
    cache = tmp_path_factory.mktemp("tiny-cache")
    return run_features(FeatureSettings(data=str(CIFAR_JPG), weights="none", size=75, limit=40,
                                        precision="float32", cache_dir=str(cache)), log=lambda *a: None)


# ---------------------------------------------------------------- synthetic datasets in each format

def synthetic_cifar(n_train=50, n_test=20, seed=0):
    """Random 32x32 RGB images with labels cycling 0..9 (every class present in every batch)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    train_x = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    test_x = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    return train_x, np.arange(n_train) % 10, test_x, np.arange(n_test) % 10


def write_batches(folder: Path, train_x, train_y, test_x, test_y) -> Path:
    """The cifar-10-batches-py layout: pickled dicts, b"data" uint8 (N, 3072) channel-major."""
    import pickle
    import numpy as np
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name, x, y):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": [int(v) for v in y], b"batch_label": name.encode()}, f)
    for i, part in enumerate(np.array_split(np.arange(len(train_x)), 5)):
        dump(f"data_batch_{i + 1}", train_x[part], train_y[part])
    dump("test_batch", test_x, test_y)
    with open(folder / "batches.meta", "wb") as f:
        from pipeline.data import CIFAR10_CLASSES
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)
    return folder


def write_image_tree(root: Path, train_x, train_y, test_x, test_y, classes) -> Path:
    """train/<class>/NNNN.png and test/<class>/NNNN.png (PNG: lossless, so pixels round-trip)."""
    from PIL import Image
    for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            d = root / split / classes[y]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(d / f"{i:04d}.png")
    return root


@pytest.fixture
def batches_dir(tmp_path) -> Path:
    return write_batches(tmp_path / "cifar-10-batches-py", *synthetic_cifar())


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """(features path, data root, FeatureSet): real images with exact train copies planted in test
    (tests/looking_helpers.py), for the looking-at-results tests."""
    import looking_helpers
    from pipeline.store import read_features
    path, root = looking_helpers.build(tmp_path_factory.mktemp("planted"))
    return path, root, read_features(path)


# ---------------------------------------------------------------- a tiny backbone (fast stage-one runs)

def save_tiny_backbone(path: Path, size: int = 32) -> Path:
    """A small conv net saved as a .keras backbone file to the --backbone contract (RGB 0-255 pixels
    in, a 32-wide feature vector out; blocks named like EfficientNet's, so stage three can cut it):
    the fast path folds its BatchNorm like InceptionV3's, and stage one, heads, fine-tuning and
    exports of a whole backbone take seconds instead of minutes."""
    import keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="pixels_0_255")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="tiny_preprocess")(inputs)
    for i, (filters, stride) in enumerate(((8, 2), (16, 2), (32, 1))):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    keras.Model(inputs, outputs, name="tiny_backbone").save(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-backbone") / "tiny.keras")


@pytest.fixture(scope="session")
def tiny_backbone_features(tiny_backbone, tmp_path_factory) -> Path:
    """Stage one with the tiny backbone file on 80 real images (train 30, val 10, test 40)."""
    require_real_images()
    from pipeline.features import FeatureSettings, run_features
    return run_features(FeatureSettings(data=str(CIFAR_JPG), backbone=str(tiny_backbone), limit=40,
                                        cache_dir=str(tmp_path_factory.mktemp("tiny-backbone-cache"))),
                        log=lambda *a: None)
