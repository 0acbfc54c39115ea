"""The load generator of the pod benchmark, in its own process: ``python -m perf.podload``.

It drives an ETL pod the way an AIStore target does for hpush:
``PUT <pod>/<bck>/<obj>?etl_fqn=<url.PathEscape(FQN), query-encoded again>``
with an empty body (FQN mode), or the same ``PUT`` without ``etl_fqn`` and with
the object bytes as the body (body mode), ``concurrency`` requests in flight
over keep-alive connections, alone in this process so that the benchmark
process (which owns the pods) is not what limits it. Two clients, both on uvloop:

- ``raw`` (default): a minimal HTTP/1.1 keep-alive client on asyncio protocols
  (one request in flight per connection, no pipelining; requests prebuilt;
  replies parsed by ``Content-Length``). About a quarter of aiohttp's CPU per
  request, so that on 2 cores the pod, not the client, sets the pace;
- ``aiohttp``: ``aiohttp.ClientSession`` (for reference).

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.

- ``{"op": "setup", "objects": [{"path": "bck/obj", "fqn": "/abs/file"}, ...]}``:
  reads every file once (bodies for body mode, expected bytes for checks);
  replies ``{"ok": true, "objects": n}``.
- ``{"op": "pass", "url": "http://127.0.0.1:P", "mode": "fqn"|"body",
  "count": N, "concurrency": C, "check_every": K, "client": "raw"|"aiohttp"}``: sends ``N`` PUTs cycling
  through the objects; every reply must be 200 with the object's length, and
  every ``K``-th is compared byte for byte (the echo transform). Replies
  ``{"ok": true, "seconds", "latencies_s": [...], "cpu_s"}`` or
  ``{"ok": false, "error": "..."}``.
- ``{"op": "quit"}``: exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import quote

__all__ = ["RawHttpConnection", "main", "pod_url_for"]


class RawHttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (see the module docstring).

    Replies must carry ``Content-Length`` (both pods' buffered replies do).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.head_end = -1
        self.length = -1
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.head_end < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i]).lower()
            self.status = int(head[9:12])
            j = head.find(b"\r\ncontent-length:")
            if j < 0:
                self._fail(ValueError(f"reply without Content-Length: {head[:200]!r}"))
                return
            k = head.find(b"\r\n", j + 2)
            self.length = int(head[j + 17 : k if k >= 0 else len(head)])
            self.head_end = i + 4
        end = self.head_end + self.length
        if len(buf) >= end:
            body = bytes(buf[self.head_end : end])
            del buf[:end]
            self.head_end = -1
            w, self.waiter = self.waiter, None
            if w is not None and not w.done():
                w.set_result((self.status, body))

    def _fail(self, e: Exception) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(e)
        if self.transport is not None:
            self.transport.close()

    def request(self, parts: tuple[bytes, ...]) -> asyncio.Future[tuple[int, bytes]]:
        """Send one prebuilt request; the future gets ``(status, body)``."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(parts)
        return self.waiter


def pod_url_for(base: str, path: str, fqn: str | None) -> str:
    """The hpush request URL an AIStore target sends (FQN mode when ``fqn`` is given).

    ``etl_fqn`` is ``url.PathEscape(fqn)`` and then query-encoded again, so the
    pod sees ``%2F...`` after one decoding (protocol reference §1.3, §1.7).
    """
    from aioetl.communicators.target.comm import fqn_param

    url = f"{base}/{quote(path, safe='/')}"
    if fqn:
        url += "?etl_fqn=" + quote(fqn_param(fqn), safe="")
    return url


