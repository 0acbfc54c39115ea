"""The pod package's layout stays honest: every module has a docstring, an
``__all__`` naming only what it defines or re-exports, and fewer than 800 lines;
the names users import keep their homes (#12)."""

from __future__ import annotations

import ast
import importlib
import os

import pytest

import aioetl.communicators as communicators

POD = os.path.join(os.path.dirname(os.path.abspath(communicators.__file__ or "")), "pod")
MODULES = sorted(f[:-3] for f in os.listdir(POD) if f.endswith(".py") and f != "__init__.py")
# importing these needs an optional extra, or runs the pod
OPTIONAL = {"fastapi_server"}


def test_the_package_has_its_modules() -> None:
    for name in ("server", "config", "interface", "errors", "offload", "bridge", "direct_put", "ws_pipeline",
                 "aiohttp_shell", "aiohttp_server", "prefork", "bootstrap", "builtins"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_is_small_documented_and_exports_what_it_has(name: str) -> None:
    path = os.path.join(POD, name + ".py")
    with open(path) as f:
        src = f.read()
    assert src.count("\n") < 800, f"{name}.py has grown past 800 lines: split it"
    assert ast.get_docstring(ast.parse(src)), f"{name}.py has no module docstring"
    if name in OPTIONAL:
        pytest.importorskip("fastapi")
    mod = importlib.import_module(f"aioetl.communicators.pod.{name}")
    names = mod.__all__
    assert len(set(names)) == len(names)
    for n in names:
        assert hasattr(mod, n), f"{name}.__all__ names {n!r}, which it does not have"


def test_server_keeps_the_names_users_import_from_it() -> None:
    from aioetl.communicators.pod import server

    for n in ("ETLServer", "PodConfig", "PodRequest", "ETLDirectPutTransientError", "TargetRequestError"):
        assert n in server.__all__
        assert getattr(server, n) is getattr(importlib.import_module(_home(n)), n)


def _home(name: str) -> str:
    return {
        "ETLServer": "aioetl.communicators.pod.server",
        "PodConfig": "aioetl.communicators.pod.config",
        "PodRequest": "aioetl.communicators.pod.interface",
        "ETLDirectPutTransientError": "aioetl.communicators.pod.errors",
        "TargetRequestError": "aioetl.communicators.pod.errors",
    }[name]


def test_server_classes_keep_their_module() -> None:
    """cloudpickle pickles a user's subclass by value but its bases by reference
    (module + name): a pod built from an older client must still find them."""
    from aioetl.communicators import AiohttpServer, ETLServer

    assert ETLServer.__module__ == "aioetl.communicators.pod.server"
    assert AiohttpServer.__module__ == "aioetl.communicators.pod.aiohttp_server"


def test_package_exports_resolve() -> None:
    for n in communicators.__all__:
        if n == "FastAPIServer":
            pytest.importorskip("fastapi")
        assert getattr(communicators, n) is not None


def test_the_aiohttp_shell_does_not_know_the_server_class() -> None:
    """The shell depends on :mod:`.interface` only, so ``ETLServer.start`` can import it."""
    with open(os.path.join(POD, "aiohttp_shell.py")) as f:
        tree = ast.parse(f.read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "aioetl.communicators.pod.server" not in imported
    assert "aioetl.communicators.pod.aiohttp_server" not in imported
