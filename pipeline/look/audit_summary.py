"""What an audit found and what its threshold means on the data at hand (`audit`): the counts per
split (with how many flagged pairs carry different labels), the distribution of each query image's
nearest-neighbour cosine (test against train + val, val against train) and a threshold derived
from it, one warning line when the threshold in use flags most of a split, and a run's test
accuracy with and without the flagged images, each with its 95% Wilson interval.

A near-duplicate is an outlier in the upper tail of that distribution: most images' nearest
neighbour is an ordinary look-alike, whose similarity depends on the backbone and the data (on
CIFAR-10 through EfficientNet-Lite0 the median is 0.78; on close-ups against white backgrounds it
can pass 0.9). The derived threshold is the robust outlier cut median + ROBUST_K scaled MADs
(Leys et al., 2013: the median absolute deviation times 1.4826 estimates the standard deviation
without letting the outliers move it), at most 1."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.foundation import stats
from pipeline.foundation.errors import warn
from pipeline.foundation.tables import format_table
from pipeline import search, store

# (queries, searched): test against everything trained on or selected with; val against train.
DIRECTIONS = (("test", ("train", "val")), ("val", ("train",)))
# Counts are also given at these thresholds (those above --threshold), so one run shows how the count
# falls as the threshold rises; on CIFAR-10 through EfficientNet-Lite0 it falls from 9.2% of the test
# images at 0.85 to 1.9% at 0.90 and 0.15% at 0.95 (see the README).
LADDER = (0.8, 0.85, 0.88, 0.9, 0.92, 0.95, 0.98)
ROBUST_K = 3.0
MAD_TO_SD = 1.4826
CROWDED = 0.5          # a threshold that flags more than this share of a split's images means nothing
METHOD = (f"median + {ROBUST_K:g} x 1.4826 x MAD of every query image's nearest-neighbour cosine "
          "(test against train + val, val against train), at most 1")


def searched_index(fs: store.RowSet, searched, cache_dir, log=print) -> tuple[search.Index, int | None]:
    """(the cached index a direction searches, the bound on its ids): train + val, shared by both
    directions (val against train searches its first part) and by `neighbors`' default."""
    return search.index_of_splits(cache_dir, fs.path, fs.attrs, searched,
                                  {s: len(fs.splits[s].labels) for s in searched}, log)


def query_rows(fs: store.RowSet, split: str) -> search.FileRows:
    """A direction's queries, read from the file a chunk at a time."""
    return search.FileRows(fs.path, search.parts([split]))


def nearest_cosines(fs: store.RowSet, cache_dir, log=print) -> dict:
    """{query split: each of its images' nearest-neighbour cosine in the splits it is searched in}."""
    out = {}
    for query, searched in DIRECTIONS:
        index, below = searched_index(fs, searched, cache_dir, log)
        measured = search.recall(index, query_rows(fs, query), below=below)
        out[query] = search.top_k(index, query_rows(fs, query), 1, below=below,
                                  nprobe=measured and measured["nprobe"])[1][:, 0]
    return out


def derived(nearest: dict) -> dict:
    """{"threshold", "median", "mad", "method"} from {query split: nearest-neighbour cosines}."""
    s = np.concatenate([np.asarray(v, np.float64) for v in nearest.values()])
    if not len(s):
        return {"threshold": 1.0, "median": None, "mad": None, "method": METHOD}
    median = float(np.median(s))
    mad = MAD_TO_SD * float(np.median(np.abs(s - median)))
    return {"threshold": round(min(1.0, median + ROBUST_K * mad), 4), "median": round(median, 4),
            "mad": round(mad, 4), "method": METHOD}


def flagged_at(nearest: dict, threshold: float) -> dict:
    """{query split: how many of its images have a nearest neighbour at or above `threshold`}."""
    return {q: int(np.sum(np.asarray(v) >= threshold)) for q, v in nearest.items()}


