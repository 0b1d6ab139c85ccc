"""The `audit` command: near-duplicate and exact-copy pairs across splits, and a run's accuracy without them."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.foundation import flags, identity, layout, outputs, records, settings
from pipeline.foundation.errors import UserError
from pipeline.foundation.settings import Interval, setting
from pipeline.foundation.tables import format_table
from pipeline.foundation.gallery import save_grid
from pipeline.heads.mistakes import find_report, read_predictions
from pipeline.look import labels
from pipeline.look.similarity import pairs_above, unit_rows
from pipeline.sources import rows
from pipeline.store.features import features_from_args


# (queries, searched): test against everything trained on or selected with; val against train.
DIRECTIONS = (("test", ("train", "val")), ("val", ("train",)))
SHOW = 24              # pairs drawn in pairs.png and borderline.png
# Counts are also given at these thresholds (those above --threshold), so one run shows how the count
# falls as the threshold rises; on CIFAR-10 through EfficientNet-Lite0 it falls from 9.2% of the test
# images at 0.85 to 1.9% at 0.90 and 0.15% at 0.95 (see the README).
LADDER = (0.8, 0.85, 0.88, 0.9, 0.92, 0.95, 0.98)
MAX_PAIRS = 1_000_000  # more than this means the threshold is far too low to mean "duplicate"
PAIR_FIELDS = ("split", "row", "source_index", "class", "other_split", "other_row", "other_source_index",
               "other_class", "similarity", "exact")


def pixel_digests(attrs: dict, split: str, index, data_path=None) -> list[str]:
    return [hashlib.sha1(img.tobytes()).hexdigest() for img in rows.stream(attrs, split, index, data_path)]


def find_pairs(fs: store.RowSet, threshold: float, digests: dict | None) -> list[dict]:
    """Every (query split row, searched split row) pair with cosine >= threshold or identical
    pixels (`digests`: split -> per-row pixel hashes; None skips the exact check)."""
    out = []
    for query, searched in DIRECTIONS:
        q = fs.splits[query]
        where = [(s, r) for s in searched for r in range(len(fs.splits[s].labels))]
        base = np.concatenate([fs.splits[s].features for s in searched])
        found = {}
        for qi, bi, sim in zip(*pairs_above(q.features, base, threshold, limit=MAX_PAIRS)):
            found[(int(qi), int(bi))] = float(sim)
        if digests is not None:
            at = {}
            for b, (s, r) in enumerate(where):
                at.setdefault(digests[s][r], []).append(b)
            for qi, d in enumerate(digests[query]):
                for bi in at.get(d, ()):
                    if (qi, bi) not in found:    # a copy whose features drifted below the threshold
                        found[(qi, bi)] = float(unit_rows(q.features[qi:qi + 1])[0] @ unit_rows(base[bi:bi + 1])[0])
        names = fs.class_names
        for (qi, bi), sim in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])):
            s, r = where[bi]
            other = fs.splits[s]
            out.append({"split": query, "row": qi, "source_index": int(q.index[qi]),
                        "class": names[int(q.labels[qi])], "other_split": s, "other_row": r,
                        "other_source_index": int(other.index[r]), "other_class": names[int(other.labels[r])],
                        "similarity": round(sim, 6),
                        "exact": bool(digests is not None and digests[query][qi] == digests[s][r])})
    return out


def summarize(fs: store.RowSet, pairs: list[dict], threshold: float) -> dict:
    out = {}
    for query, searched in DIRECTIONS:
        mine = [p for p in pairs if p["split"] == query]
        n = len(fs.splits[query].labels)
        dup = {p["row"] for p in mine}
        best = {}
        for p in mine:
            best[p["row"]] = max(best.get(p["row"], -1.0), p["similarity"])
        out[query] = {"rows": n, "with_duplicate": len(dup), "share": round(len(dup) / n, 5),
                      "exact_copies": len({p["row"] for p in mine if p["exact"]}),
                      "pairs": len(mine), "label_disagrees": sum(p["class"] != p["other_class"] for p in mine),
                      "searched": list(searched),
                      "with_duplicate_at": {str(t): sum(b >= t for b in best.values())
                                            for t in LADDER if t > threshold}}
    return out


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


def accuracy_without(run_dir: Path, csv_path: Path, table: list[dict], test_duplicates: set[int]) -> dict:
    """Test accuracy of a run on all test rows and on those without a duplicate in train (None
    when every test image has one)."""
    clean = [r for r in table if r["source_index"] not in test_duplicates]
    return {"run": str(run_dir), "predictions": str(csv_path),
            "test_accuracy": round(float(np.mean([r["correct"] for r in table])), 5),
            "test_accuracy_without_duplicates": round(float(np.mean([r["correct"] for r in clean])), 5)
            if clean else None, "test_rows_without_duplicates": len(clean)}


def _predictions_of(run_dir: Path, cache_dir) -> Path:
    found = find_report(run_dir, cache_dir)
    if found is not None:
        return found / layout.PREDICTIONS
    if not run_dir.is_dir():
        raise UserError(f"--run {run_dir} does not exist")
    raise UserError(f"--run {run_dir} has no predictions.csv (runs made before it existed lack one; "
                    "rerun the head or fine-tune)")


# ---------------------------------------------------------------- command line

@dataclass
class AuditSettings:
    features: str | None = flags.features_setting()
    threshold: float = setting(0.9, Interval(float, 0, 1, closed="right"), "cosine similarity at or above which two "
                               "images count as near-duplicates; it depends on the backbone: look at borderline.png "
                               "(0.9 was chosen so for EfficientNet-Lite0 on all of CIFAR-10)", metavar="T")
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

  python -m pipeline audit --features F --threshold 0.9 [--run cache/heads/RUN]

Writes cache/audit/<features file>-<hash>/: audit.json (counts, every pair), pairs.csv, pairs.png
(the most similar pairs) and borderline.png (the least similar pairs still counted: look at them to
choose the threshold). With --run, also that run's test accuracy with and without the test images
that have a duplicate in train. The images come from the features file's own source, checked by its
fingerprint; without --no-exact it must be there.

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
    fs = features_from_args(s)
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
         **({"threshold": s.threshold, "exact": exact} if duplicates else {}), **(job.key if job else {})},
        fs.path.stem)

    def done():       # a damaged answer is an error naming it, never "up to date"
        return (not duplicates or ((out / layout.AUDIT_JSON).is_file()
                                   and bool(records.read(out / layout.AUDIT_JSON, records.AUDIT_ANSWER)))) \
            and (job is None or job.done(out))

    def make():
        write_labels = job and (lambda tmp: job.write(tmp, source, note, log))
        if duplicates:
            return audit(fs, s.threshold, exact, source, note, out, also=write_labels)
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
        log(f"run {Path(acc['run']).name}: test accuracy {acc['test_accuracy']:.4f} on all "
            f"{len(fs.splits['test'].labels)} test images, "
            + (f"{clean:.4f} on the {acc['test_rows_without_duplicates']} without a duplicate in train"
               if clean is not None else "none without a duplicate in train"))
    log(out)
    return out


def audit(fs: store.RowSet, threshold: float, exact: bool, source: rows.Source | None, note: str | None,
          out: Path, also=None) -> dict:
    """`source`: the checked image source (None: it is gone, and `note` says why nothing is drawn).
    `also(tmp)`: writes more into the folder before it appears (the label audit)."""
    digests = ({s: pixel_digests(fs.attrs, s, fs.splits[s].index, source.path) for s in store.SPLITS}
               if exact else None)
    pairs = find_pairs(fs, threshold, digests)
    result = {"features": str(Path(fs.path).absolute()), "threshold": threshold, "exact_check": exact,
              "summary": summarize(fs, pairs, threshold),
              "test_duplicate_source_index": sorted({p["source_index"] for p in pairs if p["split"] == "test"}),
              "pairs": pairs}
    with outputs.atomic_dir(out) as tmp:       # under the lock outputs.produce holds
        by_similarity = sorted(pairs, key=lambda p: -p["similarity"])
        if source is None:
            result["gallery"] = result["borderline"] = note
        else:
            result["gallery"] = draw_pairs(tmp / layout.PAIRS_PNG, fs, by_similarity[:SHOW], source.path,
                                           "most similar pairs")
            result["borderline"] = draw_pairs(tmp / layout.BORDERLINE_PNG, fs, by_similarity[-SHOW:], source.path,
                                              f"least similar pairs still >= {threshold}")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(PAIR_FIELDS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(pairs)
        (tmp / layout.PAIRS_CSV).write_text(buf.getvalue())
        (tmp / layout.AUDIT_JSON).write_text(json.dumps(result, indent=2))
        if also:
            also(tmp)
    return result


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


def print_summary(result: dict, log=print):
    rows_ = [[q, s["rows"], s["with_duplicate"], f"{100 * s['share']:.2f}%", s["exact_copies"], s["pairs"],
              s["label_disagrees"], "+".join(s["searched"])] for q, s in result["summary"].items()]
    log(f"near-duplicates at cosine >= {result['threshold']}"
        f"{'' if result['exact_check'] else ' (exact-copy check skipped)'}:")
    log(format_table(["split", "rows", "with duplicate", "share", "exact copies", "pairs",
                      "other label", "searched"], rows_))
    for q, s in result["summary"].items():
        if s.get("with_duplicate_at"):
            log(f"{q} images with a match at a stricter threshold: "
                  + ", ".join(f">= {t}: {n}" for t, n in s["with_duplicate_at"].items()))
