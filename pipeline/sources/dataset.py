"""Which source, and back again: `load_dataset` opens any supported source, `source_of` finds a
features file's source, `load_rows` reads the images of cached rows.

Accepted sources (``load_dataset``):
- ``None``: ``keras.datasets.cifar10.load_data()`` (downloads once, then Keras's cache);
- a ``cifar-10-batches-py`` folder (data_batch_1..5, test_batch, batches.meta);
- a ``cifar-10-python.tar.gz`` tarball holding that folder (both: sources/cifar.py);
- a folder of class folders ``<class>/*``, or an image-folder tree ``train/<class>/*`` and ``test/<class>/*``
  with an optional ``val/`` or ``validation/`` beside them (JPEG, PNG, BMP, GIF, WebP, TIFF; any size and
  EXIF orientation; grayscale, palette, RGBA and 16-bit files are read as 8-bit RGB; sources/folders.py).

Nothing here decodes a whole image folder at once: a split holds labels, source indices and an
``Images`` reader (sources/images.py), and callers decode bounded batches with ``Split.read(lo, hi)``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.sources import folders
from pipeline.sources.decode import read_images
from pipeline.sources.cifar import load_batches_dir, load_keras, load_tarball
from pipeline.sources.images import Dataset, Decoding, FORMATS_HELP
from pipeline.sources.partition import DEFAULT_TEST_FRACTION, SPLIT_RULES


def load_dataset(path: str | os.PathLike | None, limit: int | None = None, decoding: Decoding = Decoding()) -> Dataset:
    """Load a source; with `limit`, keep at most that many train and test images each
    (``balanced_subset``), decoding only those from an image folder, as `decoding` says."""
    if path is None:
        return load_keras(limit)
    path = Path(path)
    if not path.exists():
        raise UserError(f"data path {path} does not exist; {FORMATS_HELP}")
    path = path.resolve()   # stored as the source: later stages find it from any working directory
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return load_tarball(path, limit)
        raise UserError(f"unknown data format {path.name}; {FORMATS_HELP}")
    if _is_batches(path):
        return load_batches_dir(path, limit)
    if folders.layout(path) is not None:
        return folders.load_image_folders(path, limit).decoded(decoding)
    raise UserError(f"{path} is not a recognised dataset folder; {FORMATS_HELP}")


def _is_batches(path: Path) -> bool:
    return (path / "data_batch_1").exists() or (path / "test_batch").exists()


def image_layout(path) -> str | None:
    """The layout of an image-folder source (folders.py), None for the other sources; nothing listed."""
    if path is None or not Path(path).is_dir() or _is_batches(Path(path)):
        return None
    return folders.layout(Path(path))


def split_identity(path, test_fraction: float | None) -> dict:
    """What a features file made from `path` adds to its identity: for image folders, that files
    are decoded upright (EXIF orientation applied) and, but for the train+test layout (whose files
    keep their old keys), the split rule. Other sources add nothing: their names stay as they were."""
    kind = image_layout(path)
    if test_fraction is not None and kind != folders.CLASS_FOLDERS:
        raise UserError(f"--test-fraction applies to a folder of class folders; {path or 'CIFAR-10'} has its "
                        "own test set")
    if kind is None:
        return {}
    found = {"orientation": "exif"}
    if kind != folders.TRAIN_TEST:
        found["split"] = SPLIT_RULES[kind]
    if kind == folders.CLASS_FOLDERS:
        found["test_fraction"] = test_fraction or DEFAULT_TEST_FRACTION
    return found


def source_identity(path: str | os.PathLike | None) -> str:
    """A cheap fingerprint of the source files (names, sizes, modification times), computed
    without decoding a single image, so an up-to-date cache is found at once. The content
    fingerprint (``fingerprint``) is stored in the file as well."""
    if path is None:
        return "keras.datasets.cifar10"
    path = Path(path)
    if not path.exists():
        raise UserError(f"data path {path} does not exist; {FORMATS_HELP}")
    files = [(path.name, path.stat())] if path.is_file() else _tree_files(path)
    h = hashlib.sha256()
    for name, st in files:
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _tree_files(root: Path, prefix: str = "") -> list[tuple[str, os.stat_result]]:
    """(path relative to `root`, stat) of every file below it, in the order and with the choices
    of `sorted(p for p in root.rglob("*") if p.is_file())`, which this replaces at 3x its speed
    (os.scandir's entries know their kind without a stat each): names sorted within each folder
    is the order of sorted path parts; symlinked folders are not entered, symlinked files count."""
    out = []
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            out += _tree_files(Path(e.path), f"{prefix}{e.name}/")
        elif e.is_file():
            out.append((prefix + e.name, e.stat()))
    return out


# Which part of the source a split's `index` points into: val is carved from train.
SOURCE_PART = {"train": "train", "val": "train", "test": "test"}


def source_of(attrs: dict, data_path=None):
    """The source a features file was made from (`data_path` overrides it), as load_dataset takes it."""
    if data_path is not None:
        return data_path
    if not attrs.get("source"):
        raise UserError("the features file does not record where its images came from; pass --data PATH")
    if attrs["source"] == "keras.datasets.cifar10":
        return None
    if not Path(attrs["source"]).exists():
        raise UserError(f"the images the features file was made from are no longer at {attrs['source']}; pass "
                        "--data PATH to them (a moved copy is recognised by its fingerprint)")
    return attrs["source"]


def load_rows(path, part: str, index, decoding: Decoding = Decoding()) -> tuple[list[np.ndarray], list[str | None]]:
    """The images at `index` of the source's `part` ("train" or "test": val rows live in train),
    decoded as `decoding` says (each at its own size when it gives none), and their file paths (None
    where the source has no files). Only an image folder is read row by row; the other formats are
    loaded whole (CIFAR-10 size: seconds)."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    files = row_files(path, part, index)
    if files is not None:
        return list(read_images(files, decoding.size, decoding.exif)), [str(f) for f in files]
    ds = load_dataset(path)
    x = ds.train_x if part == "train" else ds.test_x
    _check_rows(index, len(x), path, part)
    return list(x[index]), [None] * len(index)


def row_files(path, part: str, index) -> list[Path] | None:
    """The files of an image-folder source at `index` of its `part`, without decoding them; None
    for the other formats, which have no file per image."""
    if image_layout(path) is None:
        return None
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    files, _, _ = folders.part_files(Path(path), part)
    _check_rows(index, len(files), path, part)
    return [files[i] for i in index]


def _check_rows(index, n, path, part):
    if len(index) and (index.min() < 0 or index.max() >= n):
        raise UserError(f"the {part} set of {path} has {n} images, but a row points at image "
                        f"{int(index.max())}; is this the source the features were made from? (--data)")
