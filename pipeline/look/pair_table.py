"""The pairs an audit flags, held as columns (one numpy array a field) rather than a dict a pair: a
features file with many near-copies can flag a million pairs, and a Python dict a pair costs about
1 KB of memory where a row of these columns costs 31 bytes. Written to pairs.csv a row at a
time (audit.json holds the counts, not the pairs); `read_pairs` gives them back, typed."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.foundation import layout

FIELDS = ("split", "row", "source_index", "class", "other_split", "other_row", "other_source_index",
          "other_class", "similarity", "exact")
_INTS = ("row", "source_index", "other_row", "other_source_index")
_CODED = {"split": "splits", "other_split": "splits", "class": "classes", "other_class": "classes"}
# 31 bytes a pair: rows and source indices fit int32 (a features file's split holds fewer than 2**31 rows)
DTYPES = {"split": np.int8, "row": np.int32, "source_index": np.int32, "class": np.int16, "other_split": np.int8,
          "other_row": np.int32, "other_source_index": np.int32, "other_class": np.int16, "similarity": np.float64,
          "exact": bool}


class PairTable:
    """Pairs as columns: `split`/`other_split` are codes into store.SPLITS, `class`/`other_class`
    codes into the class names; similarity is rounded to 6 places. Iterating (or indexing) gives
    each pair as the dict of FIELDS a pairs.csv row holds."""

    def __init__(self, class_names, columns: dict | None = None):
        self.names = {"splits": tuple(store.SPLITS), "classes": tuple(class_names)}
        self.columns = {f: np.asarray((columns or {}).get(f, ()), DTYPES[f]) for f in FIELDS}

    @classmethod
    def of_direction(cls, fs: store.RowSet, query: str, searched, qi, bi, sim, exact) -> "PairTable":
        """The pairs (query row qi, searched id bi) of one direction, ids counting rows across the
        `searched` splits in order, sorted most similar first, then by (query row, id)."""
        qi, bi = np.asarray(qi), np.asarray(bi)
        sim, exact = np.asarray(sim, np.float64), np.asarray(exact, bool)
        order = np.lexsort((bi, qi, -sim))
        qi, bi, sim, exact = qi[order], bi[order], sim[order], exact[order]
        starts = np.cumsum([0] + [len(fs.splits[s].labels) for s in searched])
        part = np.searchsorted(starts, bi, side="right") - 1
        other_row = bi - starts[part]
        other_index, other_class = np.zeros(len(bi), np.int64), np.zeros(len(bi), np.int64)
        for p, s in enumerate(searched):
            mine = part == p
            other_index[mine] = fs.splits[s].index[other_row[mine]]
            other_class[mine] = fs.splits[s].labels[other_row[mine]]
        q = fs.splits[query]
        codes = {s: store.SPLITS.index(s) for s in store.SPLITS}
        return cls(fs.class_names, {
            "split": np.full(len(qi), codes[query], np.int64), "row": qi,
            "source_index": np.asarray(q.index, np.int64)[qi], "class": np.asarray(q.labels, np.int64)[qi],
            "other_split": np.array([codes[s] for s in searched], np.int64)[part], "other_row": other_row,
            "other_source_index": other_index, "other_class": other_class,
            "similarity": np.round(sim, 6), "exact": exact})

    @classmethod
    def joined(cls, class_names, tables: list["PairTable"]) -> "PairTable":
        return cls(class_names, {f: np.concatenate([t.columns[f] for t in tables]) for f in FIELDS} if tables else None)

    def __len__(self) -> int:
        return len(self.columns["row"])

    def __getitem__(self, i: int) -> dict:
        out = {}
        for f in FIELDS:
            value = self.columns[f][i]
            out[f] = (self.names[_CODED[f]][int(value)] if f in _CODED else bool(value) if f == "exact"
                      else float(value) if f == "similarity" else int(value))
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def by_similarity(self) -> np.ndarray:
        """Positions, most similar first (ties in table order)."""
        return np.argsort(-self.columns["similarity"], kind="stable")

    def take(self, positions) -> list[dict]:
        return [self[int(i)] for i in positions]

    def write_csv(self, path: Path):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(FIELDS), lineterminator="\n")
            writer.writeheader()
            writer.writerows(iter(self))


def read_pairs(folder) -> list[dict]:
    """The pairs of an audit's folder (its pairs.csv), each a dict of FIELDS with ints, float and bool."""
    with open(Path(folder) / layout.PAIRS_CSV, newline="", encoding="utf-8") as f:
        return [{**r, **{k: int(r[k]) for k in _INTS}, "similarity": float(r["similarity"]),
                 "exact": r["exact"] == "True"} for r in csv.DictReader(f)]
