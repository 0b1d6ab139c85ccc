"""The `features` command: stage one's settings, the file's identity, and the run from source to rows."""
from __future__ import annotations

import contextlib
import datetime
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline import store
from pipeline.backbones import build, table
from pipeline.backbones.precision import resolve_precision
from pipeline.backbones.weights import Weights
from pipeline.extract import engine
from pipeline.extract import views
from pipeline.extract.memory import check_memory
from pipeline.extract.moved import record_moved_files, recorded_files
from pipeline.foundation import flags, identity, settings
from pipeline.foundation.machine import versions
from pipeline.foundation.outputs import produce
from pipeline.foundation.settings import Interval, OnlyWith, setting
from pipeline.foundation.progress import Progress
from pipeline.sources import dataset, digest, partition
from pipeline.sources.images import Decoding
from pipeline.store.features import load_features


DEFAULT_WORKERS = 2


@dataclass
class FeatureSettings:
    """Stage one's settings. The file's name and hash cover `file_identity` below (the dataset's and the
    network's identity, not these fields as written), so files made before this declaration stay
    valid; `record=False` marks the fields it does not depend on."""
    data: str | None = setting(None, None, "a folder of class folders <class>/* (split by --test-fraction and "
                               "--val-fraction), image folders train/<class>/* and test/<class>/* (a val/ or "
                               "validation/ beside them is the val split), a cifar-10-batches-py folder or "
                               "cifar-10-python.tar.gz; default: download via Keras", metavar="PATH")
    backbone: str = setting(table.DEFAULT_BACKBONE, None, "a backbone named in `python -m pipeline backbones` "
                            "(inception_v3, resnet50, convnext_tiny, ...), or a saved .keras model taking RGB 0-255 "
                            "images and returning a feature vector", metavar="NAME|PATH")
    weights: str | None = setting(None, None, "Keras's ImageNet download, random init (tests), or a local weights "
                                  "file, e.g. Keras's *_notop.h5 for the backbone", metavar="imagenet|none|PATH",
                                  auto="imagenet for a named backbone; a backbone file's own weights")
    size: int | None = setting(None, Interval(int, 1), "side of the resized input",
                               auto="the backbone's own, e.g. 299 for inception_v3; at least its minimum, e.g. 75")
    batch_size: int = setting(64, Interval(int, 1), "images per batch", record=False)
    precision: str = flags.precision_setting()
    limit: int | None = setting(None, Interval(int, 1), "at most N train and N test images, balanced across classes "
                                "(val is carved from train; a folder of class folders: N images before the split)")
    val_fraction: float = setting(0.1, Interval(float, 0, 1, closed="neither"), "stratified share of train held out "
                                  "as val (of what is not test, for a folder of class folders)", metavar="F")
    test_fraction: float | None = setting(None, Interval(float, 0, 1, closed="neither"), "a folder of class folders: "
                                          "share of each class held out as test, by a hash of each file's path",
                                          auto=f"{partition.DEFAULT_TEST_FRACTION} for a folder of class folders; "
                                          "refused where the data has its own test set", metavar="F")
    seed: int = flags.seed_setting("seed of the val split (and of a folder of class folders' split) and of "
                                   "--weights none")
    cache_dir: str = flags.cache_dir_setting()
    # How the work is done: provenance, not settings (the file and its name do not depend on them).
    shard_rows: int = setting(engine.DEFAULT_SHARD_ROWS, engine.SHARD_ROWS, "rows per unit of work, a multiple of "
                              "128: what a resumed run recomputes at most per shard in flight", record=False)
    engine: str = flags.engine_setting("this process", "a Ray Data actor pool on a local instance or a cluster, "
                                       "with the [ray] extra installed")
    address: str | None = flags.address_setting("run")
    workers: int | None = setting(None, Interval(int, 1), "ray: actors in the pool; refused with --engine local",
                                  auto=f"{DEFAULT_WORKERS} with --engine ray", record=False)
    gpus_per_worker: float = setting(0, Interval(float, 0), "ray: GPUs per actor (0: CPU); more than the cluster "
                                     "has fails at once", metavar="G", record=False)
    views: int = setting(1, Interval(int, min(views.VIEWS), max(views.VIEWS), closed="both"), "2: also store each "
                         "image's horizontally mirrored view; heads then train on both and average the two views' "
                         "probabilities")
    # the local engine is one process (its threads are TensorFlow's): Ray's flags are refused with it, not ignored
    RULES = (OnlyWith(("address", "workers", "gpus_per_worker"), lambda s: s.engine == "ray", "--engine ray"),)


def dataset_name(path: str | None) -> str:
    if path is None:
        return "cifar10"
    name = Path(path).resolve().name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        name = name.removesuffix(suffix)
    return name


def file_identity(s: FeatureSettings, precision: str) -> dict:
    """Exactly the settings that determine the cached numbers; their hash names the file.
    Computed without decoding an image or building a network, so an up-to-date check is quick.
    `backbones.rebuild.rebuild_backbone` and `sources.rows.load_splits` are its inverse."""
    found = {"dataset": dataset_name(s.data), "source_identity": dataset.source_identity(s.data),
             "limit": s.limit if s.limit is not None else -1, "val_fraction": s.val_fraction,
             "split_seed": s.seed, **build.identity(s.backbone, s.weights, s.size, s.seed),
             "precision": precision, **dataset.split_identity(s.data, s.test_fraction)}
    if s.views != 1:     # only then: a 1-view file keeps the name and hash it always had
        found["views"] = s.views
    return found


HELP = """Stage one: run the frozen backbone once over every image and cache one embedding per image in an
HDF5 file under <cache-dir>/features/, named by a hash of every setting that changes the numbers.
A killed run resumes where it stopped; the same command again prints "up to date".
"""


