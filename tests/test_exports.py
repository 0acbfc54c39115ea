"""``import aioetl`` offers the public API, lazily, and its ``__all__`` is honest (#12).

As websockets' ``tests/test_exports.py`` does: every name in ``__all__`` resolves,
``dir()`` lists them, and the cheap import stays cheap (checked in a fresh
interpreter, since this one has imported everything already).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import aioetl

PUBLIC = {"LocalCluster", "ClusterError", "DataClient", "ClientError", "ETLServer", "AiohttpServer",
          "FastAPIServer", "AioetlError", "__version__"}


def _fresh(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a new interpreter; return which aioetl and web modules it loaded."""
    probe = code + (
        "\nimport json, sys\n"
        "print(json.dumps({'aioetl': sorted(m for m in sys.modules if m.startswith('aioetl.')),"
        " 'fastapi': sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn')),"
        " 'aiohttp': sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp')}))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded: dict[str, list[str]] = json.loads(r.stdout.splitlines()[-1])
    return loaded


def test_all_is_the_public_api() -> None:
    assert set(aioetl.__all__) == PUBLIC
    assert len(aioetl.__all__) == len(PUBLIC)
    assert set(aioetl.__all__) == set(aioetl._EXPORTS) | {"__version__"}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_name_resolves(name: str) -> None:
    value = getattr(aioetl, name)
    assert value is not None
    if name == "__version__":
        assert isinstance(value, str) and value
        return
    module = sys.modules[aioetl._EXPORTS[name]]
    assert value is getattr(module, name)
    assert isinstance(value, type)
    assert name in module.__all__, f"{module.__name__}.__all__ lacks {name}"


def test_client_error_is_under_the_root() -> None:
    """``except aioetl.AioetlError`` catches a failed data-client request (and RuntimeError still does)."""
    assert issubclass(aioetl.ClientError, aioetl.AioetlError)
    assert issubclass(aioetl.ClientError, RuntimeError)
    e = aioetl.ClientError(404, 'object "ais://b/o" does not exist')
    assert e.status == 404
    assert str(e) == '404: object "ais://b/o" does not exist'


def test_dir_lists_the_public_names() -> None:
    assert set(dir(aioetl)) >= PUBLIC


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        aioetl.no_such_name  # noqa: B018
    assert not hasattr(aioetl, "NoSuchThing")


def test_import_aioetl_alone_loads_nothing_else() -> None:
    loaded = _fresh("import aioetl; dir(aioetl); aioetl.__version__")
    assert loaded == {"aioetl": [], "fastapi": [], "aiohttp": []}


def test_engine_names_do_not_load_fastapi() -> None:
    """Everything but FastAPIServer works without the ``fastapi`` extra."""
    names = sorted(PUBLIC - {"FastAPIServer", "__version__"})
    loaded = _fresh("import aioetl\n" + "".join(f"aioetl.{n}\n" for n in names))
    assert loaded["fastapi"] == [], loaded["fastapi"]
    assert "aioetl.communicators.pod.fastapi_server" not in loaded["aioetl"]
