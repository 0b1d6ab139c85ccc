"""Folders of images, in three layouts (`layout`): a folder of class folders <class>/* with no split
(split by partition.py's hash rule), train/<class>/* and test/<class>/*, and the same with a val/ or
validation/ folder beside them that is the val split. The class order is the sorted folder names
(for CIFAR-10, its label order); files are listed, not decoded. What the listing does not use (files
that are no images, loose files, nested or extra folders) is named in `Dataset.notes`, never
silently skipped; only hidden names (.DS_Store, .git) are."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.sources.decode import IMAGE_SUFFIXES
from pipeline.sources.images import Dataset, FORMATS_HELP, FileImages, Split
from pipeline.sources.partition import balanced_subset, subset

SPLIT_FOLDERS = ("train", "test", "val", "validation")
CLASS_FOLDERS, TRAIN_TEST, TRAIN_VAL_TEST = "class folders", "train+test", "train+val+test"


def _visible(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


def class_folders(root: Path) -> list[str]:
    return [d.name for d in _visible(root) if d.is_dir()]


def layout(root: Path) -> str | None:
    """Which layout a folder has (None: no folder of images at all)."""
    folders = set(class_folders(root))
    if not folders:
        return None
    if not folders & set(SPLIT_FOLDERS):
        return CLASS_FOLDERS
    return TRAIN_VAL_TEST if folders & {"val", "validation"} else TRAIN_TEST


def _val_folder(root: Path) -> str:
    found = [name for name in ("val", "validation") if (root / name).is_dir()]
    if len(found) > 1:
        raise UserError(f"{root} has both val/ and validation/; keep the one that is the validation split")
    return found[0]


def folder_files(root: Path, classes: list[str], unused: list | None = None) -> tuple[list[Path], np.ndarray]:
    """Every image file of one split folder in source order (class by class, sorted names) and
    its label: a row's `index` is its position in this list. Anything else found is added to `unused`."""
    files, labels = [], []
    for label, name in enumerate(classes):
        entries = _visible(root / name)
        is_image = [p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in entries]
        found = [p for p, image in zip(entries, is_image) if image]
        if unused is not None:      # one pass: testing `p not in found` was quadratic in a class's files
            unused += [p for p, image in zip(entries, is_image) if not image]
        if not found:
            raise UserError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.uint8)


def _parts(root: Path, kind: str) -> dict[str, list[Path]]:
    """The folders that hold each source part's files, in order: a val folder's files follow the
    train folder's in the "train" part (val rows point into it, as a carved val does)."""
    if kind == CLASS_FOLDERS:
        return {"train": [root], "test": [root]}
    train = [root / "train"] + ([root / _val_folder(root)] if kind == TRAIN_VAL_TEST else [])
    return {"train": train, "test": [root / "test"]}


def classes_of(root: Path, kind: str) -> list[str]:
    """The class folders, the same in every split folder (or a UserError saying which differ)."""
    if kind == CLASS_FOLDERS:
        classes = class_folders(root)
    else:
        for name in ("train", "test"):
            if not (root / name).is_dir():
                raise UserError(f"{root} has {', '.join(f'{d}/' for d in SPLIT_FOLDERS if (root / d).is_dir())} "
                                f"but no {name}/ folder; {FORMATS_HELP}")
        classes = class_folders(root / "train")
        for folder in sum(_parts(root, kind).values(), [])[1:]:
            other = class_folders(folder)
            if other != classes:
                raise UserError(f"class folders of {root}/train and {folder} differ (only in train: "
                                f"{sorted(set(classes) - set(other)) or 'none'}; only in {folder.name}: "
                                f"{sorted(set(other) - set(classes)) or 'none'})")
    if len(classes) < 2:
        raise UserError(f"{root} has {len(classes)} class folder{'s' if len(classes) != 1 else ''}; "
                        f"a dataset needs at least 2; {FORMATS_HELP}")
    if len(classes) > 256:
        raise UserError(f"{root} has {len(classes)} classes; labels are stored as uint8 (at most 256)")
    return classes


def part_files(root: Path, part: str, unused: list | None = None) -> tuple[list[Path], np.ndarray, list[int]]:
    """The files of a source part ("train" or "test") in row order, their labels, and how many
    come from each of the part's folders."""
    kind = layout(root)
    classes = classes_of(root, kind)
    files, labels, counts = [], [], []
    for folder in _parts(root, kind)[part]:
        f, y = folder_files(folder, classes, unused)
        files, labels, counts = files + f, labels + [y], counts + [len(f)]
    return files, np.concatenate(labels), counts


def _unused_note(root: Path, kind: str, inside: list[Path]) -> tuple[str, ...]:
    """One line naming what the listing leaves out."""
    used = {folder for folders in _parts(root, kind).values() for folder in folders}
    top = [p for p in _visible(root) if (not p.is_dir() if kind == CLASS_FOLDERS else p not in used)]
    loose = [p for folder in used if folder != root for p in _visible(folder) if not p.is_dir()]
    left = sorted(set(top + loose + inside))
    if not left:
        return ()
    names = ", ".join(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in left[:5])
    more = f" and {len(left) - 5} more" if len(left) > 5 else ""
    return (f"not used: {len(left)} {'entry' if len(left) == 1 else 'entries'} of {root} that are not images in a class folder: {names}{more}",)


def load_image_folders(path: Path, limit) -> Dataset:
    kind = layout(path)
    unused: list[Path] = []
    classes = classes_of(path, kind)
    k = len(classes)
    train_files, train_y, counts = part_files(path, "train", unused)
    test_files, test_y, _ = part_files(path, "test", unused if kind != CLASS_FOLDERS else None)
    train_images = FileImages(np.asarray([str(f) for f in train_files]))
    val_rows = None
    if kind == TRAIN_VAL_TEST:       # --limit applies to the train and the val folder each
        n_train = counts[0]
        keep = np.concatenate([balanced_subset(train_y[:n_train], k, limit),
                               n_train + balanced_subset(train_y[n_train:], k, limit)])
        train = Split(train_y[keep], keep.astype(np.int64), train_images.select(keep))
        val_rows = np.flatnonzero(keep >= n_train)
    else:
        train = subset(train_images, train_y, k, limit)
    test = subset(FileImages(np.asarray([str(f) for f in test_files])), test_y, k, limit)
    return Dataset(path.resolve().name, str(path), tuple(classes), train, test, layout=kind, val_rows=val_rows,
                   notes=_unused_note(path, kind, unused))
