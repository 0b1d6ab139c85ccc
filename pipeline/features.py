"""Stage one: run the frozen backbone once over every image and cache the embeddings in HDF5."""
from __future__ import annotations

import contextlib
import datetime
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import backbone as backbones
from pipeline import data, engine, flags, records, store, views
from pipeline.backbone import build_backbone, resolve_precision
from pipeline.errors import UserError, first_line, warn
from pipeline.outputs import Lock
from pipeline.progress import Progress


DEFAULT_WORKERS = 2


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
    workers: int | None = None       # ray: actors in the pool (None: DEFAULT_WORKERS); local: refused
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


def rebuild_backbone(attrs: dict, backbone_file: str | None = None, weights_file: str | None = None,
                     image_shape=None):
    """The network a features file was made with, from its attributes: a named backbone with the
    same weights origin and input size; a weights or .keras file is found where the features file
    recorded it (or where --weights/--backbone says, when it moved) and checked by its sha256.
    `image_shape`: its input (default: the file's first image's; (None, None, 3) takes any size,
    as stage one does)."""
    from pipeline.backbone import BACKBONES, Weights
    if "weights_source" not in attrs:
        raise UserError("the features file predates structured weight attributes; rerun `make features`")
    recorded, shape = Weights.from_attrs(attrs), tuple(image_shape or attrs["image_shape"])
    if attrs["backbone"] in BACKBONES:
        flag, given = "--weights", weights_file
        path = {"imagenet": "imagenet", "none": "none"}.get(recorded.source) or \
            _file_of(attrs, "weights_file", given, f"a local {attrs['backbone']} weights file", flag)
        bb = build_backbone(attrs["backbone"], path, int(attrs["input_size"]), shape, max(recorded.seed, 0))
    else:
        flag, given = "--backbone", backbone_file
        path = _file_of(attrs, "backbone_file", given, f"the backbone file {attrs['backbone']}", flag)
        bb = build_backbone(path, None, None, shape)
    if bb.weights != recorded:
        raise UserError(f"{flag} {path} is not the one the features were made with ({recorded})" if given else
                        f"{path} changed since the features were made with it ({recorded}); pass {flag} PATH "
                        "to the original")
    if (bb.width, bb.input_size) != (attrs["feature_width"], attrs["input_size"]):
        raise UserError(f"rebuilt backbone gives width {bb.width} at {bb.input_size}px; the features file "
                        f"says {attrs['feature_width']} at {attrs['input_size']}px")
    return bb


def row_extractor(attrs: dict, backbone_file: str | None = None, weights_file: str | None = None):
    """images (a uint8 batch, or a list of any sizes) -> their rows exactly as stage one computed
    them: the rebuilt network in the file's precision, each image resized alone by the network's
    own resize layer (engine.ExtractorSpec), never to another image's size first."""
    from pipeline.backbone import fast_extractor
    bb = rebuild_backbone(attrs, backbone_file, weights_file, image_shape=(None, None, 3))
    return fast_extractor(bb.model, attrs["precision"])


def _file_of(attrs: dict, key: str, given: str | None, what: str, flag: str) -> str:
    """The flag's file when given, else the absolute path the features file recorded under `key`."""
    if given is not None:
        return given
    recorded = attrs.get(key)
    if not recorded:
        raise UserError(f"the features file was made with {what}; pass {flag} PATH to it")
    if not Path(recorded).is_file():
        raise UserError(f"the features file was made with {recorded}, which is no longer there; "
                        f"pass {flag} PATH to it")
    return recorded


def load_splits(attrs: dict, data_path: str | None):
    """The features file's images and splits, checked against its fingerprint."""
    source = data.source_of(attrs, data_path)
    limit = attrs["limit"] if attrs["limit"] != -1 else None
    splits = data.make_splits(data.load_dataset(source, limit), attrs["val_fraction"], attrs["split_seed"])
    if data.fingerprint(splits) != attrs["data_fingerprint"]:
        raise UserError(f"the images at {source} are not the ones the features file was made from; "
                        "pass --data PATH to the original source")
    return splits


