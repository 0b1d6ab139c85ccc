"""The row store's names and shape: schema version, splits, chunk size, the settings -> hash -> file
name rule, and the words errors use for each kind of file (`Words`)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.foundation import records


SCHEMA_VERSION = 2


SPLITS = ("train", "val", "test")


CHUNK_ROWS = 128


MIRRORED = "features_mirrored"     # the second view's dataset (views = 2)


CHECK_ROWS = 4096       # rows per read when checking values without loading a whole split


@dataclass(frozen=True)
class Words:
    """How the caller names a file of this store in errors."""
    what: str = "features file"
    make: str = "run `make features` first"
    fix: str = "delete it and rerun `python -m pipeline features` with the flags that made it"


FEATURES = Words()


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", str(text)).strip("-.").lower() or "x"


def features_path(cache_dir, settings: dict) -> Path:
    """cache/features/<dataset>-<backbone>-<size>-<precision>-<hash>.h5: readable, and unique."""
    stem = Path(settings["backbone"]).stem if settings["backbone"].endswith(".keras") else settings["backbone"]
    name = "-".join([_slug(settings["dataset"]), _slug(stem), str(settings["input_size"]),
                     settings["precision"], *(["2views"] if settings.get("views", 1) == 2 else []),
                     settings_hash(settings)])
    return Path(cache_dir) / records.FEATURES / f"{name}.h5"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")