def crowding_warning(summary: dict, threshold: float, suggestion: dict) -> str | None:
    """One line when `threshold` flags more than CROWDED of a split's images, else None."""
    crowded = [f"{s['with_duplicate']:,} of {s['rows']:,} {q} images" for q, s in summary.items()
               if s["rows"] and s["with_duplicate"] / s["rows"] > CROWDED]
    if not crowded:
        return None
    return (f"cosine >= {threshold:g} flags {' and '.join(crowded)} as near-duplicates: on this data that is "
            f"ordinary similarity, not copying; the data's own cut is {suggestion['threshold']:g} "
            f"(--threshold auto)")


def summarize(fs: store.RowSet, pairs, threshold: float) -> dict:
    """Per query split: its rows, how many have a duplicate (and an exact copy), its pairs and how
    many carry different labels, and how many images keep a match at each LADDER step above
    `threshold`. `pairs`: the audit's PairTable."""
    out = {}
    c = pairs.columns
    for query, searched in DIRECTIONS:
        mine = c["split"] == store.SPLITS.index(query)
        n = len(fs.splits[query].labels)
        best = np.full(n, -np.inf)
        np.maximum.at(best, c["row"][mine], c["similarity"][mine])
        found = best > -np.inf
        out[query] = {"rows": n, "with_duplicate": int(found.sum()), "share": round(int(found.sum()) / n, 5),
                      "exact_copies": len(np.unique(c["row"][mine & c["exact"]])), "pairs": int(mine.sum()),
                      "label_disagrees": int((mine & (c["class"] != c["other_class"])).sum()),
                      "searched": list(searched),
                      "with_duplicate_at": {str(t): int((best[found] >= t).sum()) for t in LADDER if t > threshold}}
    return out


def accuracy_without(run_dir: Path, csv_path: Path, table: list[dict], test_duplicates: set[int]) -> dict:
    """Test accuracy of a run on all test rows and on those without a duplicate in train (None
    when every test image has one), each with its 95% Wilson interval (stats.accuracy)."""
    clean = [r for r in table if r["source_index"] not in test_duplicates]
    return {"run": str(run_dir), "predictions": str(csv_path),
            "test_accuracy": stats.accuracy(sum(bool(r["correct"]) for r in table), len(table)),
            "test_accuracy_without_duplicates": stats.accuracy(sum(bool(r["correct"]) for r in clean), len(clean))
            if clean else None, "test_rows_without_duplicates": len(clean)}


def accuracy_text(a: dict) -> str:
    return stats.interval_text(a["accuracy"], a["low"], a["high"])


def print_summary(result: dict, log=print):
    rows_ = [[q, s["rows"], s["with_duplicate"], f"{100 * s['share']:.2f}%", s["exact_copies"], s["pairs"],
              s["label_disagrees"], "+".join(s["searched"])] for q, s in result["summary"].items()]
    log(f"near-duplicates at cosine >= {result['threshold']}"
        f"{'' if result['exact_check'] else ' (exact-copy check skipped)'}:")
    log(format_table(["split", "rows", "with duplicate", "share", "exact copies", "pairs",
                      "other label", "searched"], rows_))
    log("flagged pairs that carry different labels: " + ", ".join(
        f"{q} {s['label_disagrees']:,} of {s['pairs']:,}" for q, s in result["summary"].items()))
    own = result.get("data_threshold") or {"median": None, "threshold": 1.0}
    if own["median"] is not None:
        log(f"this data's nearest-neighbour cosines: median {own['median']:.4f}, scaled MAD {own['mad']:.4f}; "
            f"its own cut (--threshold auto) is {own['threshold']:g}, which flags "
            + ", ".join(f"{n:,} {q}" for q, n in own["would_flag"].items()) + " images")
    crowded = crowding_warning(result["summary"], result["threshold"], own)
    if crowded:
        warn(crowded)
    for q, s in result["summary"].items():
        if s.get("with_duplicate_at"):
            log(f"{q} images with a match at a stricter threshold: "
                  + ", ".join(f">= {t}: {n}" for t, n in s["with_duplicate_at"].items()))
