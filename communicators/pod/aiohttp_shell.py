"""The aiohttp shell of a pod: aiohttp's low-level HTTP server on uvloop, serving
any :class:`.interface.PodApp` (in practice an :class:`~.server.ETLServer`).

Routes (as aistore[etl]'s FastAPIServer, plus ws in every server):

    GET  /health               200 "Running"
    GET  /ws (Upgrade)         WebSocket, pipelined, FIFO replies (§1.5)
    GET  /<path>               hpull
    PUT  /<path>               hpush, and every pipeline or direct-put hop

:func:`serve` runs ``workers`` processes that each bind ``host:port`` with
``SO_REUSEPORT`` (:mod:`.prefork`); ``READY <url>`` is printed once all listen.

This module knows the app only through :mod:`.interface`, so the server class can
start it (``ETLServer.start``) without the two importing each other.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from aioetl.communicators.cork import cork_ws
from aioetl.communicators.pod.interface import PodApp, echo_request_id, pod_request
from aioetl.communicators.pod.prefork import run_prefork
from aioetl.communicators.wire.const import (
    HEADER_WORKER,
    HEADER_WS_IDS,
    HEALTH_BODY,
    HEALTH_PATH,
    WS_REPLIES_PER_SEND,
    WS_ROUTE,
)

__all__ = ["make_handler", "serve"]


class _Body:
    __slots__ = ("_content",)

    def __init__(self, request: web.BaseRequest) -> None:
        self._content = request.content

    async def read(self, n: int) -> bytes:
        return await self._content.read(n)

    async def read_all(self) -> bytes:
        return await self._content.read()


class _Ws:
    __slots__ = ("_ws",)

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def recv(self) -> tuple[bool, bytes | str] | None:
        while True:
            msg = await self._ws.receive()
            if msg.type == WSMsgType.BINARY:
                return True, msg.data
            if msg.type == WSMsgType.TEXT:
                return False, msg.data
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None

    async def send_bytes(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def send_text(self, data: str) -> None:
        await self._ws.send_str(data)


def make_handler(server: PodApp) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The request handler of :class:`aiohttp.web.Server` for ``server`` (routes above)."""

    index, count = server.worker
    worker = f"{index}/{count}"

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        path = request.path
        if method == "GET":
            if path == HEALTH_PATH:
                return web.Response(body=HEALTH_BODY, content_type="text/plain")
            if path == WS_ROUTE and request.headers.get("Upgrade", "").lower() == "websocket":
                ws = web.WebSocketResponse(max_msg_size=0, autoping=True, heartbeat=None, compress=False)
                ws.headers[HEADER_WORKER] = worker
                ws.headers[HEADER_WS_IDS] = "1"
                await ws.prepare(request)
                cork_ws(ws, WS_REPLIES_PER_SEND)
                try:
                    await server.serve_ws(_Ws(ws))
                finally:
                    await ws.close()
                return ws
            is_get = True
        elif method == "PUT":
            is_get = False
        else:
            return web.Response(status=405, text=f"method {method} not allowed", headers={"Allow": "GET, PUT"})
        req = pod_request(is_get=is_get, path=path[1:], query=request.query, headers=request.headers,
                          body=_Body(request))
        reply = echo_request_id(request.headers, await server.handle_http(req))
        if reply.stream is None:
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers,
                                content_type=reply.content_type)
        stream = reply.stream
        try:  # the stream is ours (PodReply): closed however the writing ends
            resp = web.StreamResponse(status=reply.status, headers=reply.headers)
            if reply.content_type:
                resp.content_type = reply.content_type
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                async for chunk in stream:
                    await resp.write(chunk)
            except Exception as e:
                server.logger.error("stream of %r failed after the reply started: %r", req.path, e)
                if request.transport is not None:
                    request.transport.abort()
                return resp
        finally:
            await stream.aclose()
        await resp.write_eof()
        return resp

    return handler


# -- serving -------------------------------------------------------------------------------


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


async def _serve_async(server: PodApp, host: str, port: int, reuse_port: bool, on_ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.startup()
    runner = web.ServerRunner(web.Server(make_handler(server), access_log=None), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port, reuse_address=True, backlog=1024)
        await site.start()
        on_ready()
        await stop.wait()
    finally:
        await runner.cleanup()
        await server.shutdown()


def _run_worker(server: PodApp, host: str, port: int, reuse_port: bool, on_ready: Callable[[], None]) -> int:
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_serve_async(server, host, port, reuse_port, on_ready))
    return 0


def _announce(host: str, port: int) -> None:
    print(f"READY http://{host}:{port}", flush=True)


def serve(server: PodApp, host: str, port: int, *, workers: int = 1,
          announce: Callable[[str, int], None] = _announce) -> int:
    """Serve ``server`` on ``host:port`` until SIGTERM/SIGINT; returns the exit code.

    Args:
        server: the app (any :class:`~.server.ETLServer`).
        host: address to bind, exactly.
        port: port to bind, exactly.
        workers: processes (fork) sharing the port with ``SO_REUSEPORT``; 1 serves
            in this process.
        announce: called once when every worker listens (default prints
            ``READY http://host:port``).
    """
    server.set_processes(max(1, workers))
    if workers <= 1:
        return _run_worker(server, host, port, False, lambda: announce(host, port))

    def child(index: int, ready: Callable[[], None]) -> int:
        server.set_processes(workers, index)
        return _run_worker(server, host, port, True, ready)

    return run_prefork(workers, child, lambda: announce(host, port))
