"""A small async data client for the CLI and the Python embedding API.

Unlike the aistore SDK (which sends every body to the gateway and follows a
307), this client fetches the smap once and sends object requests straight to
the HRW owner, so a PUT body crosses loopback once.

Every method names a bucket by its *key* (:mod:`aioetl.engine.core.names`): the
bare name for an ``ais://`` bucket, ``aws:NAME`` (``bck_key("aws", NAME)``, or
``bck_key("s3", NAME)``) for a remote S3 bucket. :func:`bck_path` turns a key into
the URL path and ``?provider=`` that the gateway and the targets take. A remote
bucket is added to the cluster on first use (AIStore semantics); since objects go
straight to targets, which only serve buckets they know, the client first asks
the gateway about a remote bucket (``HEAD``, once per client) and then talks to
the owners.
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

from aioetl.engine.core.names import AIS, is_remote, make_uname, split_bck_key
from aioetl.engine.core.smap import Smap
from aioetl.errors import AioetlError

__all__ = ["ClientError", "DataClient", "bck_path"]


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


def bck_path(bck: str) -> tuple[str, dict[str, str]]:
    """``(URL path, query)`` of bucket key ``bck``: ``"b"`` -> ``("/v1/buckets/b", {})``,
    ``"aws:b"`` -> ``("/v1/buckets/b", {"provider": "aws"})`` (pure).

    Objects are under ``"/v1/objects/" + name`` with the same query."""
    provider, name = split_bck_key(bck)
    return f"/v1/buckets/{name}", ({} if provider == AIS else {"provider": provider})


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
        self._known_remote: set[str] = set()

    async def _check(self, r: aiohttp.ClientResponse) -> bytes:
        body = await r.read()
        if r.status >= 400:
            raise ClientError(r.status, _message(body or r.headers.get("Hdr-Error", "").encode()))
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
        """Create an ``ais://`` bucket (a remote key gets the gateway's 400: remote buckets are made remotely)."""
        path, q = bck_path(bck)
        await self._req("POST", path, params=q, json={"action": "create-bck", "name": "", "value": None})

    async def destroy_bucket(self, bck: str) -> None:
        """Destroy an ``ais://`` bucket and its objects (a remote key gets the gateway's 400: evict it)."""
        path, q = bck_path(bck)
        await self._req("DELETE", path, params=q, json={"action": "destroy-bck", "name": "", "value": None})

    async def head_bucket(self, bck: str) -> None:
        """Check that the bucket exists; a remote one is checked with the remote and added on first use.

        Raises:
            ClientError: 404 (no such bucket, here or in the remote), 403 (the remote refused
                the credentials), ... with the server's reason.
        """
        path, q = bck_path(bck)
        await self._req("HEAD", path, params=q)
        if is_remote(bck):
            self._known_remote.add(bck)

    async def evict_bucket(self, bck: str, *, keep_md: bool = False) -> None:
        """Drop every cached copy of remote bucket ``bck``; the remote keeps its objects.
        Without ``keep_md`` the bucket also leaves the cluster's metadata (it comes back on next use)."""
        path, q = bck_path(bck)
        await self._req("DELETE", path, params={**q, "keep_bck_md": "true" if keep_md else "false"},
                        json={"action": "evict-remote-bck", "name": "", "value": None})
        self._known_remote.discard(bck)

    async def list_buckets(self) -> list[str]:
        """The keys of the buckets the cluster has: ``ais://`` names, and ``aws:NAME`` for remote
        buckets already added (by use)."""
        from aioetl.engine.core.names import bck_key

        return [bck_key(str(b.get("provider") or AIS), b["name"])
                for b in msgspec.json.decode(await self._req("GET", "/v1/buckets"))]

    async def list_objects(self, bck: str, prefix: str = "", page_size: int = 0, *,
                           cached_only: bool = False) -> list[dict[str, Any]]:
        """Every entry (msgpack ``LsoEnt`` dicts: ``n``, ``s``, ``cs``, ``v``, ``f``...).

        A remote bucket lists the remote, each entry flagged cached (``f & 1 << 6``) when a
        target has a copy; with ``cached_only``, only the cached objects (AIStore ``LsCached``)."""
        path, q = bck_path(bck)
        out: list[dict[str, Any]] = []
        uuid, token = "", ""
        while True:
            msg = {"action": "list", "name": "",
                   "value": {"prefix": prefix, "pagesize": page_size, "uuid": uuid, "continuation_token": token,
                             "flags": "1" if cached_only else "0"}}
            res = msgspec.msgpack.decode(
                await self._req("GET", path, params=q, json=msg, headers={"Accept": "application/msgpack"})
            )
            out.extend(res["Entries"] or [])
            uuid, token = res["UUID"], res["ContinuationToken"]
            if not token:
                return out

    # -- objects -------------------------------------------------------------
    async def _owner_url(self, session: aiohttp.ClientSession, bck: str, obj: str) -> str:
        """The object's URL on its HRW owner, ``?provider=`` included; a remote bucket is
        made known to the cluster first (:meth:`head_bucket`), once per client."""
        if is_remote(bck) and bck not in self._known_remote:
            path, q = bck_path(bck)
            async with session.head(self.endpoint + path, params=q) as r:
                await self._check(r)
            self._known_remote.add(bck)
        smap = await self.smap(session)
        provider, name = split_bck_key(bck)
        url = f"{smap.hrw_target(make_uname(bck, obj)).url}/v1/objects/{name}/{quote(obj, safe='/')}"
        return url if provider == AIS else f"{url}?provider={provider}"

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
