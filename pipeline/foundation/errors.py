"""The one exception type that means "the user asked for something we cannot do", and the one
mapping of storage failures (a full disk, a read-only or unwritable cache) onto it."""
from __future__ import annotations

import errno
import re
import sys


class UserError(Exception):
    """A mistake in the user's input. The CLI prints it as one line and exits with code 2."""


def notice(message: str):
    """A line for the user on stderr that is neither a result nor a warning ("features: ...", "removed ...")."""
    print(message, file=sys.stderr)


def warn(message: str):
    """A `warning: ...` line on stderr: something left out that does not stop the command."""
    print(message if message.startswith("warning: ") else f"warning: {message}", file=sys.stderr)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): library errors
    can run to many lines, and a UserError is one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# errno -> what the user is told. h5py reports a failed write as ValueError/RuntimeError/OSError
# with only "errno = 28" in its text, so the text is searched as well as the exception's errno.
_STORAGE = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "a folder is in the way",
}


def storage_errno(exc: BaseException) -> int | None:
    """The storage errno behind `exc` (or any exception it was raised from), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None)
        if code in _STORAGE:
            return code
        found = re.search(r"errno = (\d+)", str(exc))
        if found and int(found.group(1)) in _STORAGE:
            return int(found.group(1))
        for code, text in ((errno.ENOSPC, "No space left on device"), (errno.EDQUOT, "Disk quota exceeded"),
                           (errno.EROFS, "Read-only file system")):
            if text in str(exc):
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def storage_message(exc: BaseException, rerun_hint: str = "rerun the same command", kept: bool = True) -> str | None:
    """The one `error:` line for a storage failure, or None when `exc` is not one. `kept`: the
    command resumes from what it finished (not so predict, which writes one file at the end)."""
    code = storage_errno(exc)
    if code is None:
        return None
    name = getattr(exc, "filename", None)
    if name is None:
        found = re.search(r"filename = '([^']*)'", str(exc))
        name = found.group(1) if found else "the cache"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{_STORAGE[code]} while writing {name}; free space and {rerun_hint}" + \
            (" (finished work is kept)" if kept else "")
    return f"cannot write {name}: {_STORAGE[code]}"


# Every download error (Keras's ImageNet weights, CIFAR-10) names these: the ways to run with no internet.
OFFLINE_WAYS = ("offline, run from local files: --backbone FILE.keras (a saved backbone, e.g. "
                "efficientnet_lite0_imagenet.keras), --data FOLDER (your images, or CIFAR-10's batches), "
                "--weights PATH|none (a named backbone's weights file, or random weights)")
