"""The records in the cache (pipeline.foundation.layout names them): the one validating reader of every
JSON record (a run's run.json, report.json, export.json, cached answers).

Every record kind declares the shape a command relies on (required keys, their types, finite
numbers, a positive temperature). A record damaged in any way (missing, truncated, not UTF-8, not
JSON, the wrong type anywhere, a missing key, NaN or infinity) is one UserError naming the file and
what to do, so no command ever crashes or prints nonsense on one. Records store absolute paths
(layout.resolve finds older relative ones). A finished run as an object: pipeline.foundation.runs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.foundation.errors import UserError, first_line

# ---------------------------------------------------------------- declared shapes

NUMBER = "a finite number"
POSITIVE_NUMBER = "a finite number > 0"
COUNT = "an integer >= 0"
INTERVAL = "a list [low, high] of two finite numbers, low <= high"


@dataclass(frozen=True)
class Of:
    """A shape built on another one, `inner`."""
    inner: object


class Each(Of):
    """A list whose every item has the shape `inner`."""


class Values(Of):
    """A JSON object with any keys whose every value has the shape `inner`."""


class Maybe(Of):
    """null, or the shape `inner`."""


class Either(Of):
    """One of several shapes, `inner` (a tuple): the first that fits."""


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "a JSON object", list: "a list"}


def _check(value, shape, where: str):
    """Raise ValueError("<where> must be <what>, got <value>") where `value` does not fit `shape`.
    A dict shape lists the keys a reader needs ("key?" when it may be absent); others are allowed."""
    def wrong(what):
        shown = json.dumps(value)[:40] if not isinstance(value, float) else repr(value)
        raise ValueError(f"{where or 'the record'} must be {what}, got {shown}")
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            wrong("a JSON object")
        for key, inner in shape.items():
            name = key.rstrip("?")
            if name in value:
                _check(value[name], inner, f"{where}.{name}" if where else name)
            elif not key.endswith("?"):
                raise ValueError(f"{where or 'the record'} has no {name!r}")
    elif isinstance(shape, Each):
        if not isinstance(value, list):
            wrong("a list")
        for i, item in enumerate(value):
            _check(item, shape.inner, f"{where}[{i}]")
    elif isinstance(shape, Values):
        if not isinstance(value, dict):
            wrong("a JSON object")
        for key, item in value.items():
            _check(item, shape.inner, f"{where}.{key}" if where else key)
    elif isinstance(shape, Maybe):
        if value is not None:
            _check(value, shape.inner, where)
    elif isinstance(shape, Either):
        for i, option in enumerate(shape.inner):
            try:
                return _check(value, option, where)
            except ValueError:
                if i == len(shape.inner) - 1:
                    raise
    elif shape in (NUMBER, POSITIVE_NUMBER):
        if not _finite(value) or (shape == POSITIVE_NUMBER and value <= 0):
            wrong(shape)
    elif shape == COUNT:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            wrong(shape)
    elif shape == INTERVAL:
        if not (isinstance(value, list) and len(value) == 2 and all(map(_finite, value)) and value[0] <= value[1]):
            wrong(shape)
    elif isinstance(shape, str):            # an exact value
        if value != shape:
            wrong(json.dumps(shape))
    elif isinstance(value, bool) is not (shape is bool) or not isinstance(value, shape):
        wrong(_TYPE_NAMES.get(shape, shape.__name__))


def _finite(value) -> bool:
    # bool is an int in Python, not a number in a record; NaN and infinity parse from JSON
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Kind:
    """One kind of record: its shape, and what to do about a damaged one ({folder}: the record's)."""
    what: str
    shape: object
    fix: str
    check: Callable[[object], str | None] = lambda data: None   # a rule across keys: None or what is wrong


# pipeline.foundation.readback's seal: the folder's final name and each file's size and sha256
_SEAL = {"name": str, "files": Values({"bytes": COUNT, "sha256": str})}
_FEATURES_REF = {"path": str, "settings_hash": str, "class_names?": Each(str)}
_METRICS = {"val_accuracy": NUMBER, "test_accuracy?": NUMBER, "wall_seconds?": NUMBER,
            "val_accuracy_interval?": Maybe(INTERVAL), "test_accuracy_interval?": Maybe(INTERVAL)}
_ACCURACY = {"accuracy": NUMBER, "low": NUMBER, "high": NUMBER, "n": COUNT}
# two runs on the same images, per split (pipeline.foundation.stats.paired): what `compare` stores and prints
PAIRED = Values({"a": _ACCURACY, "b": _ACCURACY, "difference": NUMBER, "difference_low": NUMBER,
                 "difference_high": NUMBER, "mcnemar_p": NUMBER, "only_a": COUNT, "only_b": COUNT, "method": str})
# one side's accuracies ({"val_accuracy": 0.8, "val_accuracy_interval": [0.78, 0.82], ...}); the head's its path
_SIDE = {**{f"{split}_accuracy{end}": shape for split in ("val", "test")
            for end, shape in (("?", NUMBER), ("_interval?", INTERVAL))}, "path?": str, "reported?": dict}
# a fine-tune against its starting head (pipeline.finetune.comparison)
_COMPARISON = {"paired?": PAIRED, "head?": _SIDE, "finetuned?": _SIDE, "delta?": _SIDE}
_CALIBRATION = {"temperature?": POSITIVE_NUMBER}

# a head run names its kind ("head": "dense"); a fine-tune run is "stage": "finetune" and names its head's file
RUN = Kind("run record", {"settings": dict, "features": _FEATURES_REF, "metrics": _METRICS,
                         "head?": Either((str, {"path": str})),
                         "stage?": "finetune", "class_names?": Each(str), "calibration?": _CALIBRATION,
                         "wall_seconds?": NUMBER, "backbone?": {"name?": str}, "comparison?": _COMPARISON,
                         "as_is_view?": _SIDE, "sealed?": _SEAL},
           "delete the run's folder {folder} and rerun the command that made it",
           lambda run: None if isinstance(run.get("head"), str) or "stage" in run else "it names no head kind")


def _report_classes(report: dict) -> str | None:
    """Every split names every class, and its confusion matrix is classes x classes."""
    n = len(report["class_names"])
    for split, m in report["splits"].items():
        missing = [c for c in report["class_names"] if c not in m["per_class"]]
        if missing:
            return f"splits.{split}.per_class has no {missing[0]!r}"
        if "confusion" in m and (len(m["confusion"]) != n or any(len(row) != n for row in m["confusion"])):
            return f"splits.{split}.confusion is not {n} x {n}, one row and column per class"
    return None


REPORT = Kind("report", {
    "class_names": Each(str), "wall_seconds": NUMBER,
    "splits": Values({"accuracy": NUMBER, "accuracy_interval?": INTERVAL, "confusion?": Each(Each(COUNT)),
                      "per_class": Values({"precision": NUMBER, "recall": NUMBER, "f1": NUMBER,
                                           "support?": COUNT, "recall_interval?": INTERVAL})}),
    "most_confused?": Values(Each({"true": str, "predicted": str, "count": COUNT})),
    "mistakes?": {"note?": str}, "comparison?": _COMPARISON, "data_fingerprint?": Maybe(str),
    "features?": {"path?": str},
}, "delete the run's folder and its report {folder}, and rerun the command that made it", _report_classes)

EXPORT = Kind("export record", {"run": str, "format": str, "model_sha256": str, "temperature": POSITIVE_NUMBER,
                                "file": str, "class_names": Each(str), "sealed?": _SEAL},
              "delete the folder {folder} and rerun `python -m pipeline export`")

_NEIGHBOR = {"rank": int, "similarity": NUMBER, "split": str, "row": int, "class": str, "source_index": int,
             "path?": Maybe(str)}
NEIGHBORS = Kind("cached neighbours answer", {
    "features": str, "search": Each(str),
    "queries": Each(Either(({"image": str, "neighbors": Each(_NEIGHBOR)},
                            {"split": str, "row": int, "class": str, "source_index": int,
                             "neighbors": Each(_NEIGHBOR)}))),
}, "delete it and rerun the same command")

AUDIT_ANSWER = Kind("cached audit", {
    "threshold": NUMBER, "exact_check": bool, "test_duplicate_source_index": Each(int),
    "summary": Values({"rows": int, "with_duplicate": int, "share": NUMBER, "exact_copies": int, "pairs": int,
                       "label_disagrees": int, "searched": Each(str), "with_duplicate_at?": Values(int)}),
}, "delete the folder {folder} and rerun the same command")

_RUN_NAMED = {"name": str, "report": str}
COMPARE_ANSWER = Kind("cached comparison", {
    "a": _RUN_NAMED, "b": _RUN_NAMED, "splits": PAIRED, "gallery": {"split": str, "file?": str, "note?": str},
    "sealed?": _SEAL,
}, "delete the folder {folder} and rerun the same command",
    lambda c: None if c["gallery"]["split"] in c["splits"] else f"splits has no {c['gallery']['split']!r}")

LEADERBOARD = Kind("sweep leaderboard", Each({"run": str, "recommended?": bool}), "delete it and rerun the sweep")


# ---------------------------------------------------------------- reading

def damaged(path, kind: Kind, why: str) -> UserError:
    path = Path(path)
    return UserError(f"{path} is damaged ({why}); {kind.fix.format(folder=path.parent)}")


def read_text(path, kind: Kind) -> str:
    """A record's text; missing, unreadable or not UTF-8 -> one UserError."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} ({kind.what}) does not exist; {kind.fix.format(folder=path.parent)}") from None
    except UnicodeDecodeError:
        raise damaged(path, kind, "not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {first_line(exc)}") from None


def read(path, kind: Kind):
    """The record at `path`, checked against its kind's shape; any damage -> one UserError."""
    try:
        data = json.loads(read_text(path, kind))
    except (ValueError, RecursionError) as exc:       # RecursionError: nested thousands deep
        raise damaged(path, kind, f"not valid JSON: {first_line(exc)}") from None
    try:
        _check(data, kind.shape, "")
    except (ValueError, RecursionError) as exc:
        raise damaged(path, kind, str(exc)) from None
    problem = kind.check(data)
    if problem:
        raise damaged(path, kind, problem)
    return data


def read_labels(path) -> list[str]:
    """An export's labels.txt: one class name a line."""
    return read_text(path, Kind("class names file", None, "delete its folder {folder} and rerun the export")) \
        .splitlines()
