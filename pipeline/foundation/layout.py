"""The cache layout: every folder and file name a command writes, the one place they are spelled
(no folder or file name is a literal elsewhere), and how a path read from a record resolves from
any working directory. The record shapes and their validating reader: pipeline.foundation.records.
"""
from __future__ import annotations

from pathlib import Path

# folders under --cache-dir, one per kind of output
FEATURES_DIR = "features"          # stage one's HDF5 files
ACTIVATIONS_DIR = "activations"    # stage three's cached cut activations
HEADS_DIR = "heads"                # one folder per head run
SWEEPS_DIR = "sweeps"              # one leaderboard (.json, .csv) per sweep
FINETUNE_DIR = "finetune"          # one folder per fine-tune run (its report inside, in RUN_REPORT_DIR)
EXPORTS_DIR = "exports"            # one folder per exported run and format
LOOKING_DIR = "looking"            # cached answers of `neighbors` and `map`
AUDIT_DIR = "audit"                # one folder per audit
REPORTS_DIR = "reports"            # the site (INDEX, RUN_PAGES) and one report folder per head run
COMPARE_DIR = "compare"            # one folder per `compare` of two runs
SEEDS_DIR = "seeds"                # one summary per `head --seeds N`
INDEXES_DIR = "indexes"            # one search index per features file, searched rows and index settings
FOLDERS = (FEATURES_DIR, ACTIVATIONS_DIR, HEADS_DIR, SWEEPS_DIR, FINETUNE_DIR, EXPORTS_DIR, LOOKING_DIR, AUDIT_DIR,
           REPORTS_DIR, COMPARE_DIR, SEEDS_DIR, INDEXES_DIR)
CHECKED_SOURCES = "sources"    # under LOOKING_DIR: image sources already checked against a fingerprint

# file and folder names inside those
MODEL = "model.keras"          # a Keras model (a dense head, or a stage-three image model)
MODEL_JOBLIB = "model.joblib"  # a scikit-learn head
RUN_JSON = "run.json"          # written last: a folder with one is a finished run
REPORT_JSON = "report.json"
EXPORT_JSON = "export.json"
LABELS = "labels.txt"          # an export's class names, one a line
AUDIT_JSON = "audit.json"
LABELS_JSON = "labels.json"    # `audit --labels`: its answer (written last), the flagged images, the
LABEL_ISSUES = "label_issues.csv"     # counts per (given, suggested) pair and the gallery
LABEL_PAIRS = "label_pairs.csv"
LABEL_GALLERY = "label_issues.png"
COMPARE_JSON = "compare.json"
HISTORY_JSON = "history.json"
PREDICTIONS = "predictions.csv"
RUN_REPORT_DIR = "report"      # a fine-tune run's report folder
CHECKPOINT = "checkpoint.npz"  # a fine-tune run's last finished epoch, for --resume
DISAGREEMENTS = "disagreements.png"   # a comparison's images only one of the two runs gets right
# a run's report folder: the pictures `head`, `finetune` and `compare` draw, which `report` shows
CONFUSION_PNG = "confusion.png"
CURVES_PNG = "curves.png"
RELIABILITY_PNG = "reliability.png"
MISTAKES_PNG = "mistakes.png"
# an audit's folder
PAIRS_PNG = "pairs.png"
BORDERLINE_PNG = "borderline.png"
PAIRS_CSV = "pairs.csv"
INDEX = "index.html"
# a search index's folder (pipeline.search): its record (written last), the rows in list order, their
# positions in the searched rows, the lists' offsets, the quantizer (faiss.write_index) and the transform
INDEX_JSON = "index.json"
INDEX_ROWS = "rows.f32"
INDEX_IDS = "ids.npy"
INDEX_OFFSETS = "offsets.npy"
INDEX_QUANTIZER = "quantizer.faiss"
INDEX_TRANSFORM = "transform.npz"
RUN_PAGES = "runs"             # the site's page per run
# `map --projector DIR`: TensorBoard's Embedding Projector files (the config written last)
PROJECTOR_TENSORS = "tensors.tsv"
PROJECTOR_METADATA = "metadata.tsv"
PROJECTOR_SPRITE = "sprite.png"
PROJECTOR_CONFIG = "projector_config.pbtxt"
BENCH_DIR = "bench"            # `make bench`'s results (benchmarks/, not a command)

