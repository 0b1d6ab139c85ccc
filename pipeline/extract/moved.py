"""Backbone and weights files recorded by absolute path in a features file, and a moved one's new
path recorded, so that later commands find the file without being told again."""
from __future__ import annotations

from pathlib import Path

from pipeline import store
from pipeline.backbones import table
from pipeline.foundation.errors import first_line, warn
from pipeline.foundation.outputs import Lock


def recorded_files(s) -> dict:
    """The absolute path of a backbone or weights file, beside its sha256 (in the settings), so that
    later commands rebuild the network without being told where it is again. Not a setting: the
    same file elsewhere gives the same numbers and the same file name."""
    if s.backbone not in table.BACKBONES:
        return {"backbone_file": str(Path(s.backbone).resolve())}
    if s.weights not in (None, "imagenet", "none"):
        return {"weights_file": str(Path(s.weights).resolve())}
    return {}


def record_moved_files(final: Path, s, log):
    """An up-to-date file whose backbone or weights file was given at another path than it records:
    the settings hold the file's sha256, so it is the same file, moved. Its new path is recorded
    (the attribute written in place on the complete file, under the file's lock, as nothing else
    writes a complete file), so that later commands find it without --backbone/--weights."""
    given = recorded_files(s)
    attrs = store.read_rows(final, splits=(), values=False).attrs
    moved = {key: path for key, path in given.items() if attrs.get(key) != path}
    if not moved:
        return
    import h5py
    try:
        with Lock(final, wait=True, log=log):
            with h5py.File(final, "r+") as f:
                for key, path in moved.items():
                    f.attrs[key] = path
    except OSError as exc:       # e.g. a read-only cache, or the file open in another process
        warn(f"could not record the new path in {final.name} ({first_line(exc)}); later commands ask for "
             f"it again ({', '.join(moved)} stays {', '.join(str(attrs.get(k)) for k in moved)})")
        return
    for key, path in moved.items():
        log(f"recorded {key}: {path} (was {attrs.get(key)}; the same file, by its sha256)")
