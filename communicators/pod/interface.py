"""What a web-framework shell and the pod's request logic exchange.

The shells (:mod:`.aiohttp_shell`, :mod:`.fastapi_server`) decode a request into a
:class:`PodRequest`, hand it to a :class:`PodApp` (in practice an
:class:`~.server.ETLServer`), and write the :class:`PodReply` back; a WebSocket is
handed over as a :class:`WsConnection`. The shells depend on these types only,
never on the server class, so the server can start a shell without an import cycle.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aioetl.communicators.wire.const import HEADER_NODE_URL, HEADER_REQ_ID, QPARAM_ETL_ARGS, QPARAM_ETL_FQN

__all__ = ["BodySource", "PodApp", "PodReply", "PodRequest", "WsConnection", "echo_request_id", "pod_request"]


class BodySource(Protocol):
    """The request body as the web framework hands it over."""

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end."""
        ...

    async def read_all(self) -> bytes:
        """The whole body."""
        ...


@dataclass(slots=True)
class PodRequest:
    """One hpush/hpull request, decoded.

    Attributes:
        is_get: hpull (``GET``) rather than hpush (``PUT``).
        path: decoded path without the leading ``/`` (``bck/obj`` or ``ais/@#/bck/obj``).
        etl_args: query ``etl_args``, stripped.
        fqn: query ``etl_fqn`` after query decoding (still path-escaped), ``""`` if absent.
        pipeline: ``Ais-Node-Url`` or None.
        body: the request body.
    """

    is_get: bool
    path: str
    etl_args: str
    fqn: str
    pipeline: str | None
    body: BodySource


@dataclass(slots=True)
class PodReply:
    """What to answer. ``stream`` (chunked 200) replaces ``body`` when set; its first
    chunk has already been produced, so an early transform error is a plain 500.
    Whoever writes the stream owns it: it iterates it, and ``aclose()``s it if it
    stops early (that stops the transform's worker thread and closes its input)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    stream: AsyncGenerator[bytes, None] | None = None


class WsConnection(Protocol):
    """A WebSocket as the web framework hands it over."""

    async def recv(self) -> tuple[bool, bytes | str] | None:
        """``(is_binary, data)`` of the next message, or None once closed."""
        ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_text(self, data: str) -> None: ...


class PodApp(Protocol):
    """The request logic as a shell serves it (:class:`~.server.ETLServer` is one).

    Attributes:
        worker: ``(index, count)`` of this process among the pod's processes.
        logger: where a shell logs failures it meets after the reply started.
    """

    worker: tuple[int, int]
    logger: logging.Logger

    def set_processes(self, n: int, index: int = 0) -> None:
        """How many processes serve the port, and which one this is (before serving)."""
        ...

    async def startup(self) -> None:
        """Open outbound resources (on the serving loop, before the first request)."""
        ...

    async def shutdown(self) -> None:
        """Close what :meth:`startup` opened."""
        ...

    async def handle_http(self, req: PodRequest) -> PodReply:
        """Answer one hpush/hpull request; never raises but on cancellation."""
        ...

    async def serve_ws(self, conn: WsConnection) -> None:
        """Serve one ws connection until it closes."""
        ...


def pod_request(*, is_get: bool, path: str, query: Mapping[str, str], headers: Mapping[str, str],
                body: BodySource) -> PodRequest:
    """The :class:`PodRequest` of one hpush (PUT) or hpull (GET) request, from what any
    web framework gives: ``etl_args`` and ``etl_fqn`` from the query, the pipeline from
    ``Ais-Node-Url`` (AIStore ``ext/etl/communicator.go``). ``path`` without its leading ``/``."""
    return PodRequest(is_get=is_get, path=path, etl_args=query.get(QPARAM_ETL_ARGS, "").strip(),
                      fqn=query.get(QPARAM_ETL_FQN, "").strip(), pipeline=headers.get(HEADER_NODE_URL), body=body)


def echo_request_id(headers: Mapping[str, str], reply: PodReply) -> PodReply:
    """Echo the target's ``Aioetl-Req-Id`` in ``reply`` (the target attributes the reply by it)."""
    rid = headers.get(HEADER_REQ_ID)
    if rid is not None:
        reply.headers[HEADER_REQ_ID] = rid
    return reply