def _recorded_files(s: FeatureSettings) -> dict:
    """The absolute path of a backbone or weights file, beside its sha256 (in the settings), so that
    later commands rebuild the network without being told where it is again. Not a setting: the
    same file elsewhere gives the same numbers and the same file name."""
    if s.backbone not in backbones.BACKBONES:
        return {"backbone_file": str(Path(s.backbone).resolve())}
    if s.weights not in (None, "imagenet", "none"):
        return {"weights_file": str(Path(s.weights).resolve())}
    return {}


def _record_moved_files(final: Path, s: FeatureSettings, log, locked: bool = False):
    """An up-to-date file whose backbone or weights file was given at another path than it records:
    the settings hold the file's sha256, so it is the same file, moved. Its new path is recorded
    (the attribute written in place on the complete file, under the file's lock, as nothing else
    writes a complete file), so that later commands find it without --backbone/--weights."""
    given = _recorded_files(s)
    attrs = store.read_features(final, splits=(), values=False).attrs
    moved = {key: path for key, path in given.items() if attrs.get(key) != path}
    if not moved:
        return
    import h5py
    try:
        with contextlib.nullcontext() if locked else Lock(final, wait=True, log=log):
            with h5py.File(final, "r+") as f:
                for key, path in moved.items():
                    f.attrs[key] = path
    except OSError as exc:       # e.g. a read-only cache, or the file open in another process
        warn(f"could not record the new path in {final.name} ({first_line(exc)}); later commands ask for "
             f"it again ({', '.join(moved)} stays {', '.join(str(attrs.get(k)) for k in moved)})")
        return
    for key, path in moved.items():
        log(f"recorded {key}: {path} (was {attrs.get(key)}; the same file, by its sha256)")


def _check(s: FeatureSettings):
    if s.engine not in ("local", "ray"):
        raise UserError(f"--engine must be local or ray, got {s.engine!r}")
    if s.engine == "local" and (s.address is not None or s.gpus_per_worker or s.workers is not None):
        # refused, not ignored: the local engine is one process (its threads are TensorFlow's)
        raise UserError("--address, --workers and --gpus-per-worker apply to --engine ray only")
    if (s.workers is not None and s.workers < 1) or s.gpus_per_worker < 0:
        raise UserError(f"--workers must be at least 1 and --gpus-per-worker at least 0, "
                        f"got {s.workers} and {s.gpus_per_worker:g}")
    if s.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {s.batch_size}")
    if s.limit is not None and s.limit < 1:
        raise UserError(f"--limit must be a positive number of images, got {s.limit}")
    if s.views not in views.VIEWS:
        raise UserError(f"--views must be 1 or 2, got {s.views}")
    if not 0 <= s.seed <= flags.SEED_MAX:
        raise UserError(f"--seed must be {flags.SEED_RANGE}, got {s.seed}")
    if not 0 < s.val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {s.val_fraction}")


