"""The `head` command: one head run on a features file (or several seeds), its summary printed.
The head table is kinds.py; one run is training.run_head."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.foundation import layout, records, settings
from pipeline.foundation.settings import Interval, OnlyWith, setting
from pipeline.heads import seeds
from pipeline.heads.seeds import SEEDED
from pipeline.heads.exclude import read_exclusion
from pipeline.heads.evaluation import print_summary
from pipeline.heads.kinds import StageTwoSettings, add_arguments as add_head_arguments, settings_from_args
from pipeline.heads.training import run_head
from pipeline.foundation.errors import notice
from pipeline.heads.streamed_data import STREAMED, STREAM_ABOVE_BYTES, is_streamed
from pipeline.store.features import features_from_args


@dataclass
class HeadSettings(StageTwoSettings):
    seeds: int = setting(1, Interval(int, 1), "dense: train N seeds (--seed, --seed + 1, ...) and report the mean, "
                         "standard deviation and 95%% interval of the mean of the accuracies")
    exclude: str | None = setting(None, None, "train without the training rows this CSV names (a `row` or `path` "
                                  "column, e.g. audit --labels' label_issues.csv); val and test stay whole",
                                  metavar="FILE", record=False)
    RULES = (OnlyWith(("seeds",), lambda s: s.head in SEEDED,    # the other kinds are deterministic
                      " or ".join(f"--head {kind}" for kind in SEEDED)),)


HELP = """Stage two: train a classifier on cached features alone (no images, no backbone, no GPU needed).

  --head dense    Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)
                  (--hidden 0: standardize -> softmax), early stopping on val loss after
                  --min-epochs, with the best weights restored. --batch-size, --patience and
                  --min-epochs default to auto: derived from the number of training rows and
                  recorded as the numbers they resolved to (the same numbers given by hand are
                  the same run).
  --head logreg   scikit-learn: StandardScaler, then LogisticRegression (lbfgs, multinomial).
  --head knn      standardized rows, then cosine k-nearest neighbours (scikit-learn's votes) through
                  the features file's cached search index, exact up to 100,000 rows: the
                  training-free probe of DINO- and CLIP-style evaluations.

Each kind's own flags are listed below under its name; a flag of another kind is refused. Each run
goes to <cache-dir>/heads/<head>-<features hash>-<settings hash>/ (the model, run.json, and the
training history for heads trained by epochs) and its report to <cache-dir>/reports/<same name>/
(report.json, predictions.csv, confusion.png, curves.png, reliability.png, mistakes.png). A
finished run is up to date and is not trained again. The model is chosen on the validation split;
test accuracy is only reported.
"""


def add_arguments(p):
    add_head_arguments(p, HeadSettings)


def run(args):
    s = settings.from_args(HeadSettings, args)
    kind_settings = settings_from_args(args, s.head)        # flag mistakes surface before any loading
    seeds.check(s.seeds, kind_settings.get("seed"))
    # dense, logreg and knn stream a file larger than STREAM_ABOVE_BYTES instead of loading it (streamed_data.py)
    fs = features_from_args(s, stream_above=STREAM_ABOVE_BYTES if s.head in STREAMED else None)
    if is_streamed(fs.splits["train"]):
        notice(f"streaming {fs.path.name}: its rows take more than {STREAM_ABOVE_BYTES / 2**30:g} GiB, so they are "
               "read a window at a time (pipeline/heads/streamed_data.py)")
    exclusion = s.exclude and read_exclusion(s.exclude, fs.attrs, {k: v.index for k, v in fs.splits.items()})
    if exclusion:
        print(exclusion.describe())
    if s.seeds > 1:
        summary, path = seeds.run_seeds(fs, s.head, kind_settings, s.cache_dir, s.seeds, verbose=2, log=print,
                                        exclude=exclusion)
        print(seeds.summary_text(summary))
        print(f"summary: {path}")
        return
    result = run_head(fs, s.head, kind_settings, s.cache_dir, verbose=2, log=print, exclude=exclusion)
    # a run trained now hands its report back; an up-to-date one's is read from its folder
    report_json = Path(result["report"], layout.REPORT_JSON)
    report = result.get("report_content") or (records.read(report_json, records.REPORT) if report_json.is_file()
                                               else None)
    if report:
        print_summary(report, title=f"{s.head} head on {fs.path.name}")
    print(f"report: {result['report']}")
    print(f"model:  {result['run_dir']}")
