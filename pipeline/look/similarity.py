"""Cosine similarity over feature rows by brute force in blocks of queries: the k most similar rows
(`neighbors`) and every pair above a threshold (`audit`). Exact, and fast enough at CIFAR size."""
from __future__ import annotations

import numpy as np

from pipeline.foundation.errors import UserError


BLOCK = 1024           # queries per matrix product: 1024 x 50,000 float32 similarities = 200 MB


def unit_rows(x) -> np.ndarray:
    """Rows scaled to length 1 (all-zero rows stay zero), float32: dot products are cosines."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.finfo(np.float32).tiny)


def top_k(queries, base, k: int, exclude=None, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities), each (len(queries), k), most similar first. `exclude[i]`: a row of
    `base` that query i must not return (itself), or -1."""
    q, b = unit_rows(queries), unit_rows(base)
    k = min(k, len(b) - (exclude is not None))
    idx = np.zeros((len(q), k), np.int64)
    sim = np.zeros((len(q), k), np.float32)
    for lo in range(0, len(q), block):
        s = q[lo:lo + block] @ b.T
        if exclude is not None:
            ex = np.asarray(exclude[lo:lo + block])
            hit = ex >= 0
            s[np.flatnonzero(hit), ex[hit]] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        idx[lo:lo + block] = np.take_along_axis(part, order, axis=1)
        sim[lo:lo + block] = np.take_along_axis(s, idx[lo:lo + block], axis=1)
    return idx, sim


def pairs_above(queries, base, threshold: float, block: int = BLOCK, limit: int | None = None):
    """(query rows, base rows, similarities) of every pair with cosine >= threshold, and each
    query's nearest-neighbour cosine (its largest), by brute force in blocks. More than `limit`
    pairs is refused (a threshold that low matches nearly everything)."""
    q, b = unit_rows(queries), unit_rows(base)
    qi, bi, sv, nearest = [], [], [], []
    total = 0
    for lo in range(0, len(q), block):
        s = q[lo:lo + block] @ b.T
        nearest.append(s.max(axis=1) if s.shape[1] else np.full(len(s), -1.0, np.float32))
        r, c = np.nonzero(s >= threshold)
        total += len(r)
        if limit is not None and total > limit:
            raise UserError(f"more than {limit:,} pairs reach cosine similarity {threshold}; "
                            "raise the threshold (duplicates are rare: try --threshold auto, or 0.9 or more)")
        qi.append(r + lo)
        bi.append(c)
        sv.append(s[r, c])
    return np.concatenate(qi), np.concatenate(bi), np.concatenate(sv), np.concatenate(nearest)
