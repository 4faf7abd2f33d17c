"""The package layout's one direction of dependency, checked on the source.

Every import of every module under ``ftbc/`` and ``baselines/`` (module level and inside
functions; ``import x``, ``from x import y``, relative imports resolved) is an edge
between two modules. Each module belongs to one layer of :data:`LAYERS`; an edge may go
to a module of the same layer or of a lower rank, never up or sideways to another layer
of the same rank, and the module graph has no cycle. The same parse also holds every
module and every function to a size limit (:data:`MAX_MODULE_LINES`, :data:`MAX_FUNCTION_LINES`).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ftbc", "baselines")

# (rank, layer, modules): a module belongs to the layer whose entry names it or a package
# above it. Only lower ranks may be imported; layers of one rank do not import each other.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "base", ("ftbc", "ftbc.errors", "ftbc._io", "ftbc.energy", "ftbc.options")),
    (1, "data", ("ftbc.data",)),
    (1, "report", ("ftbc.report",)),  # reads result files: base modules only
    (2, "models", ("ftbc.models",)),
    (3, "snn", ("ftbc.snn",)),
    (4, "methods", ("baselines",)),
    (5, "train", ("ftbc.train",)),
    (5, "interop", ("ftbc.interop",)),
    (6, "bench", ("ftbc.bench",)),
    (7, "run", ("ftbc.run",)),
    (8, "cli", ("ftbc.cli", "ftbc.__main__")),
]

# Plugin registries: the package's __init__ defines the registry, then imports its method
# modules so that they register; they import the registry from the package. Edges from
# such a package's submodules to the package itself are the registration pattern, not a cycle.
REGISTRIES = ("baselines",)

MAX_MODULE_LINES = 400  # past this a module holds more than one job: split it by job
MAX_FUNCTION_LINES = 60  # about a screen: a longer function does several things, each worth a name


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``packages`` (a package is its __init__)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of ``modules``."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for each internal import of ``module``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                if node.level - 1 > len(parts):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top package")
                anchor = parts[:len(parts) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub where there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            hit = _known(target, modules)
            if hit is not None and hit != module:
                out.append((hit, node.lineno, id(node) in in_function))
    return out


def layer_of(module: str) -> tuple[int, str]:
    best = None
    for rank, layer, names in LAYERS:
        for name in names:
            exact_only = name in ("ftbc",)  # the root package is base; its subpackages are not
            if module == name or (not exact_only and module.startswith(name + ".")):
                if best is None or len(name) > best[0]:
                    best = (len(name), rank, layer)
    if best is None:
        raise KeyError(module)
    return best[1], best[2]


def check(root: Path, packages=PACKAGES) -> tuple[list[str], list[list[str]], list[str]]:
    """(upward or sideways imports, import cycles, modules without a layer) of the tree at ``root``."""
    modules = module_files(root, packages)
    unmapped, bad, graph = [], [], {}
    for module, path in modules.items():
        graph[module] = set()
        try:
            rank, layer = layer_of(module)
        except KeyError:
            unmapped.append(module)
            continue
        for target, line, in_fn in imports(module, path, modules):
            t_rank, t_layer = layer_of(target)
            if t_layer != layer and t_rank >= rank:
                where = "in a function" if in_fn else "at module level"
                bad.append(f"{path.relative_to(root)}:{line}: {module} ({layer}, {rank}) imports {target} "
                           f"({t_layer}, {t_rank}) {where}")
            registration = (target in REGISTRIES and module.startswith(target + "."))
            if not registration:
                graph[module].add(target)
    return bad, cycles(graph), unmapped


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _functions(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """``(qualified name, def node)`` of every function, method and nested function in ``body``."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + node.name
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node.body, name + ".")
        else:  # a def under if / try / with at any depth is still one of the module's functions
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                yield from _functions(getattr(node, field, []), prefix)


def oversized(root: Path, packages=PACKAGES) -> list[str]:
    """Modules over :data:`MAX_MODULE_LINES` and functions over :data:`MAX_FUNCTION_LINES` under ``root``.

    A function's length runs from its ``def`` line to its last line (``end_lineno - lineno + 1``):
    decorators are not counted, its docstring and nested functions are.
    """
    out = []
    for path in module_files(root, packages).values():
        text, rel = path.read_text(), path.relative_to(root)
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            out.append(f"{rel}: module of {lines} lines (limit {MAX_MODULE_LINES})")
        for name, node in _functions(ast.parse(text, filename=str(path)).body):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{rel}:{node.lineno}: {name} has {length} lines (limit {MAX_FUNCTION_LINES})")
    return out


def test_every_module_has_a_layer():
    _, _, unmapped = check(REPO)
    assert not unmapped, f"add these modules to LAYERS in {Path(__file__).name}: {unmapped}"


