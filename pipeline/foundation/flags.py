"""Flag parsers shared by every stage, so each flag means and checks the same thing everywhere.

Each parser raises argparse.ArgumentTypeError, which the CLI turns into one `error:` line and exit
code 2. Precisions are listed here once; pipeline.backbones.precision resolves "auto".
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.foundation.settings import SEED, Checked, Choice, setting

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PRECISION_HELP = "auto: float16 on a GPU, bfloat16 on a CPU with AMX/AVX512-BF16, else float32"


def _int(text) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def non_negative_int(text) -> int:
    """Epochs, patience: 0 allowed, negative not."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


# Every seed flag and setting takes this range: NumPy's generators, scikit-learn's random_state and
# Keras all accept 0..2**32-1 (larger ones fail deep inside them, with a traceback).
SEED_MAX = 2**32 - 1
SEED_RANGE = f"a whole number in [0, {SEED_MAX}]"


def seed(text) -> int:
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected {SEED_RANGE}, got {value}")
    return value


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


# The settings several commands declare (pipeline.foundation.settings), declared here once.

def cache_dir_setting(what="outputs"):
    return setting("cache", Checked(cache_dir, "a folder that exists or can be made", "DIR"), f"where {what} go",
                   record=False)


def precision_setting():
    return setting("auto", Choice(PRECISIONS), PRECISION_HELP)


def seed_setting(help_text):
    return setting(0, SEED, help_text)


def moved_backbone_setting():
    return setting(None, None, "the .keras backbone file the features were made with, if it moved since "
                   "(default: where the features file recorded it)", metavar="PATH", record=False)


def moved_weights_setting():
    return setting(None, None, "the weights file the features were made with, if it moved since "
                   "(default: where the features file recorded it)", metavar="PATH", record=False)


def moved_data_setting():
    return setting(None, None, "the image source, if it moved since the features file was made", metavar="PATH",
                   record=False)


def add_cache_dir(p, what="outputs"):
    p.add_argument("--cache-dir", type=cache_dir, default="cache", metavar="DIR",
                   help=f"where {what} go (default: cache)")


def add_moved_backbone(p):
    """--backbone/--weights of the commands that rebuild a features file's network: only needed when
    the file the features file recorded (absolute path and sha256) moved."""
    p.add_argument("--backbone", metavar="PATH", help="the .keras backbone file the features were made with, "
                   "if it moved since (default: where the features file recorded it)")
    p.add_argument("--weights", metavar="PATH", help="the weights file the features were made with, if it moved "
                   "since (default: where the features file recorded it)")


def add_seed(p, help_text, default=0):
    p.add_argument("--seed", type=seed, default=default, metavar="N", help=help_text)
