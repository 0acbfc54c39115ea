"""aioetl communicators: both ends of the target <-> ETL pod wire.

Pod side (this package's public API, compatible with ``aistore[etl]`` 2.0.0):

- :class:`ETLServer` (``transform`` / ``transform_stream``), :class:`AiohttpServer`
  (the fast default), :class:`FastAPIServer` (drop-in for aistore[etl]'s);
- the sans-I/O wire helpers of :mod:`aioetl.communicators.wire.frames`;
- the pod entry point ``python -m aioetl.communicators.pod.bootstrap``.

Target side: :mod:`aioetl.communicators.target.comm`.

The FastAPI flavour is imported lazily (FastAPI is an optional dependency).
"""

from __future__ import annotations

from typing import Any

from aioetl.communicators.pod.aiohttp_server import AiohttpServer
from aioetl.communicators.pod.server import ETLDirectPutTransientError, ETLServer, PodConfig, TargetRequestError
from aioetl.communicators.wire.frames import (
    DirectPutOutcome,
    InvalidPipelineError,
    WsControl,
    WsProtocolError,
    classify_ws_text,
    compose_direct_put_url,
    direct_put_outcome,
    encode_ws_delivered,
    encode_ws_error,
    parse_etl_pipeline,
    parse_ws_error,
    sanitize_fqn,
    target_get_url,
)

__all__ = [
    "AiohttpServer",
    "DirectPutOutcome",
    "ETLDirectPutTransientError",
    "ETLServer",
    "FastAPIServer",
    "InvalidPipelineError",
    "PodConfig",
    "TargetRequestError",
    "WsControl",
    "WsProtocolError",
    "classify_ws_text",
    "compose_direct_put_url",
    "direct_put_outcome",
    "encode_ws_delivered",
    "encode_ws_error",
    "parse_etl_pipeline",
    "parse_ws_error",
    "sanitize_fqn",
    "target_get_url",
]


def __getattr__(name: str) -> Any:
    if name == "FastAPIServer":
        from aioetl.communicators.pod.fastapi_server import FastAPIServer

        return FastAPIServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
