"""Image files named on a command line: folders searched, globs expanded (links never followed), each
file decoded upright as 8-bit RGB and resized to the size a model takes (sources/decode.py)."""
from __future__ import annotations

import glob
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
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists() or not glob.has_magic(text):
            matches = [path]
        else:
            matches = sorted(p for p in _glob(path) if p.is_file())
        if not matches:
            raise UserError(f"{text} matches no image files")
        for p in matches:
            found.setdefault(p.resolve(), p)
    return list(found.values())


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


def to_size(img, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as uint8 RGB (H, W, 3) at `size` (None: its own), resized as predict resizes every image."""
    return np.asarray(upright(img, exif=False, size=size), dtype=np.uint8)


def load_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (H, W, 3), upright as its EXIF orientation says, at `size` (None: its own); a UserError
    with the reason when the file cannot be read."""
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    return read_image(path, size)
