"""Heads on features files larger than memory: when `head` streams, and the streamed rows it trains
and evaluates on. A file whose rows take more than STREAM_ABOVE_BYTES is not loaded: its splits
stay on disk as store.Rows (pipeline.store.windows) and
  - training reads them in batches from blocks of BLOCK_ROWS rows: each block gathers contiguous,
    chunk-aligned windows of WINDOW_ROWS rows from random places of the split (store.window_plan's
    seeded order) and shuffles its rows, so a batch mixes ~BLOCK_ROWS / WINDOW_ROWS places of the
    file even where the file is sorted by class (stage one writes a folder's train split class by
    class); memory holds one block, whatever the rows;
  - standardization's mean and variance come from one streaming pass (`moments`), and the logreg
    head's solver reads a pass per evaluation (`in_order`: contiguous blocks, file order);
  - predictions (evaluation, report, calibration) are made PREDICT_ROWS rows at a time.
Files that fit keep the in-memory path (pipeline.heads.classifiers), faster there: one read, and
Keras shuffles every row each epoch."""
from __future__ import annotations

import math

import numpy as np

from pipeline import store

# Stream when the rows (every split and view, float32) take more than this. 1 GiB: the in-memory
# path holds the rows about three times at its peak (the file's arrays, the training copy of every
# view, Keras's own), so up to here it stays under ~3 GB (the scale issue's bound) while being the
# faster path; all of CIFAR-10 at width 1,280 (60,000 rows, 307 MB) stays in memory. `head` passes
# it to store.features.load_features; tests pass a smaller number to stream a small file.
STREAM_ABOVE_BYTES = 1 << 30
# The kinds that stream. knn reads its training rows through the features file's cached search index
# (pipeline.heads.knn), so its train split is never needed in memory either.
STREAMED = ("dense", "logreg", "knn")

WINDOW_ROWS = store.CHUNK_ROWS      # one HDF5 chunk: the smallest read that costs no more than it returns
BLOCK_ROWS = 8192                   # ~42 MB at width 1,280: the memory a streamed epoch holds
PREDICT_ROWS = 8192


def is_streamed(split) -> bool:
    return isinstance(split.features, store.Rows)


def n_rows(split) -> int:
    """Training rows of a split: every stored view of each (kept) image."""
    return len(split.labels) * len(split.views)


def _units(split) -> list[tuple[int, int, int]]:
    """(view, stored lo, stored hi) windows covering every view's stored rows."""
    stored = split.features.stored
    return [(v, lo, min(lo + WINDOW_ROWS, stored)) for v in range(len(split.views))
            for lo in range(0, stored, WINDOW_ROWS)]


def _read(split, unit):
    v, lo, hi = unit
    x, kept = split.views[v].stored_window(lo, hi)
    return x, split.labels[kept]


def in_order(split, rows: int | None = None):
    """Every training row once, in training_rows' order (view by view), as (rows float32, labels)
    arrays of about `rows` stored rows, each one contiguous read: a pass over the split as fast as
    the file gives it (a read of one 128-row chunk costs ~2 ms of h5py's own, one of 8,192 rows
    ~6x less a row). `rows` defaults to BLOCK_ROWS."""
    rows = rows or BLOCK_ROWS
    for view in split.views:
        for lo in range(0, view.stored, rows):
            x, kept = view.stored_window(lo, lo + rows)
            if len(x):
                yield x.astype(np.float32, copy=False), split.labels[kept]


