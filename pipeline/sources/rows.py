"""From a cached row back to its image: every row of a features file carries `index`, its place in
the source's train or test set, so any number the later views show leads to the picture it came from.

`checked_source` is the one way the looking-at-results commands find that source: the data fingerprint
of the features file is checked against it (stage one's own check, `load_splits`), so another
tree given as --data, or a source changed after stage one, is refused instead of shown."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.foundation import identity, layout, outputs
from pipeline.foundation.errors import UserError, first_line
from pipeline.sources import dataset, digest, partition
from pipeline.sources.decode import read_images
from pipeline.sources.images import Decoding


@dataclass(frozen=True)
class Source:
    path: str | None      # as load_dataset takes it (None: the Keras download)
    key: str              # what the images shown depend on; part of every cached answer's key


def checked_source(attrs: dict, data_path, cache_dir) -> Source:
    """The source of a features file's images (`data_path` overrides the stored one), checked
    against the file's data fingerprint. The check decodes every image, so it is done once per
    state of the source: remembered under CACHE/looking/sources/ by the files' names, sizes and
    modification times (`dataset.source_identity`), which change whenever the source does."""
    path = dataset.source_of(attrs, data_path)
    if not attrs.get("data_fingerprint"):
        raise UserError("the features file records no data fingerprint to check its images against; "
                        "rerun `python -m pipeline features`")
    where = str(Path(path).resolve()) if path is not None else None
    seen = {"data_fingerprint": attrs["data_fingerprint"], "source": where,
            "source_identity": dataset.source_identity(path)}
    key = identity.digest(seen)
    marker = layout.folder(cache_dir, layout.LOOKING_DIR) / layout.CHECKED_SOURCES / f"{key}.json"
    if not marker.is_file():
        load_splits(attrs, path)
        marker.parent.mkdir(parents=True, exist_ok=True)
        outputs.write_json_atomic(marker, seen)
    return Source(path, key)


def source_or_note(attrs: dict, data_path, cache_dir) -> tuple[Source | None, str | None]:
    """checked_source, or (None, why) when the stored source is gone and no --data was given: for
    the views that are still useful without pictures. A source that is there but differs is refused."""
    if data_path is None:
        try:
            dataset.source_of(attrs)
        except UserError as exc:
            return None, unreadable(exc)
    return checked_source(attrs, data_path, cache_dir), None


def images(attrs: dict, split: str, index, data_path=None) -> tuple[list[np.ndarray], list[str | None]]:
    """The source images of rows `index` (source indices) of `split` (each at its own size), and
    their file paths (None where the source has none). `data_path` overrides the stored source."""
    return dataset.load_rows(dataset.source_of(attrs, data_path), dataset.SOURCE_PART[split], index,
                             decoding_of(attrs))


def stream(attrs: dict, split: str, index, data_path=None, batch: int = 256):
    """The images of rows `index` of `split`, one by one in order, decoded `batch` files at a time from
    one listing of the source (a split of photos is never held whole; arrays are in memory already)."""
    files = paths(attrs, split, index, data_path)
    if not files or files[0] is None:
        yield from images(attrs, split, index, data_path)[0]
        return
    decoding = decoding_of(attrs)
    for lo in range(0, len(files), batch):
        yield from read_images(files[lo:lo + batch], decoding.size, decoding.exif)


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
    files = dataset.row_files(dataset.source_of(attrs, data_path), dataset.SOURCE_PART[split], index)
    return [str(f) for f in files] if files is not None else [None] * len(np.asarray(index).reshape(-1))


def unreadable(exc: Exception) -> str:
    """Why images could not be shown, for a note where a picture would have been."""
    return f"images not drawn: {first_line(exc)}"


def decoding_of(attrs: dict) -> Decoding:
    """How a features file's image files are decoded. Files that record `orientation: exif` (image
    folders since EXIF orientation is applied) turn each image upright and resize it to the file's
    image_shape; older files decode as they were made: as stored, each at its own size."""
    if attrs.get("orientation") == "exif":
        return Decoding(exif=True, size=tuple(int(v) for v in attrs["image_shape"][:2]))
    return Decoding(exif=False)


def load_splits(attrs: dict, data_path: str | None):
    """The features file's images and splits, checked against its fingerprint."""
    source = dataset.source_of(attrs, data_path)
    limit = attrs["limit"] if attrs["limit"] != -1 else None
    ds = dataset.load_dataset(source, limit, decoding_of(attrs))
    splits = partition.make_splits(ds, attrs["val_fraction"], attrs["split_seed"], attrs.get("test_fraction"))
    if digest.fingerprint(splits) != attrs["data_fingerprint"]:
        raise UserError(f"the images at {source} are not the ones the features file was made from; "
                        "pass --data PATH to the original source")
    return splits
