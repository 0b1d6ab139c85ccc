"""The data feeds of a fine-tune: in end-to-end mode tf.data over the uint8 images (with on-the-fly
augmentation), in cached mode batches of the activation cache at the cut (built first if missing).
TensorFlow is imported inside image_dataset only, so `--help` does not load it."""
from __future__ import annotations

import numpy as np

from pipeline.foundation import identity
from pipeline import store
from pipeline.backbones.folding import fast_extractor
from pipeline.finetune import activations
from pipeline.finetune.augment import MAX_SHIFT_PX
from pipeline.foundation.outputs import produce
from pipeline.sources.rows import load_splits


def image_dataset(split, batch_size: int, shuffle: bool, augment: bool, seed: int, mirrored: bool = False):
    """tf.data over a split's uint8 images, decoded a batch at a time (an image folder is never held
    whole: each file is read, turned upright and resized as stage one reads it, when its batch is
    due); augmentation: random horizontal flip and a shift of up to MAX_SHIFT_PX pixels (reflect-pad,
    random crop back), applied per image on the fly."""
    import tensorflow as tf
    shape = tuple(split.batch([0]).shape[1:])          # the first image: the size every image is read at
    order = tf.data.Dataset.range(len(split))
    if shuffle:
        order = order.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)

    def read(rows):
        return split.batch(rows), split.y[rows].astype(np.int32)

    def load(rows):
        x, y = tf.numpy_function(read, [rows], (tf.uint8, tf.int32))
        return tf.ensure_shape(x, (None, *shape)), tf.ensure_shape(y, (None,))
    # numpy_function hides the length from tf.data; Keras needs it to know where an epoch ends
    ds = order.batch(batch_size).map(load).unbatch().apply(tf.data.experimental.assert_cardinality(len(split)))
    if augment:
        def jitter(img, label):
            img = tf.image.random_flip_left_right(img)
            img = tf.pad(img, [[MAX_SHIFT_PX] * 2, [MAX_SHIFT_PX] * 2, [0, 0]], mode="REFLECT")
            return tf.image.random_crop(img, shape), label
        ds = ds.map(jitter, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    if mirrored:          # every image left-right mirrored (a test-time view), as the exported model mirrors it
        ds = ds.map(lambda x, y: (tf.reverse(x, [2]), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def training_data(s, attrs, features_path, parts, mode, precision, log, drop=None) -> dict:
    """{"train", "val", "test"}: keras-ready inputs for the training model in `mode`, and "views":
    {"val", "test"} -> one input per test-time view (s.test_views: as is, then mirrored), the first
    being data["val"] / data["test"]. `drop`: source indices of training images left out (--exclude)."""
    views = range(s.test_views)
    if mode == "end-to-end":
        splits = load_splits(attrs, s.data)
        if drop is not None:
            splits["train"] = splits["train"].select(np.flatnonzero(~np.isin(splits["train"].index, drop)))
        data = {k: image_dataset(v, s.batch_size, shuffle=(k == "train"), augment=s.augment and k == "train",
                                 seed=s.seed) for k, v in splits.items()}
        return {**data, "views": {k: [data[k]] + [image_dataset(splits[k], s.batch_size, False, False, s.seed, True)
                                                  for _ in views[1:]] for k in ("val", "test")}}
    if s.augment:
        log("cached mode: --augment has no effect; cached mode augments with --views-per-image and --map-shift")
    cs = activations.settings(attrs, parts.cut, s.views_per_image, precision, s.test_views)
    path = activations.path_for(s.cache_dir, features_path, cs)

    def build():
        fn = fast_extractor(parts.image_to_cut(), precision)
        activations.build(path, cs, load_splits(attrs, s.data), fn, max(s.batch_size, 32), log=log)
    produce(path, path.exists, build, log, what="activation cache")
    # Every row checked (finite, labels in range) once before training: a damaged cache must not
    # train a garbage model.
    store.read_rows(path, expect={"settings_hash": identity.digest(cs)}, splits=(), words=activations.WORDS,
                    n_classes=len(attrs["class_names"]))
    data = {k: activations.batches(path, k, s.batch_size, shuffle=(k == "train"), seed=s.seed, shift=s.map_shift,
                                   drop=drop if k == "train" else None)
            for k in store.SPLITS}
    return {**data, "views": {k: [data[k]] + [activations.batches(path, k, s.batch_size, shuffle=False, view=v)
                                              for v in views[1:]] for k in ("val", "test")}}

