"""Top-3 classes, with probabilities, of each image file given, by a saved image model.

The model is a stage-three model.keras (fine-tuned, or backbone + head with --epochs 0): uint8
images in, class probabilities out. Class names come from the run.json beside it. Any RGB image
is accepted: it is resized to the model's input size (32x32 for CIFAR-10) first, so that it
looks like what the model was trained on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import UserError, first_line

TOP = 3


def add_arguments(p):
    p.add_argument("--model", required=True, metavar="FILE", help="a stage-three model.keras")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")


def run(args):
    for path, top in predict_files(Path(args.model), [Path(i) for i in args.images]):
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))


def class_names(model_path: Path, n_classes: int) -> list[str]:
    """From run.json beside the model (stage three's, or stage two's features.class_names)."""
    run_json = model_path.parent / "run.json"
    names = None
    if run_json.is_file():
        info = json.loads(run_json.read_text())
        names = info.get("class_names") or info.get("features", {}).get("class_names")
    if not names or len(names) != n_classes:
        return [f"class {i}" for i in range(n_classes)]
    return list(names)


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc)}") from None


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


def predict_files(model_path: Path, images: list[Path]):
    """[(image path, [(class name, probability)] * 3)], best first. Reads every image before
    running the model, so a bad file fails fast."""
    model = load_model(model_path)
    size = tuple(model.input_shape[1:3])
    batch = np.stack([load_image(p, size) for p in images])
    probs = model.predict(batch, verbose=0)
    names = class_names(model_path, probs.shape[1])
    out = []
    for path, p in zip(images, probs):
        best = np.argsort(p)[::-1][:TOP]
        out.append((path, [(names[i], float(p[i])) for i in best]))
    return out
