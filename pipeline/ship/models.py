"""A trained run as a model: the newest run when none is named, its record read and checked, and its
Keras image model (a dense head composed with its features file's backbone, or a fine-tune run's
model) with the run's temperature applied; a model in any form `predict` takes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import store
from pipeline.backbones.compose import image_model as stack, load_keras_file
from pipeline.backbones.rebuild import rebuild_backbone
from pipeline.foundation import layout, runs
from pipeline.foundation.errors import UserError
from pipeline.heads.calibration import apply_temperature
from pipeline.sources.files import to_size
from pipeline.sources.rows import load_splits


def newest_run(cache_dir) -> Path:
    """What `export` without RUN and `predict` without --model take: the newest finished run with an
    image model (a dense head run, composed with its backbone, or a fine-tune run); run.json is
    written last, so its time is the run's."""
    found = [d for d in runs.run_folders(cache_dir) if (d / layout.MODEL).is_file()]
    if not found:
        raise UserError(f"no dense head or fine-tune run in {cache_dir}; run `head` first, or name a run")
    return max(found, key=lambda d: (d / layout.RUN_JSON).stat().st_mtime)


def picked_line(run_dir, cache_dir, choose: str) -> str:
    return f"model: {run_dir} (the newest run in {cache_dir}; {choose} chooses another)"


def keras_run(path: Path) -> runs.Run:
    """The run of a run folder, or of its run.json or model.keras; only runs with a Keras model."""
    run_dir = path if path.is_dir() else path.parent
    if not (run_dir / layout.RUN_JSON).is_file():
        raise UserError(f"{path} is not a run folder (no run.json); give cache/heads/<run> or cache/finetune/<run>")
    run = runs.Run.read(run_dir).check_files()
    if run.stage != layout.FINETUNE_DIR and not run.keras:
        raise UserError(f"{run.folder} is a {run.kind} head run; only dense head runs and "
                        "stage-three runs export or predict (they are Keras models)")
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
        model = stack(bb.model, load_keras_file(run.folder / layout.MODEL, "head", "head"))
    return apply_temperature(model, temperature(run))


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