# The layout as the docs show it (docs/schema.md, cache/README.md: `make docs` writes it there with
# tools/make_layout.py, and tests/test_docs.py fails when they differ): each path under the cache, and what is in it.
TREE = (
    (f"{FEATURES_DIR}/<dataset>-<backbone>-<size>-<precision>-<hash>.h5",
     "stage one (*.h5.partial: in progress or killed; rerun the same command to resume)"),
    (f"{HEADS_DIR}/<run>/", f"head: {RUN_JSON}, {MODEL} or {MODEL_JOBLIB}, {HISTORY_JSON}"),
    (f"{REPORTS_DIR}/<run>/", f"its report: {REPORT_JSON}, {CONFUSION_PNG}, {RELIABILITY_PNG}, {CURVES_PNG}, "
                              f"{PREDICTIONS}, {MISTAKES_PNG}"),
    (f"{SWEEPS_DIR}/<head>-<features hash>-<grid hash>.json|csv", "sweep: the leaderboard"),
    (f"{SEEDS_DIR}/<first run>-xN.json", "head --seeds N"),
    (f"{COMPARE_DIR}/<hash>/", f"compare: {COMPARE_JSON}, {DISAGREEMENTS}"),
    (f"{ACTIVATIONS_DIR}/*.h5", "stage three's cached activations below the cut"),
    (f"{FINETUNE_DIR}/<run>/", f"finetune: {RUN_JSON}, {MODEL}, {CHECKPOINT}, its report in {RUN_REPORT_DIR}/"),
    (f"{EXPORTS_DIR}/<run>-<format>/", f"export: the model, {LABELS}, {EXPORT_JSON}"),
    (f"{REPORTS_DIR}/{INDEX}", "report: every run in one sortable page"),
    (f"{REPORTS_DIR}/{RUN_PAGES}/<run>.html", "report: one page per run"),
    (f"{LOOKING_DIR}/neighbors-<hash>.png|json", "neighbors"),
    (f"{LOOKING_DIR}/map-<hash>.png|csv", "map"),
    (f"{LOOKING_DIR}/{CHECKED_SOURCES}/", "image sources already checked against a features file"),
    (f"{AUDIT_DIR}/<features>-<hash>/", f"audit: {AUDIT_JSON}, {PAIRS_CSV}, {PAIRS_PNG}, {BORDERLINE_PNG}; with "
                                        f"--labels {LABELS_JSON}, {LABEL_ISSUES}, {LABEL_PAIRS}, {LABEL_GALLERY}"),
    (f"{INDEXES_DIR}/<features>-<hash>/", f"the search index of neighbors, audit and the knn head: {INDEX_JSON}, "
                                          f"{INDEX_ROWS}, {INDEX_IDS}, {INDEX_OFFSETS}, {INDEX_QUANTIZER}, "
                                          f"{INDEX_TRANSFORM}"),
    (f"{BENCH_DIR}/*.json", "make bench"),
)


def folder(cache_dir, name: str) -> Path:
    """The cache's folder for one kind of output (one of FOLDERS)."""
    return Path(cache_dir) / name


def resolve(stored, cache_dir) -> Path:
    """A path read from a record, absolute. Records made before paths were stored absolute hold
    them relative to the directory the command ran in ("cache/features/x.h5"): such a path is
    taken relative to the working directory when it exists there, else found in `cache_dir` from
    its layout folder on ("features/x.h5"), so any working directory gives the same answer."""
    path = Path(stored)
    if path.is_absolute() or path.exists():
        return path.absolute()
    parts = path.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in FOLDERS:
            return Path(cache_dir, *parts[i:]).absolute()
    return path.absolute()


