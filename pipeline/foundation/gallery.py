"""Pictures of images: a captioned grid (mistakes, neighbours, duplicate pairs) and the Embedding
Projector's sprite. Every file is written under a temporary name and renamed when complete."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.foundation.outputs import atomic_file


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


SPRITE_MAX = 8192      # the Embedding Projector reads sprites up to 8192 x 8192 pixels


def sprite_geometry(n: int) -> int:
    """Cells per side of the Embedding Projector's square sprite for n thumbnails."""
    return max(1, math.ceil(math.sqrt(n)))


def sprite_cell(images) -> tuple[int, int]:
    """(height, width) of one sprite cell: the largest image's, scaled down to fit the sprite's limit."""
    h, w = max(img.shape[0] for img in images), max(img.shape[1] for img in images)
    scale = min(1.0, SPRITE_MAX / (sprite_geometry(len(images)) * max(h, w)))
    return max(1, int(h * scale)), max(1, int(w * scale))


def save_sprite(path: Path, images) -> tuple[int, int]:
    """The Embedding Projector's sprite: thumbnails row-major in a square grid, row i of the
    tensors file being cell i (the projector's own layout). Images of any mix of sizes: each is
    fitted into the cell (aspect ratio kept, white around it). Returns the cell's (height, width)."""
    h, w = sprite_cell(images)
    side = sprite_geometry(len(images))
    sheet = np.full((side * h, side * w, 3), 255, np.uint8)
    for i, img in enumerate(images):
        if img.shape[:2] != (h, w):
            img = np.asarray(ImageOps.pad(Image.fromarray(img), (w, h), color="white"))
        r, c = divmod(i, side)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    with atomic_file(path) as tmp:
        Image.fromarray(sheet).save(tmp)
    return h, w
