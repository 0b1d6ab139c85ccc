"""Top-k classes, with probabilities, of image files, folders (searched recursively) and globs.

--model takes every form a trained model has: a run folder (a dense head run: the features file's
backbone, found where the features file recorded it, with the head on top, as `export` composes
them; or a fine-tune run), the model.keras in one, an export (its folder, the SavedModel folder,
the .tflite or .keras file) or an image-model .keras file of one's own. Left out, it is the newest
dense head or fine-tune run in --cache-dir, named on stderr. Class names and the fitted temperature
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
mirror (pipeline.views).
"""
from __future__ import annotations

import csv
import glob
import io
import os
import sys
from pathlib import Path

import numpy as np

from pipeline import export, flags, outputs, records
from pipeline.data import IMAGE_SUFFIXES, rgb8
from pipeline.errors import UserError, first_line

TOP = 3
BATCH = 64
EXIT_SKIPPED = 3


def add_arguments(p):
    p.add_argument("--model", metavar="RUN|FILE", help="a run folder (cache/heads/dense-..., cache/finetune/...), "
                   "a .keras file, or an export (its folder, SavedModel, .tflite or .keras); default: the newest "
                   "dense head or fine-tune run in --cache-dir")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (searched recursively for "
                   f"{', '.join(sorted(IMAGE_SUFFIXES))}) or glob patterns (quote them; ** recurses); "
                   "linked folders are not followed")
    p.add_argument("--top-k", type=flags.positive_int, default=TOP, metavar="K",
                   help=f"classes per image (default: {TOP})")
    p.add_argument("--out", type=flags.out_file, metavar="FILE.csv", help="write path,class_1,prob_1,...,class_k,"
                   "prob_k rows there instead of printing them")
    p.add_argument("--batch-size", type=flags.positive_int, default=BATCH, metavar="N", help=f"default: {BATCH}")
    p.add_argument("--tta", action="store_true", help="average each image's probabilities with its mirror's")
    flags.add_moved_backbone(p)
    flags.add_cache_dir(p, "runs")
    p.set_defaults(keeps_work=False)     # a failed write keeps nothing: the CSV is written at the end


