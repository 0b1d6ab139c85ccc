"""An image-folder tree train/<class>/* and test/<class>/*: the class order is the sorted folder names
(for CIFAR-10, its label order); files are listed, not decoded."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.sources.decode import IMAGE_SUFFIXES
from pipeline.sources.images import Dataset, FORMATS_HELP, FileImages, Split
from pipeline.sources.partition import subset


def class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def folder_files(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
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


def _list_split_folder(root: Path, classes: list[str], limit) -> Split:
    """File names and labels only: nothing is decoded here."""
    files, labels = folder_files(root, classes)
    return subset(FileImages(np.asarray([str(f) for f in files])), labels, len(classes), limit)


def load_image_folders(path: Path, limit) -> Dataset:
    train_classes, test_classes = class_folders(path / "train"), class_folders(path / "test")
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
