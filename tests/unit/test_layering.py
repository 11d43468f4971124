"""The package's import layering, read from the source with `ast` (nothing is imported).

Rules (docs/architecture.md, design.md house rule 1):
(a) no import cycles between modules of wanmoe/;
(b) the policy-free model code (`wanmoe.models`, `wanmoe.text`, `wanmoe.vae`) imports nothing from
    `wanmoe.runtime`, `wanmoe.loading`, `wanmoe.parallel`, `wanmoe.pipeline`, `wanmoe.cli`;
(c) `wanmoe.runtime` imports nothing from `wanmoe.loading`, `wanmoe.pipeline`, `wanmoe.cli`.

Every import counts: module level and inside functions, `import a.b`, `from a import b`, relative
imports. Only imports under `if TYPE_CHECKING:` are skipped (they never run).

How an import is resolved: `from wanmoe.x import y` targets the submodule `wanmoe.x.y` when there
is one, else the module `wanmoe.x` (a name defined or re-exported there).
How package `__init__` modules count:
* for the layering rules (b, c) an import targets the module it names. A package `__init__` is a
  module like any other, so a re-export (`runtime/__init__.py` importing from `loading`) is
  caught where it is written, and importing a name from a package counts as importing the
  package's `__init__`.
* for cycles (a) an import also depends on each package `__init__` on the target's path that is
  not already an ancestor of the importer, because Python runs those first: `wanmoe.loading.detect`
  importing `wanmoe.loading.keymaps.dit` runs `wanmoe/loading/keymaps/__init__.py`, so a keymaps
  `__init__` that imports `detect` back is a real cycle even though `keymaps.dit` does not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "wanmoe"

MODEL_CODE = ("wanmoe.models", "wanmoe.text", "wanmoe.vae")
RULES: dict[tuple[str, ...], tuple[str, ...]] = {
    MODEL_CODE: ("wanmoe.runtime", "wanmoe.loading", "wanmoe.parallel", "wanmoe.pipeline", "wanmoe.cli"),
    ("wanmoe.runtime",): ("wanmoe.loading", "wanmoe.pipeline", "wanmoe.cli"),
}

# Inside wanmoe.loading, bottom to top: a module imports only modules before it in this list
# (a `keymaps.*` submodule counts as `keymaps`; see wanmoe/loading/__init__.py).
LOADING_ORDER = ("safetensors_header", "gguf_walk", "pth_guard", "json_files", "sources", "gguf", "containers", "renames", "detect", "fp8_scaled", "on_read", "stream", "keymaps",
                 "opener", "checkpoint", "components", "inspect")

# Allowed for now, each with its reason; delete an entry when its import is gone (the test then
# insists it stays gone: a listed edge that no longer exists fails too, so the list cannot go stale).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()  # none: models.dit -> runtime.attention is gone


# ---- the checker ----------------------------------------------------------------------------

def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root/package (`__init__` = the package)."""
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                continue
            stack.append(child)


