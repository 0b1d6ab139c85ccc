"""Images in, uint8 arrays out: load CIFAR-10 from any supported source and carve fixed splits.

Accepted sources (``load_dataset``):
- ``None``: ``keras.datasets.cifar10.load_data()`` (downloads once, then Keras's cache);
- a ``cifar-10-batches-py`` folder (data_batch_1..5, test_batch, batches.meta);
- a ``cifar-10-python.tar.gz`` tarball holding that folder;
- an image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (JPEG, PNG, BMP, GIF, WebP, TIFF; any
  size; grayscale, palette, RGBA and 16-bit files are read as 8-bit RGB);
  the class order is the sorted folder names, which for CIFAR-10 is its label order.

Nothing here decodes a whole image folder at once: a split holds labels, source indices and an
``Images`` reader (file names, or the arrays of a pickled source, which is CIFAR-sized by nature),
and callers decode bounded batches with ``Split.read(lo, hi)``. The data fingerprint is made of
fixed blocks of ``BLOCK_ROWS`` images, so any batch or shard layout (and any worker) computes the
same blocks, and the blocks combine to one hash.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError, first_line

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}   # stage one and predict
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)]
FORMATS_HELP = ("--data takes a cifar-10-batches-py folder, a cifar-10-python.tar.gz, "
                "or an image-folder tree train/<class>/*.jpg and test/<class>/*.jpg")


BLOCK_ROWS = 128      # images per fingerprint block (also the HDF5 chunk): shards are whole blocks


def stack(images, where="these images") -> np.ndarray:
    """One (n, H, W, 3) array from decoded images that must share a size."""
    if isinstance(images, np.ndarray):
        return images
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise UserError(f"{where} differ in size ({', '.join(sorted(str(s) for s in shapes)[:3])}, ...); "
                        "this step needs images of one size")
    return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)


@dataclass(frozen=True)
class ArrayImages:
    """Images already in memory (pickled CIFAR batches, the Keras download)."""
    x: np.ndarray                  # (N, H, W, 3) uint8

    def __len__(self):
        return len(self.x)

    def select(self, rows) -> "ArrayImages":
        return ArrayImages(self.x[rows])

    def read(self, lo=0, hi=None) -> np.ndarray:
        return self.x[lo:hi]

    @property
    def image_shape(self):
        return list(self.x.shape[1:])


@dataclass(frozen=True)
class FileImages:
    """Image files, decoded only when read: a shard ships its file names, not pixels."""
    paths: np.ndarray              # (N,) str

    def __len__(self):
        return len(self.paths)

    def select(self, rows) -> "FileImages":
        return FileImages(self.paths[rows])

    def read(self, lo=0, hi=None) -> list[np.ndarray]:
        return _read_images(self.paths[lo:hi])

    @property
    def image_shape(self):
        """The first image's size, from its header (other images may differ)."""
        from PIL import Image
        with Image.open(self.paths[0]) as img:
            return [img.height, img.width, 3]


@dataclass(frozen=True)
class Split:
    y: np.ndarray       # (n,) uint8
    index: np.ndarray   # (n,) int64, row in the source's train or test set
    images: ArrayImages | FileImages

    def __len__(self):
        return len(self.y)

    def read(self, lo=0, hi=None):
        """Decoded images lo:hi: an (n, H, W, 3) array, or a list when sizes may differ."""
        return self.images.read(lo, hi)

    def select(self, rows) -> "Split":
        return Split(self.y[rows], self.index[rows], self.images.select(rows))

    @property
    def x(self) -> np.ndarray:
        """Every image at once: for small sets (tests, stage three's in-memory training)."""
        return stack(self.read(), "the images")


@dataclass(frozen=True)
class Dataset:
    name: str                      # short label used in cache file names
    source: str                    # where it came from, for the metadata
    class_names: tuple[str, ...]
    train: Split                   # index: row of each image in the full source train set
    test: Split

    # The arrays of small sets, decoded on demand (tests, benchmarks).
    train_x = property(lambda self: self.train.x)
    train_y = property(lambda self: self.train.y)
    train_index = property(lambda self: self.train.index)
    test_x = property(lambda self: self.test.x)
    test_y = property(lambda self: self.test.y)
    test_index = property(lambda self: self.test.index)


