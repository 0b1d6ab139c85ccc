"""Reading a split a window at a time, for files larger than memory: `Rows`, a split's rows left on
disk and read in contiguous slices (what a RowSplit holds instead of an array when a caller asks
to stream it), and `plan`, the seeded order of an epoch's windows that every streamed reader
shares (stage three's activation cache, pipeline.finetune.activations.batches, and the heads'
streamed training, pipeline.heads.streamed_data). Contiguous, chunk-aligned windows are what HDF5
reads fast: a scattered row costs a whole chunk (schema.CHUNK_ROWS rows)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def plan(n: int, window: int, seed: int, epoch: int, shuffle: bool, offset: bool = True) -> tuple[int, np.ndarray]:
    """(start offset, window order) of one epoch over n rows cut into windows of `window` rows: with
    `shuffle` a seeded function of (seed, epoch), a random offset (if `offset`: windows then
    straddle chunk boundaries, which pays when the rows are stored in random order) and a random
    order of the windows; without, 0 and the windows in order."""
    rng = np.random.default_rng([seed, epoch])
    start = int(rng.integers(n)) if shuffle and offset else 0
    count = math.ceil(n / window)
    return start, (rng.permutation(count) if shuffle else np.arange(count))


class Rows:
    """A split's dataset (`features` or the mirrored view) read from the file on demand, in slices:
    rows[lo:hi] reads only those rows. `keep`: a mask over the stored rows (--exclude); len() and
    reads then count kept rows only, and `stored_window(lo, hi)` reads stored rows lo..hi-1 and
    returns the kept ones with the slice of the kept labels they are. `largest_read`: the most rows
    one read asked the file for (tests hold it to a window, never the split)."""

    def __init__(self, path, split: str, name: str = "features", keep: np.ndarray | None = None):
        self.path, self.split, self.name = Path(path), split, name
        self.keep = keep
        self.largest_read = 0
        self._file = None
        with self._open() as f:
            ds = f[split][name]
            self.stored, self.row_shape, self.dtype = ds.shape[0], ds.shape[1:], ds.dtype
        self._kept_before = None if keep is None else np.concatenate([[0], np.cumsum(keep)])

    def _open(self):
        import h5py
        return h5py.File(self.path, "r")

    def _dataset(self):
        if self._file is None:
            self._file = self._open()
        return self._file[self.split][self.name]

    def __getstate__(self):           # an open HDF5 handle does not pickle; the copy reopens on use
        return {**self.__dict__, "_file": None}

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self):
        return self.stored if self.keep is None else int(self._kept_before[-1])

    @property
    def shape(self) -> tuple:
        return (len(self), *self.row_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def excluding(self, keep: np.ndarray) -> "Rows":
        """These rows with only the stored rows `keep` marks (on top of any mask already applied)."""
        return Rows(self.path, self.split, self.name, keep if self.keep is None else self.keep & keep)

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Stored rows lo..hi-1, one contiguous read."""
        hi = min(hi, self.stored)
        self.largest_read = max(self.largest_read, hi - lo)
        return self._dataset()[lo:hi]

    def kept_slice(self, lo: int, hi: int) -> slice:
        """Which kept rows stored rows lo..hi-1 are (from the mask alone: no read)."""
        hi = min(hi, self.stored)
        return slice(lo, hi) if self.keep is None else slice(int(self._kept_before[lo]), int(self._kept_before[hi]))

    def stored_window(self, lo: int, hi: int) -> tuple[np.ndarray, slice]:
        """(kept rows among stored rows lo..hi-1, the slice of kept rows they are)."""
        block = self.read(lo, hi)
        return (block if self.keep is None else block[self.keep[lo:lo + len(block)]]), self.kept_slice(lo, hi)

    def __getitem__(self, at):
        """rows[lo:hi] (kept rows lo..hi-1) in one read of the stored rows they span."""
        if not isinstance(at, slice) or at.step not in (None, 1):
            raise TypeError("streamed rows are read by contiguous slices only")
        lo, hi, _ = at.indices(len(self))
        if self.keep is None:
            return self.read(lo, hi)
        first, last = np.searchsorted(self._kept_before[1:], [lo, hi - 1], side="right") if hi > lo else (0, -1)
        block = self.read(int(first), int(last) + 1)
        return block[self.keep[first:last + 1]]

    def windows(self, rows: int):
        """Every kept row in order, `rows` at a time (the last window shorter)."""
        for lo in range(0, len(self), rows):
            yield self[lo:lo + rows]


def stored_bytes(f) -> int:
    """The bytes of every split's rows (every view) in an open row-store file, from its shapes alone."""
    import h5py
    return sum(int(np.prod(ds.shape)) * ds.dtype.itemsize for g in f.values() if isinstance(g, h5py.Group)
               for name, ds in g.items() if name.startswith("features") and isinstance(ds, h5py.Dataset))
