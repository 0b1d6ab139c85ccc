"""The knn head: the training-free k-nearest-neighbour probe of DINO- and CLIP-style evaluations,
searched through the project's one index (pipeline.search): the standardized training rows (every
stored view of each image), compared by cosine similarity, exact up to search.EXACT_ROWS rows and
approximate above (its recall@10 against the exact search measured on val and recorded in the run's
metrics). Its votes are scikit-learn's KNeighborsClassifier's (metric="cosine"), as before."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import search, store
from pipeline.extract import views
from pipeline.foundation import layout
from pipeline.foundation.errors import UserError
from pipeline.search.rows import ArrayRows, standardizer


class IndexKnn:
    """predict_proba(x) as KNeighborsClassifier(n_neighbors=k, weights, metric="cosine") after a
    StandardScaler gives it: cosine distance 1 - similarity; "distance" votes weigh 1/distance, and
    a query with a neighbour at distance 0 takes only those neighbours' votes."""

    def __init__(self, index: search.Index, labels: np.ndarray, n_classes: int, k: int, weighting: str):
        self.index, self.labels, self.n_classes = index, np.asarray(labels), n_classes
        self.k, self.weighting = k, weighting

    def predict_proba(self, x) -> np.ndarray:
        ids, sims = search.top_k(self.index, ArrayRows(np.asarray(x, np.float32)), self.k)
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
    """Index the standardized train rows (every stored view of each image). Returns (model, None,
    metrics: the training rows and the index: kind, lists, nprobe and recall@10 on val); saved as
    out_dir/model.joblib."""
    tr = fs.splits["train"]
    x, y = views.training_rows(tr)
    if s["k"] > len(y):
        raise UserError(f"k must be at most the number of training rows ({len(y)}), got {s['k']}")
    rows = ArrayRows(x)
    index = search.build(rows, standardizer(rows), log=lambda *_: None)
    model = IndexKnn(index, y, len(fs.class_names), s["k"], s["weighting"])
    import joblib
    joblib.dump(model, Path(out_dir) / layout.MODEL_JOBLIB)
    found = search.recall(index, ArrayRows(fs.splits["val"].features))
    used = {**search.summary(index, found), "settings": index.meta["settings"]}
    return model, None, {"train_rows": int(len(y)), "search": used}

