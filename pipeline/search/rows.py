"""Where an index's rows (and a search's queries) come from, a chunk at a time: parts of a features
file (a split's features or mirrored features, in that order), read CHUNK rows at a time and never
whole, or arrays already in memory. And the one transform of a row before it is compared: optionally
standardized (the knn head's scaler), then scaled to length 1, so inner products are cosines."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows read at once: 16,384 x 1280 float32 = 80 MB, a multiple of the store's 128-row HDF5 chunks.
CHUNK = 16_384


def unit_rows(x) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero), float32: dot products are cosines."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Transform:
    """Standardization before the length-1 scaling (mean and scale as scikit-learn's StandardScaler
    computes them: float64 sums, a zero spread scales by 1), or none."""
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.mean is not None:
            x = ((x - self.mean) / self.scale).astype(np.float32)
        return unit_rows(x)


def standardizer(rows) -> Transform:
    """The StandardScaler of `rows`, fitted in one chunked pass (float64 sums of x and of x^2 after
    subtracting a first chunk's mean, which keeps the variance exact enough in float64)."""
    n, total, square, shift = 0, None, None, None
    for _, x in rows.chunks():
        x = np.asarray(x, np.float64)
        if shift is None:
            shift = x.mean(axis=0)
            total, square = np.zeros_like(shift), np.zeros_like(shift)
        x = x - shift
        n, total, square = n + len(x), total + x.sum(axis=0), square + (x * x).sum(axis=0)
    mean = total / n
    var = np.maximum(square / n - mean * mean, 0.0)
    scale = np.sqrt(var)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0          # StandardScaler's rule for constant columns
    return Transform((mean + shift).astype(np.float64), scale)


class ArrayRows:
    """Rows already in memory (a query, a head's fold)."""

    def __init__(self, x):
        self.x = np.asarray(x)
        self.n, self.width = self.x.shape[0], int(np.prod(self.x.shape[1:]))

    def chunks(self, chunk: int = CHUNK):
        for lo in range(0, self.n, chunk):
            yield lo, self.x[lo:lo + chunk]

    def take(self, positions) -> np.ndarray:
        return self.x[np.asarray(positions, np.int64)]


class FileRows:
    """Rows of a features file: `parts` is [(split, dataset)], e.g. [("train", "features"), ("val",
    "features")]; their rows are numbered in that order. The file is opened for each pass."""

    def __init__(self, path, parts):
        import h5py
        self.path, self.parts = str(path), [tuple(p) for p in parts]
        with h5py.File(self.path, "r") as f:
            shapes = [f[s][d].shape for s, d in self.parts]
        self.sizes = [s[0] for s in shapes]
        self.n, self.width = sum(self.sizes), int(shapes[0][1])

    def chunks(self, chunk: int = CHUNK):
        import h5py
        start = 0
        with h5py.File(self.path, "r") as f:
            for (split, dataset), size in zip(self.parts, self.sizes):
                ds = f[split][dataset]
                for lo in range(0, size, chunk):
                    yield start + lo, ds[lo:min(size, lo + chunk)]
                start += size

    def take(self, positions) -> np.ndarray:
        """The rows at `positions` (any order), read part by part in increasing order."""
        import h5py
        positions = np.asarray(positions, np.int64)
        out = np.zeros((len(positions), self.width), np.float32)
        order = np.argsort(positions, kind="stable")
        start = 0
        with h5py.File(self.path, "r") as f:
            for (split, dataset), size in zip(self.parts, self.sizes):
                mine = order[(positions[order] >= start) & (positions[order] < start + size)]
                if len(mine):
                    local = positions[mine] - start
                    unique, back = np.unique(local, return_inverse=True)    # h5py wants increasing rows
                    out[mine] = f[split][dataset][unique][back.reshape(-1)]
                start += size
        return out


def as_rows(x):
    """Rows from an array or a Rows object (anything with chunks/take/n/width)."""
    return x if hasattr(x, "chunks") else ArrayRows(x)


def features_on_disk(args):
    """The features file a command's --features names (or the newest), with every check
    load_features makes (its rows' values read a chunk at a time), each split's labels and index in
    memory and its rows left on disk (features None): for the commands whose only use of the rows is
    the search, which reads them from the file itself (`neighbors`, `audit` without --labels)."""
    import h5py
    from pipeline import store
    from pipeline.store.features import default_features, load_features
    fs = load_features(args.features or default_features(args.cache_dir), splits=())
    with h5py.File(fs.path, "r") as f:
        splits = {s: store.RowSplit(None, f[s]["labels"][...], f[s]["index"][...]) for s in store.SPLITS}
    return store.RowSet(fs.path, fs.attrs, splits)