def _known(name: str, modules: Mapping) -> str | None:
    """`name` or its longest prefix that is a module of the package (None: outside it)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, source: str, modules: Mapping, is_package: bool) -> set[str]:
    """Modules of the package that `module` imports (resolved as the module docstring says)."""
    found: set[str] = set()
    here = module if is_package else module.rpartition(".")[0]  # package of relative imports
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [_known(a.name, modules) for a in node.names]
        else:
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [_known(f"{base}.{a.name}", modules) if f"{base}.{a.name}" in modules
                       else _known(base, modules) for a in node.names]
        found.update(t for t in targets if t is not None and t != module)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules it imports, as written (the edges the layering rules judge)."""
    files = module_files(root, package)
    return {m: imports_of(m, f.read_text(), files, f.name == "__init__.py") for m, f in files.items()}


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def runtime_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """`graph` plus the package `__init__`s Python runs on the way to each target (for cycles)."""
    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        own = set(_ancestors(m)) | {m}
        deps = set(targets)
        for t in targets:
            deps.update(p for p in _ancestors(t) if p not in own and p in graph)
        out[m] = deps - {m}
    return out


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iters = [start], [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _inside(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def violations(graph: Mapping[str, set[str]], rules=RULES) -> set[tuple[str, str]]:
    """(importer, imported) pairs that break a rule."""
    bad = set()
    for m, targets in graph.items():
        for owners, banned in rules.items():
            if _inside(m, owners):
                bad.update((m, t) for t in targets if _inside(t, banned))
    return bad


# ---- the package ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_the_package(graph):
    assert {"wanmoe.pipeline", "wanmoe.loading.detect", "wanmoe.models.dit"} <= set(graph)
    assert "wanmoe.loading.containers" in graph["wanmoe.loading.detect"]
    assert "wanmoe.models.dit" in graph["wanmoe.loading.components"]  # an import inside a function


def test_no_import_cycles(graph):
    cycle = find_cycle(runtime_graph(graph))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layering_rules(graph):
    found = violations(graph)
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, "layering violations (importer -> imported):\n" + "\n".join(f"  {a} -> {b}" for a, b in new)
    gone = sorted(KNOWN_VIOLATIONS - found)
    assert not gone, f"fixed, delete from KNOWN_VIOLATIONS: {gone}"


def _loading_rank(module: str) -> int | None:
    """Position in LOADING_ORDER (the package `__init__` last), None outside wanmoe.loading."""
    if module == "wanmoe.loading":
        return len(LOADING_ORDER)
    if not module.startswith("wanmoe.loading."):
        return None
    name = module.split(".")[2]
    assert name in LOADING_ORDER, f"{module} is not placed in LOADING_ORDER"
    return LOADING_ORDER.index(name)


def test_loading_modules_import_downwards_only(graph):
    upward = []
    for m, targets in graph.items():
        rank = _loading_rank(m)
        if rank is None:
            continue
        for t in targets:
            rt = _loading_rank(t)
            if rt is not None and rt > rank:  # equal ranks: within the keymaps package
                upward.append(f"{m} -> {t}")
    assert not upward, "upward imports inside wanmoe.loading (see LOADING_ORDER):\n  " + "\n  ".join(upward)


# ---- the checker on synthetic input ---------------------------------------------------------

def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) in (
        ["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_violations_flag_new_edges_only_where_a_rule_says():
    g = {"wanmoe.models.dit": {"wanmoe.runtime.attention", "wanmoe.configs"},
         "wanmoe.text.umt5": {"wanmoe.loading.keymaps.t5"},
         "wanmoe.runtime.quant.apply": {"wanmoe.models.layers", "wanmoe.loading.sources"},
         "wanmoe.loading.components": {"wanmoe.models.dit"}}
    assert violations(g) == {("wanmoe.models.dit", "wanmoe.runtime.attention"),
                             ("wanmoe.text.umt5", "wanmoe.loading.keymaps.t5"),
                             ("wanmoe.runtime.quant.apply", "wanmoe.loading.sources")}
    assert violations({"wanmoe.vaex.a": {"wanmoe.loading"}}) == set()  # prefix match is per dotted part


def test_parser_sees_every_import_form(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.c import X  # re-export\n")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from .b import g  # in a function, relative\n")
    (pkg / "b.py").write_text("from pkg import a\nfrom typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from pkg.sub import c\n")
    (pkg / "sub" / "c.py").write_text("from .. import b\nimport pkg.sub.d\nX = 1\n")
    (pkg / "sub" / "d.py").write_text("from pkg.sub import X\n")
    g = import_graph(tmp_path, "pkg")
    assert g["pkg.a"] == {"pkg.b"}
    assert g["pkg.b"] == {"pkg.a"}  # `from pkg import a` is the submodule; TYPE_CHECKING skipped
    assert g["pkg.sub.c"] == {"pkg.b", "pkg.sub.d"}
    assert g["pkg.sub.d"] == {"pkg.sub"}  # a name from the package: its __init__
    assert g["pkg.sub"] == {"pkg.sub.c"}
    assert find_cycle(g) is not None  # a <-> b
    del g["pkg.b"]
    rt = runtime_graph(g)
    assert find_cycle(rt) == ["pkg.sub", "pkg.sub.c", "pkg.sub.d", "pkg.sub"]
    # the package __init__ Python runs first: importing pkg.sub.c from pkg.a depends on pkg.sub
    assert runtime_graph({"pkg.a": {"pkg.sub.c"}, "pkg.sub": set(), "pkg.sub.c": set()})["pkg.a"] == {
        "pkg.sub", "pkg.sub.c"}