def load_dataset(path: str | os.PathLike | None, limit: int | None = None) -> Dataset:
    """Load a source; with `limit`, keep at most that many train and test images each
    (``balanced_subset``), decoding only those from an image folder."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of images, got {limit}")
    if path is None:
        return _load_keras(limit)
    path = Path(path)
    if not path.exists():
        raise UserError(f"data path {path} does not exist; {FORMATS_HELP}")
    path = path.resolve()   # stored as the source: later stages find it from any working directory
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _load_tarball(path, limit)
        raise UserError(f"unknown data format {path.name}; {FORMATS_HELP}")
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return _load_batches_dir(path, limit)
    if (path / "train").is_dir() and (path / "test").is_dir():
        return _load_image_folders(path, limit)
    raise UserError(f"{path} is not a recognised dataset folder; {FORMATS_HELP}")


def source_identity(path: str | os.PathLike | None) -> str:
    """A cheap fingerprint of the source files (names, sizes, modification times), computed
    without decoding a single image, so an up-to-date cache is found at once. The content
    fingerprint (``fingerprint``) is stored in the file as well."""
    if path is None:
        return "keras.datasets.cifar10"
    path = Path(path)
    if not path.exists():
        raise UserError(f"data path {path} does not exist; {FORMATS_HELP}")
    files = [(path.name, path.stat())] if path.is_file() else _tree_files(path)
    h = hashlib.sha256()
    for name, st in files:
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _tree_files(root: Path, prefix: str = "") -> list[tuple[str, os.stat_result]]:
    """(path relative to `root`, stat) of every file below it, in the order and with the choices
    of `sorted(p for p in root.rglob("*") if p.is_file())`, which this replaces at 3x its speed
    (os.scandir's entries know their kind without a stat each): names sorted within each folder
    is the order of sorted path parts; symlinked folders are not entered, symlinked files count."""
    out = []
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            out += _tree_files(Path(e.path), f"{prefix}{e.name}/")
        elif e.is_file():
            out.append((prefix + e.name, e.stat()))
    return out


def _subset(images, y, n_classes, limit) -> Split:
    keep = balanced_subset(y, n_classes, limit)
    return Split(y[keep], keep.astype(np.int64), images.select(keep))


# ---------------------------------------------------------------- the sources

def _load_keras(limit) -> Dataset:
    import keras
    try:
        (train_x, train_y), (test_x, test_y) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # URLError, HTTPError, socket errors: all mean "could not download"
        raise UserError(f"could not download CIFAR-10 through Keras ({type(exc).__name__}: "
                        f"{first_line(exc)}); offline? "
                        f"{FORMATS_HELP}") from None
    k = len(CIFAR10_CLASSES)
    return Dataset("cifar10", "keras.datasets.cifar10", CIFAR10_CLASSES,
                   _subset(ArrayImages(train_x), train_y.reshape(-1).astype(np.uint8), k, limit),
                   _subset(ArrayImages(test_x), test_y.reshape(-1).astype(np.uint8), k, limit))


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
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    train_x = np.concatenate([p[0] for p in parts[:5]])
    train_y = np.concatenate([p[1] for p in parts[:5]])
    k = len(classes)
    return Dataset(name, where, classes, _subset(ArrayImages(train_x), train_y, k, limit),
                   _subset(ArrayImages(parts[5][0]), parts[5][1], k, limit))


def _load_batches_dir(path: Path, limit) -> Dataset:
    def read(fname):
        f = path / fname
        return f.read_bytes() if f.exists() else None
    return _from_batches(read, str(path), "cifar10", limit)


def _load_tarball(path: Path, limit) -> Dataset:
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


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def rgb8(img):
    """A PIL image as 8-bit RGB, the way stage one and predict both read files. Grayscale, palette,
    CMYK and RGBA (alpha dropped, as torchvision's ImageFolder does) convert; PIL's convert("RGB")
    would clip 16-bit pixels (all white) and truncate float ones (all black), so 16-bit images are
    scaled down, and images whose range is not fixed (32-bit integer or float) are refused rather
    than guessed."""
    from PIL import Image
    if img.mode.startswith("I;16"):
        pixels = (np.asarray(img, dtype=np.uint32) * 255 + 32767) // 65535
        img = Image.fromarray(pixels.astype(np.uint8))
    elif img.mode in ("I", "F"):
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise ValueError(f"a {kind} image has no fixed pixel range; save it as 8-bit (or 16-bit) RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image
    path = str(path)     # not np.str_, which PIL's messages would print as np.str_('...')
    try:
        with Image.open(path) as img:
            return np.asarray(rgb8(img), dtype=np.uint8)
    except Exception as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc)}") from None


def _folder_files(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Every image file of one split folder in source order (class by class, sorted names) and
    its label: a row's `index` is its position in this list."""
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.uint8)


def _read_images(files) -> list[np.ndarray]:
    # PIL releases the GIL while decoding, so threads give a real speed-up here.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2, max(1, len(files)))) as pool:
        return list(pool.map(_read_image, files))


def _list_split_folder(root: Path, classes: list[str], limit) -> Split:
    """File names and labels only: nothing is decoded here."""
    files, labels = _folder_files(root, classes)
    return _subset(FileImages(np.asarray([str(f) for f in files])), labels, len(classes), limit)


def _load_image_folders(path: Path, limit) -> Dataset:
    train_classes, test_classes = _class_folders(path / "train"), _class_folders(path / "test")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise UserError(f"class folders of {path}/train and {path}/test differ "
                        f"(only in train: {only_train or 'none'}; only in test: {only_test or 'none'})")
    if not train_classes:
        raise UserError(f"{path}/train has no class folders; {FORMATS_HELP}")
    if len(train_classes) > 256:
        raise UserError(f"{path} has {len(train_classes)} classes; labels are stored as uint8 (at most 256)")
    return Dataset(path.resolve().name, str(path), tuple(train_classes),
                   _list_split_folder(path / "train", train_classes, limit),
                   _list_split_folder(path / "test", train_classes, limit))


# Which part of the source a split's `index` points into: val is carved from train.
SOURCE_PART = {"train": "train", "val": "train", "test": "test"}


def source_of(attrs: dict, data_path=None):
    """The source a features file was made from (`data_path` overrides it), as load_dataset takes it."""
    if data_path is not None:
        return data_path
    if not attrs.get("source"):
        raise UserError("the features file does not record where its images came from; pass --data PATH")
    if attrs["source"] == "keras.datasets.cifar10":
        return None
    if not Path(attrs["source"]).exists():
        raise UserError(f"the images the features file was made from are no longer at {attrs['source']}; pass "
                        "--data PATH to them (a moved copy is recognised by its fingerprint)")
    return attrs["source"]


def load_rows(path, part: str, index) -> tuple[list[np.ndarray], list[str | None]]:
    """The images at `index` of the source's `part` ("train" or "test": val rows live in train),
    each at its own size (an image folder may mix sizes), and their file paths (None where the
    source has no files). Only an image folder is read row by row; the other formats are loaded
    whole (CIFAR-10 size: seconds)."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    files = row_files(path, part, index)
    if files is not None:
        return _read_images(files), [str(f) for f in files]
    ds = load_dataset(path)
    x = ds.train_x if part == "train" else ds.test_x
    _check_rows(index, len(x), path, part)
    return list(x[index]), [None] * len(index)


def row_files(path, part: str, index) -> list[Path] | None:
    """The files of an image-folder source at `index` of its `part`, without decoding them; None
    for the other formats, which have no file per image."""
    if path is None or not ((Path(path) / "train").is_dir() and (Path(path) / "test").is_dir()):
        return None
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    root = Path(path)
    files, _ = _folder_files(root / part, _class_folders(root / "train"))
    _check_rows(index, len(files), path, part)
    return [files[i] for i in index]


def _check_rows(index, n, path, part):
    if len(index) and (index.min() < 0 or index.max() >= n):
        raise UserError(f"the {part} set of {path} has {n} images, but a row points at image "
                        f"{int(index.max())}; is this the source the features were made from? (--data)")


# ---------------------------------------------------------------- splits

def balanced_subset(labels: np.ndarray, n_classes: int, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` images, as even across classes as possible: the first ones of
    each class in source order, so the choice is deterministic and needs no seed."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    per_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    quota = [limit // n_classes + (1 if c < limit % n_classes else 0) for c in range(n_classes)]
    return np.sort(np.concatenate([idx[:q] for idx, q in zip(per_class, quota)]))


def make_splits(ds: Dataset, val_fraction: float, seed: int) -> dict[str, Split]:
    """train/val/test: a seeded, stratified `val_fraction` of the train set becomes val.
    Test is never touched. Each split's ``index`` points into the full source set."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    k = len(ds.class_names)
    rng = np.random.default_rng(seed)
    val = []
    for c in range(k):
        members = np.flatnonzero(ds.train_y == c)
        n_val = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)   # keep both sides non-empty
        else:
            n_val = 0
        val.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val))
    train = np.setdiff1d(np.arange(len(ds.train_y)), val)
    splits = {"train": ds.train.select(train), "val": ds.train.select(val), "test": ds.test}
    for name, s in splits.items():
        if len(s.y) == 0:
            raise UserError(f"the {name} split is empty; raise --limit or --val-fraction")
    return splits


