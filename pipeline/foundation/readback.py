"""An output reads back before it is "up to date": when a command finishes an output folder, its
record (run.json, export.json, compare.json, ...) is sealed with the folder's final name and the
size and sha256 of every file in it; when the output is found again, the seal is checked. A file
truncated, replaced or removed, or a record copied from another output, is then never "up to date":
pipeline.foundation.outputs.produce remakes the output, and a reader (runs.Run.read) names the file.
Records written before seals existed carry none and are taken as they are (old caches stay valid).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

SEAL = "sealed"           # the record's key: {"name": final folder name, "files": {path: {"bytes", "sha256"}}}


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path, record_name: str, leave_out) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != record_name
                  and p.name not in leave_out and not p.name.startswith("."))


def seal(folder, record_name: str, final_name: str, leave_out=()) -> dict:
    """The seal of `folder` (being written under a temporary name, to become `final_name`): every
    file in it but the record `record_name`, hidden files and `leave_out` (e.g. a resumable checkpoint)."""
    folder = Path(folder)
    return {"name": final_name, "files": {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size,
                                                                              "sha256": sha256_file(p)}
                                          for p in _files(folder, record_name, leave_out)}}


def sealed(record: dict, folder, record_name: str, final_name: str, leave_out=()) -> dict:
    """`record` with its folder's seal added (call when every other file is written, just before the record)."""
    return {**record, SEAL: seal(folder, record_name, final_name, leave_out)}


def broken(folder, record: dict, contents: bool = True) -> str | None:
    """What about `folder` differs from the seal in its `record`: None when it reads back (or the
    record has no seal). `contents=False` compares names and sizes only (cheap, for readers)."""
    found = record.get(SEAL) if isinstance(record, dict) else None
    if not isinstance(found, dict):
        return None
    folder = Path(folder)
    if found.get("name") != folder.name:
        return f"its record was written for {found.get('name')!r}, not {folder.name!r}"
    for name, expected in (found.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} is {size:,} bytes, written as {expected.get('bytes'):,}"
        if contents and sha256_file(path) != expected.get("sha256"):
            return f"{name} differs from what was written (sha256)"
    return None


def broken_record(folder, record_name: str, contents: bool = True) -> str | None:
    """`broken` for the record file `record_name` in `folder`, parsed here: an unreadable record is
    its reader's to report (it names the file), so it is not a difference in the seal."""
    try:
        record = json.loads(Path(folder, record_name).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return broken(folder, record, contents)
