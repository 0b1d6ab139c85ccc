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

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import store
from pipeline.foundation import flags, layout, records, runs, settings
from pipeline.foundation.errors import UserError
from pipeline.foundation.settings import Choice, Interval, OnlyWith, setting
from pipeline.heads.kinds import HEADS
from pipeline.look import label_evidence as ev
from pipeline.look.label_views import draw_suspects, print_summary, refresh_site, write_csv
from pipeline.sources import rows

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
    RULES = (OnlyWith(("no_duplicates", "folds", "fold_head", "label_neighbors", "label_score", "flip", "seed"),
                      lambda s: s.labels, "--labels"),)


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
        return (out / layout.LABELS_JSON).is_file() and bool(records.read(out / layout.LABELS_JSON, ANSWER))

    def write(self, tmp: Path, source: rows.Source | None, note: str | None, log=print) -> dict:
        return audit_labels(self, tmp, source, note, log)

    def report(self, out: Path, log=print):
        """Print the answer in `out` and rebuild the site, which links its gallery."""
        print_summary(records.read(out / layout.LABELS_JSON, ANSWER), log)
        refresh_site(Path(out).parent.parent)        # out: CACHE/audit/NAME


def prepare(s: LabelSettings | None, fs: store.RowSet, run_dir, predictions: Path | None) -> LabelJob | None:
    """The label audit `s` asks for on `fs`, every input checked before any work (None: no --labels).
    `predictions`: the predictions.csv of --run `run_dir`, which must be a run on this very file."""
    if s is None:
        return None
    s = settings.check(s)
    if not s.labels:
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
    for folder in (Path(run_dir), report.parent, report.parent.parent / layout.HEADS_DIR / report.name):
        if (folder / layout.RUN_JSON).is_file():
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
    write_csv(tmp / layout.LABEL_ISSUES, issues, ["rank", "split", "row", "source_index", "path", "given", "suggested",
                                          "score", "confident", "neighbors"] + (["planted"] if s.flip else []))
    write_csv(tmp / layout.LABEL_PAIRS, pairs, ["split", "given", "suggested", "count"])
    gallery = note or draw_suspects(tmp / layout.LABEL_GALLERY, fs, issues, neighbours, given["train"], source)
    answer = {"settings": settings.record(s, folds=job.folds), "probabilities": where, "summary": summary,
              "pairs": pairs, "gallery": gallery, **({"planted": {"rows": int(planted.sum()), "scores": measured}}
                                                      if s.flip else {})}
    (tmp / layout.LABELS_JSON).write_text(json.dumps(answer, indent=2))
    return answer


def _paths(fs: store.RowSet, split: str, source) -> list:
    if source is None:
        return [None] * len(fs.splits[split].labels)
    try:
        return rows.paths(fs.attrs, split, fs.splits[split].index, source.path)
    except (UserError, OSError):
        return [None] * len(fs.splits[split].labels)
