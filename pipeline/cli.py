"""Command line: `python -m pipeline <stage> [flags]`. Each stage module registers its own flags
(`add_arguments(parser)`), its --help text (`HELP`, written for users) and runs them (`run(args)`);
this module dispatches, rebuilds the report page after the stages that add a run (REBUILDS_SITE),
and turns a UserError or a storage failure (full disk, unwritable cache) into one `error:` line with
exit code 2. A bug keeps its traceback and exit code 1."""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from pipeline.foundation.errors import UserError, first_line, storage_message
from pipeline.look import report as site

# Stage modules import nothing heavy at the top, so `--help` stays quick.
STAGE_MODULES = [
    ("features", "pipeline.extract.features", "stage one: cache frozen-backbone embeddings in HDF5"),
    ("info", "pipeline.store.info", "print a features file's settings, splits, shapes and completeness"),
    ("backbones", "pipeline.backbones.backbones", "the backbones --backbone can name: size, width, parameters, "
                                      "preprocessing, default --unfreeze-from"),
    ("head", "pipeline.heads.head", "stage two: train a dense, logreg or knn head on cached features"),
    ("sweep", "pipeline.heads.sweep", "stage two: a grid of head settings in parallel, with a leaderboard"),
    ("finetune", "pipeline.finetune.finetune",
     "stage three: fine-tune the upper backbone blocks from the stage-two head"),
    ("predict", "pipeline.ship.predict", "top-k classes of image files, folders or globs with a saved model"),
    ("export", "pipeline.ship.export", "a dense head or stage-three run as a SavedModel, TFLite or Keras file"),
    ("neighbors", "pipeline.look.neighbors", "the most similar images to a row or to image files (cosine on features)"),
    ("audit", "pipeline.look.audit", "near-duplicate and exact-copy images across splits, and accuracy without them"),
    ("map", "pipeline.look.map", "2-D map of the features (PCA, then t-SNE) and Embedding Projector files"),
    ("compare", "pipeline.look.compare", "two runs on the same images: both accuracies with intervals, the paired "
                                    "difference, McNemar's p and the images only one gets right"),
    ("verify", "pipeline.extract.verify",
     "re-embed a sample of a features file's rows and check they match what is stored"),
    ("report", "pipeline.look.report", "rebuild cache/reports/index.html: every run in one sortable page"),
]
RERUN = "rerun the same command"


class Parser(argparse.ArgumentParser):
    """Flag mistakes follow the same contract as every other user error: one line, exit code 2."""

    def error(self, message):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


# Stages after which cache/reports/index.html is rebuilt, so the page always lists every run.
REBUILDS_SITE = ("head", "sweep", "finetune")


def _rebuild_site(cache_dir):
    try:
        index, _ = site.rebuild(cache_dir)
    except Exception as exc:     # the run itself succeeded and is saved: say so, never fail it
        what = (str(exc) if isinstance(exc, UserError)
                else storage_message(exc) or f"{type(exc).__name__}: {first_line(exc)}")
        print(f"warning: {site.index_path(cache_dir)} not rebuilt ({what}); "
              "`python -m pipeline report` retries", file=sys.stderr)
        return
    print(f"all runs: {index}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m pipeline",
                    description="Cached feature extraction for transfer learning on CIFAR-10.")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, module_name, help_text in STAGE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue   # stage not built yet
        p = sub.add_parser(name, help=help_text, description=module.HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=module.run, rerun_hint=RERUN)   # a stage may set its own rerun_hint
        module.add_arguments(p)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:          # --help (0) or a flag mistake (2, already printed)
        return exc.code
    hint = getattr(args, "rerun_hint", RERUN)
    try:
        code = args.run(args)     # a stage may return a non-zero code of its own (predict: 3 = skipped files)
        if args.stage in REBUILDS_SITE:
            _rebuild_site(args.cache_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {hint} to continue", file=sys.stderr)
        return 130
    except Exception as exc:
        message = storage_message(exc, hint, kept=getattr(args, "keeps_work", True))
        if message:
            print(f"error: {message}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print("internal error (a bug): please report the traceback above", file=sys.stderr)
        return 1
    return code or 0
