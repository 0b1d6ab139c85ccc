"""Pictures of images: a captioned grid (mistakes, neighbours, duplicate pairs) and the Embedding
Projector's sprite. Every file is written under a temporary name and renamed when complete."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.outputs import atomic_file


def save_grid(path: Path, images, captions, columns: int = 8, title: str | None = None,
              colors=None) -> Path:
    """One cell per image with its caption above it (small CIFAR images are shown enlarged, with
    nearest-neighbour pixels so nothing is invented). `colors`: a caption colour per cell."""
    import matplotlib
    matplotlib.use("Agg")            # files only; no display on servers or in CI
    import matplotlib.pyplot as plt
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.75 * rows + (0.3 if title else 0.1)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(captions[i], fontsize=6, color=(colors[i] if colors else "black"))
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.8)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def sprite_geometry(n: int) -> int:
    """Cells per side of the Embedding Projector's square sprite for n thumbnails."""
    return max(1, math.ceil(math.sqrt(n)))


def save_sprite(path: Path, images: np.ndarray) -> Path:
    """The Embedding Projector's sprite: thumbnails row-major in a square grid, row i of the
    tensors file being cell i (the projector's own layout)."""
    from PIL import Image
    n, h, w = images.shape[:3]
    side = sprite_geometry(n)
    sheet = np.full((side * h, side * w, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, side)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    with atomic_file(path) as tmp:
        Image.fromarray(sheet).save(tmp)
    return path
