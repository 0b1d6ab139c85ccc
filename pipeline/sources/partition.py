"""The fixed split: a balanced subset for --limit, then train/val/test by the source's layout
(SPLIT_RULES): a seeded, stratified val carved from train (test is never touched); a val folder as it
is; or, for a folder of class folders, each file's split from a seeded hash of its relative path."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.sources.images import Dataset, Split

DEFAULT_TEST_FRACTION = 0.2
# What the features file records as its "split" (none for "train+test": files made before the other
# layouts existed keep their identity).
SPLIT_RULES = {"train+test": "val carved from train (seeded, stratified); test as given",
               "train+val+test": "the folders as given",
               "class folders": "by a seeded hash of each file's path (stratified; adding files moves none)"}


def subset(images, y, n_classes, limit) -> Split:
    keep = balanced_subset(y, n_classes, limit)
    return Split(y[keep], keep.astype(np.int64), images.select(keep))


def balanced_subset(labels: np.ndarray, n_classes: int, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` images, as even across classes as possible: the first ones of
    each class in source order, so the choice is deterministic and needs no seed."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    per_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    quota = [limit // n_classes + (1 if c < limit % n_classes else 0) for c in range(n_classes)]
    return np.sort(np.concatenate([idx[:q] for idx, q in zip(per_class, quota)]))


def make_splits(ds: Dataset, val_fraction: float, seed: int,
                test_fraction: float | None = None) -> dict[str, Split]:
    """train/val/test, each split's ``index`` pointing into the full source part (val's into train's)."""
    if ds.layout == "class folders":
        splits = _hashed(ds, val_fraction, seed, test_fraction or DEFAULT_TEST_FRACTION)
    elif ds.layout == "train+val+test":
        train = np.setdiff1d(np.arange(len(ds.train.y)), ds.val_rows)
        splits = {"train": ds.train.select(train), "val": ds.train.select(ds.val_rows), "test": ds.test}
    else:
        val = _carved(ds.train.y, len(ds.class_names), val_fraction, seed)
        splits = {"train": ds.train.select(np.setdiff1d(np.arange(len(ds.train.y)), val)),
                  "val": ds.train.select(val), "test": ds.test}
    for name, s in splits.items():
        if len(s.y) == 0:
            raise UserError(f"the {name} split is empty; raise --limit or --val-fraction")
    return splits


def _carved(y: np.ndarray, k: int, val_fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratified `val_fraction` of the train set (both sides of a class non-empty)."""
    rng = np.random.default_rng(seed)
    val = []
    for c in range(k):
        members = np.flatnonzero(y == c)
        n_val = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)   # keep both sides non-empty
        else:
            n_val = 0
        val.append(rng.permutation(members)[:n_val])
    return np.sort(np.concatenate(val))


def hash_unit(seed: int, relative_path: str) -> float:
    """A number in [0, 1) fixed by the seed and the file's path below the data folder alone."""
    digest = hashlib.sha256(f"{seed}:{relative_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _hashed(ds: Dataset, val_fraction: float, seed: int, test_fraction: float) -> dict[str, Split]:
    """Each file on its own: test if its hash falls below `test_fraction`, else val if the rest of
    its range falls below `val_fraction` (val is that share of what is not test, as a carved val is
    of train), else train. No file's split depends on another file, so adding images never moves one;
    the class is in the path, so each class is split in these proportions (in expectation)."""
    root = Path(ds.source)
    u = np.asarray([hash_unit(seed, Path(p).relative_to(root).as_posix()) for p in ds.train.images.paths])
    test = u < test_fraction
    val = ~test & ((u - test_fraction) / (1 - test_fraction) < val_fraction)
    for c, name in enumerate(ds.class_names):
        if not (~test & ~val & (ds.train.y == c)).any():
            raise UserError(f"none of the {int((ds.train.y == c).sum())} images of class {name} falls in the train "
                            "split; add images, or lower --test-fraction and --val-fraction")
    return {"train": ds.train.select(np.flatnonzero(~test & ~val)), "val": ds.train.select(np.flatnonzero(val)),
            "test": ds.test.select(np.flatnonzero(test))}
