"""`audit --labels`: the images whose label is probably wrong, in every split, most suspect first.

Train rows are scored with out-of-fold probabilities (K heads, each fit on the other folds), val
and test rows with a finished run's (`--run`, from its predictions.csv) or else with the mean of
the K fold heads; the neighbours' evidence is the share of each image's nearest training images
(cosine, itself left out) per class. Confident learning (cleanlab) flags and ranks the rows on
the chosen evidence (--label-score; pipeline.look.label_evidence). `--flip SHARE` plants that share
of wrong training labels (seeded, in memory) and reports how many of them each score finds.

Written into the audit's folder (pipeline.look.audit, one atomic folder): label_issues.csv (one
row per flagged image: rank, split, row, source_index, path, given, suggested, score, confident,
neighbors[, planted]), label_pairs.csv (flagged counts per split and (given, suggested) pair),
label_issues.png (the top suspects of each split beside their nearest training images) and
labels.json (written last: the settings, where each split's probabilities came from, the counts).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.foundation import flags, records, runs, settings
from pipeline.foundation.errors import UserError, first_line, warn
from pipeline.foundation.gallery import save_grid
from pipeline.foundation.settings import Choice, Interval, setting
from pipeline.foundation.tables import format_table
from pipeline.heads.kinds import HEADS
from pipeline.look import label_evidence as ev
from pipeline.sources import rows

SHOWN_PER_SPLIT = 6        # suspects per split in the gallery, each with its nearest training images
SHOWN_NEIGHBORS = 4

ANSWER = records.Kind("cached label audit", {
    "settings": dict, "probabilities": records.Values(str),
    "summary": records.Values({"rows": int, "flagged": int, "share": records.NUMBER}),
    "pairs": records.Each({"split": str, "given": str, "suggested": str, "count": int}),
}, "delete the folder {folder} and rerun the same command")


HELP = """With --labels, also the images whose label is probably wrong, in every split, most suspect
first: label_issues.csv (split, row, path, given and suggested label, score), label_pairs.csv (counts
per given and suggested label) and label_issues.png (the top suspects beside their nearest training
images); --no-duplicates does only that. `head --exclude` and `finetune --exclude` with that file
train without the flagged training rows; `compare` then says whether it helped."""


@dataclass
class LabelSettings:
    labels: bool = setting(False, None, "also audit the labels: rank the images whose label is probably wrong, in "
                           "every split (label_issues.csv, label_issues.png)")
    no_duplicates: bool = setting(False, None, "with --labels: skip the near-duplicate audit")
    folds: int | None = setting(None, Interval(int, 2, 50, closed="both"), "out-of-fold heads scoring the train split, each fit on "
                                "the other folds", auto="5 from 10,000 training rows, else 10, at most the smallest "
                                "class's rows", metavar="K")
    # dense by default: one fit on 30,000 rows of the Lite0 CIFAR-10 file took 20 s of CPU, logreg 88 s
    fold_head: str = setting("dense", Choice(tuple(HEADS)), "the head kind fit on each fold, with its default "
                             "settings")
    label_neighbors: int = setting(10, Interval(int, 1), "nearest training images whose labels vote", metavar="K")
    label_score: str = setting("combined", Choice(ev.SCORES), "the evidence confident learning flags and ranks on: "
                               "the probabilities, the neighbours' votes, or their mean")
    flip: float = setting(0.0, Interval(float, 0, 0.5, closed="left"), "plant this share of wrong training labels "
                          "(seeded, in memory) and report how well each score finds them", metavar="SHARE")
    seed: int = flags.seed_setting("the folds and the planted flips")


def add_arguments(p):
    settings.add_flags(p.add_argument_group("--labels", "the label audit: the images whose label is probably wrong"),
                       LabelSettings)


def from_args(args) -> LabelSettings:
    return settings.from_args(LabelSettings, args)


@dataclass
class LabelJob:
    """A checked label audit, ready to run: its settings (folds resolved), the run scoring val and
    test (None: the fold heads), and the part of the audit folder's key it adds."""
    s: LabelSettings
    fs: store.RowSet
    folds: int
    predictions: Path | None
    run_name: str | None = None

    @property
    def duplicates(self) -> bool:
        return not self.s.no_duplicates

    @property
    def key(self) -> dict:
        run = self.predictions and hashlib.sha256(self.predictions.read_bytes()).hexdigest()
        return {"labels": {**settings.record(self.s, folds=self.folds), "run_predictions": run}}

    def done(self, out: Path) -> bool:
        return (out / records.LABELS_JSON).is_file() and bool(records.read(out / records.LABELS_JSON, ANSWER))

    def write(self, tmp: Path, source: rows.Source | None, note: str | None, log=print) -> dict:
        return audit_labels(self, tmp, source, note, log)

    def report(self, out: Path, log=print):
        """Print the answer in `out` and rebuild the site, which links its gallery."""
        print_summary(records.read(out / records.LABELS_JSON, ANSWER), log)
        refresh_site(Path(out).parent.parent)        # out: CACHE/audit/NAME


