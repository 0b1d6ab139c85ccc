"""The Ray engine: the driver's shards on a Ray Data actor pool, rows back to the driver.

Each actor builds the fast extractor once (a callable class, as Ray Data's batch inference does it),
gets `--gpus-per-worker` GPUs of its own (Ray sets its CUDA_VISIBLE_DEVICES), and turns one shard
at a time into rows and fingerprint block digests, reading the shard's images itself (file names
travel, pixels do not; a pickled source's pixels travel in the shard). The driver writes whatever
arrives, so the output needs no shared filesystem. Ray restarts a dead actor and retries its shard
up to RETRIES times; a tiny ledger actor counts the attempts so the driver can name a shard that
keeps failing. Ray is imported only here, so the local engine does not need it installed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import threading
import uuid

import numpy as np

from pipeline.extract import ray_address
from pipeline.extract.engine import CRASH_ENV, ExtractorSpec, Shard, maybe_crash, maybe_pause, shard_batches
from pipeline.foundation import reaper
from pipeline.foundation.errors import UserError, first_line
from pipeline.sources import digest


RETRIES = 2                          # attempts per shard: 1 + RETRIES
LOCAL_OBJECT_STORE = 512 * 2**20     # a local instance's object store: shards stream through it


class Session:
    """Joins a cluster (`address`), or starts a local instance that it alone shuts down again, on
    any exit including Ctrl-C, and that a watchdog (pipeline.foundation.reaper) removes even after a SIGKILL.
    An instance already running in this process (tests) is used as is."""

    def __init__(self, address: str | None):
        self.ray, self.address, self.started, self.watchdog = ray_address.import_ray(), address, False, None

    def __enter__(self):
        ray = self.ray
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=False, configure_logging=True)
            try:
                if self.address is None:
                    mark = uuid.uuid4().hex
                    self.watchdog = reaper.start(mark)
                    os.environ[reaper.MARK_ENV] = mark     # inherited by every process of the instance
                    ray.init(object_store_memory=LOCAL_OBJECT_STORE, **kwargs)
                else:
                    ray_address.check_reachable(self.address)
                    ray.init(address=self.address, **kwargs)
            except ConnectionError as exc:
                raise UserError(f"cannot join the Ray cluster at {self.address}: {first_line(exc)}") from None
            self.started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False          # our own progress line counts rows and shards
        ctx.print_on_execution_start = False
        # A worker's UserError (an unreadable image) reaches the driver as itself, not inside a
        # UserCodeException whose pickled cause is lost, so both engines print the same error line.
        ctx.raise_original_map_exception = True
        # Ray Data logs to the console too (warnings, and a failed run's traceback before ours):
        # the user sees our one line; everything stays in Ray Data's log file.
        for handler in logging.getLogger("ray.data").handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()
        if self.watchdog is not None:
            os.environ.pop(reaper.MARK_ENV, None)
            reaper.finish(self.watchdog)


def check_resources(ray, workers: int, gpus_per_worker: float):
    """Fail at once where Ray would wait forever for resources the cluster does not have."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n.get("CPU", 0) for n in nodes)
    if cpus < workers:
        raise UserError(f"--workers {workers} needs {workers} CPUs (one per worker); the Ray cluster has {cpus:g}")
    if gpus_per_worker > 0:
        gpus = [n.get("GPU", 0) for n in nodes]
        if max(gpus, default=0) < gpus_per_worker or sum(gpus) < workers * gpus_per_worker:
            raise UserError(f"--workers {workers} with --gpus-per-worker {gpus_per_worker:g} needs "
                            f"{workers * gpus_per_worker:g} GPUs, at least {gpus_per_worker:g} on one node; "
                            f"the Ray cluster has {sum(gpus):g} (per node: {', '.join(f'{g:g}' for g in gpus)})")


class _Ledger:
    """Attempts per shard, recorded by the workers before they start one; each worker's devices."""

    def __init__(self):
        self.attempts, self.devices = {}, set()

    def hello(self, device: str):
        self.devices.add(device)

    def started(self, shard: str):
        self.attempts[shard] = self.attempts.get(shard, 0) + 1

    def get(self):
        return self.attempts

    def get_devices(self):
        return self.devices


