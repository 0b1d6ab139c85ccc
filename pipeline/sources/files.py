"""Image files named on a command line: folders searched, globs expanded (links never followed), each
file decoded upright as 8-bit RGB and resized to the size a model takes (sources/decode.py)."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from pipeline.foundation.errors import UserError
from pipeline.sources.decode import IMAGE_SUFFIXES, read_image, upright


def expand(patterns: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for image files, glob patterns expanded; in
    order, each real file once (two names of one file, through a link, count once). A path that
    exists is taken as it is, even with glob characters in its name; linked folders are not
    followed, by folders or by `**`, so a link cannot loop or lead out of the folder. A named file
    that does not exist stays in the list (it is skipped with its reason); a folder or pattern that
    finds no image is a UserError."""
    found: dict[Path, Path] = {}
    for text in patterns:
        path = Path(text)
        if path.is_dir():
            matches = _images_in(path)
        elif path.exists() or path.is_symlink() or not glob.has_magic(text):
            matches = [path]
        else:       # a folder matched (`dir/**` matches folders only) is searched as a folder argument
            matches = sorted(q for p in _glob(path) if not p.is_symlink() or p.is_file()
                             for q in (_images_in(p) if p.is_dir() else [p] if p.is_file() else []))
        if not matches:
            raise UserError(f"{text} matches no image files")
        for p in matches:
            found.setdefault(_real(p), p)
    return list(found.values())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _real(path: Path) -> Path:
    """The file a path names, links followed; a link that loops is its own (it is skipped when read)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):          # "Symlink loop" (RuntimeError before Python 3.13, OSError after)
        return path.absolute()


def _glob(pattern: Path) -> list[Path]:
    """The pattern's matches that pass through no linked folder below its first magic part, as a
    folder argument's: pathlib's `**` does not follow links (the glob module's does, into loops),
    and a `*` that matched a linked folder is dropped here."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first]) if first else Path(".")
    found = []
    for match in base.glob(str(Path(*parts[first:]))):
        folders = match.relative_to(base).parts[:-1]
        if not any(base.joinpath(*folders[:i + 1]).is_symlink() for i in range(len(folders))):
            found.append(match)
    return found


def _not_a_file(path: Path) -> str:
    """Why `path` is not a file to read (never opened: a FIFO would block the read)."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except (RuntimeError, OSError):
            return "is a link that loops or leads nowhere"
    if not os.path.lexists(path):
        return "does not exist"
    if path.is_dir():
        return "is a folder"
    return "is not a regular file (a pipe, socket or device)"


def to_size(img, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as uint8 RGB (H, W, 3) at `size` (None: its own), resized as predict resizes every image."""
    return np.asarray(upright(img, exif=False, size=size), dtype=np.uint8)


def load_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (H, W, 3), upright as its EXIF orientation says, at `size` (None: its own); a UserError
    with the reason when the file cannot be read."""
    if not path.is_file():
        raise UserError(f"image {path} {_not_a_file(path)}")
    return read_image(path, size)
