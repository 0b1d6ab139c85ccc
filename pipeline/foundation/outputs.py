"""How every stage writes its outputs: one lock per output, atomic files and folders, and the removal
of what killed runs left behind.

- ``Lock(path)``: an exclusive lock on ``<path>.lock``. A second run on the same output is refused
  (or, with ``wait=True``, waits). The OS drops the lock when its process dies, so a killed run never
  leaves a stale lock. Taking it also removes the temporary files and folders of killed runs on the
  same output (``.<name>.tmp-<pid>``), with a message: nobody else can be writing them.
- ``atomic_file(path)`` / ``write_text_atomic`` / ``atomic_dir(path)``: write under a temporary name
  beside the final one, fsync, rename. A reader (or a run after a kill or a full disk) sees the old
  output or the whole new one, never a half-written one under the final name; a failed write
  removes its temporary name at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from pipeline.foundation import readback
from pipeline.foundation.errors import UserError, notice

TMP_TAG = ".tmp-"


def tmp_path(path: Path) -> Path:
    """``.<stem>.tmp-<pid><suffix>`` beside `path`: hidden, unique per process, recognisable as a
    leftover, and with the same suffix, so writers that pick a format by it (Keras, matplotlib) work."""
    path = Path(path)
    return path.with_name(f".{path.stem}{TMP_TAG}{os.getpid()}{path.suffix}")


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path):
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root, name))
        _fsync(Path(root))


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path to write; on success it is fsynced and renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)           # the rename itself survives a power cut
    finally:
        _remove(tmp)                  # after a failure (full disk, exception): no leftover


def write_text_atomic(path, text: str):
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text)


def write_json_atomic(path, data, **dump_kwargs):
    write_text_atomic(path, json.dumps(data, indent=2, **dump_kwargs))


@contextlib.contextmanager
def atomic_dir(path):
    """Yields an empty temporary folder to fill; on success everything in it is fsynced and the
    folder replaces `path` (an old one is moved aside first, then removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        old = path.with_name(f".{path.stem}{TMP_TAG}{os.getpid()}-old{path.suffix}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent)
        _remove(old)
    finally:
        _remove(tmp)


def remove_leftovers(path: Path, log=None) -> list[Path]:
    """Remove the temporary files and folders of killed runs on the output `path`: its siblings
    ``.<stem>.tmp-*`` and, when `path` is a folder, every ``.*.tmp-*`` inside it. Call this only
    while holding the output's lock."""
    path = Path(path)
    found = list(path.parent.glob(f".{path.stem}{TMP_TAG}*"))
    if path.is_dir():
        found += [p for p in path.glob(f".*{TMP_TAG}*")]
    for leftover in found:
        _remove(leftover)
        (log or notice)(f"removed {leftover}, left behind by an interrupted run")
    return found


class Lock:
    """Exclusive lock on the output `path` (a file or a folder), held in ``<path>.lock``.

    wait=False: a second run on the same output is refused with a UserError; wait=True: it
    blocks until the first finishes. On entry, leftovers of killed runs on `path` and on `also`
    (outputs written under the same lock, e.g. a run's report folder) are removed."""

    def __init__(self, path, wait: bool = False, also=(), log=None):
        self.target = Path(path)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.wait, self.also, self.log = wait, [Path(p) for p in also], log
        self._fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"another run is writing {self.target.name} right now; "
                                "wait for it to finish (the result will then be up to date)") from None
            # The holder before us may have removed the lock file after we opened it: then a third
            # run could lock a new file of that name at the same time. Only the file that is there counts.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)
        for target in (self.target, *self.also):
            remove_leftovers(target, self.log)
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(OSError):
            self.path.unlink()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def produce(final, done: Callable[[], bool], make: Callable[[], object], log=notice, *, wait: bool = False,
            also=(), shown=None, what: str = "", record: str | None = None) -> tuple[bool, object]:
    """The one "up to date" rule of every output. `final` is named by the hash of its settings and
    of every input's identity (pipeline.foundation.identity); it is up to date when `done()` says its
    last-written part exists and reads back (a run's run.json, a file's complete flag) and, for a
    folder whose `record` carries a seal (pipeline.foundation.readback), when every file in it is
    still the one written. Otherwise `make()` writes it under the output's lock, atomically, with the
    leftovers of killed runs removed first; a second writer is refused (or, with `wait`, waits and
    then finds it done). Returns (was up to date, what make returned); "<what> up to date: <shown or
    final>" is logged when it was (`what` names an output that is not the command's own, e.g.
    "activation cache"), and "remaking ...: <why>" when a finished output no longer reads back."""
    said = f"{what} up to date: {shown or final}".lstrip()

    def found() -> bool:
        if not done():
            return False
        why = record and readback.broken_record(final, record)
        if why:
            log(f"remaking {final}: {why}")
        return not why

    if found():
        log(said)
        return True, None
    with Lock(final, wait=wait, also=also, log=log):
        if done() and not (record and readback.broken_record(final, record)):   # finished while we waited
            log(said)
            return True, None
        return False, make()
