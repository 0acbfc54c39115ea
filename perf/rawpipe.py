"""Bare baselines of the offline benchmark: what the machine does without aioetl.

Two loops, each sequential (one object at a time, in the benchmark process):

- :func:`inproc_loop` ("inproc"): for every ``(src, dst)`` pair, ``open(src).read()``
  the whole file, apply the identity transform, ``open(dst, "wb").write()`` it.
  No server, no socket, no checksum, no metadata, no fsync, no rename.
- the raw pipeline ("raw"), :func:`raw_loop`: the same, except that between read
  and write the bytes make one round trip to a bare WebSocket echo server
  (:class:`WsEchoProcess`, a separate process on 127.0.0.1) over ONE persistent
  connection: send the file as one BINARY message, wait for the echoed message,
  write it. Exactly one message is in flight at any time (no pipelining, no
  threads, no batching). It is the floor of "read, ship to another process over
  ws, get it back, write" on this machine; aioetl's offline job additionally
  walks the bucket, checksums (xxhash64), writes metadata (xattr), renames
  atomically, pipelines many objects over several connections and talks HTTP to
  its gateway.

Implementations (both ends are swappable; :func:`calibrate` measures them side
by side and the benchmark uses the fastest, recording the numbers):

- server ``aiohttp`` (aiohttp.web on uvloop) or ``websockets`` (websockets'
  asyncio server on uvloop); both echo every BINARY message back unchanged, no
  compression, no message size limit;
- client ``aiohttp`` (aiohttp ``ws_connect`` on the caller's event loop),
  ``websockets`` (websockets' asyncio client on the caller's loop) or
  ``websockets-sync`` (websockets' blocking client).

Run a server by hand: ``python -m perf.rawpipe --impl aiohttp`` prints its ws URL.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perf.common import ServerProcess

__all__ = [
    "CLIENT_IMPLS",
    "SERVER_IMPLS",
    "RawPipeError",
    "WsEchoProcess",
    "inproc_loop",
    "raw_loop",
    "serve_main",
]

SERVER_IMPLS = ("aiohttp", "websockets")
CLIENT_IMPLS = ("aiohttp", "websockets", "websockets-sync")
_REPO_ROOT = Path(__file__).resolve().parent.parent


class RawPipeError(RuntimeError):
    """The echo server failed to start, or echoed the wrong bytes."""


# -- servers (child process) -------------------------------------------------------


async def _serve_aiohttp(ready: asyncio.Future[str], stop: asyncio.Event) -> None:
    from aiohttp import WSMsgType, web

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True, heartbeat=None, compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ready.set_result(f"ws://127.0.0.1:{port}/ws")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _serve_websockets(ready: asyncio.Future[str], stop: asyncio.Event) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        async for msg in ws:
            await ws.send(msg)

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None, ping_interval=None,
                     max_queue=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        ready.set_result(f"ws://127.0.0.1:{port}/ws")
        await stop.wait()


async def _serve(impl: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready: asyncio.Future[str] = loop.create_future()
    fn = _serve_aiohttp if impl == "aiohttp" else _serve_websockets
    task = asyncio.ensure_future(fn(ready, stop))
    done, _ = await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        return
    print(ready.result(), flush=True)
    await task


def serve_main(argv: list[str] | None = None) -> None:
    """Process entry: ``--impl aiohttp|websockets``; prints the ws URL, serves until SIGTERM."""
    ap = argparse.ArgumentParser(prog="python -m perf.rawpipe")
    ap.add_argument("--impl", choices=SERVER_IMPLS, default="aiohttp")
    args = ap.parse_args(argv)
    from .common import run_loop

    run_loop(_serve(args.impl))


class WsEchoProcess(ServerProcess):
    """A bare ws echo server (:data:`SERVER_IMPLS`) as a child process on 127.0.0.1.

    Args:
        impl: ``aiohttp`` or ``websockets``.
        start_timeout_s: how long to wait for its URL.

    Raises:
        RawPipeError: on start, if it exits or prints nothing in time.
    """

    error = RawPipeError

    def __init__(self, impl: str = "aiohttp", start_timeout_s: float = 30.0) -> None:
        if impl not in SERVER_IMPLS:
            raise ValueError(f"unknown echo server {impl!r}; choose from {SERVER_IMPLS}")
        super().__init__(start_timeout_s)
        self.impl = impl
        self.name = f"{impl} echo server"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "perf.rawpipe", "--impl", self.impl]


# -- the loops ----------------------------------------------------------------------


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def inproc_loop(pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Read each ``src``, identity-transform, write ``dst``; one at a time.

    Returns:
        per-object latencies, seconds.
    """
    lat = []
    pc = time.perf_counter
    for src, dst in pairs:
        t0 = pc()
        data = _read(src)
        _write(dst, bytes(data))  # the "transform": identity (bytes() of bytes is free)
        lat.append(pc() - t0)
    return lat


