"""The package's shape: no import cycles between mmdeploy's modules, counting every import that can run (function-local
ones included), and no module too long to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmdeploy"
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement that can run: module level, in functions, classes, try and if blocks; not the body of an
    ``if TYPE_CHECKING:`` (it never runs; its ``else`` does)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The mmdeploy modules ``name`` (at ``path``) imports. ``from pkg import sub`` imports the submodule ``pkg.sub``;
    ``from pkg import attr`` and ``import pkg`` import the package's ``__init__`` (the module ``pkg``). Parent packages,
    which Python also runs, are not counted: each package's ``__init__`` re-exporting its own modules would otherwise be
    a cycle by construction."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
            continue
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest closed path through the component's first module, to name in a failure message."""
    members, start = set(component), component[0]
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & members):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append(path + [nxt])
    return component


def test_the_cycle_finder_finds_function_local_and_relative_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert _one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    pkg = tmp_path / "p.py"
    pkg.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mmdeploy.x\n"
                   "def f():\n    from mmdeploy.y import z, attr\n    from . import w\n")
    modules = {"mmdeploy.q.p": pkg, "mmdeploy.x": pkg, "mmdeploy.y": pkg, "mmdeploy.y.z": pkg, "mmdeploy.q.w": pkg}
    assert _imports("mmdeploy.q.p", pkg, modules) == {"mmdeploy.y", "mmdeploy.y.z", "mmdeploy.q.w"}


def test_no_import_cycles_between_mmdeploy_modules_counting_every_import():
    graph = import_graph()
    found = cycles(graph)
    message = "\n".join(f"{len(c)} modules: {', '.join(c)}\n  e.g. {' -> '.join(_one_cycle(graph, c))}" for c in found)
    print(message)
    assert found == [], f"import cycles:\n{message}"


RUNNERS = ("mmdeploy.engines.onnxruntime", "mmdeploy.engines.openvino", "mmdeploy.engines.tensorrt", "mmdeploy.engines.torch_engine")


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` may import, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_runners_are_handed_their_settings_and_the_bundle_loads_no_engine():
    """Polygraphy's split: the loader (engines/loader.py) reads the bundle and the tuned settings, runners only run."""
    graph = import_graph()
    above = ("mmdeploy.bundle", "mmdeploy.export", "mmdeploy.latency.tune", "mmdeploy.latency.bench", "mmdeploy.latency.settings",
             "mmdeploy.engines.loader", "mmdeploy.pipeline", "mmdeploy.api")
    reached = {r: sorted(m for m in _reach(graph, r) if m.startswith(above)) for r in RUNNERS}
    assert reached == {r: [] for r in RUNNERS}
    assert not _reach(graph, "mmdeploy.bundle") & {"mmdeploy.engines.loader", *RUNNERS}


def _long_modules() -> dict[str, int]:
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    return {p: n for p, n in sorted(lengths.items()) if n > MAX_LINES}


def test_no_module_is_longer_than_350_lines():
    assert _long_modules() == {}