class ShardWorker:
    """One Ray actor: the extractor built once; one shard per call."""

    def __init__(self, spec: ExtractorSpec, batch_size: int, ledger, crash: str | None):
        import ray
        # Said first: on a small job the pool can finish before every actor has built its model.
        ray.get(ledger.hello.remote(os.environ.get("CUDA_VISIBLE_DEVICES", "")))
        import tensorflow as tf
        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) or 1
        tf.config.threading.set_intra_op_parallelism_threads(cpus)   # workers share the cores, not fight
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self.extract, _ = spec.build()
        self.batch_size, self.ledger, self.crash = batch_size, ledger, crash

    def __call__(self, batch: dict) -> dict:
        import ray
        (split,), (lo,), (hi,), (payload,) = batch["split"], batch["lo"], batch["hi"], batch["images"]
        shard = Shard(str(split), int(lo), int(hi))
        ray.get(self.ledger.started.remote(str(shard)))    # recorded before the work (and any crash)
        maybe_crash(shard, self.crash)
        part = pickle.loads(payload)
        rows, digests = [], {}
        for _, features, blocks in shard_batches(self.extract, part, shard.lo, self.batch_size):
            rows.append(features)
            digests.update(blocks)
        return {"split": [shard.split], "lo": [shard.lo], "features": np.concatenate(rows)[None],
                "blocks": np.stack([np.frombuffer(digests[b], np.uint8) for b in sorted(digests)])[None]}


def _cause(exc):
    """A worker's own UserError inside Ray's wrappers. Ray re-raises it as a RayTaskError that also
    subclasses UserError but prints Ray's traceback; its `cause` is the error itself."""
    while exc is not None:
        inner = getattr(exc, "cause", None)
        if isinstance(exc, UserError) and not isinstance(inner, BaseException):
            return exc
        exc = inner or exc.__cause__
    return None


@contextlib.contextmanager
def _interruptible():
    """Yields an Event set by Ctrl-C (SIGINT), which also raises KeyboardInterrupt as usual. Ray's
    blocking waits can keep the KeyboardInterrupt from the loop until more shards have arrived (the
    whole run, in issue 22's test); the Event stops the driver at the next shard whatever happened
    to the exception. Outside the main thread (no signal handlers there) it is never set."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def handler(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def run(todo: list[Shard], splits: dict, writer, spec: ExtractorSpec, batch_size: int, progress,
        session: Session, workers: int, gpus_per_worker: float) -> set[str]:
    """Compute `todo` on the pool, writing rows as shards arrive (the caller has run check_resources).
    Returns the workers' CUDA_VISIBLE_DEVICES values (provenance)."""
    ray = session.ray
    ledger = ray.remote(num_cpus=0)(_Ledger).remote()
    items = [{"split": s.split, "lo": s.lo, "hi": s.hi,
              "images": pickle.dumps(splits[s.split].select(np.arange(s.lo, s.hi)))} for s in todo]
    shards = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardWorker, batch_size=1, batch_format="numpy",
        # One shard in flight per actor: a dying actor then fails only its own shard (with more
        # queued, each crash would use up the retries of every shard waiting behind it).
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=1, num_gpus=gpus_per_worker or None,
        fn_constructor_kwargs={"spec": spec, "batch_size": batch_size, "ledger": ledger,
                               "crash": os.environ.get(CRASH_ENV)},
        max_restarts=-1, max_task_retries=RETRIES)
    done = written = 0
    try:
        with _interruptible() as interrupted:
            for row in shards.iter_rows():
                if interrupted.is_set():      # a Ctrl-C that Ray's waits held back: no shard written after it
                    raise KeyboardInterrupt
                first = int(row["lo"]) // digest.BLOCK_ROWS
                blocks = {first + i: digest.tobytes() for i, digest in enumerate(row["blocks"])}
                writer.write(str(row["split"]), int(row["lo"]), row["features"], blocks)
                done, written = done + 1, written + len(row["features"])
                retried = sum(n - 1 for n in ray.get(ledger.get.remote()).values())
                progress.update(len(row["features"]), f"shards {done}/{len(todo)} done, {retried} retried, "
                                                       f"{len(todo) - done} remaining")
                maybe_pause(written)
    except Exception as exc:
        if _cause(exc) is not None:      # Ray Data appends retry advice to its message: the first line
            raise UserError(first_line(_cause(exc))) from None
        failing = [s for s, n in ray.get(ledger.get.remote()).items() if n > RETRIES]
        if failing:
            raise UserError(f"shard {failing[0]} failed {1 + RETRIES} times (its worker died each time); "
                            f"{done} shards were written and are kept in {writer.partial.name}; "
                            "rerun the same command to retry the rest") from None
        raise
    return ray.get(ledger.get_devices.remote())
