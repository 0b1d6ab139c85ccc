"""Command line: `python -m pipeline <stage> [flags]`. Parses flags into a settings object, runs
the stage, and turns a UserError into one line on stderr with exit code 2."""
from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback
from pathlib import Path

from pipeline.errors import UserError


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _add_features(sub):
    p = sub.add_parser("features", help="stage one: cache frozen-backbone embeddings in HDF5",
                       description="Run the frozen backbone once over CIFAR-10 and store the pooled "
                                   "embeddings, labels and provenance in cache/features/*.h5. The last "
                                   "line printed is the file's path.")
    p.add_argument("--data", metavar="PATH", help="cifar-10-batches-py folder, cifar-10-python.tar.gz, or "
                   "image folders train/<class>/* and test/<class>/*; default: download via Keras")
    p.add_argument("--backbone", default="inception_v3", metavar="NAME|PATH",
                   help="a backbone named in `python -m pipeline backbones` (inception_v3, resnet50, "
                        "convnext_tiny, ...), or a saved .keras model taking RGB 0-255 images and returning "
                        "a feature vector (default: inception_v3)")
    p.add_argument("--weights", metavar="imagenet|none|PATH",
                   help="Keras's ImageNet download, random init (tests), or a local weights file, e.g. "
                        "Keras's *_notop.h5 for the backbone (default: imagenet)")
    p.add_argument("--size", type=_positive_int, metavar="N",
                   help="side of the resized input (default: the backbone's own, e.g. 299 for inception_v3; "
                        "at least its minimum, e.g. 75)")
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="images per batch (default: 64)")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: float16 on a GPU, bfloat16 on a CPU with AMX/AVX512-BF16, else float32")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="at most N train and N test images, balanced across classes (val is carved from train)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="stratified share of train held out as val (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the val split and of --weights none")
    p.add_argument("--views", type=int, default=1, choices=(1, 2),
                   help="2: also store each image's horizontally mirrored view (heads then train on both "
                        "and average the two views' probabilities); default: 1")
    p.add_argument("--cache-dir", default="cache", metavar="DIR", help="where outputs go (default: cache)")
    p.add_argument("--shard-rows", type=_positive_int, default=4096, metavar="N",
                   help="rows per unit of work, a multiple of 128: what a resumed run recomputes at most "
                        "per shard in flight (default: 4096)")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: this process (default); ray: a Ray Data actor pool, on a local instance "
                        "or a cluster (needs the [ray] extra)")
    p.add_argument("--address", metavar="auto|ray://HOST:PORT", help="ray: the cluster to join (default: "
                   "start a local instance for this run)")
    p.add_argument("--workers", type=_positive_int, default=2, metavar="N", help="ray: actors in the pool (default: 2)")
    p.add_argument("--gpus-per-worker", type=float, default=0, metavar="G",
                   help="ray: GPUs per actor (default: 0, CPU); more than the cluster has fails at once")


def _run_features(args):
    from pipeline.features import FeatureSettings, run_features
    settings = FeatureSettings(data=args.data, backbone=args.backbone, weights=args.weights, size=args.size,
                               batch_size=args.batch_size, precision=args.precision, limit=args.limit,
                               val_fraction=args.val_fraction, seed=args.seed, cache_dir=args.cache_dir,
                               shard_rows=args.shard_rows, engine=args.engine, address=args.address,
                               workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                               views=args.views)
    print(run_features(settings))


def _run_backbones(args):
    from pipeline.backbone import backbone_table
    print(backbone_table())


def _run_info(args):
    from pipeline.store import describe
    print(describe(args.file))


# Later stages live in their own modules, each with `add_arguments(parser)` and `run(args)`.
# Those modules import nothing heavy at the top, so `--help` stays quick.
STAGE_MODULES = [
    ("head", "pipeline.heads", "stage two: train a dense, logreg or knn head on cached features"),
    ("sweep", "pipeline.sweep", "stage two: a grid of head settings in parallel, with a leaderboard"),
    ("finetune", "pipeline.finetune", "stage three: fine-tune the upper backbone blocks from the stage-two head"),
    ("predict", "pipeline.predict", "top-k classes of image files, folders or globs with a saved model"),
    ("export", "pipeline.export", "a dense head or stage-three run as a SavedModel, TFLite or Keras file"),
    ("neighbors", "pipeline.neighbors", "the most similar images to a row or to image files (cosine on features)"),
    ("audit", "pipeline.audit", "near-duplicate and exact-copy images across splits, and accuracy without them"),
    ("map", "pipeline.projection", "2-D map of the features (PCA, then t-SNE) and Embedding Projector files"),
    ("report", "pipeline.site", "rebuild cache/reports/index.html: every run in one sortable page"),
]


# Stages after which cache/reports/index.html is rebuilt, so the page always lists every run.
REBUILDS_SITE = ("head", "sweep", "finetune")


def _rebuild_site(cache_dir):
    from pipeline import site
    try:
        index, _ = site.rebuild(cache_dir)
    except (UserError, OSError) as exc:     # the run itself succeeded: say so, do not fail it
        print(f"warning: {Path(cache_dir, 'reports', 'index.html')} not rebuilt ({exc}); "
              "`python -m pipeline report` retries", file=sys.stderr)
        return
    print(f"all runs: {index}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline",
                                     description="Cached feature extraction for transfer learning on CIFAR-10.")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_features(sub)
    sub.choices["features"].set_defaults(run=_run_features)
    info = sub.add_parser("info", help="print a features file's settings, splits, shapes and completeness")
    info.add_argument("file", metavar="FILE.h5")
    info.set_defaults(run=_run_info)
    sub.add_parser("backbones", help="the backbones --backbone can name: size, width, parameters, "
                   "preprocessing, default --unfreeze-from").set_defaults(run=_run_backbones)
    for name, module_name, help_text in STAGE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue   # stage not built yet
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)     # a stage may return a non-zero code of its own (predict: 3 = skipped files)
        if args.stage in REBUILDS_SITE:
            _rebuild_site(args.cache_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: disk full while writing {exc.filename or 'the cache'}; free space and rerun "
                  "to resume", file=sys.stderr)
            return 2
        if exc.errno in (errno.EACCES, errno.EROFS):
            print(f"error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1
    except Exception:
        traceback.print_exc()
        print("internal error (a bug): please report the traceback above", file=sys.stderr)
        return 1
    return code or 0
