"""The shape of the package: no import cycles, no module over 400 lines.

The import graph is read from the source with :mod:`ast`, not by importing anything.
It counts every import a module can run: at the top, inside functions and methods,
and ``importlib.import_module("advkit....")`` with a literal name. Imports under
``if TYPE_CHECKING:`` never run and are left out. Relative imports are resolved; an
import of a package is an import of its ``__init__``; ``from advkit.x import y`` where
``advkit.x.y`` is a module is an import of that module. Importing ``advkit.x.y`` also
runs ``advkit.x``'s ``__init__``, but that implicit edge is left out: counting it would
make every package that imports its own submodules a cycle.

Two ways of loading modules by name are not import edges, and each has its own test:
the registry imports its plugins (the modules that call ``register``, which import the
registry) from :data:`advkit.registry.PLUGIN_MODULES`, and ``advkit/__init__.py`` loads
its public names lazily from a table. The tests check that the plugin list is complete
and that no module imports anything but ``__version__`` from the root package, so the
root cannot sit in a cycle.

Run ``python tests/test_layout.py`` to print the cycles and the long modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "advkit"
MAX_LINES = 400

# Temporary: files under audit/ and cli* that are being re-cut; this list must be empty.
# A cycle is allowed only while one of its modules is listed here.
ALLOWED_IN_CYCLES: frozenset[str] = frozenset()
# Temporary: long files under audit/ and cli* being re-cut; this list must be empty.
ALLOWED_LONG: frozenset[str] = frozenset()


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package's name -> its ``__init__``)."""
    out: dict[str, Path] = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _nodes(other)
            continue
        yield child
        yield from _nodes(child)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of the package's modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (read from ``path``) imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, modules)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if sub in modules else _known(source, modules)
                if target:
                    found.add(target)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            target = _known(node.args[0].value, modules)
            if target:
                found.add(target)
    found.discard(name)
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = module_files(src)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One closed import path through a component, for the failure message."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def _relative(module: str) -> str:
    path = module_files()[module]
    return str(path.relative_to(SRC)).replace("\\", "/")


def long_modules(src: Path = SRC) -> dict[str, int]:
    """Files of the package over :data:`MAX_LINES` lines -> their line count."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            out[str(path.relative_to(src)).replace("\\", "/")] = lines
    return out


def _allowed_file(rel: str) -> bool:
    return rel.startswith(("advkit/audit/", "advkit/cli"))


def test_allow_lists_only_name_audit_and_cli_files_that_still_need_them() -> None:
    assert all(_allowed_file(rel) for rel in ALLOWED_IN_CYCLES | ALLOWED_LONG)
    assert ALLOWED_LONG <= set(long_modules()), "a listed file is short now: take it off ALLOWED_LONG"
    graph = import_graph()
    in_cycles = {_relative(m) for c in cycles(graph) for m in c}
    assert ALLOWED_IN_CYCLES <= in_cycles, "a listed file is in no cycle now: take it off ALLOWED_IN_CYCLES"


def test_no_import_cycles() -> None:
    graph = import_graph()
    bad = [c for c in cycles(graph) if not any(_relative(m) in ALLOWED_IN_CYCLES for m in c)]
    assert not bad, "import cycles:\n" + "\n".join(" -> ".join(cycle_path(graph, c)) for c in bad)


def test_no_module_over_400_lines() -> None:
    bad = {rel: n for rel, n in long_modules().items() if rel not in ALLOWED_LONG}
    assert not bad, f"modules over {MAX_LINES} lines: {bad}"


def _from_imports(root: Path) -> Iterator[tuple[Path, int, str, str]]:
    """Every ``from advkit... import name`` under ``root``: (file, line, module, name)."""
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == PACKAGE:
                for alias in node.names:
                    yield path, node.lineno, node.module or "", alias.name


def test_model_specs_resolve_above_io_and_zoo() -> None:
    graph = import_graph()
    assert not graph["advkit.models.io"] & {"advkit.models.zoo", "advkit.models.resolve"}
    assert "advkit.models.resolve" not in graph["advkit.models.zoo"]


def test_plugin_list_names_every_module_that_registers() -> None:
    from advkit.registry import PLUGIN_MODULES

    modules = module_files()
    registering = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _nodes(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "register" for d in node.decorator_list
            ):
                registering.add(name)
    assert registering == set(PLUGIN_MODULES)


def test_nothing_imports_from_the_root_package_but_its_version() -> None:
    bad = [
        f"{path.relative_to(SRC)}:{line}: {name}"
        for path, line, module, name in _from_imports(SRC / PACKAGE)
        if module == PACKAGE and name != "__version__" and f"{PACKAGE}.{name}" not in module_files()
    ]
    assert not bad, "import these from their own modules, not from the lazy root package:\n" + "\n".join(bad)


def test_every_from_import_of_advkit_resolves() -> None:
    import importlib

    root = SRC.parent
    bad = []
    for folder in ("src", "tests", "benchmarks"):
        for path, line, module, name in _from_imports(root / folder):
            try:
                found = importlib.import_module(module)
                if not hasattr(found, name):
                    importlib.import_module(f"{module}.{name}")
            except ImportError as exc:
                bad.append(f"{path.relative_to(root)}:{line}: from {module} import {name} ({exc})")
    assert not bad, "\n".join(bad)


def test_graph_reader_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from advkit.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from advkit import c\nimport importlib\n"
        "def g():\n    return importlib.import_module('advkit.a')\n"
    )
    (pkg / "c.py").write_text("from . import a\nfrom .sub import thing\n")
    graph = import_graph(tmp_path)
    assert graph["advkit.a"] == {"advkit.sub.b"}
    assert graph["advkit.sub"] == {"advkit.sub.b"}
    assert graph["advkit.sub.b"] == {"advkit.a"}
    assert graph["advkit.c"] == {"advkit.a", "advkit.sub"}
    assert cycles(graph) == [["advkit.a", "advkit.sub.b"]]


if __name__ == "__main__":
    g = import_graph()
    for component in cycles(g):
        print("cycle:", " -> ".join(cycle_path(g, component)), f"({len(component)} modules: {', '.join(component)})")
    for rel, n in long_modules().items():
        print(f"long: {rel} {n}")
