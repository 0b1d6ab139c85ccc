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


# ---------------------------------------------------------------- views for fine-tuning's cache

VIEW_SEED = 0
MAX_SHIFT_PX = 2     # as end-to-end mode's on-the-fly translation (pipeline.finetune.image_dataset)


def translate(image: np.ndarray, dy: int, dx: int, pad: int = MAX_SHIFT_PX) -> np.ndarray:
    """(H, W, C) image moved by (dy, dx) pixels, the uncovered border reflected (as end-to-end
    mode's reflect-pad and crop)."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return padded[pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def cached_view(images: np.ndarray, ids: np.ndarray, v: int) -> np.ndarray:
    """View `v` of each image for the fine-tuning cache: 0 as is, 1 mirrored, 2.. a random flip and
    a translation of up to MAX_SHIFT_PX, drawn from (VIEW_SEED, image id, v): the same view
    whatever the batch, so a resumed cache build computes what an uninterrupted one would have."""
    if v == 0:
        return images
    if v == 1:
        return mirror(images)
    out = []
    for img, i in zip(images, ids):
        rng = np.random.default_rng([VIEW_SEED, int(i), v])
        dy, dx = rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, size=2)
        out.append(translate(img[:, ::-1] if rng.integers(2) else img, int(dy), int(dx)))
    return np.stack(out)
