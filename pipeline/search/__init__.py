"""The project's one cosine search: `neighbors`, the knn head, `audit` and the label audit's neighbour
evidence all search through it. Its floor is just above the row store (it reads a features file's
rows in chunks and nothing else of the project) and below sources, heads and look, which use it.

  index    the index: exact (every row compared, faiss's IndexFlatIP block by block) up to
           EXACT_ROWS rows, an inverted file (IndexIVFFlat's layout, faiss k-means) above, rows on
           disk in list order; its SETTINGS are part of the identity of every answer using it
  cache    built once per features file, searched parts, transform and settings, in CACHE/indexes/
  query    top_k, pairs_above and recall (recall@10 against the exact search on a seeded sample
           of queries, recorded with every answer that used the approximate index)
  rows     rows from a features file a chunk at a time, or from arrays; the cosine transform"""
from __future__ import annotations

from pipeline.search.cache import cached_index
from pipeline.search.builder import build
from pipeline.search.index import EXACT_ROWS, SETTINGS, Index, set_threads
from pipeline.search.query import pairs_above, recall, top_k
from pipeline.search.rows import ArrayRows, FileRows, Transform, unit_rows

__all__ = ["EXACT_ROWS", "SETTINGS", "SHARED", "ArrayRows", "FileRows", "Index", "Transform", "build", "cached_index",
           "index_of_splits", "pairs_above", "parts", "recall", "set_threads", "summary", "top_k", "unit_rows"]


def parts(splits, views: int = 1) -> list[tuple[str, str]]:
    """The searched parts of a features file: each split's features (and, with 2 views, each
    split's mirrored features after all the first views, as views.training_rows orders them)."""
    from pipeline.store import MIRRORED
    return [(s, "features") for s in splits] + ([(s, MIRRORED) for s in splits] if views == 2 else [])


# The rows indexed for a search of train, or of train and val: one index serves `neighbors`' default
# search and both directions of `audit` (a search of train is the index's first part: its ids below
# the train rows), so a features file is indexed once for all of them.
SHARED = ("train", "val")


def index_of_splits(cache_dir, path, attrs: dict, splits, sizes: dict, log=print) -> tuple[Index, int | None]:
    """(the cached index a search of `splits` of a features file goes through, the bound on the ids
    it may answer: None for all). `sizes`: each split's rows."""
    splits = tuple(splits)
    indexed = SHARED if splits == SHARED[:len(splits)] else splits
    index = cached_index(cache_dir, path, attrs, parts(indexed), log=log)
    below = sum(sizes[s] for s in splits)
    return index, (None if below == index.rows else below)


def summary(index: Index, measured: dict | None, folder=None) -> dict:
    """What an answer records of the index it used: kind, rows, lists, nprobe, the threshold, and
    recall@10 against the exact search (1.0 for the exact index, by construction; `measured`, from
    `recall`, for the approximate one), plus the recall nprobe was chosen by."""
    meta = index.meta
    nprobe = measured["nprobe"] if measured else meta["nprobe"]
    return {"kind": meta["kind"], "rows": int(meta["rows"]), "nlist": int(meta["nlist"]), "nprobe": int(nprobe),
            "exact_rows": int(meta["settings"]["exact_rows"]),
            "recall_at_10": 1.0 if measured is None else measured["recall"], "recall": measured,
            "build_recall": meta.get("build_recall"), **({"folder": str(folder)} if folder else {})}
