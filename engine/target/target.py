"""Storage target: the node that holds objects and (later) runs ETL pods.

Public REST subset served here (AIStore ``ais/tgtobj.go``):

- ``PUT|GET|HEAD|DELETE /v1/objects/<bck>/<obj>``: object I/O; GET honours a
  single ``Range``; metadata goes out in the ``ais-*`` headers.
- ``GET /v1/health``, ``GET /v1/daemon?what=capacity|smap|snode``.

Intra-cluster routes (gateway -> target, not part of AIStore's public API; the
cluster secret is required on them, :mod:`aioetl.engine.node.auth`):

- ``PUT /v1/metasync``: the gateway pushes a new smap and BMD.
- ``GET /v1/buckets/<bck>?what=lsopage``: one sorted page of local objects.

A request for an object that HRW places on another target is answered with a
307 to that target, so a client with a stale map still reaches the data.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
import structlog
from aiohttp import web

from aioetl.engine.core.names import make_uname, validate_bck_name, validate_obj_name
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.auth import TARGET_INTERNAL, auth_headers, cluster_auth_middleware
from aioetl.engine.node.httpd import error_middleware, iter_body, json_response, read_json, split_obj_path
from aioetl.engine.target.storage import CKSUM_TYPE, LomMD, Store, remove_trash_async
from aioetl.errors import AioetlError, BadRequest, NotFound, RangeNotSatisfiable, bck_not_found

__all__ = ["LSO_PAGE_ENCODER", "Target", "TargetConfig", "md_headers", "run_target"]

log = structlog.get_logger("aioetl.target")

SMALL_OBJECT = 256 * 1024  # read/write whole below this; stream above
CHUNK = 1024 * 1024
LIST_CACHE_TTL_S = 120.0

LSO_PAGE_ENCODER = msgspec.msgpack.Encoder()


@dataclass(kw_only=True)
class TargetConfig:
    """Everything a target process needs; built once at the entry point.

    Attributes:
        node_id: stable target id (HRW hashes it).
        mountpaths: object directories.
        gateway_url: where to join.
        host, port: listen address; port 0 = ephemeral.
        run_dir: where the ready file ``<node_id>.json`` is written.
        cluster_secret: the cluster secret (:mod:`aioetl.engine.node.auth`): required on the
            intra-cluster routes served here, sent on calls to the gateway and peers.
    """

    node_id: str
    mountpaths: list[str]
    gateway_url: str
    host: str = "127.0.0.1"
    port: int = 0
    run_dir: str = ""
    data_dir: str = ""
    cluster_secret: str

    def __post_init__(self) -> None:
        if not self.cluster_secret:
            raise ValueError("TargetConfig needs a cluster secret")


def md_headers(md: LomMD, bck: str, obj: str, location: str, props: str = "") -> dict[str, str]:
    """The ``ais-*`` object headers AIStore sends on GET and HEAD; ``Last-Modified`` and
    ``ETag`` only when ``props`` asks for them (HEAD v2)."""
    h = {
        "ais-checksum-type": CKSUM_TYPE if md.cksum else "none",
        "ais-checksum-value": md.cksum,
        "ais-version": str(md.version),
        "ais-atime": str(md.atime_ns),
        "ais-name": obj,
        "ais-bucket-name": bck,
        "ais-bucket-provider": "ais",
        "ais-location": location,
        "ais-mirror-copies": "1",
        "ais-present": "true",
    }
    if md.custom:
        h["ais-custom-md"] = ", ".join(f"{k}={v}" for k, v in sorted(md.custom.items()))
    if "last-modified" in props:
        h["Last-Modified"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(md.atime_ns / 1e9))
    if "etag" in props:
        h["ETag"] = md.cksum
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


@dataclass
class _ListSession:
    names: list[tuple[str, str]]
    touched: float = field(default_factory=time.monotonic)


class Target:
    """One storage target: objects on mountpaths behind an aiohttp app.

    Args:
        cfg: the target's configuration.
    """

    def __init__(self, cfg: TargetConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.store = Store(cfg.mountpaths)
        self.smap: Smap | None = None
        self.bmd: dict[str, Any] = self.store.load_bmd_copy() or {"version": 0, "buckets": {}}
        self.url = ""
        self._lists: dict[str, _ListSession] = {}
        self.session: aiohttp.ClientSession | None = None
        self.log = log.bind(target=cfg.node_id)
        from aioetl.engine.target.etl import EtlManager
        from aioetl.engine.target.pods import LocalProcessRuntime

        self.runtime = LocalProcessRuntime(cfg.data_dir or os.path.dirname(cfg.mountpaths[0]))
        self.etl = EtlManager(self, self.runtime)
        from aioetl.engine.scheduler.offline import OfflineJobs

        self.jobs = OfflineJobs(self)
        self._tasks: set[asyncio.Task[Any]] = set()

    def _background(self, coro: Any, what: str) -> None:
        """Run ``coro`` as a task the target keeps a reference to; its failure is logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.log.warning(f"{what} failed", error=str(t.exception()))

        task.add_done_callback(done)

    # -- app ---------------------------------------------------------------
    def make_app(self) -> web.Application:
        mws = [error_middleware(self.node_id),
               cluster_auth_middleware(self.cfg.cluster_secret, TARGET_INTERNAL, self.node_id)]
        app = web.Application(middlewares=mws, client_max_size=1 << 40)
        r = app.router
        r.add_route("PUT", "/v1/objects/{tail:.+}", self.put_object)
        r.add_route("GET", "/v1/objects/{tail:.+}", self.get_object)
        r.add_route("HEAD", "/v1/objects/{tail:.+}", self.head_object)
        r.add_route("DELETE", "/v1/objects/{tail:.+}", self.delete_object)
        r.add_route("PATCH", "/v1/objects/{tail:.+}", self.patch_object)
        r.add_route("GET", "/v1/buckets/{bck}", self.list_page)
        r.add_route("PUT", "/v1/metasync", self.metasync)
        r.add_route("GET", "/v1/health", self.health)
        r.add_route("GET", "/v1/daemon", self.daemon)
        self.etl.add_routes(app)
        self.jobs.add_routes(app)
        return app

    # -- helpers -----------------------------------------------------------
    def _check_bck(self, bck: str) -> None:
        validate_bck_name(bck)
        if bck not in self.bmd["buckets"]:
            raise bck_not_found(bck)

    def _misdirected(self, request: web.Request, bck: str, obj: str) -> None:
        """Raise a 307 to the HRW owner when that is another target (stale client map)."""
        if self.smap is None or len(self.smap.targets) < 2:
            return
        owner = self.smap.hrw_target(make_uname(bck, obj))
        if owner.daemon_id != self.node_id:
            raise web.HTTPTemporaryRedirect(owner.url + request.raw_path)

    def _obj(self, request: web.Request) -> tuple[str, str]:
        bck, obj = split_obj_path(request)
        self._check_bck(bck)
        validate_obj_name(obj)
        self._misdirected(request, bck, obj)
        return bck, obj

    # -- objects -----------------------------------------------------------
    async def put_object(self, request: web.Request) -> web.StreamResponse:
        """Store the body atomically; a failed or cut upload leaves nothing."""
        bck, obj = self._obj(request)
        if "object_to" in request.query:
            return await self.etl.copy_object(request, bck, obj)
        xid = request.query.get("uuid", "")
        md = await self.receive_object(request, bck, obj, xid=xid)
        if xid:
            self.count_in(xid, md.size)
        return web.Response(status=200)

    async def receive_object(self, request: web.Request, bck: str, obj: str, *, xid: str = "",
                             receipt: bool = False) -> LomMD:
        """Stream a request body into ``bck/obj``: work file, fsync, rename.

        Cancelling (client gone) removes the work file; nothing becomes visible.

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
        receipts = self.jobs.receipts
        if xid:
            receipts.check(xid, key)
        wf = self.store.open_work(bck, obj)
        try:
            async for chunk in iter_body(request):  # a body idle past BODY_IDLE_TIMEOUT_S: 408, cut
                wf.write(chunk)
            if expected is not None and wf.size != expected:
                raise BadRequest(f"short body for \"ais://{bck}/{obj}\": got {wf.size} of {expected} bytes")
            if xid:
                return await receipts.commit(xid, key, wf.finalize, not wf.mpath.volatile, record=receipt)
            if wf.mpath.volatile:
                return wf.finalize()  # tmpfs: fsync is free; a thread hop is not
            # fsync blocks on a disk: run it (and the rename) in a thread
            return await asyncio.get_running_loop().run_in_executor(None, wf.finalize)
        except BaseException as e:
            wf.abort()
            if xid and receipt and isinstance(e, AioetlError):  # the sender learns why at settlement
                receipts.note_failure(xid, key, f"target {self.node_id}: {e.message}")
            raise

    async def get_object(self, request: web.Request) -> web.StreamResponse:
        bck, obj = self._obj(request)
        if request.query.get("etl_name"):
            return await self.etl.inline_get(request, bck, obj)
        return await self.serve_object(request, bck, obj)

    async def serve_object(self, request: web.Request, bck: str, obj: str) -> web.StreamResponse:
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

    async def head_object(self, request: web.Request) -> web.StreamResponse:
        bck, obj = self._obj(request)
        return await self.head_local(bck, obj, request.query.get("props", ""))

    async def head_local(self, bck: str, obj: str, props: str = "") -> web.StreamResponse:
        fd, md, fqn = self.store.open_object(bck, obj)
        os.close(fd)
        headers = md_headers(md, bck, obj, f"{self.node_id}:{fqn}", props)
        headers["Content-Length"] = str(md.size)
        return web.Response(status=200, headers=headers)

    async def delete_object(self, request: web.Request) -> web.StreamResponse:
        bck, obj = self._obj(request)
        self.store.delete(bck, obj)
        return web.Response(status=200)

    async def put_to_owner(self, bck: str, obj: str, data: bytes) -> None:
        """Store ``data`` as ``bck/obj`` on its HRW owner: here, or PUT to the peer."""
        owner = self.smap.hrw_target(make_uname(bck, obj)) if self.smap else None
        if owner is None or owner.daemon_id == self.node_id:
            await asyncio.get_running_loop().run_in_executor(None, self.store.put_bytes, bck, obj, data)
            return
        assert self.session is not None
        url = f"{owner.url}/v1/objects/{quote(bck, safe='')}/{quote(obj, safe='/')}"
        async with self.session.put(url, data=data) as r:
            if r.status >= 400:
                body = await r.read()
                from aioetl.errors import AioetlError

                raise AioetlError(f"peer {owner.daemon_id} refused {bck}/{obj}: {body[:300]!r}", status=r.status)

    def count_in(self, xid: str, size: int) -> None:
        """An object of job ``xid`` landed here from a peer or its pod (``in`` stats)."""
        self.jobs.count_in(xid, size)

    def job_obj_errors(self, xid: str) -> list[dict[str, Any]]:
        """Per-object errors (at most 128) of offline job ``xid`` on this target."""
        return self.jobs.obj_errors(xid)

    # -- listing -----------------------------------------------------------
    async def list_page(self, request: web.Request) -> web.StreamResponse:
        """One sorted page of this target's objects (intra-cluster).

        Body: ``{"uuid", "prefix", "token", "pagesize"}``; entries strictly
        after ``token`` in name order. A listing session (``uuid``) keeps the
        sorted names, so paging a large bucket walks the disk once.

        Returns (msgpack): ``{"entries": [[name, size, cksum, version, atime_ns, custom], ...], "more": bool}``.
        """
        bck = request.match_info["bck"]
        self._check_bck(bck)
        msg = await read_json(request)
        if request.query.get("what") == "summary":
            return await self._summary(bck, str(msg.get("prefix", "")))
        uuid, prefix = str(msg.get("uuid", "")), str(msg.get("prefix", ""))
        token, pagesize = str(msg.get("token", "")), int(msg.get("pagesize", 0) or 10000)
        now = time.monotonic()
        for k in [k for k, s in self._lists.items() if now - s.touched > LIST_CACHE_TTL_S]:
            del self._lists[k]
        key = f"{uuid}\x00{bck}\x00{prefix}"
        sess = self._lists.get(key) if uuid else None
        if sess is None:
            names = await asyncio.get_running_loop().run_in_executor(
                None, lambda: sorted(self.store.iter_names(bck, prefix))
            )
            sess = _ListSession(names)
            if uuid:
                self._lists[key] = sess
        sess.touched = now
        i = bisect.bisect_right(sess.names, (token, "\U0010ffff")) if token else 0
        chunk = sess.names[i : i + pagesize]
        more = i + pagesize < len(sess.names)
        if not more and uuid:
            self._lists.pop(key, None)
        entries = self.store.list_page_entries(bck, chunk)
        body = LSO_PAGE_ENCODER.encode(
            {
                "entries": [[n, m.size, m.cksum, m.version, m.atime_ns, m.custom] for n, m in entries],
                "more": more,
            }
        )
        return web.Response(body=body, content_type="application/msgpack")

    async def _summary(self, bck: str, prefix: str) -> web.StreamResponse:
        def count() -> dict[str, int]:
            n = size = 0
            mn, mx = 0, 0
            for _name, fqn in self.store.iter_names(bck, prefix):
                try:
                    sz = os.stat(fqn).st_size
                except OSError:
                    continue
                mn = sz if n == 0 else min(mn, sz)
                mx = max(mx, sz)
                n += 1
                size += sz
            disks = sum(int(c["total"]) for c in self.store.capacity())  # type: ignore[call-overload]
            return {"count": n, "size": size, "min": mn, "max": mx, "disks": disks}

        doc = await asyncio.get_running_loop().run_in_executor(None, count)
        return web.Response(body=LSO_PAGE_ENCODER.encode(doc), content_type="application/msgpack")

    async def patch_object(self, request: web.Request) -> web.StreamResponse:
        """Set custom metadata (SDK ``set_custom_props``): merge, or replace with ``set-new-custom``."""
        bck, obj = self._obj(request)
        doc = await read_json(request)
        value = doc.get("value") if isinstance(doc, dict) else None
        if not isinstance(value, dict):
            raise BadRequest('expected {"value": {"key": "value", ...}} with the custom metadata')
        replace = request.query.get("set-new-custom", "").lower() == "true"
        self.store.set_custom(bck, obj, {str(k): str(v) for k, v in value.items()}, replace=replace)
        return web.Response(status=200)

    # -- control -----------------------------------------------------------
    async def metasync(self, request: web.Request) -> web.StreamResponse:
        """Accept a newer smap/BMD from the gateway; destroy buckets the BMD dropped."""
        doc = await read_json(request)
        self.apply_meta(doc)
        return web.Response(status=200)

    def apply_meta(self, doc: dict[str, Any], *, joining: bool = False) -> None:
        """Take a newer smap and BMD; destroy the buckets the BMD dropped or recreated.

        Args:
            doc: ``{"smap": ..., "bmd": {"version", "buckets": {name: props}}}``.
            joining: the gateway's answer to this target's join: its BMD is taken
                whatever its version, and compared with the copy this target kept on
                its mountpaths before it went down (as AIStore keeps BMD copies on
                mountpaths), so a bucket destroyed or recreated meanwhile is destroyed
                here too and its old objects never come back.
        """
        if "smap" in doc:
            smap = Smap.from_json(doc["smap"])
            if self.smap is None or smap.version >= self.smap.version:
                self.smap = smap
        bmd = doc.get("bmd")
        if bmd is not None and (joining or bmd["version"] >= self.bmd["version"]):
            old = self.bmd["buckets"]
            new = bmd["buckets"]
            doomed = [b for b, props in old.items() if b not in new or new[b].get("bid") != props.get("bid")]
            if joining:  # bucket directories no BMD copy knows of (e.g. created and destroyed while down)
                doomed += [b for b in self.store.bucket_names_on_disk() if b not in new and b not in old]
            for bck in doomed:
                self.log.info("destroying bucket", bck=bck)
                trash = self.store.destroy_bucket(bck)  # instant rename; removal in a child process
                if trash:
                    self._background(remove_trash_async(trash), f"removing destroyed bucket {bck}")
            if bmd != self.bmd:
                self.store.save_bmd_copy(bmd)
            self.bmd = bmd

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def daemon(self, request: web.Request) -> web.StreamResponse:
        what = request.query.get("what", "snode")
        if what == "capacity":
            return json_response({"node": self.node_id, "mountpaths": self.store.capacity()})
        if what == "smap":
            if self.smap is None:
                raise NotFound("no cluster map yet")
            return json_response(self.smap.to_json())
        if what == "snode":
            return json_response({"daemon_id": self.node_id, "daemon_type": "target", "url": self.url})
        raise BadRequest(f'invalid query "what={what}"')

    # -- lifecycle ---------------------------------------------------------
    async def join(self) -> None:
        """Register with the gateway until it answers; apply the smap+BMD it returns."""
        assert self.session is not None
        body = {"daemon_id": self.node_id, "daemon_type": "target", "url": self.url}
        deadline = time.monotonic() + 60
        while True:
            try:
                async with self.session.post(f"{self.cfg.gateway_url}/v1/cluster/join", json=body) as r:
                    if r.status == 200:
                        self.apply_meta(await r.json(), joining=True)
                        return
                    text = await r.text()
                    raise RuntimeError(f"gateway refused join: {r.status} {text}")
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


def write_ready_file(run_dir: str, node_id: str, url: str) -> None:
    """Announce ``{"pid", "url"}`` in ``<run_dir>/<node_id>.json`` (atomic rename)."""
    if not run_dir:
        return
    os.makedirs(run_dir, exist_ok=True)
    tmp = os.path.join(run_dir, f".{node_id}.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "url": url, "node_id": node_id}, f)
    os.replace(tmp, os.path.join(run_dir, f"{node_id}.json"))


async def serve_until_signalled(app: web.Application, host: str, port: int, on_started: Any) -> None:
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


async def run_target(cfg: TargetConfig) -> None:
    """Process main of a target: clean leftovers, serve, join, wait for a signal."""
    t = Target(cfg)
    killed = t.runtime.cleanup_leftovers(cfg.node_id)
    if killed:
        t.log.info("killed leftover pods of a previous run", count=killed)
    removed = t.store.cleanup_on_start()
    if removed:
        t.log.info("removed leftover work files", count=removed)
    app = t.make_app()

    async def started(url: str) -> None:
        t.url = url
        # intra-cluster calls only (gateway, peers); pods get their own session without it
        t.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=auth_headers(cfg.cluster_secret))
        await t.join()
        write_ready_file(cfg.run_dir, cfg.node_id, url)
        t.log.info("target ready", url=url, mountpaths=cfg.mountpaths)

    async def close_session(_: web.Application) -> None:
        if t.session is not None:
            await t.session.close()

    app.on_cleanup.append(close_session)
    await serve_until_signalled(app, cfg.host, cfg.port, started)
