"""A FastAPI flavour of the pod server, for code written against
``aistore[etl]``'s ``FastAPIServer``: change only the import
(``from communicators import FastAPIServer``) and the class runs here, with the
same routes as :mod:`.aiohttp_server`, the same request logic
(:class:`.server.ETLServer`), and the aioetl ws extensions (errors as TEXT JSON,
``transform_stream`` over ws).

Errors are answered as FastAPI's ``HTTPException`` would be: JSON ``{"detail": "..."}``.
``self.app`` is the FastAPI application; a subclass may add routes to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

from aioetl.communicators.pod.config import PodConfig
from aioetl.communicators.pod.interface import echo_request_id, pod_request
from aioetl.communicators.pod.server import ETLServer
from aioetl.communicators.wire.const import (
    HEADER_WS_IDS,
    HEALTH_BODY,
    HEALTH_PATH,
    MAX_WS_MSG_BYTES,
    WS_ROUTE,
)

__all__ = ["FastAPIServer", "uvicorn_settings"]


def uvicorn_settings(workers: int = 1) -> dict[str, Any]:
    """uvicorn keyword arguments for pods: no ws size limit below 16 GiB and no ws
    pings (as AIStore's runtime image), quiet logs."""
    return {
        "ws_max_size": MAX_WS_MSG_BYTES,
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "log_level": "warning",
        "access_log": False,
        "workers": workers,
        "timeout_graceful_shutdown": 5,
    }


class _Body:
    __slots__ = ("_buf", "_it", "_request")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._it: AsyncIterator[bytes] | None = None
        self._buf = b""

    async def read(self, n: int) -> bytes:
        if not self._buf:
            if self._it is None:
                self._it = self._request.stream().__aiter__()
            while not self._buf:
                try:
                    self._buf = await self._it.__anext__()
                except StopAsyncIteration:
                    return b""
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    async def read_all(self) -> bytes:
        return await self._request.body()


class _Ws:
    __slots__ = ("_ws",)

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    async def recv(self) -> tuple[bool, bytes | str] | None:
        try:
            m = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if m["type"] == "websocket.disconnect":
            return None
        if m.get("bytes") is not None:
            return True, m["bytes"]
        return False, m.get("text") or ""

    async def send_bytes(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def send_text(self, data: str) -> None:
        await self._ws.send_text(data)


class FastAPIServer(ETLServer):
    """An ETL server served by FastAPI/uvicorn.

    Args:
        host: address to bind (the bootstrap overrides it with ``--host``).
        port: port to bind (the bootstrap overrides it with ``--port``).
        config: pod settings; default: from the environment.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 8000, *, config: PodConfig | None = None) -> None:
        super().__init__(host, port, config=config)
        self.app = FastAPI(lifespan=self._lifespan)
        self.app.state.etl_server = self
        self._setup_app()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    def _setup_app(self) -> None:
        server = self

        async def health(_request: Request) -> Response:
            return Response(content=HEALTH_BODY, media_type="text/plain")

        async def transform_route(request: Request) -> Response:
            req = pod_request(is_get=request.method == "GET", path=request.path_params.get("path", ""),
                              query=request.query_params, headers=request.headers, body=_Body(request))
            reply = echo_request_id(request.headers, await server.handle_http(req))
            if reply.stream is not None:
                return StreamingResponse(reply.stream, status_code=reply.status, headers=reply.headers,
                                         media_type=reply.content_type)
            if reply.status >= 400:
                return JSONResponse({"detail": reply.body.decode(errors="replace")}, status_code=reply.status,
                                    headers=reply.headers)
            return Response(content=reply.body, status_code=reply.status, headers=reply.headers,
                            media_type=reply.content_type)

        async def ws_route(websocket: WebSocket) -> None:
            # this pod echoes request ids (aioetl.communicators.wire.frames); unlike the aiohttp server it
            # cannot name its process (uvicorn workers do not know their index)
            await websocket.accept(headers=[(HEADER_WS_IDS.lower().encode(), b"1")])
            try:
                await server.serve_ws(_Ws(websocket))
            finally:
                with contextlib.suppress(Exception):
                    await websocket.close()

        self.app.router.routes.extend([
            Route(HEALTH_PATH, health, methods=["GET"]),
            WebSocketRoute(WS_ROUTE, ws_route),
            Route("/{path:path}", transform_route, methods=["GET", "PUT"]),
        ])

    def start(self, *, workers: int = 1) -> None:
        """Serve with uvicorn on ``self.host:self.port`` (blocking; one process:
        several need an import string, see :mod:`.bootstrap`)."""
        import uvicorn

        uvicorn.run(self.app, host=self.host, port=self.port, **uvicorn_settings(1))
