"""The feature store: one HDF5 file per settings, written resumably and atomically, read with checks.

Layout (schema version 2), readable with plain h5py:
    /train, /val, /test        groups, each with
        features  (N, D) float32   one embedding per image
        labels    (N,)   uint8     class index into the `class_names` attribute
        index     (N,)   int64     row of the image in the source's train or test set
        features_mirrored (N, D) float32   only in files made with `--views 2` (root attribute
                                   views = 2): the embedding of the horizontally mirrored image
    root attributes: schema_version, complete, settings_hash, settings (JSON of the hashed
    settings), every setting on its own too, data_fingerprint, class_names, versions, created, ...

Crash safety: every dataset is created at full size with its storage allocated up front, so
writing a batch only overwrites raw bytes and never changes the file's structure; a `progress`
group (per split: a done flag per row, and stage one's fingerprint block digests) is updated
after the rows themselves, so rows may arrive in any order (shards from several workers). A run
killed at any moment leaves a readable ``.partial`` file; the next run computes only the rows
not marked done. The final name appears only through an atomic rename of a complete file.

Schema version 2 (was 1): the same layout; `data_fingerprint` is now assembled from fixed blocks
of images (see data.BLOCK_ROWS), so it no longer equals a version-1 file's.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError, first_line

SCHEMA_VERSION = 2
SPLITS = ("train", "val", "test")
CHUNK_ROWS = 128
MIRRORED = "features_mirrored"     # the second view's dataset (views = 2)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", str(text)).strip("-.").lower() or "x"


def features_path(cache_dir, settings: dict) -> Path:
    """cache/features/<dataset>-<backbone>-<size>-<precision>-<hash>.h5: readable, and unique."""
    stem = Path(settings["backbone"]).stem if settings["backbone"].endswith(".keras") else settings["backbone"]
    name = "-".join([_slug(settings["dataset"]), _slug(stem), str(settings["input_size"]),
                     settings["precision"], *(["2views"] if settings.get("views", 1) == 2 else []),
                     settings_hash(settings)])
    return Path(cache_dir) / "features" / f"{name}.h5"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def write_text_atomic(path: Path, text: str):
    """Write beside, then rename: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary name beside `path` (same suffix, so writers pick the format from it); it
    becomes `path` by one rename when the block succeeds and is removed when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Yield an empty temporary folder beside `path`; when the block succeeds it replaces `path`
    (an old one is dropped first), when it fails it is removed: readers never see half a folder."""
    import shutil
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- reading

@dataclass(frozen=True)
class FeatureSplit:
    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    mirrored: np.ndarray | None = None    # the mirrored view's features (views = 2 files)

    @property
    def views(self) -> list[np.ndarray]:
        """Every stored view's features: [features] or [features, mirrored]."""
        return [self.features] if self.mirrored is None else [self.features, self.mirrored]


@dataclass(frozen=True)
class FeatureSet:
    path: Path
    attrs: dict
    splits: dict[str, FeatureSplit]

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs["class_names"])


def _open(path: Path, mode="r"):
    import h5py
    if not path.is_file():
        raise UserError(f"features file {path} does not exist; run `make features` first")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({first_line(exc)})") from None


