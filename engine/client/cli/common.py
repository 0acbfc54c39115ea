"""What every ``aioetl`` command shares: apps, consoles, options, errors, URLs, HTTP.

The command modules import from here and never from each other's entry point:
``main`` imports ``etl`` and ``jobs`` to register them, ``etl`` imports ``jobs``
for the offline commands it lists, and nothing imports ``main``.

User text is never rich markup. Every Typer app comes from :func:`new_app`, which
turns markup off, so a docstring such as ``ais://BUCKET[/PREFIX]`` shows as written
(rich 15 raised ``MarkupError`` on it); both consoles print with ``markup=False``,
so an object name or a server message with brackets prints as it is. Colour is
given with ``style=``, never with ``[red]`` tags.

Bucket URLs: ``ais://BUCKET[/OBJECT]`` for a cluster bucket, ``aws://BUCKET[/OBJECT]``
(alias ``s3://``) for a remote S3 bucket, which the gateway adds on first use.
:func:`parse_url` turns one into the engine's bucket key (``b`` or ``aws:b``,
:mod:`aioetl.engine.core.names`) and an object name; messages print the key back
with ``bck_uri`` (so ``s3://b`` is shown as ``aws://b``).

Endpoint resolution for data commands, first match wins: ``--endpoint``,
``$AIS_ENDPOINT``, the gateway of the running cluster in ``--data`` (or
``$AIOETL_DATA``), then ``http://127.0.0.1:8080``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from aioetl.engine.client.data import DataClient

__all__ = [
    "DEFAULT_DATA",
    "URL_SCHEMES",
    "DataOpt",
    "EndpointOpt",
    "check",
    "console",
    "data_client",
    "die",
    "http_client",
    "human",
    "new_app",
    "out",
    "parse_url",
    "resolve_endpoint",
    "run",
]

T = TypeVar("T")

#: progress, messages and errors (stderr); results go to ``out`` (stdout)
console = Console(stderr=True, markup=False)
out = Console(markup=False)

DEFAULT_DATA = os.environ.get("AIOETL_DATA", "./data")

EndpointOpt = typer.Option(None, "--endpoint", "-e",
                           help="Gateway URL (default: $AIS_ENDPOINT or the cluster in --data).")
DataOpt = typer.Option(None, "--data", "-d", help="Cluster data root (default: $AIOETL_DATA or ./data).")


def new_app(help: str, **kw: Any) -> typer.Typer:
    """A Typer app (or sub-app) with rich markup off: help text is printed as written.

    Args:
        help: the app's one-line help.
        kw: further ``typer.Typer`` keywords (``no_args_is_help`` defaults to true).
    """
    kw.setdefault("no_args_is_help", True)
    return typer.Typer(help=help, rich_markup_mode=None, **kw)


def die(msg: str, code: int = 1) -> typer.Exit:
    """Print ``error: msg`` (literally) on stderr and return the ``Exit`` to raise."""
    console.print(Text.assemble(("error:", "red"), " ", msg))
    return typer.Exit(code)


def resolve_endpoint(endpoint: str | None, data: str | None) -> str:
    """Pick the gateway URL (see the module docstring)."""
    if endpoint:
        return endpoint.rstrip("/")
    if os.environ.get("AIS_ENDPOINT"):
        return os.environ["AIS_ENDPOINT"].rstrip("/")
    from aioetl.engine.node.launcher import running_nodes

    for n in running_nodes(data or DEFAULT_DATA):
        if str(n["node_id"]).startswith("p-"):
            return str(n["url"])
    return "http://127.0.0.1:8080"


#: the URL schemes a command accepts for a bucket, in the order error messages name them
URL_SCHEMES = ("ais", "aws", "s3")


def parse_url(url: str, *, want_obj: bool = False) -> tuple[str, str]:
    """``ais://b[/obj]`` -> ``("b", obj)``; ``aws://b[/obj]`` and ``s3://b[/obj]`` -> ``("aws:b", obj)``.

    The first element is the bucket key of :mod:`aioetl.engine.core.names` (what
    :class:`~aioetl.engine.client.data.DataClient` takes); the object may be empty
    unless ``want_obj``.

    Raises:
        typer.BadParameter: another scheme, no bucket, an invalid bucket name, or no object when one is wanted.
    """
    from aioetl.engine.core.names import bck_key
    from aioetl.errors import AioetlError

    scheme, sep, rest = url.partition("://")
    shape = "BUCKET/OBJECT" if want_obj else "BUCKET[/OBJECT]"
    if not sep or scheme.lower() not in URL_SCHEMES:
        raise typer.BadParameter(f"expected ais://{shape}, aws://{shape} or s3://{shape}, got {url!r}")
    name, _, obj = rest.partition("/")
    if not name:
        raise typer.BadParameter(f"no bucket in {url!r}")
    if want_obj and not obj:
        raise typer.BadParameter(f"expected {scheme}://{name}/OBJECT, got {url!r}: no object name")
    try:
        return bck_key(scheme, name), obj
    except AioetlError as e:
        raise typer.BadParameter(e.message) from None


def human(n: float) -> str:
    """Bytes as ``512B``, ``1.5KiB`` ... ``2.0TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n:.1f}TiB"


# -- HTTP: the control plane through httpx, objects through the data client -----
def http_client(endpoint: str | None, data: str | None) -> httpx.Client:
    """A client whose base URL is the gateway's ``/v1``; 600 s per request, 5 s to connect."""
    return httpx.Client(base_url=resolve_endpoint(endpoint, data) + "/v1", timeout=httpx.Timeout(600.0, connect=5.0))


def check(r: httpx.Response) -> httpx.Response:
    """Return ``r``, or raise :func:`die`'s exit with the server's message for a status >= 400."""
    if r.status_code >= 400:
        msg = r.text
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "message" in doc:
            msg = str(doc["message"])
        raise die(f"{r.status_code}: {msg}")
    return r


def data_client(endpoint: str | None, data: str | None) -> DataClient:
    """The async data client for the resolved gateway (imported on use: aiohttp is slow to load)."""
    from aioetl.engine.client.data import DataClient

    return DataClient(resolve_endpoint(endpoint, data))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a data-client coroutine to completion; a ``ClientError`` becomes an error exit."""
    from aioetl.engine.client.data import ClientError

    try:
        return asyncio.run(coro)
    except ClientError as e:
        raise die(str(e)) from None
