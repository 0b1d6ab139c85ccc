"""Building an index (pipeline.search.index) from rows read a chunk at a time: k-means on a seeded
sample, each row's list, the rows written in list order with one write per contiguous run, and
nprobe chosen by its measured recall@10 (query.tune_nprobe)."""
from __future__ import annotations

import os

import numpy as np

from pipeline.search.index import KMEANS_ITER, MIN_POINTS, SEED, SETTINGS, TRAIN_ROWS, Index, nlist_for, \
    set_threads
from pipeline.search.query import tune_nprobe
from pipeline.search.rows import Transform


def train_centroids(rows, transform: Transform, nlist: int) -> np.ndarray:
    """Spherical k-means on a seeded sample of at most TRAIN_ROWS rows, read chunk by chunk."""
    import faiss
    rng = np.random.default_rng(SEED)
    picked = np.sort(rng.choice(rows.n, size=min(TRAIN_ROWS, rows.n), replace=False))
    sample = transform(rows.take(picked))
    kmeans = faiss.Kmeans(rows.width, nlist, niter=KMEANS_ITER, seed=SEED, spherical=True,
                          max_points_per_centroid=max(MIN_POINTS, len(sample) // nlist + 1), verbose=False)
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def build(rows, transform: Transform, rows_path=None, log=print, exact_rows: int | None = None) -> Index:
    """The index of `rows` (rows.n rows of rows.width), its stored rows written to `rows_path` (a
    file, written in place: the caller writes it under a temporary folder) or kept in memory.
    `exact_rows`: the threshold, SETTINGS' unless given."""
    set_threads()
    exact_rows = SETTINGS["exact_rows"] if exact_rows is None else exact_rows
    n, width = rows.n, rows.width
    kind = "flat" if n <= exact_rows else "ivf"
    nlist = 1 if kind == "flat" else nlist_for(n)
    centroids = None if kind == "flat" else train_centroids(rows, transform, nlist)
    meta = {"kind": kind, "rows": n, "width": width, "nlist": nlist, "nprobe": 1,
            "settings": {**SETTINGS, "exact_rows": exact_rows}}
    index = Index(meta, np.array([0, n]), np.arange(n), centroids, transform)
    if kind == "flat":
        assign = None
    else:
        assign = np.concatenate([index.probes(transform(x), 1)[:, 0] for _, x in rows.chunks()])
    order = np.arange(n) if assign is None else np.argsort(assign, kind="stable")
    counts = np.bincount(assign, minlength=nlist) if assign is not None else np.array([n])
    index.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    index.ids = order.astype(np.int64)
    where = np.empty(n, np.int64)
    where[order] = np.arange(n)                    # each source row's place in the stored order
    _write_rows(rows, transform, where, rows_path, index)
    if kind == "ivf":
        index.meta["nprobe"], index.meta["build_recall"] = tune_nprobe(index, log)
    return index


def _write_rows(rows, transform, where, rows_path, index: Index):
    """Each chunk's rows written at their stored places (contiguous runs, one write each)."""
    if rows_path is None:
        store = np.empty((rows.n, rows.width), np.float32)
        for lo, x in rows.chunks():
            store[where[lo:lo + len(x)]] = transform(x)
        index.store = store
        return
    fd = os.open(rows_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, rows.n * rows.width * 4)
        for lo, x in rows.chunks():
            y, places = transform(x), where[lo:lo + len(x)]
            order = np.argsort(places, kind="stable")
            y, places = y[order], places[order]
            breaks = np.flatnonzero(np.diff(places) != 1) + 1
            for run_lo, run_hi in zip([0, *breaks], [*breaks, len(places)]):
                os.pwrite(fd, np.ascontiguousarray(y[run_lo:run_hi]).tobytes(), int(places[run_lo]) * rows.width * 4)
    finally:
        os.close(fd)
    index.store = str(rows_path)