def _attrs(f) -> dict:
    out = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.ndarray):
            value = [v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v
                     for v in value]
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    for key in ("settings", "versions"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


def check_structure(f, path: Path, require_complete: bool = True) -> dict:
    """Validate schema and shapes; return the attributes. UserError names what is wrong."""
    attrs = _attrs(f)
    if attrs.get("schema_version") != SCHEMA_VERSION or "settings_hash" not in attrs:
        raise UserError(f"{path} is not a features file of this pipeline (schema version "
                        f"{attrs.get('schema_version', 'missing')}, expected {SCHEMA_VERSION})")
    if require_complete and not attrs.get("complete"):
        raise UserError(f"{path} is incomplete; rerun `make features` with the same settings to finish it")
    row_shape = tuple(attrs.get("row_shape", [attrs.get("feature_width")]))
    views = attrs.get("views", 1)
    if views not in (1, 2):
        raise UserError(f"{path} says views={views!r}; a features file holds 1 or 2 views")
    for split in SPLITS:
        if split not in f:
            raise UserError(f"{path} lacks the {split} split")
        g = f[split]
        if not all(k in g for k in ("features", "labels", "index")):
            raise UserError(f"{path}: split {split} lacks features, labels or index")
        n = g["labels"].shape[0]
        if g["features"].shape != (n, *row_shape) or g["index"].shape != (n,):
            raise UserError(f"{path}: split {split} has features {g['features'].shape}, labels ({n},), "
                            f"index {g['index'].shape}; expected {(n, *row_shape)}")
        if (MIRRORED in g) != (views == 2):
            raise UserError(f"{path}: split {split} {'lacks' if views == 2 else 'has'} {MIRRORED} "
                            f"but the file says views={views}")
        if views == 2 and g[MIRRORED].shape != g["features"].shape:
            raise UserError(f"{path}: split {split} has {MIRRORED} {g[MIRRORED].shape}, "
                            f"features {g['features'].shape}; they must match")
    return attrs


def older_schema(path: Path) -> int | None:
    """The schema version of a features file written by an older version of this pipeline, else
    None (a current file, or something that is not ours: the reader then says what is wrong)."""
    try:
        with _open(path) as f:
            version = f.attrs.get("schema_version")
    except UserError:
        return None
    return int(version) if isinstance(version, (int, np.integer)) and 0 < version < SCHEMA_VERSION else None


def read_features(path, expect: dict | None = None, splits=SPLITS) -> FeatureSet:
    """Load a complete features file into memory. `expect`: settings it must have been made with."""
    path = Path(path)
    with _open(path) as f:
        attrs = check_structure(f, path)
        for key, wanted in (expect or {}).items():
            if attrs.get(key) != wanted:
                raise UserError(f"{path} was made with {key}={attrs.get(key)!r}, not {wanted!r}; "
                                f"run `make features` with the settings you want")
        data = {s: FeatureSplit(f[s]["features"][...], f[s]["labels"][...], f[s]["index"][...],
                                f[s][MIRRORED][...] if MIRRORED in f[s] else None)
                for s in splits}
    return FeatureSet(path, attrs, data)


def describe(path) -> str:
    """Human-readable summary for `python -m pipeline info`."""
    path = Path(path)
    with _open(path) as f:
        attrs = check_structure(f, path, require_complete=False)
        progress = f.get("progress")
        lines = [f"{'file:':<19}{path}",
                 f"{'complete:':<19}{'yes' if attrs.get('complete') else 'no'}"]
        for key in ("schema_version", "settings_hash", "dataset", "source", "backbone", "weights",
                    "input_size", "feature_width", "views", "preprocessing", "precision", "device", "limit",
                    "val_fraction", "split_seed", "batch_size", "data_fingerprint", "created",
                    "elapsed_seconds", "images_per_second"):
            if key in attrs:
                lines.append(f"{key + ':':<19}{attrs[key]}")
        lines.append(f"{'class_names:':<19}{', '.join(attrs.get('class_names', []))}")
        lines.append(f"{'versions:':<19}" + ", ".join(f"{k} {v}" for k, v in attrs.get("versions", {}).items()))
        for i, split in enumerate(SPLITS):
            g = f[split]
            done = f" ({int(progress[split]['done'][...].sum())} rows written)" if progress is not None else ""
            counts = np.bincount(g["labels"][...], minlength=len(attrs.get("class_names", [])))
            lines.append(f"{split:<6} features {g['features'].shape} {g['features'].dtype}, "
                         f"labels {g['labels'].shape}, per class {counts.tolist()}{done}")
    return "\n".join(lines)


# ---------------------------------------------------------------- writing

class CacheLock:
    """Exclusive, non-blocking lock next to a cache file: a second run on the same settings is
    refused with a clear message instead of writing the same file at once. The OS drops the
    lock when its process dies, so a killed run never leaves a stale lock."""

    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise UserError(f"another run is writing {self.path.name[:-5]} right now; "
                            "wait for it to finish (the result will then be up to date)") from None
        return self

    def __exit__(self, *exc):
        try:
            self.path.unlink()
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _preallocated(group, name, shape, dtype, fill=0):
    """A chunked dataset whose storage is allocated now, so later writes change no metadata."""
    import h5py
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    chunks = (max(1, min(shape[0], CHUNK_ROWS)),) + tuple(shape[1:])
    return group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill, dcpl=dcpl)


