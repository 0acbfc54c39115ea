"""The import graph of aioetl: no cycles, and each layer imports only what it may (#12).

Every ``import`` and ``from ... import`` in the installed packages counts, wherever
it is written: at module level, inside a function, or under ``TYPE_CHECKING``
(a cycle hidden in a function is still a cycle a reader has to keep in mind).
Read from the source with :mod:`ast`; nothing is imported.

Rules:

- no module imports itself back through others (no cycle of any length);
- ``aioetl.xactions`` imports nothing of aioetl outside itself;
- ``aioetl.communicators.wire`` (sans-I/O) imports nothing of aioetl outside
  itself, and no aiohttp;
- ``aioetl.communicators`` never imports ``aioetl.engine``;
- ``aioetl.engine.core`` (sans-I/O) imports no aiohttp and nothing of the engine
  outside ``engine.core``.

``aioetl/__init__.py`` loads its public names lazily by string (importlib), so
its ``TYPE_CHECKING`` block is the only edge out of the root package.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

import aioetl
import aioetl.communicators
import aioetl.engine
import aioetl.xactions

PACKAGES = {"aioetl": aioetl, "aioetl.engine": aioetl.engine, "aioetl.communicators": aioetl.communicators,
            "aioetl.xactions": aioetl.xactions}


def _modules() -> dict[str, tuple[str, bool]]:
    """``{module name: (file, is_package)}`` of every module of the distribution."""
    out: dict[str, tuple[str, bool]] = {}
    for pkg, mod in PACKAGES.items():
        root = os.path.dirname(os.path.abspath(mod.__file__ or ""))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__pycache__"))]
            rel = os.path.relpath(dirpath, root)
            if pkg == "aioetl" and rel != ".":
                continue  # the root package's folder holds only its own modules
            if not os.path.exists(os.path.join(dirpath, "__init__.py")):
                continue
            base = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
            for f in filenames:
                if f.endswith(".py"):
                    name = base if f == "__init__.py" else f"{base}.{f[:-3]}"
                    out[name] = (os.path.join(dirpath, f), f == "__init__.py")
    return out


def _imports(name: str, path: str, is_pkg: bool) -> Iterator[str]:
    """Absolute names of everything ``path`` imports (modules, or module.attr for ``from``)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    here = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                yield f"{mod}.{a.name}"
            yield mod


def graph() -> dict[str, set[str]]:
    """``{module: {aioetl modules it imports}}`` plus ``"<third>:aiohttp"``-style third-party edges."""
    mods = _modules()
    g: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        edges: set[str] = set()
        for imp in _imports(name, path, is_pkg):
            if imp.split(".")[0] != "aioetl":
                edges.add("<third>:" + imp.split(".")[0])
                continue
            # the longest known module named by the import ("from pkg import mod" names a module)
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                edges.add(imp)
        g[name] = edges
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _in(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def test_the_walk_sees_every_package_and_function_level_imports() -> None:
    g = graph()
    for pkg in ("aioetl.engine.core", "aioetl.engine.target", "aioetl.communicators.wire", "aioetl.xactions"):
        assert any(_in(m, pkg) for m in g), pkg
    assert len(g) > 40
    # the bootstrap imports its server shells inside functions: those edges must be seen
    assert "aioetl.communicators.pod.aiohttp_server" in g["aioetl.communicators.pod.bootstrap"]


def test_no_import_cycles() -> None:
    cycles = _cycles(graph())
    assert not cycles, "import cycles (each line one strongly connected set of modules):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_layer_rules() -> None:
    g = graph()
    bad = []
    for mod, edges in sorted(g.items()):
        for e in sorted(edges):
            third = e.startswith("<third>:")
            if _in(mod, "aioetl.xactions") and not third and not _in(e, "aioetl.xactions"):
                bad.append(f"{mod} -> {e}: xactions imports nothing else of aioetl")
            if _in(mod, "aioetl.communicators.wire") and (
                    e == "<third>:aiohttp" or (not third and not _in(e, "aioetl.communicators.wire"))):
                bad.append(f"{mod} -> {e}: communicators.wire is sans-I/O and self-contained")
            if _in(mod, "aioetl.communicators") and _in(e, "aioetl.engine"):
                bad.append(f"{mod} -> {e}: communicators never imports engine")
            if _in(mod, "aioetl.engine.core") and (
                    e == "<third>:aiohttp" or (_in(e, "aioetl.engine") and not _in(e, "aioetl.engine.core"))):
                bad.append(f"{mod} -> {e}: engine.core is sans-I/O (no aiohttp, no other engine layer)")
    assert not bad, "\n".join(bad)
