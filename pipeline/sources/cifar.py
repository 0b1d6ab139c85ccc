"""CIFAR-10 in its own formats: the Keras download, a cifar-10-batches-py folder, or its tarball. The
pickled batches are unpickled with only numpy's array types allowed, so a crafted file cannot run code."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from pipeline.foundation.errors import OFFLINE_WAYS, UserError, first_line
from pipeline.sources.images import ArrayImages, Dataset, FORMATS_HELP
from pipeline.sources.partition import subset


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def load_keras(limit) -> Dataset:
    import keras
    try:
        (train_x, train_y), (test_x, test_y) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # URLError, HTTPError, socket errors: all mean "could not download"
        raise UserError(f"could not download CIFAR-10 through Keras ({type(exc).__name__}: "
                        f"{first_line(exc)}); {OFFLINE_WAYS}. {FORMATS_HELP}") from None
    k = len(CIFAR10_CLASSES)
    return Dataset("cifar10", "keras.datasets.cifar10", CIFAR10_CLASSES,
                   subset(ArrayImages(train_x), train_y.reshape(-1).astype(np.uint8), k, limit),
                   subset(ArrayImages(test_x), test_y.reshape(-1).astype(np.uint8), k, limit))


# The only callables a CIFAR-10 batch's pickle names: numpy arrays and dtypes (each numpy version's
# module path, the original batches being Python 2 pickles), labels' numpy integers, and how Python 3
# writes bytes at protocol 2. Any other (os.system, ...) would run code while loading data.
_BATCH_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, raw: bytes, where: str):
        super().__init__(io.BytesIO(raw), encoding="bytes")     # Python 2's str -> bytes, as CIFAR's keys
        self.where = where

    def find_class(self, module, name):
        if (module, name) not in _BATCH_GLOBALS:
            raise UserError(f"refusing to load {self.where}: its pickle calls {module}.{name}, which a CIFAR-10 "
                            "batch never does (loading it could run code)")
        return super().find_class(module, name)


def _unpickle_batch(raw: bytes, where: str) -> dict:
    try:
        batch = _BatchUnpickler(raw, where).load()
    except UserError:
        raise
    except Exception:
        raise UserError(f"{where} is not a CIFAR-10 pickle batch") from None
    if not isinstance(batch, dict):
        raise UserError(f"{where} is not a CIFAR-10 pickle batch (not a dict)")
    return batch


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if data is None or labels is None:
        raise UserError(f"{where} lacks the keys b'data' and b'labels' of a CIFAR-10 batch")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{where}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise UserError(f"{where}: b'labels' must hold one label 0-9 per image")
    # Stored channel-major (N, 3, 32, 32); we want (N, 32, 32, 3).
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels.astype(np.uint8)


def _class_names(names, largest_label: int, where: str) -> tuple[str, ...]:
    """batches.meta's label_names, refused unless they fit the labels: one distinct, non-empty name
    per label 0..largest (a file whose names do not fit would be complete and fail every later check)."""
    try:
        classes = tuple(n.decode() if isinstance(n, bytes) else n for n in names)
    except (TypeError, UnicodeDecodeError):
        classes = ()
    if not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise UserError(f"{where}: b'label_names' must be a list of non-empty class names")
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise UserError(f"{where} names the class {twice[0]!r} more than once; each label needs its own name")
    if len(classes) <= largest_label:
        raise UserError(f"{where} names {len(classes)} classes, but the batches' labels run 0..{largest_label}; "
                        f"it needs one name per label")
    return classes


def _from_batches(read, where: str, name: str, limit) -> Dataset:
    """Build a Dataset from a function that returns a batch file's bytes (or None if missing)."""
    parts = []
    for fname in BATCH_FILES + ["test_batch"]:
        raw = read(fname)
        if raw is None:
            raise UserError(f"{where} lacks {fname}; a CIFAR-10 batches folder has "
                            f"{', '.join(BATCH_FILES)}, test_batch and batches.meta")
        parts.append(_batch_arrays(_unpickle_batch(raw, f"{where}/{fname}"), f"{where}/{fname}"))
    classes = CIFAR10_CLASSES
    meta = read("batches.meta")
    if meta is not None:
        names = _unpickle_batch(meta, f"{where}/batches.meta").get(b"label_names")
        if names:
            classes = _class_names(names, max(int(p[1].max(initial=0)) for p in parts), f"{where}/batches.meta")
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    k = len(classes)
    return Dataset(name, where, classes, subset(ArrayImages(train_x), train_y, k, limit),
                   subset(ArrayImages(parts[5][0]), parts[5][1], k, limit))


def load_batches_dir(path: Path, limit) -> Dataset:
    def read(fname):
        f = path / fname
        return f.read_bytes() if f.exists() else None
    return _from_batches(read, str(path), "cifar10", limit)


def load_tarball(path: Path, limit) -> Dataset:
    try:
        tar = tarfile.open(path)
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"cannot read tarball {path}: {exc}") from None

    def read(fname):
        member = members.get(fname)
        return tar.extractfile(member).read() if member is not None else None
    with tar:
        return _from_batches(read, str(path), "cifar10", limit)