def test_imports_go_down_the_layers():
    bad, _, _ = check(REPO)
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    _, found, _ = check(REPO)
    assert not found, f"import cycles: {found}"


def test_modules_and_functions_stay_small():
    found = oversized(REPO)
    assert not found, "split these by job:\n" + "\n".join(found)


def test_the_graph_sees_the_known_edges():
    """The parser finds real edges of every kind (guards against a check that sees nothing)."""
    modules = module_files(REPO)
    edges = {(m, t) for m, p in modules.items() for t, _, _ in imports(m, p, modules)}
    assert ("ftbc.snn.conversion", "ftbc.snn.stages") in edges  # from x import y
    assert ("ftbc.run.evaluation", "baselines") in edges  # inside a function
    assert ("ftbc.models", "ftbc.models.vgg") in edges  # relative: from .vgg import ...
    assert ("ftbc.train.training", "ftbc.data.distributed") in edges  # from pkg import module as alias


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


BASE_TREE = {
    "ftbc/__init__.py": "",
    "ftbc/errors.py": "",
    "ftbc/snn/__init__.py": "",
    "ftbc/snn/neuron.py": "from ftbc.errors import *\n",
    "ftbc/data/__init__.py": "",
    "ftbc/data/a.py": "x = 1\n",
    "ftbc/run/__init__.py": "",
    "ftbc/run/grid.py": "from ftbc.snn import neuron\n",
    "ftbc/report/__init__.py": "",
    "ftbc/report/tables.py": "from ftbc.errors import UserError\n",
}


def test_a_clean_synthetic_tree_passes(tmp_path):
    assert check(_tree(tmp_path, BASE_TREE), ("ftbc",)) == ([], [], [])


@pytest.mark.parametrize("rel, text, culprit", [
    ("ftbc/snn/neuron.py", "def f():\n    from ftbc.run import grid\n", "ftbc.snn.neuron"),  # up, in a function
    ("ftbc/snn/neuron.py", "import ftbc.run.grid\n", "ftbc.snn.neuron"),  # up, import x.y
    ("ftbc/report/tables.py", "from ..snn.neuron import IFNeuron\n", "ftbc.report.tables"),  # relative, report -> core
    ("ftbc/data/a.py", "from ftbc.report import tables\n", "ftbc.data.a"),  # sideways, same rank
])
def test_an_upward_import_is_caught(tmp_path, rel, text, culprit):
    bad, _, _ = check(_tree(tmp_path, {**BASE_TREE, rel: text}), ("ftbc",))
    assert len(bad) == 1 and f" {culprit} (" in bad[0], bad


def test_a_cycle_is_caught(tmp_path):
    files = {**BASE_TREE, "ftbc/data/a.py": "from . import b\n",
             "ftbc/data/b.py": "def f():\n    from ftbc.data.a import x\n"}
    bad, found, _ = check(_tree(tmp_path, files), ("ftbc",))
    assert bad == [] and found == [["ftbc.data.a", "ftbc.data.b"]]


def test_an_unmapped_module_is_reported(tmp_path):
    _, _, unmapped = check(_tree(tmp_path, {**BASE_TREE, "ftbc/newlayer/__init__.py": ""}), ("ftbc",))
    assert unmapped == ["ftbc.newlayer"]


def _body(lines: int) -> str:
    """A function of exactly ``lines`` lines, def included."""
    return "def f():\n" + "    x = 0\n" * (lines - 1)


@pytest.mark.parametrize("text, flagged", [
    (_body(MAX_FUNCTION_LINES), []),
    (_body(MAX_FUNCTION_LINES + 1), [f"ftbc/data/a.py:1: f has {MAX_FUNCTION_LINES + 1} lines"]),
    ("@property\n@staticmethod\n" + _body(MAX_FUNCTION_LINES), []),  # decorators are not counted
    ("class C:\n" + textwrap.indent(_body(MAX_FUNCTION_LINES + 1), "    "),
     [f"ftbc/data/a.py:2: C.f has {MAX_FUNCTION_LINES + 1} lines"]),  # a method, by its qualified name
    ("if True:\n" + textwrap.indent(_body(MAX_FUNCTION_LINES + 1), "    "),
     [f"ftbc/data/a.py:2: f has {MAX_FUNCTION_LINES + 1} lines"]),  # a def under a statement
    ("x = 0\n" * MAX_MODULE_LINES, []),
    ("x = 0\n" * (MAX_MODULE_LINES + 1), [f"ftbc/data/a.py: module of {MAX_MODULE_LINES + 1} lines"]),
])
def test_an_oversized_module_or_function_is_caught(tmp_path, text, flagged):
    found = oversized(_tree(tmp_path, {**BASE_TREE, "ftbc/data/a.py": text}), ("ftbc",))
    assert [f.partition(" (limit")[0] for f in found] == flagged, found
