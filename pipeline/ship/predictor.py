"""A model in any of the forms `predict` takes (a run folder or its model.keras, an export folder, a
SavedModel, a .tflite or .keras file) opened as one callable: uint8 images -> probabilities, with
its class names and the input size it takes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.backbones.rebuild import row_extractor
from pipeline.extract.views import image_views
from pipeline.foundation import layout, readback, records
from pipeline.foundation.errors import UserError, first_line
from pipeline.ship import formats, models
from pipeline.heads.calibration import apply_temperature
from pipeline.sources.files import load_image
from pipeline.sources.rows import decoding_of


BATCH = 64


def export_labels(folder: Path) -> list[str] | None:
    """An export's class names (export.json's), checked: its files read back as written, and its
    labels.txt, when there, says the same names in the same order (one a line)."""
    if not (folder / layout.EXPORT_JSON).is_file():
        return None
    found = records.read(folder / layout.EXPORT_JSON, records.EXPORT)
    why = readback.broken(folder, found)
    if why:
        raise records.damaged(folder / layout.EXPORT_JSON, records.EXPORT,
                              f"the export's files do not read back: {why}")
    labels = folder / layout.LABELS
    if labels.is_file() and records.read_labels(labels) != found["class_names"]:
        raise records.damaged(labels, records.EXPORT, f"its {len(records.read_labels(labels))} lines are not "
                              f"export.json's {len(found['class_names'])} class names, one a line")
    return list(found["class_names"])


FORMAT_OF_SUFFIX = {".keras": "keras", ".tflite": "tflite"}


def open_model(path: Path, backbone=None, weights=None):
    """(uint8 images -> probabilities, (H, W) it takes, class names) for every form a model has: a
    run folder (or the model.keras in it), an export (its folder, SavedModel, .tflite, .keras) or
    an image model .keras file of one's own."""
    if not path.exists():
        raise UserError(f"--model {path} does not exist; give a run folder (cache/heads/dense-..., "
                        "cache/finetune/...), a .keras file or an export")
    folder = path if path.is_dir() else path.parent
    if (folder / layout.RUN_JSON).is_file() and (path.is_dir() or path.name in (layout.MODEL, layout.MODEL_JOBLIB)):
        return _run_model(folder, backbone, weights)
    if path.is_dir() and (path / layout.EXPORT_JSON).is_file():
        inside = [path / name for name, _ in formats.FORMATS.values() if (path / name).exists()]
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
        forward, shape, n, dtype = formats.OPEN[fmt](path)
    except Exception as exc:
        raise UserError(f"cannot load {fmt} model {path}: {first_line(exc)}") from None
    if len(shape) != 4 or shape[-1] != 3 or dtype != "uint8":
        raise UserError(f"{path} takes {dtype} {shape}, not uint8 images; give an image model (a stage-two "
                        "head's model.keras takes features: give its run folder, with run.json)")
    # An export carries its temperature and class names; a file of one's own is taken as it is.
    if names is not None and len(names) != int(n):
        raise records.damaged(path.parent / layout.EXPORT_JSON, records.EXPORT,
                              f"it names {len(names)} classes, the model in it gives {int(n)}")
    names = names or [f"class {i}" for i in range(int(n))]
    return forward, tuple(shape[1:3]), names


def _run_model(run_dir: Path, backbone, weights):
    """A fine-tune run, or a dense or logreg head run: its head on the rows of its features file's backbone,
    computed as stage one computed them (decoded as it decoded them, in the file's precision), so
    a source image gets exactly its stored row's answer. The run's temperature is applied.
    Size None (files made before images were resized per file): each image as it is, a list."""
    run = models.shipped_run(run_dir)
    if run.stage == layout.FINETUNE_DIR:
        model = models.image_model(run, None)
        return (lambda x: model.predict(x, verbose=0)), tuple(model.input_shape[1:3]), models.class_names(run)
    attrs = models.features_attrs(run)
    rows = row_extractor(attrs, backbone, weights)
    head = apply_temperature(models.head_model(run), models.temperature(run))
    return (lambda images: head.predict(rows(images), verbose=0)), decoding_of(attrs).size, models.class_names(run)


class Predictor:
    """A model in any of its forms with its class names: uint8 batches -> probabilities."""

    def __init__(self, model_path: Path, tta: bool = False, backbone=None, weights=None):
        self.forward, self.size, self.class_names = open_model(Path(model_path), backbone, weights)
        self.tta = tta

    def probabilities(self, images: np.ndarray) -> np.ndarray:
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