def add_arguments(p):
    settings.add_flags(p, FeatureSettings)


def run(args):
    print(run_features(settings.from_args(FeatureSettings, args)))


def _up_to_date(final: Path, recorded: dict, log) -> bool:
    if not final.exists():
        return False
    if store.older_schema(final):
        log(f"replacing {final.name}: written by an older version of this pipeline (schema "
            f"{store.older_schema(final)}, now {store.SCHEMA_VERSION})")
        return False
    # Every check a later stage makes: a damaged file is never "up to date".
    load_features(final, expect={"settings_hash": identity.digest(recorded)}, splits=())
    return True


def run_features(s: FeatureSettings, log=print) -> Path:
    """Compute (or find up to date, or resume) the features file for `s`; return its path."""
    s = settings.check(s)
    if s.engine == "ray" and s.address is not None:
        from pipeline.extract import ray_address
        ray_address.check_reachable(s.address)    # before TensorFlow loads: a wrong address fails in seconds
    precision, device = resolve_precision(s.precision)
    if s.engine == "ray":
        s = replace(s, workers=s.workers or DEFAULT_WORKERS)
        # The workers, not this driver, run the network: auto means float16 on their GPUs.
        if s.gpus_per_worker > 0 and s.precision == "auto":
            precision = "float16"
        device = f"Ray: {s.workers} workers, {s.gpus_per_worker:g} GPUs each" if s.gpus_per_worker else \
            f"Ray: {s.workers} CPU workers"
    recorded = file_identity(s, precision)
    final = store.features_path(s.cache_dir, recorded)
    check_memory(recorded["input_size"], s.batch_size)
    up_to_date, _ = produce(final, lambda: _up_to_date(final, recorded, log),
                            lambda: _extract(s, recorded, final, precision, device, log), log)
    if up_to_date:
        record_moved_files(final, s, log)
    return final


def _extract(s: FeatureSettings, recorded: dict, final: Path, precision: str, device: str, log):
    """Write (or resume) the features file `final`, under its lock."""
    with contextlib.ExitStack() as stack:
        ds = dataset.load_dataset(s.data, s.limit)
        for note in ds.notes:
            log(note)
        # every image decoded at one size (sources/images.py: shape_for), read from the headers
        image_shape = ds.shape_for(recorded["input_size"])
        splits = partition.make_splits(ds.decoded(Decoding(size=tuple(image_shape[:2]))), s.val_fraction, s.seed,
                                       recorded.get("test_fraction"))
        if s.engine == "ray":
            # Joined, and its resources checked, before the partial file exists: a refused run
            # (GPUs the cluster lacks) leaves nothing behind.
            from pipeline.extract import ray_engine
            session = stack.enter_context(ray_engine.Session(s.address))
            ray_engine.check_resources(session.ray, s.workers, s.gpus_per_worker)
        sizes = {k: len(v) for k, v in splits.items()}
        attrs = {"schema_version": store.SCHEMA_VERSION, "settings_hash": identity.digest(recorded),
                 "settings": recorded, **recorded, "weights": str(Weights.from_attrs(recorded)),
                 "source": ds.source, "class_names": list(ds.class_names),
                 "image_shape": image_shape, "device": device, **recorded_files(s),
                 "split": partition.SPLIT_RULES[ds.layout],
                 "batch_size": s.batch_size, "shard_rows": s.shard_rows, "versions": versions(),
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        writer = store.RowWriter(final, attrs, {k: v.y for k, v in splits.items()},
                                 {k: v.index for k, v in splits.items()}, (recorded["feature_width"],),
                                 log=log, block_rows=digest.BLOCK_ROWS)
        try:
            shards = engine.plan(sizes, s.shard_rows)
            todo = engine.missing(shards, {k: writer.done_rows(k) for k in store.SPLITS})
            # Rows to compute, counted from the plan: a resumed shard restarts at a block boundary, so
            # some rows already written are computed again (counting written rows gave 240/200).
            total, computed = sum(sizes.values()), sum(shard.hi - shard.lo for shard in todo)
            if len(todo) < len(shards):
                log(f"{len(shards) - len(todo)} of {len(shards)} shards already done, {len(todo)} to compute")
            spec = engine.ExtractorSpec(s.backbone, s.weights, s.size, s.seed, precision, s.views)
            started, provenance = time.perf_counter(), {"engine": s.engine}
            with Progress(total, total - computed, desc="features") as progress:
                if s.engine == "ray" and todo:
                    devices = ray_engine.run(todo, splits, writer, spec, s.batch_size, progress, session,
                                             s.workers, s.gpus_per_worker)
                    provenance.update(workers=s.workers, gpus_per_worker=s.gpus_per_worker,
                                      worker_devices=sorted(devices))
                elif todo:
                    engine.run_local(todo, splits, writer, spec, s.batch_size, progress)
            elapsed = time.perf_counter() - started
            rate = computed / elapsed if elapsed > 0 else 0.0
            fingerprint = digest.combine_digests({k: writer.block_digests(k) for k in store.SPLITS}, sizes)
            writer.finish({"data_fingerprint": fingerprint, "shards": len(shards), **provenance,
                           "elapsed_seconds": round(elapsed, 2), "images_per_second": round(rate, 2)})
        finally:
            writer.close()
    counts = ", ".join(f"{k} {n:,}" for k, n in sizes.items())
    log(f"features: {total:,} images ({counts}); computed {computed:,} in {elapsed:.1f} s "
        f"({rate:.1f} images/s), {recorded['backbone']} {recorded['input_size']}x{recorded['input_size']}, "
        f"{precision} on {device}, width {recorded['feature_width']}, {s.views} view{'s' if s.views > 1 else ''}")