def prepare(s: LabelSettings | None, fs: store.RowSet, run_dir, predictions: Path | None) -> LabelJob | None:
    """The label audit `s` asks for on `fs`, every input checked before any work (None: no --labels).
    `predictions`: the predictions.csv of --run `run_dir`, which must be a run on this very file."""
    if s is None:
        return None
    s = settings.check(s)
    if not s.labels:
        changed = [f for f in fields(LabelSettings) if f.name != "labels" and getattr(s, f.name) != f.default]
        if changed:
            raise UserError(f"{settings.flag_name(changed[0])} applies to the label audit; add --labels")
        return None
    labels = fs.splits["train"].labels
    folds = s.folds or ev.default_folds(labels)
    ev.check_folds(folds, labels, fs.class_names)
    if s.label_neighbors > len(labels) - 1:
        raise UserError(f"--label-neighbors must be at most {len(labels) - 1} (the training rows but one), "
                        f"got {s.label_neighbors}")
    run = None
    if run_dir is not None:
        run = _run_of(run_dir, predictions)
        made_from = run.record["features"]["settings_hash"]
        if made_from != fs.attrs["settings_hash"]:
            raise UserError(f"--run {run_dir} was trained on another features file ({made_from}), not on "
                            f"{fs.path.name} ({fs.attrs['settings_hash']}); pass a run on this file")
    return LabelJob(s, fs, folds, predictions, run and run.folder.name)


def _run_of(run_dir, predictions: Path) -> runs.Run:
    """The run whose predictions.csv `predictions` is (--run may name its folder, its report or its NAME)."""
    report = predictions.parent
    for folder in (Path(run_dir), report.parent, report.parent.parent / records.HEADS / report.name):
        if (folder / records.RUN_JSON).is_file():
            return runs.Run.read(folder)
    raise UserError(f"--run {run_dir}: no run.json found beside {predictions}; name the run's folder")


def audit_labels(job: LabelJob, tmp: Path, source: rows.Source | None, note: str | None, log=print) -> dict:
    """Score every split, write the files into `tmp` (the audit folder being built), labels.json last."""
    s, fs = job.s, job.fs
    names = fs.class_names
    given = {sp: fs.splits[sp].labels.astype(np.int64) for sp in store.SPLITS}
    planted = np.zeros(len(given["train"]), bool)
    if s.flip:
        given["train"], flipped = ev.plant_flips(given["train"], s.flip, len(names), s.seed)
        planted[flipped] = True
    oof, held = ev.out_of_fold(fs, given["train"], job.folds, s.fold_head, s.seed, log)
    probs = {"train": oof, **held}
    where = {"train": f"out-of-fold: {job.folds} {s.fold_head} heads, each fit on the other folds"}
    for sp in ("val", "test"):
        if job.predictions:
            probs[sp] = ev.run_probabilities(job.predictions, fs, sp)
        where[sp] = (f"the run {job.run_name}" if job.predictions
                     else f"the mean of the {job.folds} out-of-fold {s.fold_head} heads")
    issues, summary, measured, neighbours = [], {}, {}, {}
    for sp in store.SPLITS:
        votes, neighbours[sp] = ev.neighbour_votes(fs, given["train"], sp, s.label_neighbors)
        scored = {name: ev.confident_learning(given[sp], p) for name, p in ev.evidence(probs[sp], votes).items()}
        if sp == "train" and s.flip:
            measured = {name: ev.planted_scores(planted, flagged, quality)
                        for name, (flagged, quality, _) in scored.items()}
        flagged, quality, suggested = scored[s.label_score]
        summary[sp] = {"rows": len(given[sp]), "flagged": int(flagged.sum()),
                       "share": round(float(flagged.mean()), 5) if len(flagged) else 0.0}
        paths = _paths(fs, sp, source)
        for r in np.flatnonzero(flagged):
            g = given[sp][r]
            issues.append({"split": sp, "row": int(r), "source_index": int(fs.splits[sp].index[r]),
                           "path": paths[r] or "", "given": names[g], "suggested": names[suggested[r]],
                           "score": float(quality[r]), "confident": round(float(probs[sp][r, g]), 6),
                           "neighbors": round(float(votes[r, g]), 4)})
            if s.flip:
                issues[-1]["planted"] = int(sp == "train" and planted[r])
    issues.sort(key=lambda i: (i["score"], store.SPLITS.index(i["split"]), i["row"]))
    issues = [{"rank": n, **i, "score": round(i["score"], 6)} for n, i in enumerate(issues, 1)]   # ranked unrounded
    pairs = [{"split": sp, "given": g, "suggested": h, "count": c} for (sp, g, h), c in
             sorted(Counter((i["split"], i["given"], i["suggested"]) for i in issues).items(),
                    key=lambda kv: (store.SPLITS.index(kv[0][0]), -kv[1], kv[0]))]
    _write_csv(tmp / records.LABEL_ISSUES, issues, ["rank", "split", "row", "source_index", "path", "given", "suggested",
                                          "score", "confident", "neighbors"] + (["planted"] if s.flip else []))
    _write_csv(tmp / records.LABEL_PAIRS, pairs, ["split", "given", "suggested", "count"])
    gallery = note or draw_suspects(tmp / records.LABEL_GALLERY, fs, issues, neighbours, given["train"], source)
    answer = {"settings": settings.record(s, folds=job.folds), "probabilities": where, "summary": summary,
              "pairs": pairs, "gallery": gallery, **({"planted": {"rows": int(planted.sum()), "scores": measured}}
                                                      if s.flip else {})}
    (tmp / records.LABELS_JSON).write_text(json.dumps(answer, indent=2))
    return answer


