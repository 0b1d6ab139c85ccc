"""Every command's --help is written for users: it names no module, class, function or constant of
the code (no `pipeline.`, no dotted module path, no class such as a settings dataclass), and it is
not the module's docstring, which is written for developers (issue 25)."""
from __future__ import annotations

import argparse
import ast
import importlib
import re
from pathlib import Path

import pytest

from pipeline.cli import STAGE_MODULES, build_parser

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
# file names a user sees (outputs, inputs) are not code names
FILE = re.compile(r"[\w*<>.-]*\.(json|keras|h5|html|csv|png|npz|tflite|joblib|jpg|pbtxt|tsv|txt|gz|tgz|tar|md)\b")
DOTTED = re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b")
CAMEL = re.compile(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+")


def code_names() -> set[str]:
    """Names defined by the package that could leak into prose: CamelCase classes, functions and
    modules with an underscore in their name, UPPER_CASE constants."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        if "_" in path.stem.strip("_"):
            names.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and CAMEL.fullmatch(node.name):
                names.add(node.name)
            elif isinstance(node, ast.FunctionDef) and "_" in node.name.strip("_"):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper() and "_" in t.id}
    return names


def leaks(text: str, names: set[str]) -> list[str]:
    text = FILE.sub(" ", text)
    found = {m for m in DOTTED.findall(text) if not m.startswith(("e.g", "i.e"))}
    found |= set(re.findall(r"[A-Za-z_]\w*", text)) & names
    return sorted(found | ({"pipeline."} if "pipeline." in text else set()))


def helps() -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser.format_help(), **{name: p.format_help() for name, p in sub.choices.items()}}


@pytest.mark.parametrize("command", ["", *(name for name, _, _ in STAGE_MODULES)])
def test_help_names_no_code(command):
    assert leaks(helps()[command], code_names()) == []


@pytest.mark.parametrize("name,module", [(name, module) for name, module, _ in STAGE_MODULES])
def test_help_is_not_the_docstring(name, module):
    doc = importlib.import_module(module).__doc__.split("\n\n")[0].strip()
    assert doc not in helps()[name]


def test_the_check_catches_code_names():
    names = {"default_unfreeze", "HeadKind", "TOLERANCE_PX"}
    text = ("see table.default_unfreeze (pipeline.finetune.activations); HEADS is one HeadKind row each; "
            "writes report.json and projector_config.pbtxt, e.g. 0.5; within TOLERANCE_PX")
    assert leaks(text, names) == ["HeadKind", "TOLERANCE_PX", "default_unfreeze", "pipeline.",
                                  "pipeline.finetune.activations", "table.default_unfreeze"]