@dataclass
class RawStats:
    """What one raw pass did: per-object latencies (s) and bytes echoed."""

    latencies_s: list[float]
    bytes_echoed: int


async def raw_loop(url: str, pairs: Sequence[tuple[str, str]], client: str = "aiohttp") -> RawStats:
    """The raw pipeline (module docstring): one ws connection, one object in flight.

    Args:
        url: the echo server's ws URL.
        pairs: ``(src file, dst file)``; ``dst`` is created (overwritten).
        client: one of :data:`CLIENT_IMPLS`.

    Raises:
        RawPipeError: an echoed message differs in length from what was sent.
    """
    if client == "aiohttp":
        return await _raw_aiohttp(url, pairs)
    if client == "websockets":
        return await _raw_websockets(url, pairs)
    if client == "websockets-sync":
        return _raw_websockets_sync(url, pairs)
    raise ValueError(f"unknown client {client!r}; choose from {CLIENT_IMPLS}")


def _bad(src: str, sent: int, got: object) -> RawPipeError:
    n = len(got) if hasattr(got, "__len__") else "?"  # type: ignore[arg-type]
    return RawPipeError(f"echo of {src}: sent {sent} bytes, got {type(got).__name__} of {n}")


async def _raw_aiohttp(url: str, pairs: Sequence[tuple[str, str]]) -> RawStats:
    import aiohttp

    lat = []
    total = 0
    pc = time.perf_counter
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url, max_msg_size=0, autoping=False, heartbeat=None, compress=0) as ws:
            for src, dst in pairs:
                t0 = pc()
                data = _read(src)
                await ws.send_bytes(data)
                msg = await ws.receive()
                out = msg.data
                if msg.type != aiohttp.WSMsgType.BINARY or len(out) != len(data):
                    raise _bad(src, len(data), out)
                _write(dst, out)
                total += len(out)
                lat.append(pc() - t0)
    return RawStats(lat, total)


async def _raw_websockets(url: str, pairs: Sequence[tuple[str, str]]) -> RawStats:
    from websockets.asyncio.client import connect

    lat = []
    total = 0
    pc = time.perf_counter
    async with connect(url, max_size=None, compression=None, ping_interval=None, max_queue=None) as ws:
        for src, dst in pairs:
            t0 = pc()
            data = _read(src)
            await ws.send(data)
            out = await ws.recv()
            if not isinstance(out, bytes) or len(out) != len(data):
                raise _bad(src, len(data), out)
            _write(dst, out)
            total += len(out)
            lat.append(pc() - t0)
    return RawStats(lat, total)


def _raw_websockets_sync(url: str, pairs: Sequence[tuple[str, str]]) -> RawStats:
    from websockets.sync.client import connect

    lat = []
    total = 0
    pc = time.perf_counter
    with connect(url, max_size=None, compression=None) as ws:
        for src, dst in pairs:
            t0 = pc()
            data = _read(src)
            ws.send(data)
            out = ws.recv()
            if not isinstance(out, bytes) or len(out) != len(data):
                raise _bad(src, len(data), out)
            _write(dst, out)
            total += len(out)
            lat.append(pc() - t0)
    return RawStats(lat, total)


if __name__ == "__main__":
    serve_main()
