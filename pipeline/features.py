"""Stage one: run the frozen backbone once over every image and cache the embeddings in HDF5."""
from __future__ import annotations

import datetime
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import backbone as backbones
from pipeline import data, engine, store, views
from pipeline.backbone import build_backbone, resolve_precision
from pipeline.errors import UserError
from pipeline.progress import Progress


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
    # How the work is done: provenance, not settings (the file and its name do not depend on them).
    shard_rows: int = engine.DEFAULT_SHARD_ROWS
    engine: str = "local"            # local: this process; ray: a Ray Data actor pool
    address: str | None = None       # ray: None starts a local instance; "auto" or ray://host:port joins one
    workers: int = 2                 # ray: actors in the pool
    gpus_per_worker: float = 0       # ray: GPUs per actor (0: CPU)
    views: int = 1                   # 2: also the mirrored image's embedding (pipeline.views)


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
    found = {"dataset": dataset_name(s.data), "source_identity": data.source_identity(s.data),
             "limit": s.limit if s.limit is not None else -1, "val_fraction": s.val_fraction,
             "split_seed": s.seed, **backbones.identity(s.backbone, s.weights, s.size, s.seed),
             "precision": precision}
    if s.views != 1:     # only then: a 1-view file keeps the name and hash it always had
        found["views"] = s.views
    return found


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
    if s.engine not in ("local", "ray"):
        raise UserError(f"--engine must be local or ray, got {s.engine!r}")
    if s.engine == "local" and (s.address is not None or s.gpus_per_worker):
        raise UserError("--address and --gpus-per-worker apply to --engine ray only")
    if s.workers < 1 or s.gpus_per_worker < 0:
        raise UserError(f"--workers must be at least 1 and --gpus-per-worker at least 0, "
                        f"got {s.workers} and {s.gpus_per_worker:g}")
    if s.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {s.batch_size}")
    if s.limit is not None and s.limit < 1:
        raise UserError(f"--limit must be a positive number of images, got {s.limit}")
    if s.views not in views.VIEWS:
        raise UserError(f"--views must be 1 or 2, got {s.views}")
    if not 0 < s.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {s.val_fraction}")


def versions() -> dict:
    import h5py
    import keras
    import numpy
    import tensorflow
    return {"python": platform.python_version(), "numpy": numpy.__version__, "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "tensorflow": tensorflow.__version__, "keras": keras.__version__}


def _up_to_date(final: Path, settings: dict, log) -> bool:
    if not final.exists():
        return False
    if store.older_schema(final):
        log(f"replacing {final.name}: written by an older version of this pipeline (schema "
            f"{store.older_schema(final)}, now {store.SCHEMA_VERSION})")
        return False
    store.read_features(final, expect={"settings_hash": store.settings_hash(settings)}, splits=())
    log(f"up to date: {final}")
    return True


def run_features(s: FeatureSettings, log=print) -> Path:
    """Compute (or find up to date, or resume) the features file for `s`; return its path."""
    _check(s)
    engine.check_shard_rows(s.shard_rows)
    precision, device = resolve_precision(s.precision)
    if s.engine == "ray":
        # The workers, not this driver, run the network: auto means float16 on their GPUs.
        if s.gpus_per_worker > 0 and s.precision == "auto":
            precision = "float16"
        device = f"Ray: {s.workers} workers, {s.gpus_per_worker:g} GPUs each" if s.gpus_per_worker else \
            f"Ray: {s.workers} CPU workers"
    settings = identity(s, precision)
    final = store.features_path(s.cache_dir, settings)
    if _up_to_date(final, settings, log):
        return final

    with store.CacheLock(final):
        if _up_to_date(final, settings, log):   # another run finished it while we looked
            return final
        ds = data.load_dataset(s.data, s.limit)
        splits = data.make_splits(ds, s.val_fraction, s.seed)
        sizes = {k: len(v) for k, v in splits.items()}
        attrs = {"schema_version": store.SCHEMA_VERSION, "settings_hash": store.settings_hash(settings),
                 "settings": settings, **settings, "weights": str(backbones.Weights.from_attrs(settings)),
                 "source": ds.source, "class_names": list(ds.class_names),
                 "image_shape": splits["train"].images.image_shape, "device": device,
                 "batch_size": s.batch_size, "shard_rows": s.shard_rows, "versions": versions(),
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        writer = store.FeatureWriter(final, attrs, {k: v.y for k, v in splits.items()},
                                     {k: v.index for k, v in splits.items()}, (settings["feature_width"],),
                                     log=log, block_rows=data.BLOCK_ROWS)
        try:
            shards = engine.plan(sizes, s.shard_rows)
            todo = engine.missing(shards, {k: writer.done_rows(k) for k in store.SPLITS})
            total, before = sum(sizes.values()), sum(writer.rows_written(k) for k in store.SPLITS)
            if len(todo) < len(shards):
                log(f"{len(shards) - len(todo)} of {len(shards)} shards already done, {len(todo)} to compute")
            spec = engine.ExtractorSpec(s.backbone, s.weights, s.size, s.seed, precision, s.views)
            started, provenance = time.perf_counter(), {"engine": s.engine}
            with Progress(total, before, desc="features") as progress:
                if s.engine == "ray" and todo:
                    from pipeline import ray_engine
                    with ray_engine.Session(s.address) as session:
                        started = time.perf_counter()
                        devices = ray_engine.run(todo, splits, writer, spec, s.batch_size, progress, session,
                                                 s.workers, s.gpus_per_worker)
                    provenance.update(workers=s.workers, gpus_per_worker=s.gpus_per_worker,
                                      worker_devices=sorted(devices))
                elif todo:
                    engine.run_local(todo, splits, writer, spec, s.batch_size, progress)
            elapsed = time.perf_counter() - started
            computed = sum(writer.rows_written(k) for k in store.SPLITS) - before
            rate = computed / elapsed if elapsed > 0 else 0.0
            fingerprint = data.combine_digests({k: writer.block_digests(k) for k in store.SPLITS}, sizes)
            path = writer.finish({"data_fingerprint": fingerprint, "shards": len(shards), **provenance,
                                  "elapsed_seconds": round(elapsed, 2), "images_per_second": round(rate, 2)})
        finally:
            writer.close()
    counts = ", ".join(f"{k} {n:,}" for k, n in sizes.items())
    log(f"features: {total:,} images ({counts}); computed {computed:,} in {elapsed:.1f} s "
        f"({rate:.1f} images/s), {settings['backbone']} {settings['input_size']}x{settings['input_size']}, "
        f"{precision} on {device}, width {settings['feature_width']}, {s.views} view{'s' if s.views > 1 else ''}")
    return path
