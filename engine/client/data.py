"""A small async data client for the CLI and the Python embedding API.

Unlike the aistore SDK (which sends every body to the gateway and follows a
307), this client fetches the smap once and sends object requests straight to
the HRW owner, so a PUT body crosses loopback once.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from aioetl.engine.core.names import make_uname
from aioetl.engine.core.smap import Smap
from aioetl.errors import AioetlError

__all__ = ["ClientError", "DataClient"]


class ClientError(AioetlError, RuntimeError):
    """A request failed; the message carries the server's text and status.

    Under :class:`aioetl.AioetlError` like every error aioetl raises (and still a
    ``RuntimeError``, as it was). Not :class:`aioetl.errors.ClientError`, the
    server's 4xx class: this one is the client's view of any failed request.

    Attributes:
        status: the HTTP status received, or 0 when the gateway or target could not be reached.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}", status=status)


def _message(body: bytes) -> str:
    try:
        doc = msgspec.json.decode(body)
        if isinstance(doc, dict) and "message" in doc:
            return str(doc["message"])
    except msgspec.DecodeError:
        pass
    return body.decode(errors="replace")[:500]


class DataClient:
    """Async client for buckets and objects of one aioetl (or AIStore) gateway.

    Args:
        endpoint: gateway URL.
        timeout_s: per-request total timeout in seconds.
    """

    def __init__(self, endpoint: str, timeout_s: float = 600.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=10)
        self._smap: Smap | None = None

    async def _check(self, r: aiohttp.ClientResponse) -> bytes:
        body = await r.read()
        if r.status >= 400:
            raise ClientError(r.status, _message(body) or r.headers.get("Hdr-Error", ""))
        return body

    async def _req(self, method: str, path: str, **kw: Any) -> bytes:
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as s:
                async with s.request(method, self.endpoint + path, **kw) as r:
                    return await self._check(r)
        except aiohttp.ClientConnectionError as e:
            raise ClientError(0, f"cannot reach {self.endpoint}: {e}") from e

    async def smap(self, session: aiohttp.ClientSession) -> Smap:
        if self._smap is None:
            async with session.get(f"{self.endpoint}/v1/daemon", params={"what": "smap"}) as r:
                self._smap = Smap.from_json(msgspec.json.decode(await self._check(r)))
        return self._smap

    # -- buckets -------------------------------------------------------------
    async def create_bucket(self, bck: str) -> None:
        await self._req("POST", f"/v1/buckets/{bck}", json={"action": "create-bck", "name": "", "value": None})

    async def destroy_bucket(self, bck: str) -> None:
        await self._req("DELETE", f"/v1/buckets/{bck}", json={"action": "destroy-bck", "name": "", "value": None})

    async def list_buckets(self) -> list[str]:
        return [b["name"] for b in msgspec.json.decode(await self._req("GET", "/v1/buckets"))]

    async def list_objects(self, bck: str, prefix: str = "", page_size: int = 0) -> list[dict[str, Any]]:
        """Every entry (msgpack ``LsoEnt`` dicts: ``n``, ``s``, ``cs``, ``v``, ...)."""
        out: list[dict[str, Any]] = []
        uuid, token = "", ""
        while True:
            msg = {"action": "list", "name": "",
                   "value": {"prefix": prefix, "pagesize": page_size, "uuid": uuid, "continuation_token": token}}
            res = msgspec.msgpack.decode(
                await self._req("GET", f"/v1/buckets/{bck}", json=msg, headers={"Accept": "application/msgpack"})
            )
            out.extend(res["Entries"] or [])
            uuid, token = res["UUID"], res["ContinuationToken"]
            if not token:
                return out

    # -- objects -------------------------------------------------------------
    async def _owner_url(self, session: aiohttp.ClientSession, bck: str, obj: str) -> str:
        smap = await self.smap(session)
        return f"{smap.hrw_target(make_uname(bck, obj)).url}/v1/objects/{bck}/{quote(obj, safe='/')}"

    async def put_files(
        self, bck: str, files: Iterable[tuple[Path, str]], *, concurrency: int = 16, progress: bool = False
    ) -> tuple[int, list[tuple[str, str]]]:
        """Upload ``(path, object name)`` pairs concurrently, each straight to its owner.

        Returns:
            ``(bytes uploaded, [(name, error), ...])``; errors do not stop the rest.
        """
        files = list(files)
        total_bytes = sum(p.stat().st_size for p, _ in files)
        errors: list[tuple[str, str]] = []
        done_bytes = 0
        done_files = 0
        sem = asyncio.Semaphore(concurrency)
        prog = None
        task_id = None
        if progress:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            # the bar counts bytes (so the download and speed columns are right); files are a field
            prog = Progress(TextColumn("{task.description} {task.fields[files]}", markup=False), BarColumn(),
                            DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                            transient=False, disable=not sys.stderr.isatty())
            task_id = prog.add_task("put", total=total_bytes, files=f"0/{len(files)}")
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(timeout=self.timeout, connector=conn) as s:
            await self.smap(s)

            async def one(path: Path, name: str) -> None:
                nonlocal done_bytes, done_files
                async with sem:
                    size = 0
                    try:
                        url = await self._owner_url(s, bck, name)
                        size = path.stat().st_size
                        with open(path, "rb") as f:
                            data = f.read() if size <= 1 << 20 else f
                            async with s.put(url, data=data, headers={"Content-Length": str(size)}) as r:
                                await self._check(r)
                        done_bytes += size
                    except (ClientError, aiohttp.ClientError, OSError) as e:
                        errors.append((name, str(e)))
                    done_files += 1
                    if prog is not None and task_id is not None:
                        prog.update(task_id, advance=size, files=f"{done_files}/{len(files)}")

            if prog is not None:
                prog.start()
            try:
                await asyncio.gather(*(one(p, n) for p, n in files))
            finally:
                if prog is not None:
                    prog.stop()
        return done_bytes, errors

    async def get_bytes(self, bck: str, obj: str) -> bytes:
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            async with s.get(await self._owner_url(s, bck, obj)) as r:
                return await self._check(r)

    async def get_to(self, bck: str, obj: str, dest: Path | None) -> int:
        """Stream an object to ``dest`` (written atomically) or to stdout. Returns bytes."""
        n = 0
        async with aiohttp.ClientSession(timeout=self.timeout) as s:
            async with s.get(await self._owner_url(s, bck, obj)) as r:
                if r.status >= 400:
                    await self._check(r)
                if dest is None:
                    out = sys.stdout.buffer
                    async for chunk in r.content.iter_chunked(1 << 20):
                        out.write(chunk)
                        n += len(chunk)
                    out.flush()
                    return n
                tmp = f"{dest}.part.{os.getpid()}"
                try:
                    with open(tmp, "wb") as f:
                        async for chunk in r.content.iter_chunked(1 << 20):
                            f.write(chunk)
                            n += len(chunk)
                    os.replace(tmp, dest)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
        return n
