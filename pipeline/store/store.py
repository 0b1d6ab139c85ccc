"""The row store: one HDF5 file per settings, written resumably and atomically, read with checks.
Stage one keeps its features here, stage three its cut activations: "rows" are one array per image.

Layout (schema version 2), readable with plain h5py:
    /train, /val, /test        groups, each with
        features  (N, *row_shape)  one row per image (stage one: (N, D) float32 embeddings)
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

Errors speak the caller's words (`Words`): what the file is, how to make one, how to replace a
damaged one, so a reader of an activation cache is not told to run `make features`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.foundation import records
from pipeline.foundation.errors import UserError, first_line
from pipeline.foundation.outputs import Lock, write_text_atomic  # noqa: F401  (re-exported: the older names)

SCHEMA_VERSION = 2
SPLITS = ("train", "val", "test")
CHUNK_ROWS = 128
MIRRORED = "features_mirrored"     # the second view's dataset (views = 2)
CHECK_ROWS = 4096       # rows per read when checking values without loading a whole split


@dataclass(frozen=True)
class Words:
    """How the caller names a file of this store in errors."""
    what: str = "features file"
    make: str = "run `make features` first"
    fix: str = "delete it and rerun `python -m pipeline features` with the flags that made it"


FEATURES = Words()


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
    return Path(cache_dir) / records.FEATURES / f"{name}.h5"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


# ---------------------------------------------------------------- reading

@dataclass(frozen=True)
class RowSplit:
    features: np.ndarray      # the rows (the name of the HDF5 dataset)
    labels: np.ndarray
    index: np.ndarray
    mirrored: np.ndarray | None = None    # the mirrored view's features (views = 2 files)

    @property
    def views(self) -> list[np.ndarray]:
        """Every stored view's features: [features] or [features, mirrored]."""
        return [self.features] if self.mirrored is None else [self.features, self.mirrored]


@dataclass(frozen=True)
class RowSet:
    path: Path
    attrs: dict
    splits: dict[str, RowSplit]

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs["class_names"])


FeatureSplit, FeatureSet = RowSplit, RowSet      # the older names


def _open(path: Path, words: Words = FEATURES, mode="r"):
    import h5py
    if not path.is_file():
        raise UserError(f"{words.what} {path} does not exist; {words.make}")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file, so not a {words.what} ({first_line(exc)}); "
                        f"if it was one, {words.fix}") from None


def _attrs(f, path: Path, words: Words) -> dict:
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
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                raise UserError(f"{path}: its {key} attribute is not valid JSON; {words.fix}") from None
        if key in out and not isinstance(out[key], dict):     # e.g. '[1,2]' or 'null'
            raise UserError(f"{path}: its {key} attribute is not a JSON object (it is {out[key]!r}); {words.fix}")
    return out


def is_complete(attrs: dict) -> bool:
    """Only a real boolean true counts: a hand-edited complete="no" is a non-empty string."""
    return attrs.get("complete") is True


def check_structure(f, path: Path, require_complete: bool = True, words: Words = FEATURES) -> dict:
    """Validate schema and shapes; return the attributes. UserError names what is wrong."""
    attrs = _attrs(f, path, words)
    if "schema_version" not in attrs:
        raise UserError(f"{path} is not a {words.what} of this pipeline (it has no schema_version attribute)")
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise UserError(f"{path} is not a {words.what} of this pipeline (schema version "
                        f"{attrs['schema_version']}, expected {SCHEMA_VERSION})")
    if not isinstance(attrs.get("settings_hash"), str):
        raise UserError(f"{path} has no settings_hash attribute, so it is not a whole {words.what}; {words.fix}")
    if require_complete and not is_complete(attrs):
        if path.name.endswith(".partial"):
            raise UserError(f"{path} is incomplete: a run is writing it or was interrupted; rerun the command "
                            "that made it to finish it")
        raise UserError(f"{path} is incomplete (its complete attribute is {attrs.get('complete')!r}); {words.fix}")
    row_shape = tuple(attrs.get("row_shape", [attrs.get("feature_width")]))
    views = attrs.get("views", 1)
    if views not in (1, 2):
        raise UserError(f"{path} says views={views!r}; a features file holds 1 or 2 views")
    for split in SPLITS:
        if split not in f:
            raise UserError(f"{path} lacks the {split} split; {words.fix}")
        g = f[split]
        if not all(k in g for k in ("features", "labels", "index")):
            raise UserError(f"{path}: split {split} lacks features, labels or index; {words.fix}")
        n = g["labels"].shape[0]
        if g["features"].shape != (n, *row_shape) or g["index"].shape != (n,):
            raise UserError(f"{path}: split {split} has rows {g['features'].shape}, labels ({n},), "
                            f"index {g['index'].shape}; expected {(n, *row_shape)}; {words.fix}")
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


