"""Reading the row store, through one validator every command uses: the structure and schema, the
settings a caller expects, and the values (finite rows, labels in range), each failure one UserError
in the caller's words."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.foundation.errors import UserError, first_line
from pipeline.foundation import identity
from pipeline.store.windows import Rows, stored_bytes
from pipeline.store.schema import CHECK_ROWS, FEATURES_FILE, MIRRORED, SCHEMA_VERSION, SPLITS, Words, words_for


@dataclass(frozen=True)
class RowSplit:
    features: np.ndarray      # the rows (the name of the HDF5 dataset); a store.Rows when streamed
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


def open_store(path: Path, words: Words = FEATURES_FILE, mode="r"):
    import h5py
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {words.what}; give a file in it")
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


def check_structure(f, path: Path, require_complete: bool = True, words: Words = FEATURES_FILE) -> dict:
    """Validate schema and shapes; return the attributes. UserError names what is wrong."""
    attrs = _attrs(f, path, words)
    if words_for(attrs) is not words:           # an activation cache given as a features file, or the reverse
        found = words_for(attrs)
        raise UserError(f"{path} is {'an' if found.what[0] in 'aeiou' else 'a'} {found.what}, not a {words.what}"
                        + ("; give a features file from CACHE/features" if words is FEATURES_FILE else ""))
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
        with open_store(path) as f:
            version = f.attrs.get("schema_version")
    except UserError:
        return None
    return int(version) if isinstance(version, (int, np.integer)) and 0 < version < SCHEMA_VERSION else None


def check_settings(attrs: dict, path: Path, words: Words = FEATURES_FILE):
    """The settings stored beside the hash must still hash to it."""
    if "settings" in attrs and identity.digest(attrs["settings"]) != attrs["settings_hash"]:
        raise UserError(f"{path} is stale: its settings no longer match its settings_hash "
                        f"{attrs['settings_hash']}; {words.fix}")


def check_values(split: str, labels: np.ndarray, rows, n_classes: int, path: Path, words: Words = FEATURES_FILE):
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


def read_rows(path, expect: dict | None = None, splits=SPLITS, words: Words = FEATURES_FILE,
              values: bool = True, n_classes: int | None = None, stream=(), stream_above: int | None = None) -> RowSet:
    """Open a complete file and check everything a reader relies on (schema, completeness, shapes,
    settings against their hash, labels, finite rows: the splits not loaded are checked chunk by
    chunk; values=False skips the labels and rows of splits not loaded); load `splits` into memory.
    `stream`: splits whose rows stay on disk, read a window at a time (store.Rows), with their
    labels and index in memory. `stream_above` (bytes): when the file's rows take more, the `splits`
    asked for are streamed instead of loaded (decided on the file already open: one open per read).
    `expect`: attributes it must have been made with; `n_classes`: the number of classes when the
    file does not name them itself (stage three's activation caches)."""
    path = Path(path)
    with open_store(path, words) as f:
        attrs = check_structure(f, path, words=words)
        for key, wanted in (expect or {}).items():
            if attrs.get(key) != wanted:
                raise UserError(f"{path} was made with {key}={attrs.get(key)!r}, not {wanted!r}; {words.fix}")
        check_settings(attrs, path, words)
        if stream_above is not None and stored_bytes(f) > stream_above:
            splits, stream = (), splits
        if n_classes is None:
            n_classes = len(attrs.get("class_names") or [])
            if n_classes < 2:
                raise UserError(f"{path} names {n_classes} classes in class_names; a classifier needs at least 2")
        data = {}
        for split in SPLITS:
            g = f[split]
            if split not in splits and split not in stream and not values:
                continue
            labels = g["labels"][...]
            rows = g["features"][...] if split in splits and split not in stream else g["features"]
            check_values(split, labels, rows, n_classes, path, words)
            if split in stream:
                data[split] = RowSplit(Rows(path, split), labels, g["index"][...],
                                       Rows(path, split, MIRRORED) if MIRRORED in g else None)
            elif split in splits:
                data[split] = RowSplit(rows, labels, g["index"][...],
                                       g[MIRRORED][...] if MIRRORED in g else None)
    return RowSet(path, attrs, data)


