"""Searching an index (index.py) a chunk of queries at a time: the k most similar rows, every pair
above a threshold with each query's nearest cosine, and recall@k of the approximate search against
the exact one on a seeded sample of queries. Memory: a chunk of queries, a block of one list's rows
and their similarities (at most SIMILARITIES floats), and the answers."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.search.index import NPROBES, RECALL_K, RECALL_QUERIES, RECALL_TARGET, SEED, Index
from pipeline.search.rows import ArrayRows, Transform, as_rows

# Queries transformed and probed at once: 256 MB of them (52,428 at width 1280), whatever the rows, so
# a search reads the stored rows once per chunk (a pass over the index file) as few times as it can.
QUERY_BYTES = 256 << 20
BLOCK = 32_768            # stored rows read at once: 160 MB at width 1280
SIMILARITIES = 16 << 20   # similarities computed at once: 64 MB of float32


def _pieces(index: Index, probes: np.ndarray, nprobe_all: bool = False):
    """(query rows of this chunk, stored lo, stored hi) for every block of every list the chunk
    probes; `nprobe_all`: every query against every list (the exact search through any index)."""
    nlist = len(index.offsets) - 1
    if nprobe_all:          # every row: the lists are contiguous, so the whole store is one run of blocks
        spans = [(0, index.rows, np.arange(len(probes)))]
    else:
        flat = probes.reshape(-1)
        order = np.argsort(flat, kind="stable")
        queries = order // probes.shape[1]
        bounds = np.searchsorted(flat[order], np.arange(nlist + 1))
        spans = [(int(index.offsets[l]), int(index.offsets[l + 1]), queries[bounds[l]:bounds[l + 1]])
                 for l in range(nlist) if bounds[l + 1] > bounds[l]]
    for start, end, who in spans:
        for lo in range(start, end, BLOCK):
            hi = min(lo + BLOCK, end)
            step = max(1, SIMILARITIES // max(1, hi - lo))
            for w in range(0, len(who), step):
                yield who[w:w + step], lo, hi


def query_chunk(width: int) -> int:
    return max(64, QUERY_BYTES // (4 * max(1, width)))


def _scan(index: Index, queries, visit, nprobe=None, exact=False, below=None):
    """For each chunk of queries (transformed): visit(chunk lo, chunk size, query rows, stored ids,
    similarities) for every block it meets; returns nothing (visit keeps the answers). `below`:
    only ids below it are answers (a search of the first parts of an index's rows)."""
    for qlo, x in as_rows(queries).chunks(query_chunk(index.width)):
        q = index.transform(x)
        probes = None if exact else index.probes(q, nprobe)
        cached = (None, None, None)
        for who, lo, hi in _pieces(index, probes if probes is not None else np.zeros((len(q), 1), np.int64),
                                   nprobe_all=exact):
            if cached[0] != (lo, hi):
                cached = ((lo, hi), index.read(lo, hi), index.ids[lo:hi])
            sims = q[who] @ cached[1].T
            if below is not None:
                sims[:, cached[2] >= below] = -np.inf
            visit(qlo, len(q), who, cached[2], sims)


def top_k(index: Index, queries, k: int, exclude=None, nprobe=None, exact=False, below=None):
    """(ids, similarities), each (n queries, k), most similar first, ties by smaller id; ids are
    positions in the index's source order. `exclude[i]`: a source row query i must not return
    (itself), or -1. Rows never met (an approximate search with few rows per list) are -1. `below`:
    only ids below it are answers."""
    queries = as_rows(queries)
    k = min(k, (index.rows if below is None else below) - (exclude is not None))
    if k < 1:
        raise UserError("nothing to search: the index holds no other rows")
    best_s = np.full((queries.n, k), -np.inf, np.float32)
    best_i = np.full((queries.n, k), -1, np.int64)
    ex = None if exclude is None else np.asarray(exclude, np.int64)

    def visit(qlo, _, who, ids, s):
        rows = qlo + who
        if ex is not None:
            s[ex[rows][:, None] == ids[None, :]] = -np.inf
        if s.shape[1] > k:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s, cand = np.take_along_axis(s, part, axis=1), ids[part]
        else:
            cand = np.broadcast_to(ids, s.shape)
        all_s = np.concatenate([best_s[rows], s], axis=1)
        all_i = np.concatenate([best_i[rows], cand], axis=1)
        # most similar first; ties by smaller id, never-met (-1) last
        key_i = np.where(all_i < 0, np.iinfo(np.int64).max, all_i)
        order = np.lexsort((key_i, -all_s.astype(np.float64)), axis=1)[:, :k]
        best_s[rows] = np.take_along_axis(all_s, order, axis=1)
        best_i[rows] = np.take_along_axis(all_i, order, axis=1)

    _scan(index, queries, visit, nprobe, exact, below)
    best_i[~np.isfinite(best_s)] = -1
    return best_i, best_s


def pairs_above(index: Index, queries, threshold: float, limit: int | None = None, exact=False, below=None,
                nprobe=None):
    """(query rows, ids, similarities) of every pair with cosine >= threshold that the search meets,
    and each query's nearest cosine (-1 when it meets no row). More than `limit` pairs is refused
    (a threshold that low matches nearly everything). `below`: only ids below it count."""
    queries = as_rows(queries)
    nearest = np.full(queries.n, -1.0, np.float32)
    found, total = [], [0]

    def visit(qlo, _, who, ids, s):
        rows = qlo + who
        if s.shape[1]:
            np.maximum.at(nearest, rows, np.maximum(s.max(axis=1), -1.0))
        r, c = np.nonzero(s >= threshold)
        total[0] += len(r)
        if limit is not None and total[0] > limit:
            raise UserError(f"more than {limit:,} pairs reach cosine similarity {threshold}; raise the threshold "
                            "(duplicates are rare: try --threshold auto, or 0.9 or more)")
        found.append((rows[r].astype(np.int32), ids[c].astype(np.int32), s[r, c]))   # 12 bytes a pair

    _scan(index, queries, visit, nprobe, exact, below)
    qi, bi, sv = (np.concatenate([f[j] for f in found]) if found else np.zeros(0, t)
                  for j, t in enumerate((np.int32, np.int32, np.float32)))
    order = np.lexsort((bi, qi))
    return qi[order], bi[order], sv[order], nearest


def _hits(found, truth) -> float:
    return round(sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(found, truth)) / truth.size, 4)


