"""Stage two: train a classifier on cached features alone (no images, no backbone, no GPU needed).

  --head dense    Keras: standardize -> Dense(hidden, relu) -> Dropout -> Dense(K, softmax)
                  (--hidden 0: standardize -> softmax), EarlyStopping on val loss with the best
                  weights restored, ModelCheckpoint of the best epoch.
  --head logreg   scikit-learn Pipeline(StandardScaler, LogisticRegression(lbfgs, multinomial)).
  --head knn      scikit-learn Pipeline(StandardScaler, KNeighborsClassifier(cosine)): the
                  training-free k-nearest-neighbour probe of DINO- and CLIP-style evaluations.

HEADS is the one table of head kinds (defaults, train function, saved artifact, what a sweep may
vary) and SETTINGS the one table of valid ranges; a new head is one HeadKind row plus its train
function. Each run goes to cache/heads/<head>-<features hash>-<settings hash>/ (the row's
artifact: model.keras or model.joblib; run.json; history.json for heads trained by epochs) and
its report to cache/reports/<same name>/ (report.json, confusion.png, curves.png). A run whose folder
exists is up to date and is not trained again.
The model is chosen on the validation split; test accuracy is only reported.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.foundation import flags, records
from pipeline.heads import seeds
from pipeline.heads.evaluation import print_summary
from pipeline.heads.kinds import add_common_arguments, settings_from_args
from pipeline.heads.training import run_head
from pipeline.store.features import features_from_args


def add_arguments(p):
    add_common_arguments(p)
    p.add_argument("--seeds", type=flags.positive_int, default=1, metavar="N",
                   help="dense: train N seeds (--seed, --seed + 1, ...) and report the mean, standard deviation "
                        "and 95%% interval of the mean of the accuracies (default: 1)")


def run(args):
    settings = settings_from_args(args)        # flag mistakes surface before any loading
    seeds.check(args.head, args.seeds)
    fs = features_from_args(args)
    if args.seeds > 1:
        summary, path = seeds.run_seeds(fs, args.head, settings, args.cache_dir, args.seeds, verbose=2)
        print(seeds.summary_text(summary))
        print(f"summary: {path}")
        return
    result = run_head(fs, args.head, settings, args.cache_dir, verbose=2)
    if result["skipped"]:
        print(f"up to date: {result['run_dir']}")
    report_json = Path(result["report"], records.REPORT_JSON)
    if report_json.is_file():
        print_summary(records.read(report_json, records.REPORT), title=f"{args.head} head on {fs.path.name}")
    print(f"report: {result['report']}")
    print(f"model:  {result['run_dir']}")
