"""Writing the row store: every dataset preallocated at full size, rows in any order with a done flag
per row after them, the final name only through an atomic rename of a complete file (see
pipeline/store/__init__.py for the layout and the crash-safety argument)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.store.reader import check_structure
from pipeline.store.schema import CHUNK_ROWS, FEATURES_FILE, MIRRORED, SPLITS, Words, partial_path


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
                 dtype="float32", log=print, block_rows: int | None = None, words: Words = FEATURES_FILE):
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
        """Close, even after a failed write (when closing itself may fail again: ignored). A partial
        file with no row written yet is removed: a run that failed before its first row (a weights
        download, an unreadable image) leaves nothing behind, where it would leave the whole
        preallocated file (494 MB for CIFAR-10 through InceptionV3) to resume nothing from."""
        if self.file is not None and self.file.id.valid:
            try:
                empty = not any(self.file["progress"][split]["done"][...].any() for split in SPLITS)
            except Exception:      # no progress group yet, or a damaged file: not ours to judge
                empty = False
            try:
                self.file.close()
            except Exception:
                pass
            if empty:
                self.partial.unlink(missing_ok=True)
