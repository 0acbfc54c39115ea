"""The fast default pod server: aiohttp's low-level HTTP server on uvloop.

Routes (as aistore[etl]'s FastAPIServer, plus ws in every server):

    GET  /health               200 "Running"
    GET  /ws (Upgrade)         WebSocket, pipelined, FIFO replies (§1.5)
    GET  /<path>               hpull
    PUT  /<path>               hpush, and every pipeline or direct-put hop

:func:`serve` runs ``workers`` processes that each bind ``host:port`` with
``SO_REUSEPORT`` (the kernel spreads connections); the parent prints
``READY <url>`` once all listen, forwards SIGTERM/SIGINT to them and exits when
they have; if one dies, the others are stopped and the parent exits with its code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable

from aiohttp import WSMsgType, web

from aioetl.communicators.cork import cork_ws
from aioetl.communicators.pod.server import ETLServer, PodConfig, PodRequest
from aioetl.communicators.wire.const import (
    HEADER_NODE_URL,
    HEADER_REQ_ID,
    HEADER_WORKER,
    HEADER_WS_IDS,
    HEALTH_BODY,
    HEALTH_PATH,
    QPARAM_ETL_ARGS,
    QPARAM_ETL_FQN,
    WS_REPLIES_PER_SEND,
    WS_ROUTE,
)

__all__ = ["AiohttpServer", "make_handler", "serve"]


class AiohttpServer(ETLServer):
    """An ETL server served by aiohttp (the default; same user API as aistore[etl]).

    Args:
        host: address to bind (the bootstrap overrides it with ``--host``).
        port: port to bind (the bootstrap overrides it with ``--port``).
        config: pod settings; default: from the environment.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 8000, *, config: PodConfig | None = None) -> None:
        super().__init__(config=config)
        self.host = host
        self.port = port

    def start(self, *, workers: int = 1) -> None:
        """Serve until SIGTERM/SIGINT (blocking); ``workers`` processes share the port."""
        serve(self, self.host, self.port, workers=workers)


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


def make_handler(server: ETLServer) -> Callable[[web.BaseRequest], asyncio.Future[web.StreamResponse]]:
    """The request handler of :class:`aiohttp.web.Server` for ``server`` (routes above)."""

    worker = "%d/%d" % server.worker

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
        q = request.query
        req = PodRequest(
            is_get=is_get,
            path=path[1:],
            etl_args=q.get(QPARAM_ETL_ARGS, "").strip(),
            fqn=q.get(QPARAM_ETL_FQN, "").strip(),
            pipeline=request.headers.get(HEADER_NODE_URL),
            body=_Body(request),
        )
        reply = await server.handle_http(req)
        rid = request.headers.get(HEADER_REQ_ID)
        if rid is not None:  # echoed: the target attributes this reply by it
            reply.headers[HEADER_REQ_ID] = rid
        if reply.stream is None:
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers,
                                content_type=reply.content_type)
        resp = web.StreamResponse(status=reply.status, headers=reply.headers)
        if reply.content_type:
            resp.content_type = reply.content_type
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            async for chunk in reply.stream:
                await resp.write(chunk)
        except Exception as e:
            server.logger.error("stream of %r failed after the reply started: %r", req.path, e)
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    return handler  # type: ignore[return-value]


# -- serving -------------------------------------------------------------------------------


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def _set_pdeathsig(sig: int) -> None:
    """Linux: get ``sig`` when the parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)


async def _serve_async(server: ETLServer, host: str, port: int, reuse_port: bool, on_ready: Callable[[], None]) -> None:
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


def _run_worker(server: ETLServer, host: str, port: int, reuse_port: bool, on_ready: Callable[[], None]) -> int:
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_serve_async(server, host, port, reuse_port, on_ready))
    return 0


def _announce(host: str, port: int) -> None:
    print(f"READY http://{host}:{port}", flush=True)


def serve(server: ETLServer, host: str, port: int, *, workers: int = 1,
          announce: Callable[[str, int], None] = _announce) -> int:
    """Serve ``server`` on ``host:port`` until SIGTERM/SIGINT; returns the exit code.

    Args:
        server: the ETL server instance (any :class:`ETLServer`).
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
    children: dict[int, int] = {}  # pid -> read end of its ready pipe
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    for index in range(workers):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.close(r)
                for fd in children.values():
                    os.close(fd)
                _set_pdeathsig(signal.SIGTERM)
                if os.getppid() != parent:  # the parent died before PDEATHSIG was set
                    os._exit(0)  # (not "== 1": in a PID namespace the parent *is* PID 1)

                def ready() -> None:
                    os.write(w, b"1")
                    os.close(w)

                server.set_processes(workers, index)
                code = _run_worker(server, host, port, True, ready)
            except BaseException as e:
                print(f"worker {os.getpid()} failed: {e!r}", file=sys.stderr, flush=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(w)
        children[pid] = r
    # wait until every worker listens (or one dies)
    waiting = dict(children)
    while waiting and not stopping:
        try:
            ready, _, _ = select.select(list(waiting.values()), [], [], 0.2)
        except InterruptedError:
            continue
        for fd in ready:
            os.read(fd, 1)
            for pid, f in list(waiting.items()):
                if f == fd:
                    del waiting[pid]
        for pid in list(waiting):
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.pop(pid, None)
                forward(signal.SIGTERM, None)
                break
    for fd in children.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    if not stopping:
        announce(host, port)
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        del children[pid]
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            print(f"worker {pid} exited with code {code}; stopping the pod", file=sys.stderr, flush=True)
            exit_code = code if code > 0 else 1
            forward(signal.SIGTERM, None)
    return exit_code