class _Load:
    def __init__(self) -> None:
        self.objects: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self.session: Any = None

    async def setup(self, objects: list[dict[str, str]]) -> dict[str, Any]:
        import aiohttp

        self.objects = objects
        self.bodies = []
        for o in objects:
            with open(o["fqn"], "rb") as f:
                self.bodies.append(f.read())
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=120, sock_connect=10), auto_decompress=False)
        return {"ok": True, "objects": len(objects)}

    async def run_pass(self, url: str, mode: str, count: int, concurrency: int, check_every: int,
                       client: str = "raw") -> dict[str, Any]:
        if client == "raw":
            return await self.run_pass_raw(url, mode, count, concurrency, check_every)
        import yarl

        n_obj = len(self.objects)
        if not n_obj:
            return {"ok": False, "error": "no setup"}
        fqn_mode = mode == "fqn"
        urls = [yarl.URL(pod_url_for(url, o["path"], o["fqn"] if fqn_mode else None), encoded=True)
                for o in self.objects]
        bodies = self.bodies
        s = self.session
        lat: list[float] = []
        nxt = [0]
        pc = time.perf_counter

        async def worker() -> None:
            while True:
                i = nxt[0]
                if i >= count:
                    return
                nxt[0] = i + 1
                k = i % n_obj
                t0 = pc()
                async with s.put(urls[k], data=b"" if fqn_mode else bodies[k]) as r:
                    out = await r.read()
                    status = r.status
                lat.append(pc() - t0)
                if status != 200:
                    raise RuntimeError(f"PUT {urls[k]}: {status} {out[:300]!r}")
                if len(out) != len(bodies[k]) or (check_every and i % check_every == 0 and out != bodies[k]):
                    raise RuntimeError(f"PUT {urls[k]}: {len(out)} bytes that differ from the object")

        cpu0 = time.process_time()
        t0 = pc()
        try:
            await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        seconds = pc() - t0
        return {"ok": True, "seconds": seconds, "latencies_s": lat, "cpu_s": time.process_time() - cpu0}

    async def run_pass_raw(self, url: str, mode: str, count: int, concurrency: int, check_every: int) -> dict[str, Any]:
        from urllib.parse import urlsplit

        n_obj = len(self.objects)
        if not n_obj:
            return {"ok": False, "error": "no setup"}
        u = urlsplit(url)
        host, port = u.hostname or "127.0.0.1", int(u.port or 80)
        fqn_mode = mode == "fqn"
        bodies = self.bodies
        reqs: list[tuple[bytes, ...]] = []
        for o, b in zip(self.objects, bodies, strict=True):
            target = pod_url_for("", o["path"], o["fqn"] if fqn_mode else None)
            n = 0 if fqn_mode else len(b)
            head = f"PUT {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {n}\r\n\r\n".encode()
            reqs.append((head,) if fqn_mode else (head, b))
        loop = asyncio.get_running_loop()
        conc = max(1, min(concurrency, count))
        conns = []
        for _ in range(conc):
            _t, proto = await loop.create_connection(RawHttpConnection, host, port)
            conns.append(proto)
        lat: list[float] = []
        nxt = [0]
        pc = time.perf_counter

        async def worker(c: RawHttpConnection) -> None:
            while True:
                i = nxt[0]
                if i >= count:
                    return
                nxt[0] = i + 1
                k = i % n_obj
                t0 = pc()
                status, out = await c.request(reqs[k])
                lat.append(pc() - t0)
                if status != 200:
                    raise RuntimeError(f"PUT {self.objects[k]['path']}: {status} {out[:300]!r}")
                if len(out) != len(bodies[k]) or (check_every and i % check_every == 0 and out != bodies[k]):
                    raise RuntimeError(f"PUT {self.objects[k]['path']}: {len(out)} bytes that differ from the object")

        cpu0 = time.process_time()
        t0 = pc()
        try:
            await asyncio.gather(*(worker(c) for c in conns))
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        finally:
            for c in conns:
                if c.transport is not None:
                    c.transport.close()
        seconds = pc() - t0
        return {"ok": True, "seconds": seconds, "latencies_s": lat, "cpu_s": time.process_time() - cpu0}

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    load = _Load()
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "quit":
                return
            try:
                if op == "setup":
                    rep = await load.setup(cmd["objects"])
                elif op == "pass":
                    rep = await load.run_pass(cmd["url"], cmd["mode"], int(cmd["count"]), int(cmd["concurrency"]),
                                              int(cmd.get("check_every", 97)), cmd.get("client", "raw"))
                else:
                    rep = {"ok": False, "error": f"unknown op {op!r}"}
            except Exception as e:
                rep = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            sys.stdout.write(json.dumps(rep) + "\n")
            sys.stdout.flush()
    finally:
        await load.close()


def main() -> None:
    """Process entry (module docstring)."""
    from .common import run_loop

    run_loop(_main())


if __name__ == "__main__":
    main()
