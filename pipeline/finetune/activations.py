"""The cached mode's store: the frozen lower part's output (the cut activation) for every image,
computed once, in HDF5 like stage one's features (pipeline.store: float16, chunked, resumable,
renamed into place only when complete, named by a hash of what determines the numbers).

Row order. Train rows are written in a seeded random order of the images, so that any contiguous
run of rows is a random sample: training then reads whole contiguous windows (fast, chunk-aligned
HDF5 reads) instead of scattered rows. With K views per image (pipeline.finetune.augment.cached_view: as is,
mirrored, then random flips and translations of the image), image i of that order fills rows
K*i .. K*i+K-1, and each epoch picks one of the K per image, as on-the-fly augmentation would.
Val and test rows keep the features file's order: one view (as is), or with test_views 2 the image
and its mirror image (rows 2*i, 2*i+1), averaged by the final evaluation as the exported model does.

Augmentation on the stored maps: training batches may also move each map by up to `shift` cells
(the border cells repeated), which is what moving the image by that many strides of the cut does
away from the borders (test_finetune_augment.py measures how close).

Values are stored times the file's `scale` attribute (a power of two, see `float_scale`);
divide by it to get the activations back.
"""
from __future__ import annotations

import datetime
import math
import time
from pathlib import Path

import numpy as np

from pipeline.finetune.augment import MAX_SHIFT_PX, VIEW_SEED, cached_view
from pipeline.foundation import identity, layout
from pipeline.foundation.progress import Progress
from pipeline import store

TRAIN_ORDER_SEED = 0
WORDS = store.ACTIVATION_CACHE


def settings(features_attrs: dict, cut: str, views: int, precision: str, test_views: int = 1) -> dict:
    # test_views only when above 1: caches made before it existed keep their names
    more = {"test_views": int(test_views)} if test_views > 1 else {}
    return {"kind": "cut activations", "features_hash": features_attrs["settings_hash"], **more,
            "data_fingerprint": features_attrs["data_fingerprint"], "cut": cut, "views_per_image": int(views),
            "view_seed": VIEW_SEED, "view_max_shift_px": MAX_SHIFT_PX,
            "precision": precision, "storage": "float16", "train_order_seed": TRAIN_ORDER_SEED}


def size_bytes(row_shape, n_rows: int) -> int:
    """The cache's size on disk (float16 values), before HDF5's few bytes of structure."""
    return int(np.prod(row_shape)) * 2 * n_rows


def path_for(cache_dir, features_path: Path, s: dict) -> Path:
    return layout.folder(cache_dir, layout.ACTIVATIONS_DIR) / f"{identity.name(s, features_path.stem, s['cut'])}.h5"


def train_order(n: int) -> np.ndarray:
    return np.random.default_rng(TRAIN_ORDER_SEED).permutation(n)


def float_scale(sample: np.ndarray) -> float:
    """A power of two (so scaling is exact) that brings the sample's largest magnitude to about
    1024: inside float16's normal range (6e-5..65504) with 64x headroom. Without it, tiny
    activations (a random-weight network's) would fall into float16's imprecise subnormals."""
    peak = float(np.abs(sample).max())
    return float(2.0 ** np.floor(np.log2(1024.0 / peak))) if peak > 0 and np.isfinite(peak) else 1.0


def build(final: Path, s: dict, splits: dict, lower_fn, batch_size: int, log=print) -> Path:
    """Compute (or resume) the cache. `splits`: pipeline.sources splits; `lower_fn`: uint8 batch ->
    float32 cut activations. Returns the final path."""
    order = {"train": train_order(len(splits["train"].y))}
    order.update({k: np.arange(len(splits[k].y)) for k in ("val", "test")})
    copies = {"train": s["views_per_image"], "val": s.get("test_views", 1), "test": s.get("test_views", 1)}
    labels = {k: np.repeat(splits[k].y[order[k]], copies[k]) for k in store.SPLITS}
    index = {k: np.repeat(splits[k].index[order[k]], copies[k]) for k in store.SPLITS}
    probe = lower_fn(splits["val"].batch(np.arange(min(batch_size, len(splits["val"])))))
    row_shape = tuple(probe.shape[1:])
    attrs = {"schema_version": store.SCHEMA_VERSION, "settings_hash": identity.digest(s), "settings": s,
             **s, "rows_per_image": [copies[k] for k in store.SPLITS], "scale": float_scale(probe),
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    writer = store.RowWriter(final, attrs, labels, index, row_shape, dtype="float16", log=log, words=WORDS)
    scale = float(writer.file.attrs["scale"])   # a resumed file keeps the scale it was begun with
    started, computed = time.perf_counter(), 0
    try:
        for name in store.SPLITS:
            split, rows_of, k = splits[name], order[name], copies[name]
            start = writer.rows_done(name) // k
            # a bar on a terminal, plain lines in a log (a long pass is never silent)
            with Progress(len(rows_of), start, desc=f"cache {name:>5}") as bar:
                for lo in range(start, len(rows_of), batch_size):
                    # decoded a batch at a time: an image folder is never held whole
                    at = rows_of[lo:lo + batch_size]
                    batch, batch_ids = split.batch(at), split.index[at]
                    # interleaved: row k*i + v is view v of image i
                    rows = np.stack([lower_fn(cached_view(batch, batch_ids, v)) for v in range(k)],
                                    axis=1).reshape(-1, *row_shape)
                    rows = (rows * scale).astype(np.float16)
                    if not np.isfinite(rows).all():
                        raise RuntimeError(f"cut activations overflow float16 even at scale {scale}")
                    writer.write(name, lo * k, rows)
                    bar.update(len(batch))
                    computed += len(batch) * k
        elapsed = time.perf_counter() - started
        path = writer.finish({"elapsed_seconds": round(elapsed, 2), "activations_computed": computed})
    finally:
        writer.close()
    log(f"activation cache: {computed:,} activations {row_shape} computed in {elapsed:.1f} s -> {path}")
    return path


def shift_maps(x: np.ndarray, shifts: np.ndarray, most: int) -> np.ndarray:
    """(N, H, W, C) maps, map i moved by shifts[i] = (dy, dx) cells (|dy|, |dx| <= most), the
    uncovered border filled by repeating the edge cells."""
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (most, most), (most, most), (0, 0)), mode="edge")
    return np.stack([p[most - dy:most - dy + h, most - dx:most - dx + w] for p, (dy, dx) in zip(padded, shifts)])


