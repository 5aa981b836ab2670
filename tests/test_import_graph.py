"""Imports between the kit's packages go one way, and no module imports itself back.

The graph is read from the source with ``ast`` (every ``import``, also those inside functions, which
run later but still tie the modules together), so the test needs no imports of its own. Layers, from
the bottom (a module may import its own layer and the layers below it, never one above):

    errors, utils                      shared helpers and error types
    data                               datasets, class lists, the pseudo-domain order
    models, synth                      networks and their blocks; pseudo-domain generators (siblings)
    config                             run configs; reads model defaults, so it sits above models
    evaluation                         metrics and tables
    train                              the engine, run folders, checkpoints, the warm start
    analysis                           arrays and frames about features and models
    viz                                figures and widgets (draws only)
    workflows                          what a command, a notebook or the app runs: data, twins and runs,
                                       the protocol and its report, sweeps, the demo, the app
    cli                                the `drsf` verbs (the only argument parsing) and __main__

No module has a special case: a `cli.py` below `cli/` would simply be an upward import. A new upward
import or a new cycle fails here; the few known ones are listed below with their reason.

Kit imports sit at the top of each file. An import inside a function is kept only where it defers a
heavy optional dependency or breaks a genuine cycle, with a comment saying so; the count of
function-level imports of kit modules is capped (``MAX_FUNCTION_LEVEL_KIT_IMPORTS``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "drsf_kit"
LAYERS = (
    ("errors", "utils"),
    ("data",),
    ("models", "synth"),
    ("config",),
    ("evaluation",),
    ("train",),
    ("analysis",),
    ("viz",),
    ("workflows",),
    ("cli", "__main__"),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
TOP = len(LAYERS) - 1

# Known exceptions, each with its reason; remove an entry when its cause is fixed (the test says so).
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}
ALLOWED_CYCLES: dict[frozenset, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """``module -> kit modules it imports`` (a ``from pkg import name`` that names a sub-module counts as it)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # the closest kit module the name belongs to (``drsf_kit.data.classes.X`` -> data.classes)
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # a module's own ancestors are always imported first anyway: they add no direction
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    if module == "drsf_kit":
        return RANK["data"]  # the root package re-exports the class lists of data.classes
    return RANK[parts[1]]


def test_every_package_has_a_layer():
    for module in _modules():
        if module != "drsf_kit":
            assert module.split(".")[1] in RANK, f"{module}: add its package to LAYERS in this test"


def test_no_upward_imports():
    upward = sorted((a, b) for a, targets in import_graph().items() for b in targets if layer(b) > layer(a))
    new = [f"{a} -> {b}" for a, b in upward if (a, b) not in ALLOWED_UPWARD]
    assert not new, "imports that point up the layers (see this file's docstring):\n" + "\n".join(new)
    fixed = [f"{a} -> {b}" for (a, b) in ALLOWED_UPWARD if (a, b) not in upward]
    assert not fixed, "fixed, remove from ALLOWED_UPWARD: " + ", ".join(fixed)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one member (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules():
    cycles = [frozenset(c) for c in strongly_connected(import_graph())]
    new = [sorted(c) for c in cycles if c not in ALLOWED_CYCLES]
    assert not new, "modules that import each other (directly or around a loop):\n" + "\n".join(map(str, new))
    fixed = [sorted(c) for c in ALLOWED_CYCLES if c not in cycles]
    assert not fixed, "fixed, remove from ALLOWED_CYCLES: " + ", ".join(map(str, fixed))


def test_no_cycles_between_packages():
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in import_graph().items():
        for b in targets:
            pa, pb = (m.split(".")[1] if "." in m else m for m in (a, b))
            if pa != pb:
                packages[pa].add(pb)
    assert not strongly_connected(packages), f"packages that import each other: {strongly_connected(packages)}"


def test_the_checker_sees_function_level_and_upward_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function, pointing up, is found."""
    fake = tmp_path / "drsf_kit"
    for rel, text in {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "def f():\n    from drsf_kit.viz.b import g\n",
        "viz/__init__.py": "",
        "viz/b.py": "from drsf_kit.data import a\n\ndef g():\n    pass\n",
    }.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    graph = import_graph()
    assert graph["drsf_kit.data.a"] == {"drsf_kit.viz.b"}
    assert graph["drsf_kit.viz.b"] == {"drsf_kit.data", "drsf_kit.data.a"}  # the package runs first
    assert layer("drsf_kit.viz.b") > layer("drsf_kit.data.a")
    assert [sorted(c) for c in strongly_connected(graph)] == [["drsf_kit.data.a", "drsf_kit.viz.b"]]


# Function-level imports of the kit's own modules, at most: each defers a heavy optional dependency or
# breaks a cycle and says so in a comment next to it (see the module docstring).
MAX_FUNCTION_LEVEL_KIT_IMPORTS = 20


def function_level_kit_imports() -> list[str]:
    """``module:line`` of every import of a kit module inside a function (or method) body."""
    found = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        seen: set[int] = set()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if id(node) in seen:
                    continue  # a nested function's import is counted once
                kit = (isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == "drsf_kit")) \
                    or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "drsf_kit" for a in node.names))
                if kit:
                    seen.add(id(node))
                    found.append(f"{name}:{node.lineno}")
    return sorted(found)


def test_kit_imports_sit_at_the_top_of_their_files():
    found = function_level_kit_imports()
    assert len(found) <= MAX_FUNCTION_LEVEL_KIT_IMPORTS, (
        f"{len(found)} function-level imports of kit modules (at most {MAX_FUNCTION_LEVEL_KIT_IMPORTS}); "
        "move them to the top of their files:\n" + "\n".join(found))


def test_the_counter_sees_function_level_kit_imports(tmp_path, monkeypatch):
    fake = tmp_path / "drsf_kit"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text(
        "import json\nfrom drsf_kit.errors import E\n\n"
        "def f():\n    import numpy\n    from drsf_kit.utils import io\n\n    def g():\n        from . import b\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    assert function_level_kit_imports() == ["drsf_kit.data.a:6", "drsf_kit.data.a:9"]
