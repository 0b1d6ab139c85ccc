"""The knn head: the training-free k-nearest-neighbour probe of DINO- and CLIP-style evaluations,
searched through the project's one index (pipeline.search): the standardized training rows (every
stored view of each image), compared by cosine similarity, exact up to search.EXACT_ROWS rows and
approximate above (its recall@10 against the exact search measured on val and recorded in the run's
metrics). Its votes are scikit-learn's KNeighborsClassifier's (metric="cosine"), as before."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import search, store
from pipeline.foundation import layout
from pipeline.foundation.errors import UserError, notice
from pipeline.search.rows import ArrayRows, standardizer


class IndexKnn:
    """predict_proba(x) as KNeighborsClassifier(n_neighbors=k, weights, metric="cosine") after a
    StandardScaler gives it: cosine distance 1 - similarity; "distance" votes weigh 1/distance, and
    a query with a neighbour at distance 0 takes only those neighbours' votes."""

    def __init__(self, index: search.Index, labels: np.ndarray, n_classes: int, k: int, weighting: str,
                 recipe: dict | None = None, nprobe: int | None = None):
        # `recipe`: search.cached_index's arguments for a cached index: the saved model holds them,
        # not the index, so it stays small and a removed or damaged index is rebuilt on first use
        self._index, self.recipe, self.labels, self.n_classes = index, recipe, np.asarray(labels), n_classes
        self.k, self.weighting, self.nprobe = k, weighting, nprobe     # nprobe: tuned on val (approximate)

    @property
    def index(self) -> search.Index:
        if self._index is None:
            self._index = search.cached_index(**self.recipe, log=notice)
        return self._index

    def __getstate__(self):
        return {**self.__dict__, "_index": None} if self.recipe else self.__dict__

    def predict_proba(self, x) -> np.ndarray:
        ids, sims = search.top_k(self.index, ArrayRows(np.asarray(x, np.float32)), self.k,
                                 nprobe=getattr(self, "nprobe", None))
        dist = np.clip(1.0 - sims.astype(np.float64), 0.0, 2.0)
        if self.weighting == "uniform":
            weights = np.ones_like(dist)
        else:
            with np.errstate(divide="ignore"):
                weights = 1.0 / dist
            zero = np.isinf(weights)
            rows = zero.any(axis=1)
            weights[rows] = zero[rows]
        weights[ids < 0] = 0.0
        proba = np.zeros((len(ids), self.n_classes))
        np.add.at(proba, (np.repeat(np.arange(len(ids)), ids.shape[1]), self.labels[np.maximum(ids, 0)].reshape(-1)),
                  weights.reshape(-1))
        total = proba.sum(axis=1, keepdims=True)
        return proba / np.where(total == 0, 1.0, total)

    def predict(self, x) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)


def train_knn(fs: store.RowSet, s: dict, out_dir: Path, verbose=0, threads=None):
    """Index the standardized train rows (every stored view of each image): the features file's
    cached index (CACHE/indexes) when they are the file's whole train split, an index in memory for
    a subset (a fold of the label audit, rows left out by --exclude). Returns (model, None,
    metrics: the training rows and the index: kind, lists, nprobe, recall@10 on val); saved as
    out_dir/model.joblib."""
    tr = fs.splits["train"]
    views_ = len(tr.views)
    y = np.tile(tr.labels, views_)
    if s["k"] > len(y):
        raise UserError(f"k must be at most the number of training rows ({len(y)}), got {s['k']}")
    cache_dir = Path(out_dir).absolute().parent.parent
    whole = Path(out_dir).absolute().parent.name == layout.HEADS_DIR and _whole_split(fs)
    if whole:
        recipe = {"cache_dir": str(cache_dir), "path": str(Path(fs.path).absolute()), "attrs": fs.attrs,
                  "parts": search.parts(["train"], views_), "standardize": True}
        index = search.cached_index(**recipe, log=notice)
        val = search.FileRows(fs.path, search.parts(["val"]))
    else:       # a subset's index is built in memory: a streamed file's kept train rows are read into it
        rows = ArrayRows(np.concatenate([v[0:len(v)] for v in tr.views]))
        recipe, index = None, search.build(rows, standardizer(rows), log=lambda *_: None)
        val = ArrayRows(fs.splits["val"].features[0:len(fs.splits["val"].features)])
    found = search.recall(index, val)              # the nprobe its queries need; None: exact
    import joblib
    model = IndexKnn(index, y, len(fs.class_names), s["k"], s["weighting"], recipe, found and found["nprobe"])
    joblib.dump(model, Path(out_dir) / layout.MODEL_JOBLIB)
    used = {**search.summary(index, found), "settings": index.meta["settings"]}
    return model, None, {"train_rows": int(len(y)), "search": used}


def _whole_split(fs: store.RowSet) -> bool:
    """Whether fs's train split is the file's whole train split (not a fold or --exclude's subset)."""
    import h5py
    try:
        with h5py.File(fs.path, "r") as f:
            return f["train"]["labels"].shape[0] == len(fs.splits["train"].labels)
    except (OSError, KeyError, TypeError):
        return False