class FeatureWriter:
    """Writes (or resumes) ``<final>.partial``; ``finish`` marks it complete and renames it.
    Rows are (D,) float32 embeddings by default; `row_shape`/`dtype` allow other per-image arrays
    (stage three caches float16 activation maps the same way). With attrs views = 2 each split
    also holds the mirrored view's rows, written with the same call."""

    def __init__(self, final: Path, attrs: dict, labels: dict, index: dict, row_shape: tuple,
                 dtype="float32", log=print, block_rows: int | None = None):
        import h5py
        self.final, self.partial = final, partial_path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.block_rows = block_rows
        self.file = None
        if self.partial.exists():
            try:
                self.file = h5py.File(self.partial, "r+")
                found = check_structure(self.file, self.partial, require_complete=False)
                if found["settings_hash"] != attrs["settings_hash"]:
                    raise UserError("made from other settings or images")
                if not isinstance(self.file.get("progress"), h5py.Group):
                    raise UserError("written by an older version")
                log(f"resuming {self.partial.name}: {sum(self.rows_written(s) for s in SPLITS)} rows already written")
            except (UserError, OSError, KeyError) as exc:
                if self.file is not None:
                    self.file.close()
                self.file = None
                log(f"discarding unusable partial file {self.partial.name} ({exc})")
                self.partial.unlink()
        if self.file is None:
            self.file = self._create({**attrs, "row_shape": list(row_shape)}, labels, index, row_shape, dtype)

    def _create(self, attrs, labels, index, row_shape, dtype):
        import h5py
        f = h5py.File(self.partial, "w")
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
        f.attrs["complete"] = False
        for split in SPLITS:
            n = len(labels[split])
            g = f.create_group(split)
            _preallocated(g, "features", (n, *row_shape), dtype, fill=np.nan)
            if attrs.get("views", 1) == 2:
                _preallocated(g, MIRRORED, (n, *row_shape), dtype, fill=np.nan)
            g.create_dataset("labels", data=np.asarray(labels[split], np.uint8))
            g.create_dataset("index", data=np.asarray(index[split], np.int64))
            p = f.create_group(f"progress/{split}")
            _preallocated(p, "done", (n,), np.uint8)
            if self.block_rows:
                _preallocated(p, "blocks", (-(-n // self.block_rows), 32), np.uint8)
        f.flush()
        return f

    def done_rows(self, split: str) -> np.ndarray:
        """(N,) bool: rows written (in any order)."""
        return self.file["progress"][split]["done"][...].astype(bool)

    def rows_written(self, split: str) -> int:
        return int(self.done_rows(split).sum())

    def rows_done(self, split: str) -> int:
        """How many rows from the start are written: where an in-order writer resumes."""
        done = self.done_rows(split)
        return len(done) if done.all() else int(np.argmin(done))

    def write(self, split: str, start: int, rows: np.ndarray, blocks: dict[int, bytes] | None = None):
        """Rows start:start+len(rows), and the digests of blocks whose last row is among them. In a
        2-view file `rows` is (n, 2, D): each image's embedding, then its mirror's."""
        group = self.file[split]
        if MIRRORED in group:
            if rows.ndim < 2 or rows.shape[1] != 2:
                raise ValueError(f"this file holds 2 views per image; write() was given rows {rows.shape}")
            group[MIRRORED][start:start + len(rows)] = rows[:, 1]
            rows = rows[:, 0]
        group["features"][start:start + len(rows)] = rows
        self.file.flush()                      # rows reach the OS before progress says so
        progress = self.file["progress"][split]
        for block, digest in (blocks or {}).items():
            progress["blocks"][block] = np.frombuffer(digest, np.uint8)
        progress["done"][start:start + len(rows)] = 1
        self.file.flush()

    def block_digests(self, split: str) -> list[bytes]:
        return [row.tobytes() for row in self.file["progress"][split]["blocks"][...]]

    def finish(self, extra_attrs: dict) -> Path:
        for split in SPLITS:
            if self.rows_written(split) != len(self.file[split]["labels"]):
                raise RuntimeError(f"finish() before {split} was fully written")
        for key, value in extra_attrs.items():
            self.file.attrs[key] = value
        self.file.attrs["complete"] = True
        del self.file["progress"]
        self.file.close()
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.final)
        return self.final

    def close(self):
        if self.file is not None and self.file.id.valid:
            self.file.close()