def check_settings(attrs: dict, path: Path, words: Words = FEATURES):
    """The settings stored beside the hash must still hash to it."""
    if "settings" in attrs and settings_hash(attrs["settings"]) != attrs["settings_hash"]:
        raise UserError(f"{path} is stale: its settings no longer match its settings_hash "
                        f"{attrs['settings_hash']}; {words.fix}")


def check_values(split: str, labels: np.ndarray, rows, n_classes: int, path: Path, words: Words = FEATURES):
    """Labels are whole numbers in [0, n_classes) and every row is finite. `rows` may be an h5py
    dataset: it is then read CHECK_ROWS at a time, never whole."""
    if len(labels) == 0:
        raise UserError(f"{path}: the {split} split is empty; {words.fix}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: {split} labels are {labels.dtype}, not whole numbers; {words.fix}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise UserError(f"{path}: {split} has label {low if low < 0 else high} but only {n_classes} class names "
                        f"(labels must be 0..{n_classes - 1}); {words.fix}")
    for lo in range(0, len(rows), CHECK_ROWS):
        chunk = rows[lo:lo + CHECK_ROWS]
        if not np.isfinite(chunk).all():
            bad = lo + int(np.argmin(np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)))
            raise UserError(f"{path}: {split} row {bad} holds NaN or infinite values; {words.fix}")


def read_rows(path, expect: dict | None = None, splits=SPLITS, words: Words = FEATURES,
              values: bool = True, n_classes: int | None = None) -> RowSet:
    """Open a complete file and check everything a reader relies on (schema, completeness, shapes,
    settings against their hash, labels, finite rows: the splits not loaded are checked chunk by
    chunk; values=False skips the labels and rows of splits not loaded); load `splits` into memory.
    `expect`: attributes it must have been made with; `n_classes`: the number of classes when the
    file does not name them itself (stage three's activation caches)."""
    path = Path(path)
    with _open(path, words) as f:
        attrs = check_structure(f, path, words=words)
        for key, wanted in (expect or {}).items():
            if attrs.get(key) != wanted:
                raise UserError(f"{path} was made with {key}={attrs.get(key)!r}, not {wanted!r}; {words.fix}")
        check_settings(attrs, path, words)
        if n_classes is None:
            n_classes = len(attrs.get("class_names") or [])
            if n_classes < 2:
                raise UserError(f"{path} names {n_classes} classes in class_names; a classifier needs at least 2")
        data = {}
        for split in SPLITS:
            g = f[split]
            if split not in splits and not values:
                continue
            labels = g["labels"][...]
            rows = g["features"][...] if split in splits else g["features"]
            check_values(split, labels, rows, n_classes, path, words)
            if split in splits:
                data[split] = RowSplit(rows, labels, g["index"][...],
                                       g[MIRRORED][...] if MIRRORED in g else None)
    return RowSet(path, attrs, data)


read_features = read_rows        # the older name


