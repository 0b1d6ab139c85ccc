"""Stage two: train a classifier on cached features alone (no images, no backbone, no GPU needed).

  --head dense    Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)
                  (--hidden 0: standardize -> softmax), EarlyStopping on val loss with the best
                  weights restored, ModelCheckpoint of the best epoch.
  --head logreg   scikit-learn Pipeline(StandardScaler, LogisticRegression(lbfgs, multinomial)).
  --head knn      scikit-learn Pipeline(StandardScaler, KNeighborsClassifier(cosine)): the
                  training-free k-nearest-neighbour probe of DINO- and CLIP-style evaluations.

HEADS is the one table of head kinds (settings, train function, saved artifact, what a sweep may
vary); a new head is one settings class, one HeadKind row and its train function. Each run goes to
cache/heads/<head>-<features hash>-<settings hash>/ (the row's artifact: model.keras or
model.joblib; run.json; history.json for heads trained by epochs) and its report to
cache/reports/<same name>/ (report.json, confusion.png, curves.png). A run whose folder exists is
up to date and is not trained again.
The model is chosen on the validation split; test accuracy is only reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.foundation import layout, records, settings
from pipeline.foundation.settings import Interval, setting
from pipeline.heads import seeds
from pipeline.heads.evaluation import print_summary
from pipeline.heads.kinds import StageTwoSettings, add_arguments as add_head_arguments, settings_from_args
from pipeline.heads.training import run_head
from pipeline.store.features import features_from_args


@dataclass
class HeadSettings(StageTwoSettings):
    seeds: int = setting(1, Interval(int, 1), "dense: train N seeds (--seed, --seed + 1, ...) and report the mean, "
                         "standard deviation and 95%% interval of the mean of the accuracies")


def add_arguments(p):
    add_head_arguments(p, HeadSettings)


def run(args):
    s = settings.from_args(HeadSettings, args)
    kind_settings = settings_from_args(args, s.head)        # flag mistakes surface before any loading
    seeds.check(s.head, s.seeds, kind_settings.get("seed"))
    fs = features_from_args(s)
    if s.seeds > 1:
        summary, path = seeds.run_seeds(fs, s.head, kind_settings, s.cache_dir, s.seeds, verbose=2, log=print)
        print(seeds.summary_text(summary))
        print(f"summary: {path}")
        return
    result = run_head(fs, s.head, kind_settings, s.cache_dir, verbose=2, log=print)
    report_json = Path(result["report"], layout.REPORT_JSON)
    if report_json.is_file():
        print_summary(records.read(report_json, records.REPORT), title=f"{s.head} head on {fs.path.name}")
    print(f"report: {result['report']}")
    print(f"model:  {result['run_dir']}")
