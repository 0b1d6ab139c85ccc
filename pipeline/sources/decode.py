"""Image files to uint8 RGB arrays, the one way every command decodes a file (stage one, stage three,
predict, neighbors, audit, map, export, the galleries): EXIF orientation applied, any mode or bit depth
read as 8-bit RGB, and, when a size is asked for, resized there (PIL bilinear), one image at a time."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps

from pipeline.foundation.errors import UserError, first_line


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}   # stage one and predict
ORIENTATION_TAG = 0x0112       # EXIF: how the stored pixels must turn to stand upright (1-8)
TURNED = (5, 6, 7, 8)          # orientations that swap width and height


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


def orientation(img) -> int:
    """The EXIF orientation of an open image (1, upright, when it has none)."""
    try:
        return int(img.getexif().get(ORIENTATION_TAG, 1))
    except Exception:       # a damaged EXIF block: the pixels as stored
        return 1


def upright(img, exif: bool, size: tuple[int, int] | None = None):
    """An open PIL image as 8-bit RGB standing as EXIF says (`exif`), at `size` (H, W) if given. A
    JPEG asked for a smaller size is decoded at 1/2, 1/4 or 1/8 scale first (never below `size`):
    a 12-megapixel photo then decodes about 10x faster, and every command decodes it the same way."""
    turn = orientation(img) if exif else 1
    if size is not None and img.format == "JPEG":
        h, w = size
        img.draft("RGB", (h, w) if turn in TURNED else (w, h))
    if turn != 1:
        img = ImageOps.exif_transpose(img)
    img = rgb8(img)
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return img


def shown_size(path) -> tuple[int, int]:
    """(H, W) of an image file as it stands upright, from its header (nothing decoded); a UserError
    naming the file when it cannot be read, as read_image's."""
    path = str(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            return (w, h) if orientation(img) in TURNED else (h, w)
    except Exception as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc)}") from None


def read_image(path, size: tuple[int, int] | None = None, exif: bool = True) -> np.ndarray:
    """uint8 (H, W, 3), upright (`exif`), at `size` (None: its own); a UserError naming the file
    when it cannot be read."""
    path = str(path)     # not np.str_, which PIL's messages would print as np.str_('...')
    try:
        with Image.open(path) as img:
            return np.asarray(upright(img, exif, size), dtype=np.uint8)
    except Exception as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc)}") from None


def read_images(files, size: tuple[int, int] | None = None, exif: bool = True) -> list[np.ndarray]:
    # PIL releases the GIL while decoding, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2, max(1, len(files)))) as pool:
        return list(pool.map(lambda f: read_image(f, size, exif), files))
