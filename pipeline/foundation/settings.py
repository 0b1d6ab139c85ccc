"""Settings declared once: each command's settings are one dataclass whose fields carry their valid
values and help, and everything else comes from it: the argparse flags (`add_flags`), the
validation with one message template (`check`, used by the CLI and by library callers alike), and
the record (`record`, what run.json stores and the run's hash covers). The shape is Hugging Face's
HfArgumentParser over dataclasses; the constraints are scikit-learn's _parameter_constraints
(Interval, Choice), with its one message: "--lr must be positive (a finite number > 0), got 'inf'".

    @dataclass
    class FitSettings:
        lr: float = setting(1e-3, Interval(float, 0, closed="neither"), "peak learning rate")
        epochs: int | None = setting(None, Interval(int, 0), "most epochs", auto="about 2,000 steps")

A default of None with `auto` means "decided by the command" and the flag takes the word auto.
A rule across settings is declared with them, in the class's RULES, and checked by `check` too:

        RULES = (OnlyWith(("address", "workers"), lambda s: s.engine == "ray", "--engine ray"),)
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.foundation.errors import UserError

SEED_MAX = 2**32 - 1   # NumPy's generators, scikit-learn's random_state and Keras all take 0..2**32-1


@dataclass(frozen=True)
class Interval:
    """A number of `kind` between `low` and `high` (None: unbounded); floats must also be finite."""
    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "left"       # which ends belong: "left", "right", "both" or "neither"

    def parse(self, text):
        if isinstance(text, bool) or (self.kind is int and isinstance(text, float) and not text.is_integer()):
            raise ValueError(text)
        value = self.kind(text) or self.kind(0)      # -0 is 0: one setting, one identity
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        if (not math.isfinite(value)
                or (self.low is not None and not (value >= self.low if left else value > self.low))
                or (self.high is not None and not (value <= self.high if right else value < self.high))):
            raise ValueError(text)
        return value

    def __str__(self):
        what = "a whole number" if self.kind is int else "a finite number"
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        low, high = (f"{x:g}" if isinstance(x, float) else str(x) for x in (self.low, self.high))
        if self.low is not None and self.high is not None:
            span = f"in {'[' if left else '('}{low}, {high}{']' if right else ')'}"
            return f"{what} {span}" if self.kind is int else span
        if self.low == 0 and not left:
            return f"positive ({what} > 0)"
        return what if self.low is None else f"{what} {'>=' if left else '>'} {low}"

    @property
    def metavar(self):
        return "N" if self.kind is int else "X"


@dataclass(frozen=True)
class Choice:
    options: tuple

    def parse(self, text):
        if text not in self.options:
            raise ValueError(text)
        return text

    def __str__(self):
        return f"one of {', '.join(map(str, self.options))}"

    @property
    def metavar(self):
        return None    # argparse shows {a,b,c}


@dataclass(frozen=True)
class Checked:
    """Any other check: `parse` returns the value or raises argparse.ArgumentTypeError saying why
    (e.g. a cache folder that is a file); `what` names the values it takes."""
    parse_text: Callable[[str], Any]
    what: str
    metavar: str = "PATH"

    def parse(self, text):
        return self.parse_text(text)

    def __str__(self):
        return self.what


SEED = Interval(int, 0, SEED_MAX, closed="both")
POSITIVE = Interval(float, 0, closed="neither")      # a rate, a regularization strength


def setting(default, valid=None, help: str = "", *, auto: str | None = None, flag: str | None = None,
            metavar: str | None = None, record: bool = True, nargs: str | None = None):
    """A declared field: `valid` (Interval, Choice, Checked; None: any text, or a switch for a bool
    default), `help` (the flag's help, its default appended), `auto` (what None means, for a field
    whose flag takes the word auto), `flag` (instead of --field-name), `record` (False: not part of
    the run's identity, e.g. where outputs go or how it is resumed), `nargs` ("+": a list of values)."""
    return dataclasses.field(default=default, metadata={
        "valid": valid, "help": help, "auto": auto, "flag": flag, "metavar": metavar, "record": record,
        "nargs": nargs})


def declared(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "valid" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


def _default_text(field) -> str:
    if field.metadata["auto"]:
        return f"auto, {field.metadata['auto']}"
    return "none" if field.default is None else f"{field.default:g}" if isinstance(field.default, float) \
        else str(field.default)


def add_flags(parser, cls, skip=(), given_only: bool = False):
    """One flag per declared field of `cls`, in declaration order. The values stay text here and
    are parsed and checked by `from_args`, so a flag and a library call share one message. The
    declared default is the flag's default (parsed by `from_args` like any value), so --help, the
    reference and `args.cache_dir` of a flag left out all say it. With `given_only`, a flag left
    out is None instead, for groups whose flags apply only to some choice (the head kinds)."""
    for f in declared(cls):
        if f.name in skip:
            continue
        valid, meta = f.metadata["valid"], f.metadata
        if isinstance(f.default, bool):
            parser.add_argument(flag_name(f), dest=f.name, action="store_true", help=meta["help"])
            continue
        shown = f" (default: {_default_text(f)})" if f.default is not None or meta["auto"] else ""
        action = parser.add_argument(flag_name(f), dest=f.name, default=None if given_only else f.default,
                                     nargs=meta["nargs"],
                                     choices=valid.options if isinstance(valid, Choice) else None,
                                     metavar=meta["metavar"] or (valid.metavar if valid is not None else "TEXT"),
                                     help=meta["help"] + shown)
        action.declared_default = _default_text(f) if shown else None   # for docs/reference.md


def parse_value(field: dataclasses.Field, value, name: str | None = None):
    """`value` (text from a flag, or a value from a caller) parsed and checked against the field's
    declaration; None keeps the default. The one message template for every setting."""
    valid, name = field.metadata["valid"], name or flag_name(field)
    if value == "auto" and field.metadata["auto"]:
        return None
    if value is None:         # a library caller's None: the declared default, as a flag left out
        if field.metadata["auto"] or field.default is None:
            return None
        value = field.default
    if isinstance(value, str) and not value.strip():     # never "the default" in disguise
        raise UserError(f"{name} is empty; leave the flag out for its default")
    if valid is None:
        return value
    try:
        return valid.parse(value)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{name}: {exc}") from None
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {valid}, got {value!r}") from None


@dataclass(frozen=True)
class OnlyWith:
    """A rule across settings: `fields` apply only when `when(settings)` holds (`what` says when, in
    flags), so one given otherwise (not its default) is refused, not ignored, with the one message
    "--workers applies to --engine ray only"."""
    fields: tuple
    when: Callable[[Any], bool]
    what: str

    def check(self, settings):
        if self.when(settings):
            return
        fields = {f.name: f for f in dataclasses.fields(settings)}
        given = [flag_name(fields[name]) for name in self.fields if getattr(settings, name) != fields[name].default]
        if given:
            names = given[0] if len(given) == 1 else ", ".join(given[:-1]) + " and " + given[-1]
            raise UserError(f"{names} {'applies' if len(given) == 1 else 'apply'} to {self.what} only")


def check(settings):
    """A settings instance with every declared field parsed and checked, then the rules across them
    its class declares in RULES (a UserError otherwise)."""
    checked = dataclasses.replace(settings, **{f.name: parse_value(f, getattr(settings, f.name))
                                               for f in declared(type(settings))})
    for rule in getattr(type(settings), "RULES", ()):
        rule.check(checked)
    return checked


def from_args(cls, args):
    """The command's settings from parsed flags: given flags parsed and checked, the rest their
    defaults."""
    given = {f.name: getattr(args, f.name) for f in declared(cls)
             if getattr(args, f.name, None) is not None and getattr(args, f.name) is not False}
    return check(cls(**given))


def record(settings, **resolved) -> dict:
    """What run.json stores for `settings` and its hash covers: the recorded fields, with
    `resolved` values (an auto setting's number, a default found on disk) in place of theirs."""
    return {**{f.name: getattr(settings, f.name) for f in declared(type(settings)) if f.metadata["record"]},
            **resolved}
