"""docs/reference.md from the command line's own parsers: every command, its flags, their defaults
and help, so the reference says exactly what `python -m pipeline COMMAND --help` says.

    python tools/make_reference.py            # (re)write docs/reference.md (`make docs`)
    python tools/make_reference.py --check    # exit 1 if docs/reference.md is stale

tests/test_docs.py regenerates it and fails on any difference, so a new or changed flag cannot
leave the reference behind.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["COLUMNS"] = "120"        # argparse wraps usage lines to the terminal: fix it, so output is stable

from pipeline.cli import STAGE_MODULES, build_parser  # noqa: E402
from pipeline.foundation.outputs import write_text_atomic  # noqa: E402

REFERENCE = ROOT / "docs" / "reference.md"
HEADER = """# Command reference

Every command of `python -m pipeline COMMAND`, with every flag, its default and its help, generated from the
parsers themselves by `make docs` (`tools/make_reference.py`); `tests/test_docs.py` fails when this file differs
from what they say. `-` as a default: none (the help says what happens then). Each command also prints this with
`--help`. A flag mistake is one `error: ...` line on stderr and exit code 2.
"""


def _cell(text) -> str:
    """Text safe inside a markdown table cell (a `|` would end the cell)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    name = ", ".join(action.option_strings) or (action.metavar or action.dest)
    if action.nargs == 0:                                    # a switch: no value
        return f"`{name}`"
    choices = "{" + ",".join(map(str, action.choices or ())) + "}"
    value = action.metavar or (choices if action.choices else action.dest.upper())
    if action.nargs in ("+", "*"):
        value = f"{value} ..."
    return f"`{name}`" if not action.option_strings else f"`{name} {value}`"


def _default(action: argparse.Action) -> str:
    declared = getattr(action, "declared_default", None)   # pipeline.foundation.settings: parsed later
    if declared is not None:
        return f"`{declared}`"
    if action.nargs == 0:
        return "off" if not action.default else "on"
    if action.default is None or action.default is argparse.SUPPRESS:
        return "-"
    return f"`{action.default}`"


def _help(action: argparse.Action) -> str:
    """The help without the default a declared setting appends (the table has its own column)."""
    text = action.help or ""
    declared = getattr(action, "declared_default", None)
    return text.removesuffix(f" (default: {declared})") if declared is not None else text


def _choices(action: argparse.Action) -> str:
    if action.choices and action.metavar:                   # the metavar hid them: say them
        return f" One of: {', '.join(map(str, action.choices))}."
    return ""


def render() -> str:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    summaries = {name: text for name, _, text in STAGE_MODULES}
    out = [HEADER]
    out.append("| command | what it does |\n|---|---|")
    out += [f"| [`{name}`](#{name}) | {_cell(summaries[name])} |" for name in commands]
    for name, sub in commands.items():
        out.append(f"\n## {name}\n\n{summaries[name]}.\n\n```\n{sub.format_usage().strip()}\n```\n")
        actions = [a for a in sub._actions if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]
        if not actions:
            out.append("No flags.")
            continue
        out.append("| flag | default | help |\n|---|---|---|")
        out += [f"| {_cell(_flag(a))} | {_cell(_default(a))} | {_cell(_help(a))}{_cell(_choices(a))} |"
                for a in actions]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="exit 1 if the file is stale, write nothing")
    check = args.parse_args(argv).check
    text = render()
    if check:
        stale = not REFERENCE.is_file() or REFERENCE.read_text() != text
        print(f"{REFERENCE.relative_to(ROOT)} is {'stale: run `make docs`' if stale else 'up to date'}")
        return 1 if stale else 0
    write_text_atomic(REFERENCE, text)
    print(REFERENCE.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
