"""Stage one: run the frozen backbone once over every image and cache the embeddings in HDF5."""
from __future__ import annotations

import datetime
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import data, store
from pipeline import backbone as backbones
from pipeline.backbone import build_backbone, fast_extractor, resolve_precision
from pipeline.errors import UserError


@dataclass
class FeatureSettings:
    data: str | None = None          # None: keras.datasets.cifar10 download
    backbone: str = backbones.DEFAULT_BACKBONE   # a row of backbone.BACKBONES, or a saved .keras model
    weights: str | None = None       # imagenet | none | PATH (named backbones only); None = imagenet
    size: int | None = None          # None: the row's default size, the model's own for a file
    batch_size: int = 64
    precision: str = "auto"
    limit: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    cache_dir: str = "cache"


def dataset_name(path: str | None) -> str:
    if path is None:
        return "cifar10"
    name = Path(path).resolve().name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(suffix)
    return name


def identity(s: FeatureSettings, precision: str) -> dict:
    """Exactly the settings that determine the cached numbers; their hash names the file.
    Computed without decoding an image or building a network, so an up-to-date check is quick.
    `rebuild_backbone` and `load_splits` below are its inverse."""
    return {"dataset": dataset_name(s.data), "source_identity": data.source_identity(s.data),
            "limit": s.limit if s.limit is not None else -1, "val_fraction": s.val_fraction,
            "split_seed": s.seed, **backbones.identity(s.backbone, s.weights, s.size, s.seed),
            "precision": precision}


def rebuild_backbone(attrs: dict, backbone_file: str | None = None, weights_file: str | None = None):
    """The network a features file was made with, from its attributes: a named backbone with the
    same weights origin and input size; a weights or .keras file is located by the caller
    (--weights/--backbone) and checked by its sha256."""
    from pipeline.backbone import BACKBONES, Weights
    if "weights_source" not in attrs:
        raise UserError("the features file predates structured weight attributes; rerun `make features`")
    recorded, shape = Weights.from_attrs(attrs), tuple(attrs["image_shape"])
    if attrs["backbone"] in BACKBONES:
        weights = {"imagenet": "imagenet", "none": "none"}.get(recorded.source, weights_file)
        if weights is None:
            raise UserError(f"the features file was made with a local {attrs['backbone']} weights file; "
                            "pass --weights PATH")
        bb = build_backbone(attrs["backbone"], weights, int(attrs["input_size"]), shape, max(recorded.seed, 0))
        what = f"--weights {weights_file}"
    else:
        if backbone_file is None:
            raise UserError(f"the features file was made with the backbone file {attrs['backbone']}; "
                            "pass --backbone PATH to it")
        bb = build_backbone(backbone_file, None, None, shape)
        what = f"--backbone {backbone_file}"
    if bb.weights != recorded:
        raise UserError(f"{what} is not the one the features were made with ({recorded})")
    if (bb.width, bb.input_size) != (attrs["feature_width"], attrs["input_size"]):
        raise UserError(f"rebuilt backbone gives width {bb.width} at {bb.input_size}px; the features file "
                        f"says {attrs['feature_width']} at {attrs['input_size']}px")
    return bb


def load_splits(attrs: dict, data_path: str | None):
    """The features file's images and splits, checked against its fingerprint."""
    source = data.source_of(attrs, data_path)
    limit = attrs["limit"] if attrs["limit"] != -1 else None
    splits = data.make_splits(data.load_dataset(source, limit), attrs["val_fraction"], attrs["split_seed"])
    if data.fingerprint(splits) != attrs["data_fingerprint"]:
        raise UserError(f"the images at {source} are not the ones the features file was made from; "
                        "pass --data PATH to the original source")
    return splits


def _check(s: FeatureSettings):
    if s.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {s.batch_size}")
    if s.limit is not None and s.limit < 1:
        raise UserError(f"--limit must be a positive number of images, got {s.limit}")
    if not 0 < s.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {s.val_fraction}")


def versions() -> dict:
    import h5py
    import keras
    import numpy
    import tensorflow
    return {"python": platform.python_version(), "numpy": numpy.__version__, "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "tensorflow": tensorflow.__version__, "keras": keras.__version__}


def run_features(s: FeatureSettings, log=print) -> Path:
    """Compute (or find up to date, or resume) the features file for `s`; return its path."""
    _check(s)
    precision, device = resolve_precision(s.precision)
    settings = identity(s, precision)
    final = store.features_path(s.cache_dir, settings)
    if final.exists():
        store.read_features(final, expect={"settings_hash": store.settings_hash(settings)}, splits=())
        log(f"up to date: {final}")
        return final

    with store.CacheLock(final):
        if final.exists():   # another run finished it while we waited for nothing
            log(f"up to date: {final}")
            return final
        ds = data.load_dataset(s.data, s.limit)
        splits = data.make_splits(ds, s.val_fraction, s.seed)
        backbone = build_backbone(s.backbone, s.weights, s.size, ds.train_x.shape[1:], s.seed)
        extract = fast_extractor(backbone.model, precision)
        attrs = {"schema_version": store.SCHEMA_VERSION, "settings_hash": store.settings_hash(settings),
                 "settings": settings, **settings, "weights": str(backbone.weights), "source": ds.source, "class_names": list(ds.class_names),
                 "image_shape": list(ds.train_x.shape[1:]), "data_fingerprint": data.fingerprint(splits),
                 "device": device, "batch_size": s.batch_size, "versions": versions(),
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        writer = store.FeatureWriter(final, attrs, {k: v.y for k, v in splits.items()},
                                     {k: v.index for k, v in splits.items()}, (backbone.width,), log=log)
        try:
            started, computed = time.perf_counter(), 0
            for name in store.SPLITS:
                computed += _extract_split(name, splits[name], writer, extract, s.batch_size)
            elapsed = time.perf_counter() - started
            rate = computed / elapsed if elapsed > 0 else 0.0
            path = writer.finish({"elapsed_seconds": round(elapsed, 2), "images_per_second": round(rate, 2)})
        finally:
            writer.close()
    total = sum(len(v.y) for v in splits.values())
    counts = ", ".join(f"{k} {len(v.y):,}" for k, v in splits.items())
    log(f"features: {total:,} images ({counts}); computed {computed:,} in {elapsed:.1f} s "
        f"({rate:.1f} images/s), {backbone.name} {backbone.input_size}x{backbone.input_size}, "
        f"{precision} on {device}, width {backbone.width}")
    return path


def _extract_split(name, split, writer, extract, batch_size) -> int:
    from tqdm import tqdm
    n, start = len(split.y), writer.rows_done(name)
    with tqdm(total=n, initial=start, desc=f"{name:>5}", unit="img", file=sys.stderr,
              disable=None, dynamic_ncols=True) as bar:
        for lo in range(start, n, batch_size):
            hi = min(lo + batch_size, n)
            writer.write(name, lo, extract(split.x[lo:hi]))
            bar.update(hi - lo)
    return n - start
