"""The `audit` command: near-duplicate and exact-copy pairs across splits, and a run's accuracy without them."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import search, store
from pipeline.foundation import flags, identity, layout, outputs, records, settings, stats
from pipeline.foundation.errors import UserError
from pipeline.foundation.settings import Checked, Interval, setting
from pipeline.foundation.gallery import save_grid
from pipeline.heads.mistakes import find_report, read_predictions
from pipeline.look import audit_summary, labels
from pipeline.look.pair_table import PairTable
from pipeline.look.audit_summary import (DIRECTIONS, accuracy_text, accuracy_without, nearest_cosines,
                                         print_summary, query_rows, searched_index, summarize)
from pipeline.sources import rows
from pipeline.store.features import features_from_args


SHOW = 24              # pairs drawn in pairs.png and borderline.png
MAX_PAIRS = 1_000_000  # more than this means the threshold is far too low to mean "duplicate"


def pixel_digests(attrs: dict, split: str, index, data_path=None) -> list[str]:
    return [hashlib.sha1(img.tobytes()).hexdigest() for img in rows.stream(attrs, split, index, data_path)]


def find_pairs(fs: store.RowSet, threshold: float, digests: dict | None, cache_dir, log=print
               ) -> tuple[PairTable, dict, dict]:
    """(every (query split row, searched split row) pair with cosine >= threshold or identical
    pixels (`digests`: split -> per-row pixel hashes; None skips the exact check), {query split:
    each image's nearest-neighbour cosine}, {query split: the index searched and its recall@10})."""
    tables, nearest, used = [], {}, {}
    for query, searched in DIRECTIONS:
        (index, below), queries = searched_index(fs, searched, cache_dir, log), query_rows(fs, query)
        used[query] = search.summary(index, search.recall(index, queries, below=below))   # its nprobe, recall@10
        *hits, nearest[query] = search.pairs_above(index, queries, threshold, MAX_PAIRS, below=below,
                                                   nprobe=used[query]["nprobe"])
        qi, bi, sim = hits
        exact = np.zeros(len(qi), bool)
        if digests is not None:
            qi, bi, sim, exact = _with_exact_copies(fs, query, searched, digests, queries, qi, bi, sim)
        tables.append(PairTable.of_direction(fs, query, searched, qi, bi, sim, exact))
    return PairTable.joined(fs.class_names, tables), nearest, used


def _with_exact_copies(fs, query, searched, digests, queries, qi, bi, sim):
    """The pairs found plus every pair of identical pixels (a copy whose features drifted below the
    threshold), and which pairs are identical. Ids count rows across the `searched` splits in order."""
    searched_digests = [d for s in searched for d in digests[s]]       # numbered as the index numbers its rows
    found = dict(zip(zip(qi.tolist(), bi.tolist()), sim.tolist()))
    base, at = search.FileRows(fs.path, search.parts(searched)), {}    # digest -> its ids
    for b, d in enumerate(searched_digests):
        at.setdefault(d, []).append(b)
    for q, d in enumerate(digests[query]):
        for b in at.get(d, ()):
            if (q, b) not in found:
                found[(q, b)] = float(search.unit_rows(queries.take([q]))[0] @ search.unit_rows(base.take([b]))[0])
    qi, bi = (np.array([k[j] for k in found], np.int64) for j in (0, 1))
    exact = np.array([digests[query][q] == searched_digests[b] for q, b in found], bool)
    return qi, bi, np.array(list(found.values()), np.float64), exact


def run_predictions(run_dir: Path, fs: store.RowSet, cache_dir) -> tuple[Path, list[dict]]:
    """The test rows of a run's predictions.csv, checked to cover exactly this file's test images
    (rows matched by source index, so any run on the same images works)."""
    csv_path = _predictions_of(run_dir, cache_dir)
    table = [r for r in read_predictions(csv_path) if r["split"] == "test"]
    ours = set(fs.splits["test"].index.tolist())
    theirs = {r["source_index"] for r in table}
    if theirs != ours:
        raise UserError(f"{csv_path} covers other test images than {fs.path.name} "
                        f"({len(theirs)} vs {len(ours)} rows); audit the features file that run used")
    return csv_path, table


def _predictions_of(run_dir: Path, cache_dir) -> Path:
    found = find_report(run_dir, cache_dir)
    if found is not None:
        return found / layout.PREDICTIONS
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir} does not exist")
    raise UserError(f"--run {run_dir} has no predictions.csv (runs made before it existed lack one; "
                    "rerun the head or fine-tune)")


# ---------------------------------------------------------------- command line

def _threshold(value):
    """A cosine in (0, 1], or "auto": the cut derived from the data (audit_summary.derived)."""
    return "auto" if value == "auto" else Interval(float, 0, 1, closed="right").parse(value)


@dataclass
class AuditSettings:
    features: str | None = flags.features_setting()
    threshold: float | str = setting(0.9, Checked(_threshold, "in (0, 1], or auto", "T|auto"),
                                     "cosine similarity at or above which two images count as near-duplicates; it "
                                     "depends on the backbone and the data: look at borderline.png and at the cut "
                                     "the audit derives from this data's nearest-neighbour cosines, which auto "
                                     "takes (0.9 was chosen for EfficientNet-Lite0 on all of CIFAR-10)")
    run_dir: str | None = setting(None, None, "a head or fine-tune run folder: also report its test accuracy with "
                                  "and without the test images that have a duplicate in train (with --labels: "
                                  "its probabilities score val and test)", flag="--run",
                                  metavar="DIR", record=False)
    no_exact: bool = setting(False, None, "skip the exact-copy check (it decodes every image)")
    data: str | None = flags.moved_data_setting()
    cache_dir: str = flags.cache_dir_setting()


HELP = """Near-duplicates across splits: test images with a near-copy in the source's train set (train or
val split), and val images with one in train, by cosine similarity of cached features, plus every
exact copy (identical pixels, found by hashing the source images, whatever the threshold).

  python -m pipeline audit --features F --threshold 0.9|auto [--run cache/heads/RUN]

What the threshold means on this data: every query image's nearest-neighbour cosine is recorded,
and the cut their distribution gives (median + 3 scaled MADs: the usual outlier rule) is printed
with how many images it would flag; --threshold auto uses it. A threshold that flags most of a
split gets one warning line, and how many flagged pairs carry different labels is said.
Writes cache/audit/<features file>-<hash>/: audit.json (counts, every pair), pairs.csv, pairs.png
(the most similar pairs) and borderline.png (the least similar pairs still counted: look at them to
choose the threshold). With --run, also that run's test accuracy with and without the test images
that have a duplicate in train, each with its 95% interval. The images come from the features file's own source,
checked by its fingerprint; without --no-exact it must be there.

""" + labels.HELP


def add_arguments(p):
    settings.add_flags(p, AuditSettings)
    labels.add_arguments(p)


def run(args):
    run_audit(settings.from_args(AuditSettings, args), label_settings=labels.from_args(args))


def run_audit(s: AuditSettings, log=print, label_settings: labels.LabelSettings | None = None) -> Path:
    """Audit (or find up to date) the features file, print the summary; return the audit's folder.
    With `label_settings.labels`, the label audit too (pipeline.look.labels), in the same folder."""
    s = settings.check(s)
    # the label audit's heads need the rows in memory; the duplicate search reads them from the file
    fs = features_from_args(s) if label_settings and label_settings.labels else search.rows.features_on_disk(s)
    # everything the user named is checked before the audit's work: the run, then the images
    predictions = run_predictions(Path(s.run_dir), fs, s.cache_dir) if s.run_dir else None
    job = labels.prepare(label_settings, fs, s.run_dir, predictions and predictions[0])
    duplicates = job is None or job.duplicates
    exact = duplicates and not s.no_exact
    if exact:           # the exact check needs the images; the galleries alone can go without
        source, note = rows.checked_source(fs.attrs, s.data, s.cache_dir), None
    else:
        source, note = rows.source_or_note(fs.attrs, s.data, s.cache_dir)
    out = layout.folder(s.cache_dir, layout.AUDIT_DIR) / identity.name(
        {**identity.of_features(fs.attrs), "source": source and source.key,
         # answer 2: with the nearest-neighbour cosines' cut
         **({"threshold": s.threshold, "exact": exact, "answer": 2, "index": search.SETTINGS} if duplicates else {}),
         **(job.key if job else {})},
        fs.path.stem)

    def done():       # a damaged answer is an error naming it, never "up to date"
        return (not duplicates or ((out / layout.AUDIT_JSON).is_file()
                                   and bool(records.read(out / layout.AUDIT_JSON, records.AUDIT_ANSWER)))) \
            and (job is None or job.done(out))

    def make():
        write_labels = job and (lambda tmp: job.write(tmp, source, note, log))
        if duplicates:
            return audit(fs, s.threshold, exact, source, note, out, also=write_labels, cache_dir=s.cache_dir, log=log)
        with outputs.atomic_dir(out) as tmp:
            write_labels(tmp)

    _, result = outputs.produce(out, done, make, log)
    if duplicates:
        print_summary(result or records.read(out / layout.AUDIT_JSON, records.AUDIT_ANSWER), log)
    if job:
        job.report(out, log)
    if predictions and duplicates:
        result = result or records.read(out / layout.AUDIT_JSON, records.AUDIT_ANSWER)
        acc = accuracy_without(Path(s.run_dir), *predictions, set(result["test_duplicate_source_index"]))
        clean = acc["test_accuracy_without_duplicates"]
        log(f"run {Path(acc['run']).name}: test accuracy {accuracy_text(acc['test_accuracy'])} on all "
            f"{len(fs.splits['test'].labels)} test images, "
            + (f"{accuracy_text(clean)} on the {acc['test_rows_without_duplicates']} without a duplicate in train"
               if clean is not None else "none without a duplicate in train")
            + f" ({stats.ACCURACY_METHOD})")
    log(out)
    return out


def audit(fs: store.RowSet, threshold: float | str, exact: bool, source: rows.Source | None, note: str | None,
          out: Path, also=None, cache_dir="cache", log=print) -> dict:
    """`source`: the checked image source (None: it is gone, and `note` says why nothing is drawn).
    `also(tmp)`: writes more into the folder before it appears (the label audit)."""
    digests = ({s: pixel_digests(fs.attrs, s, fs.splits[s].index, source.path) for s in store.SPLITS}
               if exact else None)
    given = threshold
    if threshold == "auto":      # one more pass over the similarities: the cut first, then the pairs above it
        threshold = audit_summary.derived(nearest_cosines(fs, cache_dir, log))["threshold"]
    pairs, nearest, used = find_pairs(fs, threshold, digests, cache_dir, log)
    own = audit_summary.derived(nearest)
    own["would_flag"] = audit_summary.flagged_at(nearest, own["threshold"])
    result = {"features": str(Path(fs.path).absolute()), "threshold": threshold, "threshold_given": given,
              "exact_check": exact, "summary": summarize(fs, pairs, threshold), "data_threshold": own,
              "test_duplicate_source_index": np.unique(pairs.columns["source_index"][
                  pairs.columns["split"] == store.SPLITS.index("test")]).tolist(),
              "search_index": used, "pairs_file": layout.PAIRS_CSV}
    with outputs.atomic_dir(out) as tmp:       # under the lock outputs.produce holds
        by_similarity = pairs.by_similarity()
        if source is None:
            result["gallery"] = result["borderline"] = note
        else:
            result["gallery"] = draw_pairs(tmp / layout.PAIRS_PNG, fs, pairs.take(by_similarity[:SHOW]), source.path,
                                           "most similar pairs")
            result["borderline"] = draw_pairs(tmp / layout.BORDERLINE_PNG, fs, pairs.take(by_similarity[-SHOW:]),
                                              source.path, f"least similar pairs still >= {threshold}")
        pairs.write_csv(tmp / layout.PAIRS_CSV)
        (tmp / layout.AUDIT_JSON).write_text(json.dumps(result, indent=2))
        if also:
            also(tmp)
    return {**result, "pairs": pairs}


def draw_pairs(path: Path, fs: store.RowSet, shown: list[dict], data_path, what: str) -> str:
    """Pairs, each as two cells side by side (query image, then its match)."""
    if not shown:
        return "no pairs"
    items = [it for p in shown for it in ((p["split"], p["source_index"]), (p["other_split"], p["other_source_index"]))]
    try:
        images = rows.images_of(fs.attrs, items, data_path)
    except (UserError, OSError) as exc:
        return rows.unreadable(exc)
    captions = [c for p in shown for c in (f"{p['split']} {p['class']}\n{'exact' if p['exact'] else round(p['similarity'], 3)}",
                                           f"{p['other_split']} {p['other_class']}\n#{p['other_source_index']}")]
    colors = [c for p in shown for c in ("black", "black" if p["class"] == p["other_class"] else "red")]
    save_grid(path, images, captions, columns=8, colors=colors,
              title=f"{what} (left: {shown[0]['split']} image, right: its match; red = other label)")
    return path.name