def batches(path: Path, split: str, batch_size: int, shuffle: bool, seed: int = 0, shift: int = 0, drop=None,
            view: int = 0):
    """A keras PyDataset of (activations float32, labels) from the cache. Shuffled, each epoch reads
    the split as contiguous windows from a random offset in a random order, picks one stored view
    per image and moves each map by up to `shift` cells: all a seeded function of (epoch, batch),
    so a resumed run sees what an uninterrupted one would have, whatever order batches are read in.
    `drop`: source indices of images left out (--exclude); a window then spans the rows of the
    next batch_size images kept, still one contiguous read. Not shuffled, every batch holds stored view
    `view` of each image (0: as is, 1: mirrored)."""
    import h5py
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.file = h5py.File(path, "r")
            attrs = store.check_structure(self.file, path, words=WORDS)
            self.rows = self.file[split]["features"]
            self.k = int(attrs["rows_per_image"][store.SPLITS.index(split)])
            self.scale = float(attrs["scale"])
            self.labels = self.file[split]["labels"][...][::self.k]
            index = self.file[split]["index"][...][::self.k]
            self.kept = np.flatnonzero(~np.isin(index, drop)) if drop is not None else np.arange(len(index))
            self.n = len(self.kept)
            self.start_at(0)

        def start_at(self, epoch: int):
            """Plan `epoch` next (a resumed run starts past its finished epochs)."""
            self.epoch = epoch
            self._plan()

        def _plan(self):
            """This epoch's windows: a random start offset and a random window order (train only)."""
            self.offset, self.window_order = store.window_plan(self.n, batch_size, seed, self.epoch, shuffle)

        def __len__(self):
            return math.ceil(self.n / batch_size)

        def _images(self, lo, hi):
            """Rows of images lo..hi-1 (indices mod n, so a window may wrap around the end)."""
            lo, hi = lo % self.n, lo % self.n + (hi - lo)
            parts = [(lo, min(hi, self.n))] + ([(0, hi - self.n)] if hi > self.n else [])
            xs = []
            for a, b in parts:
                at = self.kept[a:b]          # stored positions of the kept images, ascending
                block = self.rows[at[0] * self.k:(at[-1] + 1) * self.k]
                if at[-1] - at[0] + 1 != len(at):     # images left out inside the window
                    block = block[((at - at[0])[:, None] * self.k + np.arange(self.k)).reshape(-1)]
                xs.append(block)
            y = np.concatenate([self.labels[self.kept[a:b]] for a, b in parts])
            return np.concatenate(xs), y

        def __getitem__(self, i):
            w = int(self.window_order[i])
            lo = w * batch_size
            hi = min(lo + batch_size, self.n)
            x, y = self._images(self.offset + lo, self.offset + hi)
            rng = np.random.default_rng([seed, self.epoch, i])
            if self.k > 1:   # one of the K stored views per image, chosen at random
                pick = rng.integers(self.k, size=len(y)) if shuffle else np.full(len(y), view)
                x = x.reshape(len(y), self.k, *x.shape[1:])[np.arange(len(y)), pick]
            if shuffle and shift:
                x = shift_maps(x, rng.integers(-shift, shift + 1, size=(len(y), 2)), shift)
            return x.astype(np.float32) / self.scale, y

        def on_epoch_end(self):
            self.epoch += 1
            if shuffle:
                self._plan()

    return Batches()