def _paths(fs: store.RowSet, split: str, source) -> list:
    if source is None:
        return [None] * len(fs.splits[split].labels)
    try:
        return rows.paths(fs.attrs, split, fs.splits[split].index, source.path)
    except (UserError, OSError):
        return [None] * len(fs.splits[split].labels)


def _write_csv(path: Path, table: list[dict], columns: list[str]):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    path.write_text(buf.getvalue())


def draw_suspects(path: Path, fs: store.RowSet, issues: list[dict], neighbours: dict, train_labels, source) -> str:
    """One line per suspect (the first of each split): the image with its given and suggested label,
    then its nearest training images with their labels (green: the suggested one, red: another
    than the given one). Returns the file's name, or a note on why nothing was drawn."""
    names = fs.class_names
    shown = [i for sp in store.SPLITS for i in [x for x in issues if x["split"] == sp][:SHOWN_PER_SPLIT]]
    if not shown:
        return "no flagged images"
    items, captions, colors = [], [], []
    train_index = fs.splits["train"].index
    for i in shown:
        items.append((i["split"], i["source_index"]))
        captions.append(f"#{i['rank']} {i['split']} {i['row']}\n{i['given']} -> {i['suggested']}")
        colors.append("black")
        for t in neighbours[i["split"]][i["row"]][:SHOWN_NEIGHBORS]:
            label = names[train_labels[t]]
            items.append(("train", int(train_index[t])))
            captions.append(f"train {int(t)}\n{label}")
            colors.append("green" if label == i["suggested"] else "red" if label != i["given"] else "black")
    try:
        images = rows.images_of(fs.attrs, items, source.path)
    except (UserError, OSError) as exc:
        return rows.unreadable(exc)
    save_grid(path, images, captions, columns=SHOWN_NEIGHBORS + 1, colors=colors,
              title="likely label errors (given -> suggested), then their nearest training images "
                    "(green: the suggested label, red: another)")
    return path.name


def print_summary(answer: dict, log=print):
    log("label audit (" + "; ".join(f"{sp}: {w}" for sp, w in answer["probabilities"].items()) + "):")
    log(format_table(["split", "rows", "flagged", "share"],
                     [[sp, v["rows"], v["flagged"], f"{100 * v['share']:.2f}%"] for sp, v in answer["summary"].items()]))
    top = Counter({(p["given"], p["suggested"]): 0 for p in answer["pairs"]})
    for p in answer["pairs"]:
        top[(p["given"], p["suggested"])] += p["count"]
    if top:
        log("most flagged (given -> suggested): " + ", ".join(f"{g} -> {h} {c}" for (g, h), c in top.most_common(5)))
    planted = answer.get("planted")
    if planted:
        log(f"planted flips: {planted['rows']} training labels; found by each score (flagged by cleanlab on it):")
        log(format_table(["score", "flagged", "found", "precision", "recall", "AUC"],
                         [[name, m["flagged"], m["found"], m["precision"], m["recall"], m["auc"]]
                          for name, m in planted["scores"].items()]))


def refresh_site(cache_dir):
    """The report site links every label gallery: rebuilt after a label audit, as after a run (a
    site that cannot be rebuilt is a warning, never the audit's failure)."""
    from pipeline.look import report
    try:
        report.rebuild(cache_dir)
    except (UserError, OSError) as exc:
        warn(f"{report.index_path(cache_dir)} not rebuilt ({first_line(exc)}); `python -m pipeline report` retries")
