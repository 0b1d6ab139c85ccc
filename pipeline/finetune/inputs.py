"""Choosing what a fine-tune starts from: the stage-two head (given, or the best dense head for the
features file), checked against the features file and its run record, and the split sizes."""
from __future__ import annotations

from pathlib import Path

import h5py

from pipeline import store
from pipeline.backbones.compose import load_keras_file
from pipeline.finetune.settings import FinetuneSettings
from pipeline.foundation import layout, runs
from pipeline.foundation.errors import UserError
from pipeline.heads.training import find_best_head


def load_head(path: Path, width: int, n_classes: int):
    head = load_keras_file(path, "head", "head")
    d, k = head.input_shape[-1], head.output_shape[-1]
    if d != width or k != n_classes:
        raise UserError(f"head {path} maps {d} features to {k} classes, but the backbone gives {width} "
                        f"features and the data has {n_classes} classes; train a head on this features file")
    return head


def head_run(path: Path, features_hash: str) -> dict:
    """The stage-two run.json beside the head, checked against the features file (empty if none)."""
    if not (path.parent / layout.RUN_JSON).is_file():
        return {}
    info = runs.Run.read(path.parent).record
    made_from = info["features"]["settings_hash"]
    if made_from not in (None, features_hash):
        raise UserError(f"head {path} was trained on features {made_from}, not on this features file "
                        f"({features_hash}); pass a head trained on it, or run `make head`")
    return info


def find_head(s: FinetuneSettings, features_hash: str) -> Path:
    if s.start_from is not None:
        return Path(s.start_from)
    found = find_best_head(s.cache_dir, features_hash, head="dense")
    if found is None:
        heads = layout.folder(s.cache_dir, layout.HEADS_DIR)
        raise UserError(f"no dense head for features {features_hash} in {heads}; "
                        "run `make head` first (or pass --start-from FILE)")
    found = Path(found)
    return found / layout.MODEL if found.is_dir() else found


def split_sizes(features_path: Path) -> dict:
    with h5py.File(features_path, "r") as f:
        return {k: len(f[k]["labels"]) for k in store.SPLITS}

