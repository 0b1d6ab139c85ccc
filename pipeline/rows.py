"""From a cached row back to its image: every row of a features file carries `index`, its place in
the source's train or test set, so any number the later views show leads to the picture it came from."""
from __future__ import annotations

import numpy as np

from pipeline import data
from pipeline.errors import UserError


def images(attrs: dict, split: str, index, data_path=None) -> tuple[np.ndarray, list[str | None]]:
    """The source images of rows `index` (source indices) of `split`, and their file paths (None
    where the source has none). `data_path` overrides the source stored in the file."""
    source = data.source_of(attrs, data_path)
    x, paths = data.load_rows(source, data.SOURCE_PART[split], index)
    want = tuple(attrs.get("image_shape") or x.shape[1:])
    if len(x) and tuple(x.shape[1:]) != want:
        raise UserError(f"the images at {source} are {x.shape[1:]}, but the features file was made from "
                        f"{want} images; pass --data PATH to the original source")
    return x, paths


def images_of(attrs: dict, items, data_path=None) -> list[np.ndarray]:
    """The images of (split, source index) pairs, in order, reading each part of the source once."""
    items = list(items)
    out = [None] * len(items)
    for split in dict.fromkeys(s for s, _ in items):
        at = [i for i, (s, _) in enumerate(items) if s == split]
        x, _ = images(attrs, split, [items[i][1] for i in at], data_path)
        for i, img in zip(at, x):
            out[i] = img
    return out


def paths(attrs: dict, split: str, index, data_path=None) -> list[str | None]:
    """File paths of rows `index` without decoding them (all None for a source without files)."""
    files = data.row_files(data.source_of(attrs, data_path), data.SOURCE_PART[split], index)
    return [str(f) for f in files] if files is not None else [None] * len(np.asarray(index).reshape(-1))


def unreadable(exc: Exception) -> str:
    """Why images could not be shown, for a note where a picture would have been."""
    from pipeline.errors import first_line
    return f"images not drawn: {first_line(exc)}"
