"""Stage one: run the frozen backbone once over every image and cache the embeddings in HDF5."""
from __future__ import annotations

import datetime
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import data, store
from pipeline.backbone import (INCEPTION, INCEPTION_PREPROCESSING, build_backbone, fast_extractor,
                               inception_weights_identity, resolve_precision)
from pipeline.errors import UserError


@dataclass
class FeatureSettings:
    data: str | None = None          # None: keras.datasets.cifar10 download
    backbone: str = INCEPTION        # or a saved .keras model
    weights: str | None = None       # imagenet | none | PATH (InceptionV3 only); None = imagenet
    size: int | None = None          # None: 299 for InceptionV3, the model's own for a file
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
    Computed without decoding an image or building InceptionV3, so an up-to-date check is quick."""
    if s.backbone == INCEPTION:
        weights_id = inception_weights_identity(s.weights or "imagenet", s.seed)
        size = 299 if s.size is None else s.size
        backbone, width, preprocessing = INCEPTION, 2048, INCEPTION_PREPROCESSING.format(size=size)
    else:
        bb = build_backbone(s.backbone, s.weights, s.size)   # a saved model: cheap to load
        backbone, weights_id, size, width, preprocessing = (Path(s.backbone).name, bb.weights,
                                                            bb.input_size, bb.width, bb.preprocessing)
    return {"dataset": dataset_name(s.data), "source_identity": data.source_identity(s.data),
            "limit": s.limit if s.limit is not None else -1, "val_fraction": s.val_fraction,
            "split_seed": s.seed, "backbone": backbone, "weights": weights_id, "input_size": size,
            "feature_width": width, "preprocessing": preprocessing, "precision": precision}


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
                 "settings": settings, **settings, "source": ds.source, "class_names": list(ds.class_names),
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
