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
