"""What every source loads into: a Dataset of train and test Splits, each labels, source indices and
an images reader (arrays in memory, or file names decoded only when a bounded batch is read)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.sources.decode import read_images, shown_size


FORMATS_HELP = ("--data takes a folder of class folders <class>/*.jpg, an image-folder tree train/<class>/*.jpg "
                "and test/<class>/*.jpg (val/ or validation/ beside them optional), a cifar-10-batches-py folder "
                "or a cifar-10-python.tar.gz")

@dataclass(frozen=True)
class Decoding:
    """How an image file becomes pixels: upright as its EXIF orientation says (`exif`), resized to
    `size` (H, W) when given. Features files record theirs (sources/rows.py: decoding_of)."""
    exif: bool = True
    size: tuple[int, int] | None = None


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

    def decoded(self, decoding) -> "ArrayImages":
        return self           # already pixels

    def shape_for(self, input_size: int) -> list[int]:
        return list(self.x.shape[1:])


@dataclass(frozen=True)
class FileImages:
    """Image files, decoded only when read: a shard ships its file names, not pixels."""
    paths: np.ndarray              # (N,) str
    decoding: Decoding = field(default_factory=Decoding)

    def __len__(self):
        return len(self.paths)

    def select(self, rows) -> "FileImages":
        return FileImages(self.paths[rows], self.decoding)

    def decoded(self, decoding: Decoding) -> "FileImages":
        return replace(self, decoding=decoding)

    def read(self, lo=0, hi=None) -> list[np.ndarray] | np.ndarray:
        """A list of images at their own sizes, or one array when every image is resized to one."""
        found = read_images(self.paths[lo:hi], self.decoding.size, self.decoding.exif)
        return np.stack(found) if self.decoding.size is not None and found else found

    def shape_for(self, input_size: int) -> list[int]:
        """The size every image is decoded at: the images' own when they all share it and it is no
        larger than the network's input (CIFAR-10 as files: 32x32), otherwise the network's input
        square (the network resizes to it anyway: nothing bigger travels). Read from the headers."""
        sizes = {shown_size(p) for p in dict.fromkeys(self.paths)}
        if len(sizes) == 1:
            (h, w), = sizes
            if h * w <= input_size * input_size:
                return [h, w, 3]
        return [input_size, input_size, 3]


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

    def decoded(self, decoding: Decoding) -> "Split":
        return Split(self.y, self.index, self.images.decoded(decoding))

    def batch(self, rows) -> np.ndarray:
        """The images at `rows` as one (n, H, W, 3) array: for the steps that need one size (stage three)."""
        found = self.select(rows).read()
        shapes = [img.shape for img in found]
        if isinstance(found, list) and len(set(shapes)) > 1:   # only files decoded each at its own size
            odd = next(i for i, shape in enumerate(shapes) if shape != shapes[0])
            raise UserError(f"image {self.images.select(rows).paths[odd]} is {shapes[odd][1]}x{shapes[odd][0]}, "
                            f"another {shapes[0][1]}x{shapes[0][0]}: the features file was made before every image "
                            "was decoded at one size; rerun `features` to make one that takes any size")
        return stack(found, "the images of one batch")

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
    layout: str = "train+test"     # how the splits are found: partition.py (SPLIT_RULES)
    val_rows: np.ndarray | None = None    # "train+val+test": the train part's rows that are the val folder
    notes: tuple[str, ...] = ()    # what was found and not used, one line each (stage one prints them)

    def decoded(self, decoding: Decoding) -> "Dataset":
        return replace(self, train=self.train.decoded(decoding), test=self.test.decoded(decoding))

    def shape_for(self, input_size: int) -> list[int]:
        """The (H, W, 3) every image of the source is decoded at (FileImages.shape_for)."""
        if isinstance(self.train.images, FileImages):
            return FileImages(np.concatenate([self.train.images.paths, self.test.images.paths])).shape_for(input_size)
        return self.train.images.shape_for(input_size)

    # The arrays of small sets, decoded on demand (tests, benchmarks).
    train_x = property(lambda self: self.train.x)
    train_y = property(lambda self: self.train.y)
    train_index = property(lambda self: self.train.index)
    test_x = property(lambda self: self.test.x)
    test_y = property(lambda self: self.test.y)
    test_index = property(lambda self: self.test.index)
