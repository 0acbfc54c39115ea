"""Object bytes in and out of a target over HTTP (AIStore ``ais/tgtobj.go``).

:class:`ObjectIO` serves GET (whole, one ``Range``, ``sendfile`` above
:data:`SMALL_OBJECT`), HEAD (the ``ais-*`` headers, :func:`md_headers`) and
receives PUT bodies into work files that become objects only when complete. The
target's public object routes and the pods' ``_object`` route
(:mod:`aioetl.engine.target.etl`) both use it; a direct put of an offline job is
checked against the job's receipts (:mod:`aioetl.engine.scheduler.receipts`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import structlog
from aiohttp import web

from aioetl.engine.core.names import bck_uri, is_remote, split_bck_key
from aioetl.engine.node.httpd import iter_body
from aioetl.engine.scheduler.receipts import Receipts
from aioetl.engine.target import archive
from aioetl.engine.target.backend import RemoteMD
from aioetl.engine.target.storage import CKSUM_TYPE, LomMD, Store, write_in_thread
from aioetl.errors import AioetlError, BadRequest, RangeNotSatisfiable, StorageError, obj_not_found

if TYPE_CHECKING:
    from aioetl.engine.target.remote import RemoteObjects

__all__ = ["CHUNK", "SMALL_OBJECT", "ArchQuery", "ObjectIO", "md_headers", "parse_arch_query", "parse_range"]

log = structlog.get_logger("aioetl.target")

SMALL_OBJECT = 256 * 1024  # read/write whole below this; stream above
CHUNK = 1024 * 1024


def md_headers(md: LomMD, bck: str, obj: str, location: str, props: str = "", *,
               present: bool = True) -> dict[str, str]:
    """The ``ais-*`` object headers AIStore sends on GET and HEAD; ``Last-Modified`` and
    ``ETag`` only when ``props`` asks for them (HEAD v2). ``bck`` is a bucket key;
    ``present`` is false for a remote object not cached here (HEAD answered from the remote)."""
    provider, name = split_bck_key(bck)
    h = {
        "ais-checksum-type": CKSUM_TYPE if md.cksum else "none",
        "ais-checksum-value": md.cksum,
        "ais-version": str(md.version),
        "ais-atime": str(md.atime_ns),
        "ais-name": obj,
        "ais-bucket-name": name,
        "ais-bucket-provider": provider,
        "ais-location": location,
        "ais-mirror-copies": "1" if present else "0",
        "ais-present": "true" if present else "false",
    }
    if md.custom:
        h["ais-custom-md"] = ", ".join(f"{k}={v}" for k, v in sorted(md.custom.items()))
    if "last-modified" in props:
        h["Last-Modified"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(md.atime_ns / 1e9))
    if "etag" in props:
        h["ETag"] = md.custom.get("ETag") or md.cksum
    return h


_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


def parse_range(value: str, size: int) -> tuple[int, int]:
    """Parse one ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range (RFC 7233, as Go's parseRange).

    Returns:
        ``(offset, length)``.

    Raises:
        BadRequest: malformed or multi-range.
        RangeNotSatisfiable: starts past the end, or a zero-length suffix.
    """
    m = _RANGE_RE.fullmatch(value.strip())
    if m is None or (not m[1] and not m[2]):
        raise BadRequest(f"invalid Range header {value!r}: expected a single bytes=a-b range")
    if not m[1]:
        n = int(m[2])
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {value!r} not satisfiable for size {size}")
        return max(0, size - n), min(n, size)
    start = int(m[1])
    if m[2] and int(m[2]) < start:
        raise BadRequest(f"invalid Range header {value!r}: end before start")
    if start >= size:
        raise RangeNotSatisfiable(f"range {value!r} not satisfiable for size {size}")
    end = min(int(m[2]) if m[2] else size - 1, size - 1)
    return start, end - start + 1


@dataclass(frozen=True, slots=True)
class ArchQuery:
    """What a GET asks of a shard (``ais/dpq.go`` ``_arch``): one member, or a TAR of matches.

    Attributes:
        archpath: the member to read (validated, relative to the shard), or ``""``.
        regex: the ``archregx`` pattern (``""`` matches every member).
        mode: the match mode when ``archpath`` is ``""`` (one of ``archive.MATCH_MODES``).
        mime: the ``archmime`` format override (``""``: by extension, then magic).
    """

    archpath: str
    regex: str
    mode: str
    mime: str


def parse_arch_query(query: Mapping[str, str], obj: str) -> ArchQuery | None:
    """The shard part of a GET's query, or None for a plain GET. Pure.

    The SDK sends ``archpath`` and ``archregx`` together (either possibly empty) once an
    ``ArchiveConfig`` is given, and ``archmode`` only with a mode; empty values count as
    absent. ``archpath`` loses one leading ``/`` and a leading ``<obj>/`` (as AIStore).
    A non-empty ``archregx`` without ``archmode`` is a ``prefix`` match (AIStore would
    return the whole shard; the SDK never sends that combination). A ``Range`` with any
    of these is refused by the caller (501, as AIStore's ``debug.Assert(!isArch)``).

    >>> parse_arch_query({"archpath": "/s.tar/a.jpg", "archregx": ""}, "s.tar").archpath
    'a.jpg'

    Raises:
        BadRequest: a bad archpath or mode, or archpath together with a match mode.
    """
    path = query.get("archpath", "")
    regex = query.get("archregx", "")
    mime = query.get("archmime", "")
    has_mode = "archmode" in query
    if not path and not regex and not has_mode:
        return None
    if path:
        if has_mode:
            raise BadRequest(f'archpath="{path}" (match one) and archregx="{regex}" (match many) '
                             "are mutually exclusive")
        rel = archive.relative_archpath(obj, path.removeprefix("/"))
        return ArchQuery(archive.validate_archpath(rel), "", "", mime)
    return ArchQuery("", regex, archive.validate_match_mode(query.get("archmode", "")), mime)


class ObjectIO:
    """Object GET/HEAD/PUT bodies of one target.

    Args:
        node_id: this target (``ais-location`` and error texts name it).
        store: its object store.
        receipts: the receive side of offline jobs' direct puts.
    """

    def __init__(self, node_id: str, store: Store, receipts: Receipts, remote: RemoteObjects | None = None) -> None:
        self.node_id = node_id
        self.store = store
        self.receipts = receipts
        self.remote = remote

    async def receive(self, request: web.Request, bck: str, obj: str, *, xid: str = "",
                      receipt: bool = False) -> LomMD:
        """Stream a request body into ``bck/obj``: work file, fsync, rename.

        Cancelling (client gone) removes the work file; nothing becomes visible. An
        object of a remote bucket is uploaded to the remote from the complete work
        file first and cached only when the upload succeeded (write-through).

        Args:
            xid: the job this object belongs to (``?uuid=``); an object of an aborted
                job, or one its sender has already given up on, is refused
                (:mod:`.receipts`).
            receipt: keep a receipt for the sender to settle (direct puts).

        Raises:
            BadRequest: the body is shorter than its Content-Length.
            RequestTimeout: the client sent nothing for ``BODY_IDLE_TIMEOUT_S`` (408;
                the connection is closed and the work file removed).
            Conflict: refused for job ``xid`` (409).
        """
        expected = request.content_length
        key = f"{bck}/{obj}"
        receipts = self.receipts
        if xid:
            receipts.check(xid, key)
        wf = self.store.open_work(bck, obj)
        try:
            async for chunk in iter_body(request):  # a body idle past BODY_IDLE_TIMEOUT_S: 408, cut
                wf.write(chunk)
            if expected is not None and wf.size != expected:
                raise BadRequest(f"short body for \"{bck_uri(bck, obj)}\": got {wf.size} of {expected} bytes")
            custom: dict[str, str] | None = None
            if self.remote is not None and is_remote(bck):
                custom = await self.remote.write_through(wf)
            if xid:
                return await receipts.commit(xid, key, functools.partial(wf.finalize, custom),
                                             not wf.mpath.volatile, record=receipt)
            if wf.mpath.volatile:
                return wf.finalize(custom)  # tmpfs: fsync is free; a thread hop is not
            # fsync blocks on a disk: run it (and the rename) in a thread
            return await write_in_thread(wf.finalize, custom)
        except BaseException as e:
            wf.abort()
            if xid and receipt and isinstance(e, AioetlError):  # the sender learns why at settlement
                receipts.note_failure(xid, key, f"target {self.node_id}: {e.message}")
            raise

    async def serve(self, request: web.Request, bck: str, obj: str) -> web.StreamResponse:
        """Answer a GET of ``bck/obj`` with its bytes (or one range of them)."""
        fd, md, fqn = self.store.open_object(bck, obj)
        f = os.fdopen(fd, "rb", buffering=0)
        try:
            headers = md_headers(md, bck, obj, f"{self.node_id}:{fqn}")
            headers["Content-Type"] = "application/octet-stream"
            headers["Accept-Ranges"] = "bytes"
            offset, count, status = 0, md.size, 200
            rng = request.headers.get("Range")
            if rng:
                offset, count = parse_range(rng, md.size)
                status = 206
                headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{md.size}"
            if count <= SMALL_OBJECT:
                data = os.pread(fd, count, offset) if count else b""
                return web.Response(status=status, body=data, headers=headers)
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = count
            await resp.prepare(request)
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client went away")
            try:
                await asyncio.get_running_loop().sendfile(transport, f, offset, count)
            except NotImplementedError:
                pos = offset
                while pos < offset + count:
                    chunk = os.pread(fd, min(CHUNK, offset + count - pos), pos)
                    if not chunk:
                        break
                    await resp.write(chunk)
                    pos += len(chunk)
            await resp.write_eof()
            return resp
        finally:
            f.close()

    async def serve_archive(self, request: web.Request, bck: str, obj: str, aq: ArchQuery) -> web.StreamResponse:
        """Answer a GET of one member of the shard ``bck/obj`` or of a TAR of its matches.

        ``aq.archpath``: 200 ``application/octet-stream``, Content-Length = the member's
        size. Otherwise: 200 ``application/x-tar`` (chunked), the matching members in
        shard order. The shard is streamed in chunks (:mod:`.archive`), never held whole.
        A shard that turns out corrupt after the headers went out aborts the connection
        (the client sees a cut transfer, never a short 200).

        Raises:
            NotFound: no such object, member, or no match (before any byte is sent).
            BadRequest: unknown format, bad regex, a corrupt archive (found before the headers).
            AioetlError: 501 with a ``Range``.
        """
        if request.headers.get("Range"):
            raise AioetlError("Range is not supported with archpath, archregx and archmode", status=501)
        fd, md, fqn = self.store.open_object(bck, obj)  # 404 when there is no shard
        os.close(fd)
        label = bck_uri(bck, obj)
        loop = asyncio.get_running_loop()

        def open_source() -> archive.MemberReader | archive.TarOfMatches:
            fmt = archive.detect_format(obj, mime=aq.mime, path=fqn)
            if aq.archpath:
                return archive.open_member(fqn, fmt, aq.archpath, label=label, chunk_bytes=CHUNK)
            return archive.tar_of_matches(fqn, fmt, aq.regex, aq.mode, label=label, chunk_bytes=CHUNK)

        try:
            src = await loop.run_in_executor(None, open_source)
        except FileNotFoundError:
            raise obj_not_found(bck, obj) from None
        except OSError as e:
            raise StorageError(f"failed to read {label}: {e}") from e
        headers = md_headers(md, bck, obj, f"{self.node_id}:{fqn}")
        # the shard's checksum is not the member's: say none rather than mislead a checker
        headers["ais-checksum-type"], headers["ais-checksum-value"] = "none", ""
        if isinstance(src, archive.MemberReader):
            headers["Content-Type"] = "application/octet-stream"
            size = src.size
            if size <= SMALL_OBJECT:
                try:
                    data = await loop.run_in_executor(None, lambda: b"".join(iter(src.read_chunk, b"")))
                finally:
                    src.close()
                return web.Response(status=200, body=data, headers=headers)
        else:
            headers["Content-Type"] = "application/x-tar"
            size = None
        resp = web.StreamResponse(status=200, headers=headers)
        if size is not None:
            resp.content_length = size
        try:
            await resp.prepare(request)
        except BaseException:
            await loop.run_in_executor(None, src.close)
            raise
        try:
            # an early exit (client gone, write error) closes the shard at once, not at GC
            chunks_gen = cast("AsyncGenerator[bytes, None]", archive.aiter_chunks(src))
            async with aclosing(chunks_gen) as chunks:
                async for chunk in chunks:
                    await resp.write(chunk)
        except AioetlError as e:  # corrupt past the headers: cut the transfer
            if request.transport is not None:
                request.transport.abort()
            log.warning("shard read failed after the reply started: connection aborted", obj=label,
                        error=e.message)
            return resp
        await resp.write_eof()
        return resp

    def head_remote(self, bck: str, obj: str, rmd: RemoteMD, props: str = "") -> web.StreamResponse:
        """Answer a HEAD of a remote object not cached here from the remote's metadata
        (``ais-present: false``, as AIStore's HEAD of a cold object)."""
        md = LomMD(size=rmd.size, cksum="", version=1, atime_ns=rmd.mtime_ns, custom=rmd.custom())
        headers = md_headers(md, bck, obj, "", props, present=False)
        headers["ais-version"] = rmd.version
        headers["Content-Length"] = str(rmd.size)
        return web.Response(status=200, headers=headers)

    async def head(self, bck: str, obj: str, props: str = "") -> web.StreamResponse:
        """Answer a HEAD of ``bck/obj`` (its ``ais-*`` headers; ``props`` as in HEAD v2)."""
        fd, md, fqn = self.store.open_object(bck, obj)
        os.close(fd)
        headers = md_headers(md, bck, obj, f"{self.node_id}:{fqn}", props)
        headers["Content-Length"] = str(md.size)
        return web.Response(status=200, headers=headers)