def run(args) -> int:
    from pipeline.progress import Progress
    picked = args.model is None
    if picked:
        args.model = export.newest_run(args.cache_dir)
    # A bad model or pattern fails before any image is read.
    predictor = Predictor(Path(args.model), tta=args.tta, backbone=args.backbone, weights=args.weights)
    if picked:
        print(export.picked_line(args.model, args.cache_dir, "--model"), file=sys.stderr)
    paths = expand(args.images)
    k = min(args.top_k, len(predictor.class_names))
    rows, skipped = [], []
    with Progress(len(paths), desc="predict") as bar:     # plain lines when stderr is a log
        for batch_rows, batch_skipped in predictor.predict_paths(paths, k, args.batch_size):
            rows += batch_rows
            skipped += batch_skipped
            bar.update(len(batch_rows) + len(batch_skipped))
    if args.out:
        write_csv(Path(args.out), rows, k)
    else:
        for path, top in rows:
            _print_raw(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    for path, reason in skipped:
        print(f"skipped: {shown(reason)}", file=sys.stderr)
    if args.out:
        print(f"{len(rows)} images -> {shown(args.out)}" + (f"; {len(skipped)} skipped" if skipped else ""),
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


# ---------------------------------------------------------------- inputs

def expand(patterns: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for image files, glob patterns expanded; in
    order, each real file once (two names of one file, through a link, count once). A path that
    exists is taken as it is, even with glob characters in its name; linked folders are not
    followed, by folders or by `**`, so a link cannot loop or lead out of the folder. A named file
    that does not exist stays in the list (it is skipped with its reason); a folder or pattern that
    finds no image is a UserError."""
    found: dict[Path, Path] = {}
    for text in patterns:
        path = Path(text)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists() or not glob.has_magic(text):
            matches = [path]
        else:
            matches = sorted(p for p in _glob(path) if p.is_file())
        if not matches:
            raise UserError(f"{text} matches no image files")
        for p in matches:
            found.setdefault(p.resolve(), p)
    return list(found.values())


def _glob(pattern: Path) -> list[Path]:
    """The pattern's matches that pass through no linked folder below its first magic part, as a
    folder argument's: pathlib's `**` does not follow links (the glob module's does, into loops),
    and a `*` that matched a linked folder is dropped here."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first]) if first else Path(".")
    found = []
    for match in base.glob(str(Path(*parts[first:]))):
        folders = match.relative_to(base).parts[:-1]
        if not any(base.joinpath(*folders[:i + 1]).is_symlink() for i in range(len(folders))):
            found.append(match)
    return found


def to_size(img, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as uint8 RGB (H, W, 3) at `size` (None: its own), resized as predict resizes every image."""
    from PIL import Image
    img = rgb8(img)
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (H, W, 3) at `size` (None: its own); a UserError with the reason when the file cannot be read."""
    from PIL import Image
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            return to_size(img, size)
    except Exception as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc)}") from None


def write_csv(path: Path, rows, k: int):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path"] + [f"{what}_{i}" for i in range(1, k + 1) for what in ("class", "prob")])
    for image, top in rows:
        writer.writerow([str(image)] + [v for name, p in top for v in (name, f"{p:.6f}")])
    with outputs.atomic_file(path) as tmp:     # file names as their bytes, UTF-8 or not
        Path(tmp).write_bytes(buf.getvalue().encode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------- the model, in any of its forms

def load_keras_file(path: Path, what: str, make: str):
    """keras.models.load_model, with a missing or unreadable file as a UserError naming `what`
    it should have been and the `make` target that produces it."""
    import keras
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist; run `make {make}` first")
    if not path.is_file():
        raise UserError(f"{what} {path} is a folder, not a .keras file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise UserError(f"cannot load {what} {path}: "
                        f"{first_line(exc)}") from None


def export_labels(folder: Path) -> list[str] | None:
    """An export's class names (labels.txt beside its export.json), both read and checked."""
    if not (folder / records.EXPORT_JSON).is_file():
        return None
    found = records.read(folder / records.EXPORT_JSON, records.EXPORT)
    labels = folder / records.LABELS
    return records.read_labels(labels) if labels.is_file() else list(found["class_names"])


FORMAT_OF_SUFFIX = {".keras": "keras", ".tflite": "tflite"}


def open_model(path: Path, backbone=None, weights=None):
    """(uint8 images -> probabilities, (H, W) it takes, class names) for every form a model has: a
    run folder (or the model.keras in it), an export (its folder, SavedModel, .tflite, .keras) or
    an image model .keras file of one's own."""
    if not path.exists():
        raise UserError(f"--model {path} does not exist; give a run folder (cache/heads/dense-..., "
                        "cache/finetune/...), a .keras file or an export")
    folder = path if path.is_dir() else path.parent
    if (folder / records.RUN_JSON).is_file() and (path.is_dir() or path.name == records.MODEL):
        return _run_model(folder, backbone, weights)
    if path.is_dir() and (path / records.EXPORT_JSON).is_file():
        inside = [path / name for name, _ in export.FORMATS.values() if (path / name).exists()]
        if not inside:
            raise UserError(f"{path} holds an export.json but no exported model in it")
        return open_model(inside[0])
    names = export_labels(path.parent)      # the records first: a damaged one is one error line, not a load failure
    fmt = "savedmodel" if (path / "saved_model.pb").is_file() else \
        FORMAT_OF_SUFFIX.get(path.suffix) if path.is_file() else None
    if fmt is None:
        raise UserError(f"--model {path} is not a model predict reads: give a run folder (with run.json), a "
                        ".keras or .tflite file, or an export's folder or SavedModel folder (with saved_model.pb)")
    try:
        forward, shape, n, dtype = export.OPEN[fmt](path)
    except Exception as exc:
        raise UserError(f"cannot load {fmt} model {path}: {first_line(exc)}") from None
    if len(shape) != 4 or shape[-1] != 3 or dtype != "uint8":
        raise UserError(f"{path} takes {dtype} {shape}, not uint8 images; give an image model (a stage-two "
                        "head's model.keras takes features: give its run folder, with run.json)")
    # An export carries its temperature; a file of one's own is taken as it is.
    names = names if names and len(names) == int(n) else [f"class {i}" for i in range(int(n))]
    return forward, tuple(shape[1:3]), names


def _run_model(run_dir: Path, backbone, weights):
    """A fine-tune run, or a dense head run: its head on the rows of its features file's backbone,
    computed as stage one computed them (each image at its own size, in the file's precision), so
    a source image gets exactly its stored row's answer. The run's temperature is applied.
    Size None: the images are given as they are, a list."""
    run_dir, info = export.read_run(run_dir)
    if info.get("stage") == "finetune":
        model = export.image_model(run_dir, info, None)
        return (lambda x: model.predict(x, verbose=0)), tuple(model.input_shape[1:3]), export.class_names(info)
    from pipeline.calibration import apply_temperature
    from pipeline.features import row_extractor
    rows = row_extractor(export.features_attrs(info), backbone, weights)
    head = apply_temperature(load_keras_file(run_dir / records.MODEL, "head", "head"), export.temperature(info))
    return (lambda images: head.predict(rows(images), verbose=0)), None, export.class_names(info)


class Predictor:
    """A model in any of its forms with its class names: uint8 batches -> probabilities."""

    def __init__(self, model_path: Path, tta: bool = False, backbone=None, weights=None):
        self.forward, self.size, self.class_names = open_model(Path(model_path), backbone, weights)
        self.tta = tta

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        from pipeline.views import image_views
        return np.mean([self.forward(v) for v in image_views(images, 2 if self.tta else 1)], axis=0)

    def predict_paths(self, paths: list[Path], k: int, batch_size: int = BATCH):
        """Yields ([(path, [(class, probability)] * k)], [(path, reason)]) per batch of paths."""
        for lo in range(0, len(paths), batch_size):
            images, good, skipped = [], [], []
            for path in paths[lo:lo + batch_size]:
                try:
                    images.append(load_image(path, self.size))
                    good.append(path)
                except UserError as exc:
                    skipped.append((path, str(exc)))
            rows = []
            if images:
                batch = np.stack(images) if self.size else images      # a list: each at its own size
                for path, p in zip(good, self.probabilities(batch)):
                    best = np.argsort(p)[::-1][:k]
                    rows.append((path, [(self.class_names[i], float(p[i])) for i in best]))
            yield rows, skipped