def add_arguments(p):
    p.add_argument("--data", metavar="PATH", help="cifar-10-batches-py folder, cifar-10-python.tar.gz, or "
                   "image folders train/<class>/* and test/<class>/*; default: download via Keras")
    p.add_argument("--backbone", default=backbones.DEFAULT_BACKBONE, metavar="NAME|PATH",
                   help="a backbone named in `python -m pipeline backbones` (inception_v3, resnet50, "
                        "convnext_tiny, ...), or a saved .keras model taking RGB 0-255 images and returning "
                        f"a feature vector (default: {backbones.DEFAULT_BACKBONE})")
    p.add_argument("--weights", metavar="imagenet|none|PATH",
                   help="Keras's ImageNet download, random init (tests), or a local weights file, e.g. "
                        "Keras's *_notop.h5 for the backbone (default: imagenet)")
    p.add_argument("--size", type=flags.positive_int, metavar="N",
                   help="side of the resized input (default: the backbone's own, e.g. 299 for inception_v3; "
                        "at least its minimum, e.g. 75)")
    p.add_argument("--batch-size", type=flags.positive_int, default=64, metavar="N",
                   help="images per batch (default: 64)")
    flags.add_precision(p)
    p.add_argument("--limit", type=flags.positive_int, metavar="N",
                   help="at most N train and N test images, balanced across classes (val is carved from train)")
    p.add_argument("--val-fraction", type=flags.finite_float, default=0.1, metavar="F",
                   help="stratified share of train held out as val (default: 0.1)")
    flags.add_seed(p, "seed of the val split and of --weights none (default: 0)")
    flags.add_cache_dir(p)
    p.add_argument("--views", type=int, default=1, choices=(1, 2),
                   help="2: also store each image's horizontally mirrored view (heads then train on both "
                        "and average the two views' probabilities); default: 1")
    p.add_argument("--shard-rows", type=flags.positive_int, default=engine.DEFAULT_SHARD_ROWS, metavar="N",
                   help="rows per unit of work, a multiple of 128: what a resumed run recomputes at most "
                        f"per shard in flight (default: {engine.DEFAULT_SHARD_ROWS})")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: this process (default); ray: a Ray Data actor pool, on a local instance "
                        "or a cluster (needs the [ray] extra)")
    p.add_argument("--address", metavar="auto|ray://HOST:PORT", help="ray: the cluster to join (default: "
                   "start a local instance for this run)")
    p.add_argument("--workers", type=flags.positive_int, metavar="N",
                   help=f"ray: actors in the pool (default: {DEFAULT_WORKERS})")
    p.add_argument("--gpus-per-worker", type=flags.finite_float, default=0, metavar="G",
                   help="ray: GPUs per actor (default: 0, CPU); more than the cluster has fails at once")


def run(args):
    settings = FeatureSettings(data=args.data, backbone=args.backbone, weights=args.weights, size=args.size,
                               batch_size=args.batch_size, precision=args.precision, limit=args.limit,
                               val_fraction=args.val_fraction, seed=args.seed, cache_dir=args.cache_dir,
                               shard_rows=args.shard_rows, engine=args.engine, address=args.address,
                               workers=args.workers, gpus_per_worker=args.gpus_per_worker, views=args.views)
    print(run_features(settings))


# Peak working memory of one batch through a convolutional backbone, per input pixel, in bytes:
# the float32 image plus the widest early activations (InceptionV3: 64 channels at half the side,
# alive together with their inputs) come to about 100; measured 0.6 GB for 64 images at 299x299.
BYTES_PER_PIXEL = 100


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(size: int, batch_size: int):
    """Refuse an input size the machine cannot hold, with the estimate, before anything is built."""
    need = BYTES_PER_PIXEL * size * size * batch_size
    have = _available_memory()
    if have is not None and need > have:
        raise UserError(f"--size {size} with --batch-size {batch_size} needs about {need / 2**30:,.1f} GiB of "
                        f"memory per batch, and {have / 2**30:,.1f} GiB are available; lower --size or "
                        "--batch-size")


# ---------------------------------------------------------------- reading a features file (every stage)

def load_features(path, splits=store.SPLITS, expect: dict | None = None) -> store.RowSet:
    """Read a features file with every check any stage relies on: the store's own (schema,
    completeness, shapes, stale settings, labels within class_names, finite values) plus one
    vector per image of the declared feature_width. `splits`: which to load into memory."""
    fs = store.read_rows(path, expect=expect, splits=splits, words=store.FEATURES)
    attrs, path = fs.attrs, fs.path
    row_shape = list(attrs.get("row_shape", [attrs.get("feature_width")]))
    if len(row_shape) != 1:
        kind = f" ({attrs['kind']})" if "kind" in attrs else ""
        raise UserError(f"{path} holds rows of shape {tuple(row_shape)}{kind}, not one feature vector per "
                        f"image, (N, D); pass a stage-one features file")
    if row_shape[0] != attrs.get("feature_width"):
        raise UserError(f"{path}: its features are {row_shape[0]} wide but the file's feature_width says "
                        f"{attrs.get('feature_width')}; {store.FEATURES.fix}")
    return fs


def default_features(cache_dir, log=None) -> Path:
    """The one rule for `--features` left out (head, sweep, finetune, ...): the newest complete
    features file in CACHE/features, whatever its settings, named on stderr (its values are checked
    when it is loaded: a damaged newest file is reported, not silently passed over for an older one)."""
    found = []
    for path in records.folder(cache_dir, records.FEATURES).glob("*.h5"):
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
    (log or _stderr)(f"features: {newest} (the newest in {Path(cache_dir, 'features')}; --features chooses another)")
    return newest


