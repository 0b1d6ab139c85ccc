"""A trained run as a model: the newest run when none is named, its record read and checked, and its
Keras image model (a dense or logreg head composed with its features file's backbone, or a
fine-tune run's model) with the run's temperature applied; a model in any form `predict` takes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import store
from pipeline.backbones.compose import image_model as stack, load_keras_file
from pipeline.backbones.rebuild import rebuild_backbone
from pipeline.foundation import layout, runs
from pipeline.foundation.errors import UserError, warn
from pipeline.heads.calibration import apply_temperature
from pipeline.sources.files import to_size
from pipeline.sources.rows import load_splits


# The run kinds that ship (an image model: a dense or logreg head composed with its features file's
# backbone, or a fine-tune's model); a knn head's vote is no fixed function of one image's features.
SHIPPED = ("dense", "logreg", "finetune")


def newest_run(cache_dir) -> Path:
    """What `export` without RUN and `predict` without --model take: the newest finished run that
    ships (SHIPPED), whatever its kind: the run the user trained last is the one they expect, as
    every other command takes the newest features file or run. run.json is written last, so its
    time is the run's. A newer knn run is named in `picked_line`, never skipped silently; a damaged
    run.json is left out with a warning."""
    found = []
    for folder in runs.run_folders(cache_dir):
        try:
            run = runs.Run.read(folder)
        except UserError as exc:
            warn(f"left out of the search for the newest run: {exc}")
            continue
        if run.kind in SHIPPED and model_file(run).is_file():
            found.append(folder)      # as the cache was named: relative stays relative
    if not found:
        raise UserError(f"no dense head, logreg head or fine-tune run in {cache_dir}; run `head` first, "
                        "or name a run")
    return max(found, key=_finished_at)


def _finished_at(run_dir: Path) -> float:
    return (Path(run_dir) / layout.RUN_JSON).stat().st_mtime


def picked_line(run_dir, cache_dir, choose: str) -> str:
    """Which run was taken and why: its kind and validation accuracy, and how many newer runs do
    not ship."""
    run = runs.Run.read(run_dir)
    val = run.record.get("metrics", {}).get("val_accuracy")
    newer = sum(_finished_at(f) > _finished_at(run_dir) for f in runs.run_folders(cache_dir))
    return (f"model: {run_dir} (the newest dense, logreg or fine-tune run in {cache_dir}: a {run.kind} run"
            + (f", val accuracy {val:.4f}" if val is not None else "")
            + (f"; {newer} newer run(s) do not ship (knn, or damaged)" if newer else "")
            + f"; {choose} chooses another)")


def model_file(run: runs.Run) -> Path:
    """The file a run's model is saved in: model.joblib (logreg) or model.keras (dense, fine-tune)."""
    return run.folder / (layout.MODEL_JOBLIB if run.kind == "logreg" else layout.MODEL)


def shipped_run(path: Path) -> runs.Run:
    """The run of a run folder, or of its run.json or model file; only runs that ship (SHIPPED)."""
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / layout.RUN_JSON).is_file():
        raise UserError(f"{path} is not a run folder (no run.json); give cache/heads/<run> or cache/finetune/<run>")
    run = runs.Run.read(run_dir).check_files()
    if run.kind not in SHIPPED:
        raise UserError(f"{run.folder} is a {run.kind} head run; only dense and logreg head runs and "
                        "stage-three runs export or predict (a k-NN vote is no fixed function of one image)")
    if not model_file(run).is_file():
        raise UserError(f"{run.folder} holds no {model_file(run).name}; it did not finish: rerun it")
    return run


def features_attrs(run: runs.Run) -> dict:
    attrs = store.read_rows(run.features, splits=()).attrs
    if attrs["settings_hash"] != run.record["features"]["settings_hash"]:
        raise UserError(f"{run.features} is no longer the features file the run was trained on "
                        f"({run.record['features']['settings_hash']}); rerun it")
    return attrs


def image_model(run: runs.Run, attrs: dict, backbone=None, weights=None):
    """The Keras model to export: uint8 images -> probabilities, temperature applied."""
    if run.stage == layout.FINETUNE_DIR:
        model = load_keras_file(run.folder / layout.MODEL, "fine-tuned model", "finetune")
    else:
        bb = rebuild_backbone(attrs, backbone, weights)
        model = stack(bb.model, head_model(run))
    return apply_temperature(model, temperature(run))


def head_model(run: runs.Run):
    """A head run's Keras model, features -> probabilities: a dense head's model.keras, or a logreg
    head's scaler and logistic regression folded into one softmax layer (pipeline.heads.affine)."""
    if run.kind == "logreg":
        from pipeline.heads.affine import keras_head
        from pipeline.heads.classifiers import load_joblib
        return keras_head(load_joblib(model_file(run)))
    return load_keras_file(model_file(run), "head", "head")


def temperature(run: runs.Run) -> float:
    return float(run.record.get("calibration", {}).get("temperature", 1.0))


def class_names(run: runs.Run) -> list[str]:
    return list(run.record.get("class_names") or run.record["features"]["class_names"])


def sample_test_images(attrs: dict, data_path, n: int) -> np.ndarray:
    """n real test images of the features file, spread over the split (it is ordered by class), at
    the size the model takes: an image folder's images of other sizes are resized as predict
    resizes them."""
    test = load_splits(attrs, data_path)["test"]
    images = test.select(np.unique(np.linspace(0, len(test) - 1, min(n, len(test))).astype(int))).read()
    size = tuple(attrs["image_shape"][:2])
    return np.stack([x if x.shape[:2] == size else to_size(Image.fromarray(x), size) for x in images])
