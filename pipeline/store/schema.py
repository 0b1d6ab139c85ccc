"""The row store's names and shape: schema version, splits, chunk size, the settings -> hash -> file
name rule, and the words errors use for each kind of file (`Words`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.foundation import identity, layout


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


FEATURES_FILE = Words()
# stage three's cached cut activations (pipeline.finetune.activations), kept in the same row store
ACTIVATION_CACHE = Words(what="activation cache", make="`python -m pipeline finetune --mode cached` builds it",
                         fix="delete it; the next `finetune` run rebuilds it")


def words_for(attrs: dict) -> Words:
    """How to name a file of this store from its attributes: only activation caches record rows_per_image."""
    return ACTIVATION_CACHE if "rows_per_image" in attrs else FEATURES_FILE


def features_path(cache_dir, settings: dict) -> Path:
    """cache/features/<dataset>-<backbone>-<size>-<precision>-<hash>.h5: readable, and unique."""
    stem = Path(settings["backbone"]).stem if settings["backbone"].endswith(".keras") else settings["backbone"]
    name = identity.name(settings, identity.slug(settings["dataset"]), identity.slug(stem), settings["input_size"],
                         settings["precision"], *(["2views"] if settings.get("views", 1) == 2 else []))
    return Path(cache_dir) / layout.FEATURES_DIR / f"{name}.h5"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")
