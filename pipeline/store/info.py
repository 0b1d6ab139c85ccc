"""The `info` command: a row store file's attributes and splits, printed without loading its rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store.reader import check_structure, is_complete, open_store
from pipeline.store.schema import SPLITS, words_for


HELP = """Print a features file's (or an activation cache's) settings, splits, shapes and completeness.
"""


def add_arguments(p):
    p.add_argument("file", metavar="FILE.h5")


def run(args):
    print(describe(args.file))


def describe(path) -> str:
    """Human-readable summary for `python -m pipeline info` of a features file or an activation
    cache (also of incomplete or partial ones)."""
    path = Path(path)
    with open_store(path) as f:
        words = words_for(f.attrs)
        attrs = check_structure(f, path, require_complete=False, words=words)
        progress = f.get("progress")
        lines = [f"{'file:':<19}{path} ({words.what})",
                 f"{'complete:':<19}{'yes' if is_complete(attrs) else 'no'}"]
        for key in ("schema_version", "settings_hash", "dataset", "source", "backbone", "backbone_file", "weights",
                    "weights_file", "input_size", "feature_width", "views", "preprocessing", "precision", "device",
                    "limit", "split", "val_fraction", "test_fraction", "split_seed", "orientation", "image_shape",
                    "batch_size", "data_fingerprint", "created",
                    "elapsed_seconds", "images_per_second"):
            if key in attrs:
                lines.append(f"{key + ':':<19}{attrs[key]}")
        lines.append(f"{'class_names:':<19}{', '.join(map(str, attrs.get('class_names', [])))}")
        lines.append(f"{'versions:':<19}" + ", ".join(f"{k} {v}" for k, v in attrs.get("versions", {}).items()))
        n_classes = len(attrs.get("class_names", []))
        for i, split in enumerate(SPLITS):
            g = f[split]
            done = f" ({int(progress[split]['done'][...].sum())} rows written)" if progress is not None else ""
            labels = g["labels"][...].astype(np.int64)
            if not n_classes:               # an activation cache names no classes: its labels say how many
                n_classes = int(labels.max(initial=-1)) + 1
            inside = (labels >= 0) & (labels < n_classes)
            counts = np.bincount(labels[inside], minlength=n_classes).tolist()
            outside = f", {int((~inside).sum())} labels outside 0..{n_classes - 1}" if not inside.all() else ""
            lines.append(f"{split:<6} rows {g['features'].shape} {g['features'].dtype}, "
                         f"labels {g['labels'].shape}, per class {counts}{outside}{done}")
    return "\n".join(lines)
