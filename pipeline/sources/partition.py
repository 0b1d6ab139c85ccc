"""The fixed split: a balanced subset for --limit, and a seeded, stratified val carved from train
(test is never touched)."""
from __future__ import annotations

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.sources.images import Dataset, Split


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


def make_splits(ds: Dataset, val_fraction: float, seed: int) -> dict[str, Split]:
    """train/val/test: a seeded, stratified `val_fraction` of the train set becomes val.
    Test is never touched. Each split's ``index`` points into the full source set."""
    k = len(ds.class_names)
    rng = np.random.default_rng(seed)
    val = []
    for c in range(k):
        members = np.flatnonzero(ds.train_y == c)
        n_val = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)   # keep both sides non-empty
        else:
            n_val = 0
        val.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val))
    train = np.setdiff1d(np.arange(len(ds.train_y)), val)
    splits = {"train": ds.train.select(train), "val": ds.train.select(val), "test": ds.test}
    for name, s in splits.items():
        if len(s.y) == 0:
            raise UserError(f"the {name} split is empty; raise --limit or --val-fraction")
    return splits
