"""Cached copies of remote objects on their HRW owner (AIStore ``ais/tgtobj.go`` cold GET,
``core/lom.go`` CheckRemoteMD, ``ais/tgtbck.go`` evict).

A remote bucket's object lives in the remote backend (:mod:`.backend`); a target
keeps a copy of the objects HRW gives it, fetched on first use:

- **cold GET** (:meth:`RemoteObjects.ensure`): the object is streamed from the
  remote into a work file and becomes visible only when complete (the same
  work file -> fsync -> rename as every write, :mod:`.storage`), with the
  remote's ETag, version and last-modified in its custom metadata
  (``source``, ``ETag``, ``version``, ``LastModified``). Concurrent cold GETs of
  one object share one fetch.
- **warm GET**: a cached copy is served without a remote request.
- **latest** (``?latest-ver=true``): the cached copy is checked against the
  remote's HEAD and fetched again when it changed; when the remote object is
  gone, the cached copy is dropped and the answer is 404 (AIStore's
  ``EntryVerRemoved`` case).
- **write-through** (:meth:`RemoteObjects.write_through`): a PUT to a remote
  bucket is uploaded from its complete work file first, then cached; a failed
  upload leaves neither.
- **delete** removes the remote object, then the cached copy; **evict** drops
  the cached copy only.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aioetl.engine.core.names import split_bck_key
from aioetl.engine.target.backend import Backend, Backends, RemoteMD
from aioetl.engine.target.services import ClusterView
from aioetl.engine.target.storage import LomMD, Store, WorkFile, write_in_thread
from aioetl.errors import NotFound

__all__ = ["RemoteObjects"]


class RemoteObjects:
    """The remote-bucket side of one target's object I/O (module docstring).

    Args:
        store: the target's object store.
        cluster: its BMD (bucket props: ``extra.aws``).
        backends: the remote backends.

    Attributes:
        cold_gets, cold_bytes: objects and bytes fetched from remotes since start.
    """

    def __init__(self, store: Store, cluster: ClusterView, backends: Backends | None = None) -> None:
        self.store = store
        self.cluster = cluster
        self.backends = backends or Backends()
        self._inflight: dict[tuple[str, str], asyncio.Future[LomMD]] = {}
        self.cold_gets = 0
        self.cold_bytes = 0

    def backend(self, bck: str) -> tuple[Backend, dict[str, Any]]:
        """The backend of bucket key ``bck`` and the bucket's props."""
        provider, _ = split_bck_key(bck)
        props = self.cluster.bmd["buckets"].get(bck) or {}
        return self.backends.get(provider), props

    async def head(self, bck: str, obj: str) -> RemoteMD:
        """The remote's metadata of ``bck/obj`` (NotFound, Forbidden, RemoteError...)."""
        be, props = self.backend(bck)
        return await be.head_object(bck, props, obj)

    async def ensure(self, bck: str, obj: str, *, latest: bool = False) -> tuple[LomMD, bool]:
        """A cached copy of ``bck/obj``, fetched when absent (or changed, with ``latest``).

        Returns:
            ``(metadata, fetched)``: ``fetched`` is true when this call (or one it
            joined) read the object from the remote.

        Raises:
            NotFound: not in the remote (with ``latest``: also drops a stale cached copy).
            Forbidden, RemoteError, RemoteUnavailable: the remote failed (after retries).
        """
        try:
            md = self.store.head(bck, obj)
        except NotFound:
            return await self._fetch_once(bck, obj), True
        if not latest:
            return md, False
        try:
            rmd = await self.head(bck, obj)
        except NotFound:
            with contextlib.suppress(NotFound):
                self.store.delete(bck, obj)
            raise
        if rmd.same_as(md.custom):
            return md, False
        return await self._fetch_once(bck, obj), True

    async def _fetch_once(self, bck: str, obj: str) -> LomMD:
        key = (bck, obj)
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            md = await self._fetch(bck, obj)
            fut.set_result(md)
            return md
        except BaseException as e:
            fut.set_exception(e if isinstance(e, Exception) else RuntimeError("cold GET cancelled"))
            fut.exception()  # retrieved: a fetch nobody else waited for must not warn
            raise
        finally:
            del self._inflight[key]

    async def _fetch(self, bck: str, obj: str) -> LomMD:
        be, props = self.backend(bck)
        wf = self.store.open_work(bck, obj)
        try:
            rmd = await be.get_object(bck, props, obj, wf.write)
            md = await self._finalize(wf, rmd.custom(be.provider))
        except BaseException:
            wf.abort()
            raise
        self.cold_gets += 1
        self.cold_bytes += md.size
        return md

    @staticmethod
    async def _finalize(wf: WorkFile, custom: dict[str, str]) -> LomMD:
        if wf.mpath.volatile:
            return wf.finalize(custom)
        return await write_in_thread(wf.finalize, custom)

    async def write_through(self, wf: WorkFile) -> dict[str, str]:
        """Upload a complete work file of a remote bucket; the custom metadata its cached
        copy is to keep. The caller finalizes (or aborts) ``wf``.

        Raises:
            Forbidden, RemoteError, RemoteUnavailable: the upload failed.
        """
        be, props = self.backend(wf.bck)
        rmd = await be.put_object(wf.bck, props, wf.obj, wf.path)
        return rmd.custom(be.provider)

    async def put_bytes(self, bck: str, obj: str, data: bytes) -> LomMD:
        """Write ``data`` through to the remote (uploaded from memory), then cache it."""
        be, props = self.backend(bck)
        rmd = await be.put_object(bck, props, obj, data)
        wf = self.store.open_work(bck, obj)
        try:
            wf.write(data)
            return await self._finalize(wf, rmd.custom(be.provider))
        except BaseException:
            wf.abort()
            raise

    async def delete(self, bck: str, obj: str) -> None:
        """Delete the remote object, then the cached copy (absent either way is fine
        for the cache; a remote 404 is NotFound as for any object)."""
        be, props = self.backend(bck)
        cached = True
        try:
            self.store.head(bck, obj)
        except NotFound:
            cached = False
        if not cached:
            await be.head_object(bck, props, obj)  # 404 when it is not there either
        await be.delete_object(bck, props, obj)
        with contextlib.suppress(NotFound):
            self.store.delete(bck, obj)

    def evict(self, bck: str, obj: str) -> bool:
        """Drop the cached copy of ``bck/obj``; True if there was one."""
        try:
            self.store.delete(bck, obj)
            return True
        except NotFound:
            return False
