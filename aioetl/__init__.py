"""aioetl: an asynchronous object transform engine implementing the AIStore ETL model.

The one import name of the distribution. Its parts:

- :mod:`aioetl.engine`: gateway and targets, storage, the offline job scheduler,
  the data client and the ``aioetl`` CLI;
- :mod:`aioetl.communicators`: both ends of the target <-> ETL pod wire (the pod
  servers users subclass, and the target's hpush, hpull and ws communicators);
- :mod:`aioetl.xactions`: jobs (xactions): state, stats, capped errors, queues.

The public API below is loaded on first use, so ``import aioetl`` is cheap and
pulls in neither the engine nor the optional FastAPI::

    import asyncio
    from aioetl import DataClient, LocalCluster

    with LocalCluster(targets=2, data_dir="/tmp/ais") as cluster:
        client = DataClient(cluster.endpoint)  # async: object I/O straight to HRW owners
        asyncio.run(client.create_bucket("b"))
        print(asyncio.run(client.list_buckets()))  # ['b']

Names: ``LocalCluster``, ``ClusterError`` (a cluster on this machine, as ``aioetl
cluster up`` runs it), ``DataClient``, ``ClientError`` (objects and buckets over
HTTP), ``ETLServer``, ``AiohttpServer``, ``FastAPIServer`` (ETL pod servers,
compatible with ``aistore[etl]``'s; FastAPI needs the ``fastapi`` extra),
``AioetlError`` (the root of every error aioetl raises).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LocalCluster": "aioetl.engine.node.launcher",
    "ClusterError": "aioetl.engine.node.launcher",
    "DataClient": "aioetl.engine.client.data",
    "ClientError": "aioetl.engine.client.data",
    "ETLServer": "aioetl.communicators.pod.server",
    "AiohttpServer": "aioetl.communicators.pod.aiohttp_server",
    "FastAPIServer": "aioetl.communicators.pod.fastapi_server",
    "AioetlError": "aioetl.errors",
}

# spelled out (not computed from _EXPORTS) so that linters and type checkers see the
# names the TYPE_CHECKING block re-exports; tests/test_exports.py keeps the two equal
__all__ = [
    "AioetlError",
    "AiohttpServer",
    "ClientError",
    "ClusterError",
    "DataClient",
    "ETLServer",
    "FastAPIServer",
    "LocalCluster",
    "__version__",
]

if TYPE_CHECKING:
    from aioetl.communicators.pod.aiohttp_server import AiohttpServer
    from aioetl.communicators.pod.fastapi_server import FastAPIServer
    from aioetl.communicators.pod.server import ETLServer
    from aioetl.engine.client.data import ClientError, DataClient
    from aioetl.engine.node.launcher import ClusterError, LocalCluster
    from aioetl.errors import AioetlError


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'aioetl' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
