"""The `compare` command: two runs' predictions.csv, paired image by image."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline import store
from pipeline.foundation import flags, identity, layout, readback, records, runs, settings, stats
from pipeline.foundation.errors import UserError, first_line
from pipeline.foundation.outputs import atomic_dir, produce
from pipeline.foundation.settings import Choice, setting
from pipeline.foundation.tables import paired_table
from pipeline.foundation.gallery import save_grid
from pipeline.heads.mistakes import find_report, read_predictions
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


def _run_of(report_dir: Path) -> runs.Run | None:
    """The run whose report `report_dir` is (a fine-tune's is inside its run folder, a head's beside
    it in the cache), None when it is gone."""
    report_dir = report_dir.absolute()
    for folder in (report_dir.parent, report_dir.parent.parent / layout.HEADS_DIR / report_dir.name):
        if (folder / layout.RUN_JSON).is_file():
            run = runs.Run.read(folder)
            if run.report == report_dir:
                return run
    return None


def load(arg: str, cache_dir) -> Scored:
    found = find_report(arg, cache_dir)
    if found is None:
        raise UserError(f"{arg} is not a run with per-image predictions (no predictions.csv in its report); "
                        f"pass a run folder such as {layout.folder(cache_dir, layout.HEADS_DIR) / 'NAME'} "
                        "or a run name")
    run = _run_of(found)
    report = records.read(found / layout.REPORT_JSON, records.REPORT)
    try:
        table = read_predictions(found / layout.PREDICTIONS)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"the report {found} is damaged ({first_line(exc)}); rerun that run") from None
    predictions = {}
    for r in table:
        predictions.setdefault(r["split"], []).append(r)
    for split_rows in predictions.values():
        split_rows.sort(key=lambda r: r["source_index"])
    _check_complete(found, report, predictions)
    return Scored(run.folder.name if run else found.name, found, run.record if run else {}, report, predictions)


def _check_complete(found: Path, report: dict, predictions: dict):
    """predictions.csv holds a row per image its report scored, split by split (a file cut at a
    line boundary reads as valid CSV: only the count tells)."""
    for split, m in report["splits"].items():
        scored = sum(int(c.get("support", 0)) for c in m["per_class"].values()) or \
            sum(map(sum, m.get("confusion") or [])) or None
        got = len(predictions.get(split, []))
        if scored is not None and got != scored:
            raise UserError(f"{found / layout.PREDICTIONS} is damaged (it has {got} {split} rows; its report scored "
                            f"{scored}); rerun that run")


# the stage-one settings that decide which images land in val and test
_SPLIT_SETTINGS = ("source", "limit", "val_fraction", "split_seed")


def check_same_images(a: Scored, b: Scored):
    """Refuse two runs scored on different images, saying why."""
    fa, fb = a.fingerprint(), b.fingerprint()
    if fa != fb:
        try:
            attrs = a.features_attrs(), b.features_attrs()
            differ = [f"{k} {attrs[0].get(k)} and {attrs[1].get(k)}" for k in _SPLIT_SETTINGS
                      if attrs[0].get(k) != attrs[1].get(k)]
        except UserError:
            differ = []
        why = f"their features files differ in {'; '.join(differ)}" if differ else "the source's images differ"
        raise UserError(f"{a.name} and {b.name} were scored on different images ({why}; data fingerprints "
                        f"{str(fa)[:12]} and {str(fb)[:12]}); compare runs whose features files were made from "
                        "the same source with the same split settings")
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


@dataclass
class CompareSettings:
    split: str = setting("test", Choice(("val", "test")), "whose disagreements disagreements.png shows")
    cache_dir: str = flags.cache_dir_setting("runs named by NAME are found and comparisons (compare/<hash>/)")


def run_compare(arg_a: str, arg_b: str, s: CompareSettings, log=print) -> tuple[dict, Path]:
    """(compare.json's content, its folder), made or found up to date."""
    s = settings.check(s)
    a, b = load(arg_a, s.cache_dir), load(arg_b, s.cache_dir)
    paired = compare(a, b)
    if s.split not in paired:
        raise UserError(f"--split {s.split}: the runs are scored on {', '.join(paired)}")
    # the folder's name covers exactly what the result depends on: both runs' predictions and the split
    key = {"a": _sha256(a.report_dir / layout.PREDICTIONS), "b": _sha256(b.report_dir / layout.PREDICTIONS),
           "split": s.split, "method": stats.PAIRED_METHOD}
    out = layout.folder(s.cache_dir, layout.COMPARE_DIR) / identity.name(key)
    saved = out / layout.COMPARE_JSON

    def done():       # a damaged answer is an error naming it, never "up to date"
        return saved.is_file() and bool(records.read(saved, records.COMPARE_ANSWER))

    def make():
        result = {"a": {"name": a.name, "report": str(a.report_dir.absolute())},
                  "b": {"name": b.name, "report": str(b.report_dir.absolute())}, "splits": paired}
        with atomic_dir(out) as tmp:
            result["gallery"] = _gallery(tmp / layout.DISAGREEMENTS, a, b, s.split)
            result = readback.sealed(result, tmp, layout.COMPARE_JSON, out.name)
            (tmp / layout.COMPARE_JSON).write_text(json.dumps(result, indent=2))
        return result

    _, result = produce(out, done, make, log, record=layout.COMPARE_JSON)
    return result or records.read(saved, records.COMPARE_ANSWER), out


HELP = """Two runs scored on the same images, compared image by image.

  python -m pipeline compare cache/heads/dense-... cache/heads/logreg-...

A and B: any two runs with a report (heads of any kind, fine-tunes, runs on different backbones of
the same source), named by their folder (cache/heads/NAME, cache/finetune/NAME, or the report
folder) or by NAME under --cache-dir. They must have been scored on the same images: the same
source (its data fingerprint) and the same val and test source indices; otherwise the comparison
is refused. For val and test: both accuracies with their 95% Wilson intervals, the difference
B - A with its 95% paired bootstrap interval, McNemar's exact p-value, and how many images only A
and only B get right, from the runs' predictions.csv. Written to cache/compare/<hash>/:
compare.json and disagreements.png (the --split images only one of them gets right, read back
from the source); up to date on rerun.
"""


def add_arguments(p):
    p.add_argument("a", metavar="A", help="a run: its folder (cache/heads/NAME, cache/finetune/NAME), its report "
                   "folder, or NAME under --cache-dir")
    p.add_argument("b", metavar="B", help="the run to compare with A, scored on the same images")
    settings.add_flags(p, CompareSettings)
    p.set_defaults(keeps_work=False)     # a failed write keeps nothing: the answer is written whole at the end


def run(args):
    result, out = run_compare(args.a, args.b, settings.from_args(CompareSettings, args))
    print(f"A: {result['a']['name']}\nB: {result['b']['name']}")
    print(paired_table(result["splits"]))
    gallery = result["gallery"]
    if gallery.get("file"):
        print(f"gallery: {out / gallery['file']}")
    elif gallery.get("note"):
        print(f"gallery: {gallery['note']}")
    print(f"comparison: {out / layout.COMPARE_JSON}")
