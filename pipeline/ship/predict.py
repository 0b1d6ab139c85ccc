"""The `predict` command: images in, top-k classes out, with any form of model (predictor.py)."""
from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.foundation import flags, outputs, settings
from pipeline.foundation.settings import Checked, Interval, setting
from pipeline.foundation.progress import Progress
from pipeline.ship import models
from pipeline.ship.predictor import BATCH, Predictor
from pipeline.sources.decode import IMAGE_SUFFIXES
from pipeline.sources.files import expand


TOP = 3


EXIT_SKIPPED = 3


@dataclass
class PredictSettings:
    model: str | None = setting(None, None, "a run folder (cache/heads/dense-... or logreg-..., cache/finetune/...), "
                                "a .keras file, or an export (its folder, SavedModel, .tflite or .keras); default: the "
                                "newest dense head, logreg head or fine-tune run in --cache-dir",
                                metavar="RUN|FILE", record=False)
    top_k: int = setting(TOP, Interval(int, 1), "classes per image", metavar="K")
    out: str | None = setting(None, Checked(flags.out_file, "a file that can be written", "FILE.csv"),
                              "write path,class_1,prob_1,...,class_k,prob_k rows there instead of printing them",
                              record=False)
    batch_size: int = setting(BATCH, Interval(int, 1), "images read and classified at a time")
    tta: bool = setting(False, None, "average each image's probabilities with its mirror's")
    backbone: str | None = flags.moved_backbone_setting()
    weights: str | None = flags.moved_weights_setting()
    cache_dir: str = flags.cache_dir_setting("runs")


HELP = """Top-k classes, with probabilities, of image files, folders (searched recursively) and globs.

--model takes every form a trained model has: a run folder (a dense or logreg head run: the features
file's backbone, found where the features file recorded it, with the head on top, as `export`
composes them; or a fine-tune run), the model file in one, an export (its folder, the SavedModel
folder, the .tflite or .keras file) or an image-model .keras file of one's own. Left out, it is the
newest dense head, logreg head or fine-tune run in --cache-dir, whatever its kind (the one trained
last), named on stderr with its kind and validation accuracy. Class names and the fitted temperature
come from the run.json (an export carries its temperature, and its labels.txt). Any RGB image is
accepted: it is resized to the model's input size (32x32 for CIFAR-10) first, so that it looks like
what the model was trained on; a dense head run takes each image as stage one took it (alone, at its
own size, straight to the backbone's input), so a source image gets exactly its stored row's answer.

Images are read and classified in batches (--batch-size), with a progress bar on a terminal.
Without --out each image's line is printed; with --out FILE.csv (checked before any work) the rows
(path, then class and probability for each of the top k) are written there, atomically; file names
that are not UTF-8 are written as their bytes. An image that cannot be read is skipped and named on
stderr with the reason; the others are still predicted, and the exit code is then 3. A path that
exists is a file even with glob characters in its name; globs, like folders, follow no linked
folder and each real file is predicted once. --tta averages the probabilities of each image and its
mirror; a fine-tuned model made with two test-time views (finetune's default) does that itself.
"""


def add_arguments(p):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (searched recursively for "
                   f"{', '.join(sorted(IMAGE_SUFFIXES))}) or glob patterns (quote them; ** recurses); "
                   "linked folders are not followed")
    settings.add_flags(p, PredictSettings)
    p.set_defaults(keeps_work=False)     # a failed write keeps nothing: the CSV is written at the end


def run(args) -> int:
    return run_predict(settings.from_args(PredictSettings, args), args.images)


def run_predict(s: PredictSettings, images: list) -> int:
    """Predict `images` (files, folders, globs); print or write the rows; the exit code."""
    s = settings.check(s)
    model = s.model or models.newest_run(s.cache_dir)
    # A bad model or pattern fails before any image is read.
    predictor = Predictor(Path(model), tta=s.tta, backbone=s.backbone, weights=s.weights)
    if not s.model:
        print(models.picked_line(model, s.cache_dir, "--model"), file=sys.stderr)
    paths = expand(images)
    k = min(s.top_k, len(predictor.class_names))
    rows, skipped = [], []
    with Progress(len(paths), desc="predict") as bar:     # plain lines when stderr is a log
        for batch_rows, batch_skipped in predictor.predict_paths(paths, k, s.batch_size):
            rows += batch_rows
            skipped += batch_skipped
            bar.update(len(batch_rows) + len(batch_skipped))
    if s.out:
        write_csv(Path(s.out), rows, k)
    else:
        for path, top in rows:
            _print_raw(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    for path, reason in skipped:
        print(f"skipped: {shown(reason)}", file=sys.stderr)
    if s.out:
        print(f"{len(rows)} images -> {shown(s.out)}" + (f"; {len(skipped)} skipped" if skipped else ""),
              file=sys.stderr)
    return EXIT_SKIPPED if skipped else 0


def shown(text) -> str:
    """A message with a file name that is not UTF-8 (surrogates, from os.fsdecode) escaped, \\xe9."""
    return os.fsencode(str(text)).decode("utf-8", "backslashreplace")


def _print_raw(line: str):
    """A line with file names as their bytes: a name that is not UTF-8 arrives as surrogates
    (os.fsdecode) and goes back out unchanged instead of failing to encode."""
    sys.stdout.flush()
    sys.stdout.buffer.write(line.encode(sys.stdout.encoding or "utf-8", "surrogateescape") + b"\n")
    sys.stdout.buffer.flush()


def write_csv(path: Path, rows, k: int):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path"] + [f"{what}_{i}" for i in range(1, k + 1) for what in ("class", "prob")])
    for image, top in rows:
        writer.writerow([str(image)] + [v for name, p in top for v in (name, f"{p:.6f}")])
    with outputs.atomic_file(path) as tmp:     # file names as their bytes, UTF-8 or not
        Path(tmp).write_bytes(buf.getvalue().encode("utf-8", "surrogateescape"))
