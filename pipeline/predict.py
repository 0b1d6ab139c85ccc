"""Top-k classes, with probabilities, of image files, folders (searched recursively) and globs.

The model is an image model.keras: a stage-three model (fine-tuned, or backbone + head with
--epochs 0), whose class names and fitted temperature come from the run.json beside it, or an
`export --format keras` file, whose labels.txt is beside it and which carries its temperature
already. Any RGB image is accepted: it is resized to the model's input size (32x32 for CIFAR-10)
first, so that it looks like what the model was trained on.

Images are read and classified in batches (--batch-size), with a progress bar on a terminal.
Without --out each image's line is printed; with --out FILE.csv the rows (path, then class and
probability for each of the top k) are written there, atomically. An image that cannot be read
is skipped and named on stderr with the reason; the others are still predicted, and the exit
code is then 3. --tta averages the probabilities of each image and its mirror (pipeline.views).
"""
from __future__ import annotations

import csv
import glob
import io
import sys
from pathlib import Path

import numpy as np

from pipeline import records
from pipeline.data import IMAGE_SUFFIXES, rgb8
from pipeline.errors import UserError, first_line

TOP = 3
BATCH = 64
EXIT_SKIPPED = 3


def add_arguments(p):
    from pipeline.flags import positive_int as _positive_int
    p.add_argument("--model", required=True, metavar="FILE", help="a stage-three model.keras, or an exported "
                   "model.keras (export --format keras)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (searched recursively for "
                   f"{', '.join(sorted(IMAGE_SUFFIXES))}) or glob patterns (quote them; ** recurses)")
    p.add_argument("--top-k", type=_positive_int, default=TOP, metavar="K", help=f"classes per image (default: {TOP})")
    p.add_argument("--out", metavar="FILE.csv", help="write path,class_1,prob_1,...,class_k,prob_k rows there "
                   "instead of printing them")
    p.add_argument("--batch-size", type=_positive_int, default=BATCH, metavar="N", help=f"default: {BATCH}")
    p.add_argument("--tta", action="store_true", help="average each image's probabilities with its mirror's")


def run(args) -> int:
    from tqdm import tqdm
    model_path = Path(args.model)
    predictor = Predictor(model_path, tta=args.tta)      # a bad model fails before any image is read
    paths = expand(args.images)
    k = min(args.top_k, len(predictor.class_names))
    rows, skipped = [], []
    with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        for batch_rows, batch_skipped in predictor.predict_paths(paths, k, args.batch_size):
            rows += batch_rows
            skipped += batch_skipped
            bar.update(len(batch_rows) + len(batch_skipped))
    if args.out:
        write_csv(Path(args.out), rows, k)
    else:
        for path, top in rows:
            print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    for path, reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if args.out:
        print(f"{len(rows)} images -> {args.out}" + (f"; {len(skipped)} skipped" if skipped else ""), file=sys.stderr)
    return EXIT_SKIPPED if skipped else 0


# ---------------------------------------------------------------- inputs

def expand(patterns: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for image files, glob patterns expanded; in
    order, without repeats. A named file that does not exist stays in the list (it is skipped
    with its reason); a folder or pattern that finds no image is a UserError."""
    found: dict[Path, None] = {}
    for text in patterns:
        path = Path(text)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        else:
            matches = [path]
        if not matches:
            raise UserError(f"{text} matches no image files")
        found.update(dict.fromkeys(matches))
    return list(found)


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) at `size`; a UserError with the reason when the file cannot be read."""
    from PIL import Image
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img = rgb8(img)
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc)}") from None


def write_csv(path: Path, rows, k: int):
    from pipeline.store import write_text_atomic
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path"] + [f"{what}_{i}" for i in range(1, k + 1) for what in ("class", "prob")])
    for image, top in rows:
        writer.writerow([str(image)] + [v for name, p in top for v in (name, f"{p:.6f}")])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buf.getvalue())


# ---------------------------------------------------------------- the model

def load_keras_file(path: Path, what: str, make: str):
    """keras.models.load_model, with a missing or unreadable file as a UserError naming `what`
    it should have been and the `make` target that produces it."""
    import keras
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist; run `make {make}` first")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise UserError(f"cannot load {what} {path}: "
                        f"{first_line(exc)}") from None


def load_model(path: Path):
    model = load_keras_file(path, "model", "finetune")
    shape, dtype = tuple(model.input_shape), model.inputs[0].dtype
    if len(shape) != 4 or shape[-1] != 3 or dtype != "uint8":
        raise UserError(f"{path} takes {dtype} {shape}, not uint8 images; give a stage-three "
                        "model (a stage-two head takes features, not images)")
    return model


def model_metadata(model_path: Path) -> tuple[list[str] | None, float]:
    """(class names or None, temperature still to apply), from the records beside the model, read
    and checked (pipeline.records) before any work: an export's export.json and labels.txt (its
    model carries its temperature), else a run's run.json (stage three's, or stage two's features)."""
    folder = model_path.parent
    if (folder / records.EXPORT_JSON).is_file():
        export = records.read(folder / records.EXPORT_JSON, records.EXPORT)
        labels = folder / records.LABELS
        return (records.read_labels(labels) if labels.is_file() else export["class_names"]), 1.0
    if (folder / records.RUN_JSON).is_file():
        info = records.read(folder / records.RUN_JSON, records.RUN)
        names = info.get("class_names") or info["features"].get("class_names")
        return names, float(info.get("calibration", {}).get("temperature", 1.0))
    return None, 1.0


class Predictor:
    """An image model with its class names and temperature: uint8 batches -> probabilities."""

    def __init__(self, model_path: Path, tta: bool = False):
        from pipeline.calibration import apply_temperature
        names, self.temperature = model_metadata(model_path)
        self.model = load_model(model_path)
        n_classes = int(self.model.output_shape[-1])
        fits = names and len(names) == n_classes
        self.class_names = list(names) if fits else [f"class {i}" for i in range(n_classes)]
        apply_temperature(self.model, self.temperature)
        self.size = tuple(self.model.input_shape[1:3])
        self.tta = tta

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        from pipeline.views import image_views
        return np.mean([self.model.predict(v, verbose=0) for v in image_views(images, 2 if self.tta else 1)],
                       axis=0)

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
                for path, p in zip(good, self.probabilities(np.stack(images))):
                    best = np.argsort(p)[::-1][:k]
                    rows.append((path, [(self.class_names[i], float(p[i])) for i in best]))
            yield rows, skipped

