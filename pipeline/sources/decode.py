"""Image files to uint8 RGB arrays: any size, mode or bit depth read as 8-bit RGB (stage one, predict,
the views of rows)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.foundation.errors import UserError, first_line


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}   # stage one and predict


def rgb8(img):
    """A PIL image as 8-bit RGB, the way stage one and predict both read files. Grayscale, palette,
    CMYK and RGBA (alpha dropped, as torchvision's ImageFolder does) convert; PIL's convert("RGB")
    would clip 16-bit pixels (all white) and truncate float ones (all black), so 16-bit images are
    scaled down, and images whose range is not fixed (32-bit integer or float) are refused rather
    than guessed."""
    if img.mode.startswith("I;16"):
        pixels = (np.asarray(img, dtype=np.uint32) * 255 + 32767) // 65535
        img = Image.fromarray(pixels.astype(np.uint8))
    elif img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise ValueError(f"a {kind} image has no fixed pixel range; save it as 8-bit (or 16-bit) RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def read_image(path: Path) -> np.ndarray:
    path = str(path)     # not np.str_, which PIL's messages would print as np.str_('...')
    try:
        with Image.open(path) as img:
            return np.asarray(rgb8(img), dtype=np.uint8)
    except Exception as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc)}") from None


def read_images(files) -> list[np.ndarray]:
    # PIL releases the GIL while decoding, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2, max(1, len(files)))) as pool:
        return list(pool.map(read_image, files))