def describe(path, words: Words = FEATURES) -> str:
    """Human-readable summary for `python -m pipeline info` (also of incomplete or partial files)."""
    path = Path(path)
    with _open(path, words) as f:
        attrs = check_structure(f, path, require_complete=False, words=words)
        progress = f.get("progress")
        lines = [f"{'file:':<19}{path}",
                 f"{'complete:':<19}{'yes' if is_complete(attrs) else 'no'}"]
        for key in ("schema_version", "settings_hash", "dataset", "source", "backbone", "backbone_file", "weights",
                    "weights_file", "input_size", "feature_width", "views", "preprocessing", "precision", "device",
                    "limit", "val_fraction", "split_seed", "batch_size", "data_fingerprint", "created",
                    "elapsed_seconds", "images_per_second"):
            if key in attrs:
                lines.append(f"{key + ':':<19}{attrs[key]}")
        lines.append(f"{'class_names:':<19}{', '.join(map(str, attrs.get('class_names', [])))}")
        lines.append(f"{'versions:':<19}" + ", ".join(f"{k} {v}" for k, v in attrs.get("versions", {}).items()))
        n_classes = len(attrs.get("class_names", []))
        for i, split in enumerate(SPLITS):
            g = f[split]
            done = f" ({int(progress[split]['done'][...].sum())} rows written)" if progress is not None else ""
            labels = g["labels"][...].astype(np.int64)
            inside = (labels >= 0) & (labels < n_classes)
            counts = np.bincount(labels[inside], minlength=n_classes).tolist()
            outside = f", {int((~inside).sum())} labels outside 0..{n_classes - 1}" if not inside.all() else ""
            lines.append(f"{split:<6} rows {g['features'].shape} {g['features'].dtype}, "
                         f"labels {g['labels'].shape}, per class {counts}{outside}{done}")
    return "\n".join(lines)


# ---------------------------------------------------------------- writing

CacheLock = Lock          # the older name


def _preallocated(group, name, shape, dtype, fill=0):
    """A chunked dataset whose storage is allocated now, so later writes change no metadata."""
    import h5py
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    chunks = (max(1, min(shape[0], CHUNK_ROWS)),) + tuple(shape[1:])
    return group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill, dcpl=dcpl)


class RowWriter:
    """Writes (or resumes) ``<final>.partial``; ``finish`` marks it complete and renames it.
    Rows are (D,) float32 embeddings by default; `row_shape`/`dtype` allow other per-image arrays
    (stage three caches float16 activation maps the same way). With attrs views = 2 each split
    also holds the mirrored view's rows, written with the same call. Hold the output's Lock around it.
    On any failure (a full disk included) the file is closed at once: HDF5 left to close a file
    during interpreter shutdown after a failed write crashes the process."""

    def __init__(self, final: Path, attrs: dict, labels: dict, index: dict, row_shape: tuple,
                 dtype="float32", log=print, block_rows: int | None = None, words: Words = FEATURES):
        import h5py
        self.final, self.partial = final, partial_path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.block_rows = block_rows
        self.file = None
        if self.partial.exists():
            try:
                self.file = h5py.File(self.partial, "r+")
                found = check_structure(self.file, self.partial, require_complete=False, words=words)
                if found["settings_hash"] != attrs["settings_hash"]:
                    raise UserError("made from other settings or images")
                if not isinstance(self.file.get("progress"), h5py.Group):
                    raise UserError("written by an older version")
                log(f"resuming {self.partial.name}: {sum(self.rows_written(s) for s in SPLITS)} rows already written")
            except (UserError, OSError, KeyError, ValueError, RuntimeError) as exc:
                self.close()
                self.file = None
                log(f"discarding unusable partial file {self.partial.name} ({exc})")
                self.partial.unlink()
        if self.file is None:
            self.file = self._create({**attrs, "row_shape": list(row_shape)}, labels, index, row_shape, dtype)

    def _create(self, attrs, labels, index, row_shape, dtype):
        import h5py
        self.file = f = h5py.File(self.partial, "w")
        try:
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
        except BaseException:
            self.close()
            raise
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
        try:
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
        except BaseException:
            self.close()
            raise

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
        """Close, even after a failed write (when closing itself may fail again: ignored)."""
        if self.file is not None and self.file.id.valid:
            try:
                self.file.close()
            except Exception:
                pass


FeatureWriter = RowWriter        # the older name