def recall(index: Index, queries, k: int = RECALL_K, exclude=None, sample: int = RECALL_QUERIES,
           nprobe=None, seed: int = SEED, below=None) -> dict | None:
    """This answer's nprobe and its recall@k against the exact search: the smallest of NPROBES (from
    the index's own, when `nprobe` is not given) whose recall@k on a seeded sample of at most
    `sample` of `queries` reaches RECALL_TARGET, then recall@k at that nprobe measured on a second,
    disjoint seeded sample (the same one when the queries are too few). Tuned on the answer's own
    queries, since the index's rows as queries (its build-time choice) can be far easier: a copy's
    nearest neighbours are its copies, in its own list. None when the index is exact (its answers
    are the exact ones). Both samples' exact answers come from one pass over the rows."""
    if index.meta["kind"] == "flat":
        return None
    queries = as_rows(queries)
    order = np.random.default_rng([seed, 2]).permutation(queries.n)
    first, second = np.sort(order[:sample]), np.sort(order[sample:2 * sample])
    second = second if len(second) == len(first) else first
    both = np.concatenate([first, second])
    x = queries.take(both)
    ex = None if exclude is None else np.asarray(exclude)[both]
    k = min(k, (index.rows if below is None else below) - (exclude is not None))
    truth = top_k(index, x, k, ex, exact=True, below=below)[0]
    a, b = slice(0, len(first)), slice(len(first), len(both))
    ladder = [nprobe] if nprobe else [p for p in NPROBES if p < index.meta["nlist"]] + [index.meta["nlist"]]
    for nprobe in ladder:
        if _hits(top_k(index, x[a], k, None if ex is None else ex[a], nprobe=nprobe, below=below)[0],
                 truth[a]) >= RECALL_TARGET:
            break
    got = _hits(top_k(index, x[b], k, None if ex is None else ex[b], nprobe=nprobe, below=below)[0], truth[b])
    return {"recall": got, "k": int(k), "queries": int(len(second)), "chosen_on": int(len(first)), "seed": seed,
            "nprobe": int(nprobe), "nlist": int(index.meta["nlist"])}


def tune_nprobe(index: Index, log=print) -> tuple[int, dict]:
    """The smallest of NPROBES (at most nlist) whose recall@10 on a seeded sample of the index's own
    rows as queries, each leaving itself out, reaches RECALL_TARGET; and that recall."""
    picked = np.sort(np.random.default_rng([SEED, 3]).choice(index.rows, size=min(RECALL_QUERIES, index.rows),
                                                             replace=False))
    where = np.empty(index.rows, np.int64)
    where[index.ids] = np.arange(index.rows)            # each source row's place in the stored order
    x = np.concatenate([index.read(int(p), int(p) + 1) for p in where[picked]])     # already transformed
    k = min(RECALL_K, index.rows - 1)
    plain = ArrayRows(x)
    index = replace(index, transform=Transform())
    truth = top_k(index, plain, k, picked, exact=True)[0]
    got = None
    for nprobe in [p for p in NPROBES if p < index.meta["nlist"]] + [index.meta["nlist"]]:
        found = top_k(index, plain, k, picked, nprobe=nprobe)[0]
        got = _hits(found, truth)
        if got >= RECALL_TARGET:
            break
    log(f"index: {index.meta['nlist']} lists, nprobe {nprobe}: recall@{k} {got} on {len(picked)} of its rows")
    return int(nprobe), {"recall": got, "k": int(k), "queries": int(len(picked)), "seed": SEED,
                         "nprobe": int(nprobe), "nlist": int(index.meta["nlist"])}