def _stderr(line: str):
    print(line, file=sys.stderr)


def versions() -> dict:
    import h5py
    import keras
    import numpy
    import tensorflow
    return {"python": platform.python_version(), "numpy": numpy.__version__, "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "tensorflow": tensorflow.__version__, "keras": keras.__version__,
            # the machine too: bfloat16 rows depend on the CPU's arithmetic (`verify` names what changed)
            "cpu": cpu_model(), "gpus": ", ".join(tensorflow.config.experimental.get_device_details(d).get("device_name", d.name)
                                                  for d in tensorflow.config.list_physical_devices("GPU"))}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _up_to_date(final: Path, settings: dict, log) -> bool:
    if not final.exists():
        return False
    if store.older_schema(final):
        log(f"replacing {final.name}: written by an older version of this pipeline (schema "
            f"{store.older_schema(final)}, now {store.SCHEMA_VERSION})")
        return False
    # Every check a later stage makes: a damaged file is never "up to date".
    load_features(final, expect={"settings_hash": store.settings_hash(settings)}, splits=())
    log(f"up to date: {final}")
    return True


def run_features(s: FeatureSettings, log=print) -> Path:
    """Compute (or find up to date, or resume) the features file for `s`; return its path."""
    _check(s)
    engine.check_shard_rows(s.shard_rows)
    if s.engine == "ray" and s.address is not None:
        from pipeline import ray_engine
        ray_engine.check_reachable(s.address)    # before TensorFlow loads: a wrong address fails in seconds
    precision, device = resolve_precision(s.precision)
    workers = s.workers or DEFAULT_WORKERS
    if s.engine == "ray":
        # The workers, not this driver, run the network: auto means float16 on their GPUs.
        if s.gpus_per_worker > 0 and s.precision == "auto":
            precision = "float16"
        device = f"Ray: {workers} workers, {s.gpus_per_worker:g} GPUs each" if s.gpus_per_worker else \
            f"Ray: {workers} CPU workers"
    settings = identity(s, precision)
    final = store.features_path(s.cache_dir, settings)
    _check_memory(settings["input_size"], s.batch_size)
    if _up_to_date(final, settings, log):
        _record_moved_files(final, s, log)
        return final

    with Lock(final, log=log), contextlib.ExitStack() as stack:
        if _up_to_date(final, settings, log):   # another run finished it while we looked
            _record_moved_files(final, s, log, locked=True)
            return final
        ds = data.load_dataset(s.data, s.limit)
        splits = data.make_splits(ds, s.val_fraction, s.seed)
        if s.engine == "ray":
            # Joined, and its resources checked, before the partial file exists: a refused run
            # (GPUs the cluster lacks) leaves nothing behind.
            from pipeline import ray_engine
            session = stack.enter_context(ray_engine.Session(s.address))
            ray_engine.check_resources(session.ray, workers, s.gpus_per_worker)
        sizes = {k: len(v) for k, v in splits.items()}
        attrs = {"schema_version": store.SCHEMA_VERSION, "settings_hash": store.settings_hash(settings),
                 "settings": settings, **settings, "weights": str(backbones.Weights.from_attrs(settings)),
                 "source": ds.source, "class_names": list(ds.class_names),
                 "image_shape": splits["train"].images.image_shape, "device": device, **_recorded_files(s),
                 "batch_size": s.batch_size, "shard_rows": s.shard_rows, "versions": versions(),
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        writer = store.RowWriter(final, attrs, {k: v.y for k, v in splits.items()},
                                 {k: v.index for k, v in splits.items()}, (settings["feature_width"],),
                                 log=log, block_rows=data.BLOCK_ROWS)
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
                                             workers, s.gpus_per_worker)
                    provenance.update(workers=workers, gpus_per_worker=s.gpus_per_worker,
                                      worker_devices=sorted(devices))
                elif todo:
                    engine.run_local(todo, splits, writer, spec, s.batch_size, progress)
            elapsed = time.perf_counter() - started
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
