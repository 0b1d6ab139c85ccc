"""Cached augmentation for stage three: the views of each train image that the activation cache holds."""
from __future__ import annotations

import numpy as np

from pipeline.extract.views import mirror

VIEW_SEED = 0
MAX_SHIFT_PX = 2     # also end-to-end mode's on-the-fly translation (feeds.image_dataset): one value for both modes


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