def block_digest(images, labels: np.ndarray, index: np.ndarray) -> bytes:
    """sha256 of one block's pixels (with each image's shape), labels and indices."""
    h = hashlib.sha256()
    for img in images:
        h.update(str(img.shape).encode())
        h.update(np.ascontiguousarray(img).tobytes())
    h.update(np.asarray(labels, np.uint8).tobytes())
    h.update(np.asarray(index, np.int64).tobytes())
    return h.digest()


def combine_digests(blocks: dict[str, list[bytes]], sizes: dict[str, int]) -> str:
    """The data fingerprint from every split's block digests, in order."""
    h = hashlib.sha256()
    for name in sorted(blocks):
        h.update(f"{name}:{sizes[name]}:{BLOCK_ROWS}".encode())
        for digest in blocks[name]:
            h.update(digest)
    return h.hexdigest()


class BlockHasher:
    """Feeds a split's rows in order, from a block boundary; hands back each block's digest as
    soon as its last row has been fed. Workers hash exactly the rows they extract."""

    def __init__(self, split: Split, start: int):
        assert start % BLOCK_ROWS == 0, "shards start on a block boundary"
        self.split, self.next, self.pending = split, start, []

    def feed(self, images) -> dict[int, bytes]:
        """`images`: the next rows, in order. Returns {block number: digest} of completed blocks."""
        done = {}
        for img in images:
            self.pending.append(img)
            self.next += 1
            if self.next % BLOCK_ROWS == 0 or self.next == len(self.split):
                lo = self.next - len(self.pending)
                done[lo // BLOCK_ROWS] = block_digest(self.pending, self.split.y[lo:self.next],
                                                      self.split.index[lo:self.next])
                self.pending = []
        return done


def fingerprint(splits: dict[str, Split]) -> str:
    """The data fingerprint of in-memory splits: equal iff the inputs are equal, and equal to the
    one stage one assembles from its workers' blocks."""
    blocks = {}
    for name, split in splits.items():
        hasher = BlockHasher(split, 0)
        blocks[name] = []
        for lo in range(0, len(split), BLOCK_ROWS):
            blocks[name] += hasher.feed(split.read(lo, lo + BLOCK_ROWS)).values()
    return combine_digests(blocks, {k: len(v) for k, v in splits.items()})
