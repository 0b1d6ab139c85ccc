"""An index over rows for cosine search, built from rows read a chunk at a time, its rows kept on disk
(or in memory for a head's fold) and read back list by list, so a search's memory is bounded by a
chunk of queries and a list of rows, not by the rows searched.

- exact ("flat", faiss's IndexFlatIP searched block by block): up to EXACT_ROWS rows. Its answers
  are the brute-force ones: every row is compared with every query.
- approximate ("ivf", faiss's IndexIVFFlat layout: an inverted file of `nlist` lists): above it. A
  seeded sample of at most TRAIN_ROWS rows trains spherical k-means (faiss.Kmeans) with nlist =
  4 * sqrt(rows) centroids (at most TRAIN_ROWS / 39, faiss's floor of training points per centroid);
  each row is stored in the list of its nearest centroid, and a query compares itself only with the
  rows of its `nprobe` nearest lists. The build's nprobe is the smallest of NPROBES whose recall@10
  against the exact search, on RECALL_QUERIES seeded rows of the index as queries (each leaving
  itself out), reaches RECALL_TARGET (recorded in the meta); every answer chooses its own the same
  way on its own queries (query.recall), since the index's rows can be far easier queries.

The lists live in one file of float32 rows ordered by list (layout.INDEX_ROWS), read with plain
reads (never mapped, which would count every page touched as resident memory), beside their
positions in the source order, the list offsets and the quantizer written by faiss.write_index."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from pipeline.search.rows import Transform

EXACT_ROWS = 100_000      # rows up to which the search is exact: all-pairs at CIFAR size is about a minute
TRAIN_ROWS = 65_536       # k-means sample: 320 MB at width 1280, whatever the rows (memory stays flat)
MIN_POINTS = 39           # faiss warns below 39 training points per centroid
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
RECALL_QUERIES = 500
RECALL_TARGET = 0.95
RECALL_K = 10
SEED = 0
KMEANS_ITER = 20
# Every setting above that changes an answer: part of the identity of every output that searches
# (version 2: each answer tunes its own nprobe on its own queries).
SETTINGS = {"exact_rows": EXACT_ROWS, "train_rows": TRAIN_ROWS, "nlist": "4*sqrt(rows), at most train_rows/39",
            "nprobes": list(NPROBES), "recall_queries": RECALL_QUERIES, "recall_target": RECALL_TARGET,
            "recall_k": RECALL_K, "seed": SEED, "kmeans_iter": KMEANS_ITER, "version": 2}


def set_threads():
    """faiss's OpenMP threads: the cores this process may use, or OMP_NUM_THREADS when set (a worker
    given a share of the cores keeps to it)."""
    import faiss
    given = os.environ.get("OMP_NUM_THREADS", "")
    faiss.omp_set_num_threads(int(given) if given.isdigit() and int(given) > 0 else len(os.sched_getaffinity(0)))


def nlist_for(rows: int) -> int:
    return max(1, min(int(round(4 * np.sqrt(rows))), min(TRAIN_ROWS, rows) // MIN_POINTS))


@dataclass
class Index:
    """The searchable index: `meta` (kind, rows, width, nlist, nprobe, recall, settings), list
    `offsets` (nlist + 1), `ids` (each stored row's position in the source order), the quantizer's
    `centroids` (None when exact), the `transform` of rows and queries, and `store`: the rows in
    list order, an array or the path of a raw float32 file."""
    meta: dict
    offsets: np.ndarray
    ids: np.ndarray
    centroids: np.ndarray | None
    transform: Transform = field(default_factory=Transform)
    store: object = None

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def width(self) -> int:
        return int(self.meta["width"])

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Stored rows lo..hi (in list order)."""
        if isinstance(self.store, np.ndarray):
            return self.store[lo:hi]
        with open(self.store, "rb") as f:
            f.seek(lo * self.width * 4)
            out = np.fromfile(f, np.float32, (hi - lo) * self.width)
        if len(out) != (hi - lo) * self.width:
            raise OSError(f"{self.store} ends before row {hi}")
        return out.reshape(hi - lo, self.width)

    def probes(self, queries: np.ndarray, nprobe: int | None = None) -> np.ndarray:
        """(n, nprobe) lists each (transformed) query searches: list 0 when exact."""
        if self.centroids is None:
            return np.zeros((len(queries), 1), np.int64)
        import faiss
        quantizer = faiss.IndexFlatIP(self.width)
        quantizer.add(self.centroids)
        return quantizer.search(queries, min(nprobe or self.meta["nprobe"], len(self.centroids)))[1]
