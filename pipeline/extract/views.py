"""Flip views: an image and its horizontal mirror, the one augmentation a feature cache can hold.

A features file made with `--views 2` stores each image's embedding and its mirror's
(pipeline.store, `features_mirrored`). Heads train on every view as its own row, with the image's
label, and are evaluated on the mean of the views' probabilities (test-time augmentation), so a
1-view file behaves exactly as before. `predict --tta` does the same with images.
"""
from __future__ import annotations

import numpy as np

VIEWS = (1, 2)


def mirror(images):
    """Images flipped left-right: an (N, H, W, C) array, or a list of (H, W, C) images of any sizes
    (as stage one streams image folders of mixed sizes)."""
    if isinstance(images, np.ndarray):
        return images[:, :, ::-1]
    return [img[:, ::-1] for img in images]


def image_views(images, views: int) -> list:
    return [images] if views == 1 else [images, mirror(images)]


def training_rows(split) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) with one row per stored view of each image of a pipeline.store.RowSplit."""
    views = split.views
    x = views[0] if len(views) == 1 else np.concatenate(views)
    return x, np.tile(split.labels, len(views))


def per_view(predict, views: list[np.ndarray]) -> np.ndarray:
    """(V, N, K): predict((N, ...)) -> (N, K) probabilities, for each view."""
    return np.stack([np.asarray(predict(v), dtype=np.float64) for v in views])
