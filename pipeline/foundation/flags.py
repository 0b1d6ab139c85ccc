"""The settings several commands share, declared once (pipeline.foundation.settings), so each flag
means and checks the same thing everywhere, and the checks of paths they need.

A path check raises argparse.ArgumentTypeError saying why; the settings layer turns it into one
`error: --flag: why` line and exit code 2. Precisions are listed here once;
pipeline.backbones.precision resolves "auto".
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.foundation.settings import SEED, Checked, Choice, setting

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PRECISION_HELP = "auto: float16 on a GPU, bfloat16 on a CPU with AMX/AVX512-BF16, else float32"


def _nearest_folder(path: Path) -> Path:
    """The first of `path` and its parents that exists; a file there is refused (nothing can be
    made under it)."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise argparse.ArgumentTypeError(f"{p} is a file, not a folder")
            return p
    return Path(".")


def cache_dir(text) -> str:
    """A folder that exists or can be made: a file under that name is refused up front."""
    _nearest_folder(Path(text))
    return str(text)


def existing_path(text) -> str:
    """A file or folder that exists (a moved source or model file, checked even when unused)."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return str(text)


def out_file(text) -> str:
    """A file to write at the end (predict --out), checked before any work: not a folder, its
    folder exists or can be made, and can be written to."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; name a file in it, e.g. {path / 'predictions.csv'}")
    folder = _nearest_folder(path.parent)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {folder}: permission denied or a read-only file system")
    return str(text)


EXISTING = Checked(existing_path, "a file or folder that exists", "PATH")


# The settings several commands declare (pipeline.foundation.settings), declared here once.

def cache_dir_setting(what="outputs"):
    return setting("cache", Checked(cache_dir, "a folder that exists or can be made", "DIR"), f"where {what} go",
                   record=False)


def precision_setting():
    return setting("auto", Choice(PRECISIONS), PRECISION_HELP)


def seed_setting(help_text):
    return setting(0, SEED, help_text)


# --backbone outside `features` keeps its name: it still names the backbone, only where its file is
# now; the file must be the one the features were made with (its sha256 is checked), so it never
# chooses another network (docs/features.md says so).
def moved_backbone_setting():
    return setting(None, EXISTING, "the .keras backbone file the features were made with, if it moved since "
                   "(default: where the features file recorded it)", metavar="PATH", record=False)


def moved_weights_setting():
    return setting(None, EXISTING, "the weights file the features were made with, if it moved since "
                   "(default: where the features file recorded it)", metavar="PATH", record=False)


def features_setting():
    return setting(None, None, "stage-one HDF5 file (default: the newest complete file in CACHE/features, whatever "
                   "its settings)", metavar="FILE", record=False)


def engine_setting(local: str, ray: str):
    """Where the work runs: provenance, never part of an output's identity."""
    return setting("local", Choice(("local", "ray")), f"local: {local}; ray: {ray}", record=False)


def address_setting(what: str):
    return setting(None, None, f"ray: the cluster to join (default: start a local instance for this {what})",
                   metavar="auto|ray://HOST:PORT", record=False)


def moved_data_setting():
    return setting(None, EXISTING, "the image source, if it moved since the features file was made", metavar="PATH",
                   record=False)
