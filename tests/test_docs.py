"""The documentation's claims, checked: the reference is what the parsers say, every default a help
text states is the flag's default, the README stays a short front door whose links and Make targets
exist, and every test the guarantees table names exists. Reads files and builds the parsers only (~1 s)."""
import argparse
import importlib.util
import re

import pytest

from conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _tool(name):
    """A tools/ script as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_is_what_the_parsers_say():
    assert (DOCS / "reference.md").read_text() == _tool("make_reference").render(), \
        "docs/reference.md is stale: run `make docs`"


def _flags():
    from pipeline.cli import build_parser
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [(name, action) for name, sub in commands.items() for action in sub._actions]


def _same(stated: str, value) -> bool:
    try:
        return float(stated) == float(value)
    except (TypeError, ValueError):
        return stated == str(value)


def test_every_default_a_help_states_is_the_flags_default():
    checked = 0
    for command, action in _flags():
        stated = re.search(r"default: ([^;),]+)", action.help or "")
        # a declared setting's flag (foundation.settings) has no argparse default: its declaration's
        # ("auto, what auto means" for an auto setting)
        declared = getattr(action, "declared_default", None)
        default = action.default if action.default is not None else declared and declared.split(", ")[0]
        if stated and default is not None and action.nargs != 0:
            assert _same(stated.group(1).strip(), default), (command, action.option_strings, default)
            checked += 1
    assert checked >= 20


def test_the_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    long = [i + 1 for i, line in enumerate(lines) if len(line) > 120]
    assert not long, f"README.md lines over 120 characters: {long}"


def _anchors(path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_every_link_points_to_a_file_and_heading_that_exist(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.name} links to {target}: no such heading"


def test_every_make_target_the_readme_names_exists():
    named = set(re.findall(r"(?:^|`)make ([a-z][\w-]*)", README.read_text(), flags=re.M))
    rules = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    assert named and not named - rules, f"targets the README names but the Makefile lacks: {named - rules}"


def test_every_test_the_guarantees_table_names_exists():
    """A bare name is in tests/test_faults.py, as the table's introduction says; `file.py::name` elsewhere."""
    named = re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)`", (DOCS / "guarantees.md").read_text())
    assert len(named) >= 20
    missing = [f"{file or 'test_faults.py'}::{name}" for file, name in named
               if not re.search(rf"^def {name}\(", (ROOT / "tests" / (file or "test_faults.py")).read_text(), re.M)]
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"


@pytest.mark.parametrize("page", ["docs/schema.md", "cache/README.md"])
def test_the_cache_layout_in_the_docs_is_the_layout_modules(page):
    text = (ROOT / page).read_text()
    assert _tool("make_layout").updated(text) == text, f"{page}'s cache layout is stale: run `make docs`"


def _layout_names() -> set[str]:
    from pipeline.foundation import layout
    return {value for name, value in vars(layout).items() if name.isupper() and isinstance(value, str)}


def test_every_cache_file_name_the_docs_mention_is_one_of_the_layouts():
    """A file name in code formatting with an extension the layout's files have (`run.json`, `confusion.png`)
    is one the layout module spells, so renaming a file there fails here until the docs follow. Patterns
    (`<run>.html`, `*.json`) and paths outside the cache (`cache/bench/...`, `docs/...`) are not names."""
    names = _layout_names()
    extensions = {name.rsplit(".", 1)[1] for name in names if "." in name}
    unknown, checked = [], 0
    for page in [ROOT / "cache" / "README.md", *sorted(DOCS.glob("*.md"))]:
        for code in re.findall(r"`([^`\n]+)`", page.read_text()):
            for token in re.split(r"[\s,()|]+", re.sub(r"<[^>]*>", "<>", code)):
                base = token.rstrip("/").rsplit("/", 1)[-1]
                stem, _, extension = base.rpartition(".")
                # a pattern, a bare suffix, a placeholder (FILE.keras), a benchmark's or the repository's file
                if not stem or re.search(r"[<*{$=]", base) or stem.isupper() or "bench/" in token \
                        or token.startswith(("docs/", "tests/", "tools/", "benchmarks/")):
                    continue
                if extension in extensions:
                    checked += 1
                    if base not in names:
                        unknown.append(f"{page.name}: {token}")
    assert not unknown, f"file names the layout (pipeline/foundation/layout.py) does not have: {unknown}"
    assert checked >= 50, checked