def spread_sample(split, rows: int) -> np.ndarray:
    """About `rows` training rows (all of them if the split has fewer), float32: whole windows of
    WINDOW_ROWS at evenly spaced places of the split, so a file written class by class gives every
    class its share. Deterministic: no seed."""
    units = _units(split)
    take = min(len(units), max(1, -(-rows // WINDOW_ROWS)))
    picked = np.unique(np.linspace(0, len(units) - 1, take).round().astype(int))
    return np.concatenate([_read(split, units[i])[0] for i in picked]).astype(np.float32, copy=False)


def moments(split) -> tuple[np.ndarray, np.ndarray]:
    """(mean, population variance) per feature over every training row, float64, in one streaming
    pass (Chan et al.'s pairwise update, so a large split loses no precision)."""
    count, mean, m2 = 0, None, None
    for x, _ in in_order(split):
        x = x.astype(np.float64)
        n, mu = len(x), x.mean(axis=0)
        if mean is None:
            count, mean, m2 = n, mu, ((x - mu) ** 2).sum(axis=0)
            continue
        delta, total = mu - mean, count + n
        mean = mean + delta * n / total
        m2 = m2 + ((x - mu) ** 2).sum(axis=0) + delta ** 2 * count * n / total
        count = total
    return mean, m2 / count


def predict_rows(predict, rows) -> np.ndarray:
    """predict(rows) for an in-memory array; for streamed rows, PREDICT_ROWS at a time, concatenated."""
    if isinstance(rows, np.ndarray):
        return predict(rows)
    return np.concatenate([np.asarray(predict(x)) for x in rows.windows(PREDICT_ROWS)])


def batches(split, batch_size: int, seed: int = 0, shuffle: bool = True):
    """The batches (rows float32, labels int32) of a streamed split, epoch by epoch: batches[i] is
    batch i of the current epoch, on_epoch_end() moves to the next. Epoch e is the split's windows
    in store.window_plan(seed, e)'s order, cut into blocks of whole batches, each block's rows
    shuffled by a seeded function of (seed, epoch, block): the same batches whatever order they are
    asked for. Unshuffled: every row once, in training_rows' order (validation). Keras is fed them
    through `feed`."""
    units = _units(split)
    sizes = np.array([len(split.labels[split.views[v].kept_slice(lo, hi)]) for v, lo, hi in units])
    per_block = max(1, BLOCK_ROWS // batch_size)

    class Batches:
        def __init__(self):
            self.total = int(sizes.sum())
            self.width = int(np.prod(split.views[0].row_shape))
            self.start_epoch(0)

        def start_epoch(self, epoch: int):
            self.epoch, self.cached = epoch, (None, None)
            _, order = store.window_plan(len(units), 1, seed, self.epoch, shuffle, offset=False)
            self.order = order
            self.ends = np.cumsum(sizes[order])        # stream position where each window ends

        def __len__(self):
            return math.ceil(self.total / batch_size)

        @property
        def blocks(self) -> int:
            return math.ceil(len(self) / per_block)

        def block(self, b: int):
            """Batches b*per_block .. (b+1)*per_block - 1 of this epoch, joined: rows
            b*per_block*batch_size .. of this epoch's stream, shuffled within the block."""
            if self.cached[0] != (self.epoch, b):
                lo = b * per_block * batch_size
                hi = min(lo + per_block * batch_size, self.total)
                first = int(np.searchsorted(self.ends, lo, side="right"))
                last = int(np.searchsorted(self.ends, hi - 1, side="right"))
                xs, ys = zip(*(_read(split, units[self.order[w]]) for w in range(first, last + 1)))
                start = int(self.ends[first] - sizes[self.order[first]])
                x, y = np.concatenate(xs)[lo - start:hi - start], np.concatenate(ys)[lo - start:hi - start]
                if shuffle:
                    mix = np.random.default_rng([seed, self.epoch, b]).permutation(len(y))
                    x, y = x[mix], y[mix]
                self.cached = ((self.epoch, b), (x.astype(np.float32), y.astype(np.int32)))
            return self.cached[1]

        def __getitem__(self, i):
            x, y = self.block(i // per_block)
            at = slice((i % per_block) * batch_size, (i % per_block + 1) * batch_size)
            return x[at], y[at]

        def __iter__(self):
            return (self[i] for i in range(len(self)))

        def on_epoch_end(self):
            self.start_epoch(self.epoch + 1)

    return Batches()


def feed(split, batch_size: int, seed: int = 0, shuffle: bool = True):
    """`batches` as a tf.data.Dataset for model.fit: each pass over it (Keras makes one an epoch) is
    the next epoch's batches, read a block at a time by one generator and cut into batches by
    tf.data. A keras.utils.PyDataset handing over one batch per call was ~4x slower per step for a
    small head (75 ms against 18 ms at batch 1,024, width 1,280, on a 2-core Xeon), its per-batch
    handover costing more than the step."""
    import itertools

    import tensorflow as tf

    plan = batches(split, batch_size, seed, shuffle)
    epochs = itertools.count()

    def blocks():
        # the epoch counts at the pass's start: Keras stops taking batches at the epoch's length,
        # so the generator is not always run to its end
        plan.start_epoch(next(epochs))
        for b in range(plan.blocks):
            yield plan.block(b)

    data = tf.data.Dataset.from_generator(blocks, output_signature=(
        tf.TensorSpec((None, plan.width), tf.float32), tf.TensorSpec((None,), tf.int32)))
    data = data.flat_map(lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))
    return data.apply(tf.data.experimental.assert_cardinality(len(plan))).prefetch(2)

