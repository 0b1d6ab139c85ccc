"""What every source loads into: a Dataset of train and test Splits, each labels, source indices and
an images reader (arrays in memory, or file names decoded only when a bounded batch is read)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.foundation.errors import UserError
from pipeline.sources.decode import read_images


FORMATS_HELP = ("--data takes a cifar-10-batches-py folder, a cifar-10-python.tar.gz, "
                "or an image-folder tree train/<class>/*.jpg and test/<class>/*.jpg")


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
        return read_images(self.paths[lo:hi])

    @property
    def image_shape(self):
        """The first image's size, from its header (other images may differ)."""
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
