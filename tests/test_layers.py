"""The package's floors: imports only go down, two rooms on one floor never import each other, and no
module imports itself back through others. Every import counts, at module level or inside a function,
under TYPE_CHECKING or not (parsed with ast, nothing imported), and there is no list of exceptions."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# Lowest first. A module may import from its own subpackage and from any floor below its own.
FLOORS = [
    ("foundation",),            # under everything: layout, records, settings, outputs, errors
    ("store",),                 # the HDF5 row store
    ("search",),                # the cosine search index over a store's rows: heads (knn) and look use it
    ("sources", "backbones"),   # images in; networks (table, weights, composition, Keras files)
    ("extract",),               # stage one, and its check (verify)
    ("heads",),                 # stage two: kinds, training, evaluation, calibration, sweeps
    ("finetune", "ship"),       # stage three; shipping a run
    ("look",),                  # reports, mistakes, neighbours, audit, map, compare, site
    ("cli",),                   # the command line
    ("__main__",),              # `python -m pipeline`
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from pipeline.x import y`: the submodule y when there is one, else the module x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t == "pipeline" or t.startswith("pipeline.")}
    return found - {name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_or_sideways(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for source, targets in edges.items():
        for target in targets:
            a, b = room(source), room(target)
            if a is None or b is None:
                if b is None and source != "pipeline" and target == "pipeline":
                    continue     # `from pipeline import store` resolves to pipeline.store already
                if a is None and source != "pipeline":
                    wrong.append(f"{source} is outside every floor")
                continue
            if a == b:
                continue
            if a not in FLOOR or b not in FLOOR:
                wrong.append(f"{source} -> {target}: {a if a not in FLOOR else b} is on no floor; add it to FLOORS")
            elif FLOOR[b] >= FLOOR[a]:
                how = "up" if FLOOR[b] > FLOOR[a] else "sideways (one floor)"
                wrong.append(f"{source} -> {target} goes {how}")
    return sorted(set(wrong))


def loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_subpackage_is_on_a_floor():
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    rooms |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert rooms == set(FLOOR)


def test_imports_only_go_down():
    assert upward_or_sideways(graph()) == []


def test_no_module_imports_itself_back():
    assert loops(graph()) == []


def test_the_checks_catch_what_they_should():
    """The two checks on a made-up graph: an upward import, a sideways one, a loop."""
    edges = {"pipeline.heads.a": {"pipeline.look.b"}, "pipeline.finetune.c": {"pipeline.ship.d"},
             "pipeline.store.e": {"pipeline.store.f"}, "pipeline.store.f": {"pipeline.store.e"}}
    assert upward_or_sideways(edges) == ["pipeline.finetune.c -> pipeline.ship.d goes sideways (one floor)",
                                         "pipeline.heads.a -> pipeline.look.b goes up"]
    assert loops(edges) == [["pipeline.store.e", "pipeline.store.f"]]


def test_in_function_and_type_checking_imports_count(tmp_path):
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.look import x\n"
              "def f():\n    from pipeline.ship.y import z\n")
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports("pipeline.heads.m", path, {"pipeline.look.x"}) == {"pipeline.look.x", "pipeline.ship.y"}
