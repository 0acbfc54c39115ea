"""Running a node's HTTP app as a process: until SIGTERM/SIGINT, announcing itself
in a ready file the launcher waits for (gateway and targets alike)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["serve_until_signalled", "write_ready_file"]


def write_ready_file(run_dir: str, node_id: str, url: str) -> None:
    """Announce ``{"pid", "url"}`` in ``<run_dir>/<node_id>.json`` (atomic rename)."""
    if not run_dir:
        return
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, f".{node_id}.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "url": url, "node_id": node_id}, f)
    os.replace(tmp, os.path.join(run_dir, f"{node_id}.json"))


async def serve_until_signalled(app: web.Application, host: str, port: int,
                                on_started: Callable[[str], Awaitable[None]]) -> None:
    """Run ``app`` until SIGTERM/SIGINT; ``on_started(url)`` runs once listening."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    url = f"http://{host}:{sock.getsockname()[1]}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await on_started(url)
        await stop.wait()
    finally:
        await runner.cleanup()
