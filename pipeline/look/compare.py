"""Two runs scored on the same images, compared image by image.

  python -m pipeline compare cache/heads/dense-... cache/heads/logreg-...

A and B: any two runs with a report (heads of any kind, fine-tunes, runs on different backbones of
the same source), named by their folder (cache/heads/NAME, cache/finetune/NAME, or the report
folder) or by NAME under --cache-dir. They must have been scored on the same images: the same
source (its data fingerprint) and the same val and test source indices; otherwise the comparison
is refused. For val and test: both accuracies with their 95% Wilson intervals, the difference
B - A with its 95% paired bootstrap interval, McNemar's exact p-value (pipeline.foundation.stats), and how
many images only A and only B get right. The per-image results are the runs' predictions.csv
(pipeline.heads.mistakes). Written to cache/compare/<hash>/: compare.json and disagreements.png (the
--split images only one of them gets right, read back from the source); up to date on rerun.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline import store
from pipeline.foundation import flags, records, stats
from pipeline.foundation.errors import UserError, first_line
from pipeline.foundation.outputs import Lock, atomic_dir
from pipeline.foundation.tables import paired_table
from pipeline.foundation.gallery import save_grid
from pipeline.heads.mistakes import read_predictions
from pipeline.sources import rows


SHOWN = 16          # gallery cells per side (only A right, only B right)


@dataclass
class Scored:
    """One run's per-image results: name, report folder, its run.json and report.json, and the
    predictions.csv rows of each split sorted by source index."""
    name: str
    report_dir: Path
    info: dict
    report: dict
    predictions: dict

    def features_path(self) -> str | None:
        return ((self.report.get("features") or {}).get("path")
                or (self.info.get("features") or {}).get("path"))

    def features_attrs(self) -> dict:
        path = self.features_path()
        if not path:
            raise UserError(f"{self.name} records no features file")
        try:
            return store.read_rows(path, splits=(), values=False).attrs
        except (UserError, OSError) as exc:
            raise UserError(f"cannot tell which images {self.name} was scored on: its features file {path} "
                            f"is unreadable ({first_line(exc)})") from None

    def fingerprint(self) -> str:
        return self.report.get("data_fingerprint") or self.features_attrs()["data_fingerprint"]


def _report_dirs(arg: str, cache_dir) -> list[Path]:
    """Where the report of run `arg` can be: a head's report is cache/reports/NAME beside
    cache/heads/NAME, a fine-tune's is its run folder's report/."""
    p = Path(arg)
    cache = Path(cache_dir)
    return [p, p / records.REPORT_DIR, p.parent.parent / records.REPORTS / p.name,
            records.folder(cache, records.REPORTS) / arg, records.folder(cache, records.FINETUNE) / arg / records.REPORT_DIR]


def load(arg: str, cache_dir) -> Scored:
    found = next((d for d in _report_dirs(arg, cache_dir) if (d / records.PREDICTIONS).is_file()), None)
    if found is None:
        raise UserError(f"{arg} is not a run with per-image predictions (no predictions.csv in its report); "
                        f"pass a run folder such as {records.folder(cache_dir, records.HEADS) / 'NAME'} or a run name")
    fine_tune = found.name == records.REPORT_DIR
    run_dir = found.parent if fine_tune else found.parent.parent / records.HEADS / found.name
    report = records.read(found / records.REPORT_JSON, records.REPORT)
    info = records.read(run_dir / records.RUN_JSON, records.RUN) if (run_dir / records.RUN_JSON).is_file() else {}
    try:
        table = read_predictions(found / records.PREDICTIONS)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"the report {found} is damaged ({first_line(exc)}); rerun that run") from None
    predictions = {}
    for r in table:
        predictions.setdefault(r["split"], []).append(r)
    for split_rows in predictions.values():
        split_rows.sort(key=lambda r: r["source_index"])
    return Scored(found.parent.name if fine_tune else found.name, found, info, report, predictions)


def check_same_images(a: Scored, b: Scored):
    """Refuse two runs scored on different images, saying why."""
    fa, fb = a.fingerprint(), b.fingerprint()
    if fa != fb:
        raise UserError(f"{a.name} and {b.name} were scored on different images (source fingerprints "
                        f"{fa[:12]} and {fb[:12]}); compare runs made from the same source")
    if set(a.predictions) != set(b.predictions):
        raise UserError(f"{a.name} is scored on {', '.join(sorted(a.predictions))} and {b.name} on "
                        f"{', '.join(sorted(b.predictions))}; compare runs scored on the same splits")
    for split in a.predictions:
        if [r["source_index"] for r in a.predictions[split]] != [r["source_index"] for r in b.predictions[split]]:
            raise UserError(f"{a.name} and {b.name} were scored on different {split} images (different "
                            "split settings or --limit); compare runs made with the same split")


def compare(a: Scored, b: Scored) -> dict:
    """{split: stats.paired(...)}: the per-split paired comparison of two runs on the same images."""
    check_same_images(a, b)
    return {split: stats.paired([r["correct"] for r in a.predictions[split]],
                                [r["correct"] for r in b.predictions[split]])
            for split in sorted(a.predictions, key=lambda s: ("val", "test").index(s) if s in ("val", "test") else 9)}


def _gallery(path: Path, a: Scored, b: Scored, split: str) -> dict:
    """disagreements.png: up to SHOWN images of `split` only A gets right, then only B; the most
    confident wrong answers first. Returns what compare.json records about it."""
    pairs = list(zip(a.predictions[split], b.predictions[split]))
    sides = [("A", [(ra, rb) for ra, rb in pairs if ra["correct"] and not rb["correct"]], "tab:blue"),
             ("B", [(ra, rb) for ra, rb in pairs if rb["correct"] and not ra["correct"]], "tab:orange")]
    cells = []
    for side, items, color in sides:
        wrong = 1 if side == "A" else 0                 # the one that got it wrong
        items.sort(key=lambda p: (-p[wrong]["probability"], p[0]["source_index"]))
        cells += [(side, p, color) for p in items[:SHOWN]]
    out = {"split": split, "source_index": {side: [p[0]["source_index"] for s, p, _ in cells if s == side]
                                            for side in ("A", "B")}}
    if not cells:
        return out
    try:
        images, _ = rows.images(a.features_attrs(), split, [p[0]["source_index"] for _, p, _ in cells])
    except (UserError, OSError) as exc:
        return {**out, "note": rows.unreadable(exc)}
    captions = [f"{p[0]['true']}\n{'B' if side == 'A' else 'A'} says {p[1 if side == 'A' else 0]['predicted']}"
                for side, p, _ in cells]
    save_grid(path, images, captions, colors=[c for _, _, c in cells],
              title=f"{split} images only A gets right (blue) and only B (orange); caption: true class, the other's answer")
    return {**out, "file": path.name}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_compare(arg_a: str, arg_b: str, cache_dir, split: str = "test") -> tuple[dict, Path, bool]:
    """(compare.json's content, its folder, whether it was up to date)."""
    a, b = load(arg_a, cache_dir), load(arg_b, cache_dir)
    paired = compare(a, b)
    if split not in paired:
        raise UserError(f"--split {split}: the runs are scored on {', '.join(paired)}")
    # the folder's name covers exactly what the result depends on: both runs' predictions and the split
    key = {"a": _sha256(a.report_dir / "predictions.csv"), "b": _sha256(b.report_dir / "predictions.csv"),
           "split": split, "method": stats.PAIRED_METHOD}
    out = records.folder(cache_dir, records.COMPARE) / store.settings_hash(key)
    if (out / "compare.json").is_file():
        return records.read(out / "compare.json", records.COMPARE_ANSWER), out, True
    result = {"a": {"name": a.name, "report": str(a.report_dir)}, "b": {"name": b.name, "report": str(b.report_dir)},
              "splits": paired}
    with Lock(out):
        with atomic_dir(out) as tmp:
            result["gallery"] = _gallery(tmp / "disagreements.png", a, b, split)
            (tmp / "compare.json").write_text(json.dumps(result, indent=2))
    return result, out, False


def add_arguments(p):
    p.add_argument("a", metavar="A", help="a run: its folder (cache/heads/NAME, cache/finetune/NAME), its report "
                   "folder, or NAME under --cache-dir")
    p.add_argument("b", metavar="B", help="the run to compare with A, scored on the same images")
    p.add_argument("--split", default="test", choices=("val", "test"),
                   help="whose disagreements disagreements.png shows (default: test)")
    flags.add_cache_dir(p, "runs named by NAME are found and comparisons (compare/<hash>/)")


def run(args):
    result, out, up_to_date = run_compare(args.a, args.b, args.cache_dir, args.split)
    if up_to_date:
        print(f"up to date: {out}")
    print(f"A: {result['a']['name']}\nB: {result['b']['name']}")
    print(paired_table(result["splits"]))
    gallery = result["gallery"]
    if gallery.get("file"):
        print(f"gallery: {out / gallery['file']}")
    elif gallery.get("note"):
        print(f"gallery: {gallery['note']}")
    print(f"comparison: {out / 'compare.json'}")
