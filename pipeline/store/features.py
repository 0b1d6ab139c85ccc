"""Reading a features file, for every stage after the first: the row store's checks plus one vector per
image of the declared width, and the one rule for a left-out `--features` (the newest complete file)."""
from __future__ import annotations

from pathlib import Path

from pipeline import store
from pipeline.foundation import layout
from pipeline.foundation.errors import UserError, notice


def load_features(path, splits=store.SPLITS, expect: dict | None = None,
                  stream_above: int | None = None) -> store.RowSet:
    """Read a features file with every check any stage relies on: the store's own (schema,
    completeness, shapes, stale settings, labels within class_names, finite values) plus one
    vector per image of the declared feature_width. `splits`: which to load into memory, or with
    `stream_above` (bytes) on a file whose rows take more: which to leave on disk as store.Rows,
    read a window at a time (the caller chooses the size; `head` passes heads.streamed_data's)."""
    fs = store.read_rows(path, expect=expect, splits=splits, words=store.FEATURES_FILE, stream_above=stream_above)
    attrs, path = fs.attrs, fs.path
    row_shape = list(attrs.get("row_shape", [attrs.get("feature_width")]))
    if len(row_shape) != 1:
        kind = f" ({attrs['kind']})" if "kind" in attrs else ""
        raise UserError(f"{path} holds rows of shape {tuple(row_shape)}{kind}, not one feature vector per "
                        f"image, (N, D); pass a stage-one features file")
    if row_shape[0] != attrs.get("feature_width"):
        raise UserError(f"{path}: its features are {row_shape[0]} wide but the file's feature_width says "
                        f"{attrs.get('feature_width')}; {store.FEATURES_FILE.fix}")
    return fs


def default_features(cache_dir, log=None) -> Path:
    """The one rule for `--features` left out (head, sweep, finetune, ...): the newest complete
    features file in CACHE/features, whatever its settings, named on stderr (its values are checked
    when it is loaded: a damaged newest file is reported, not silently passed over for an older one)."""
    found = []
    for path in layout.folder(cache_dir, layout.FEATURES_DIR).glob("*.h5"):
        try:
            attrs = store.read_rows(path, splits=(), values=False).attrs
        except UserError:
            continue       # incomplete, damaged or foreign: not a candidate
        if len(attrs.get("row_shape", [0])) == 1:
            found.append(path)
    if not found:
        raise UserError(f"no complete features file in {Path(cache_dir, 'features')}; run `make features` "
                        "(or `python -m pipeline features --data DIR`) first, or pass --features FILE")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    (log or notice)(f"features: {newest} (the newest in {Path(cache_dir, 'features')}; --features chooses another)")
    return newest


def features_from_args(args, stream_above: int | None = None) -> store.RowSet:
    """The features file a command's --features names, or the newest one (`default_features`)."""
    return load_features(args.features or default_features(args.cache_dir), stream_above=stream_above)
