"""Storage target: the node that holds objects and (later) runs ETL pods.

Public REST subset served here (AIStore ``ais/tgtobj.go``):

- ``PUT|GET|HEAD|DELETE /v1/objects/<bck>/<obj>``: object I/O; GET honours a
  single ``Range``, and ``archpath`` or ``archregx``/``archmode`` (one file of a
  shard, or a TAR of its matches: :mod:`.archive`), also with ``etl_name`` and
  ``archpath``; metadata goes out in the ``ais-*`` headers.
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
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web

from aioetl.engine.core.names import bck_key, bck_uri, is_remote, validate_obj_name
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.auth import TARGET_INTERNAL, cluster_auth_middleware
from aioetl.engine.node.httpd import error_middleware, json_response, read_json, split_obj_path
from aioetl.engine.node.serve import serve_until_signalled, write_ready_file
from aioetl.engine.scheduler.offline import OfflineJobs
from aioetl.engine.scheduler.receipts import Receipts
from aioetl.engine.target import archive
from aioetl.engine.target.backend import Backends
from aioetl.engine.target.etl import EtlManager
from aioetl.engine.target.objects import ArchQuery, ObjectIO, md_headers, parse_arch_query
from aioetl.engine.target.peers import Peers
from aioetl.engine.target.pods import LocalProcessRuntime, PodRuntime
from aioetl.engine.target.remote import RemoteObjects
from aioetl.engine.target.services import ClusterView, NodeInfo
from aioetl.engine.target.storage import Store, remove_trash_async
from aioetl.errors import AioetlError, BadRequest, NotFound, obj_not_found

__all__ = ["LSO_PAGE_ENCODER", "Target", "TargetConfig", "md_headers", "run_target"]

log = structlog.get_logger("aioetl.target")

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


@dataclass
class _ListSession:
    """One listing's sorted ``(name, fqn)`` pairs, kept across its pages.

    With ``arch`` (the list flag ``LS_ARCH_DIR``) shards are expanded lazily, when a
    page reaches them: their members are inserted as ``(shard/member, "")`` right
    where they sort. A shard's members form one contiguous block in name order (no
    object name can start with ``<shard>/``: the shard is a file), so one slice
    insertion per shard keeps the list sorted and a continuation token that lands
    between two members of a shard resumes right after it.
    """

    names: list[tuple[str, str]]
    touched: float = field(default_factory=time.monotonic)
    arch: bool = False
    prefix: str = ""
    expanded: set[str] = field(default_factory=set)  # shards whose members are in ``names``
    member_size: dict[str, int] = field(default_factory=dict)  # member entry name -> size
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _expand(self, i: int, label: str) -> None:
        """Insert the members of the shard at ``names[i]`` (once); a shard that cannot be
        listed (corrupt, unreadable) stays a plain entry. Blocking (reads the shard)."""
        shard, fqn = self.names[i]
        self.expanded.add(shard)
        try:
            members = archive.list_members(fqn, archive.detect_format(shard), label=label)
        except (AioetlError, OSError) as e:
            self.expanded.discard(shard)
            self.member_size[shard] = -1  # tried: not a listable shard
            log.warning("shard not listed", shard=label, error=str(e))
            return
        block: dict[str, int] = {}
        for m in members:
            try:
                name = archive.lso_entry_name(shard, m.name)
            except AioetlError:
                continue
            if name.startswith(self.prefix):
                block[name] = m.size
        self.member_size.update(block)
        at = bisect.bisect_left(self.names, (shard + "/", ""))
        self.names[at:at] = [(n, "") for n in sorted(block)]

    def _expandable(self, name: str, fqn: str) -> bool:
        return (bool(fqn) and name not in self.expanded and name not in self.member_size
                and archive.format_by_ext(name) is not None)

    def page(self, token: str, pagesize: int, label: Any) -> tuple[list[tuple[str, str]], bool]:
        """The next ``pagesize`` pairs after ``token`` and whether more follow; expands the
        shards it meets (and, first, any shard whose name is a prefix of ``token``, whose
        members may sort after it). Blocking with ``arch`` (reads shards); ``label(name)``
        names a shard in messages."""
        names = self.names
        if self.arch and token:
            for ext in archive.FILE_EXTENSIONS:
                k = token.find(ext)
                while k >= 0:
                    cand = token[: k + len(ext)]
                    j = bisect.bisect_left(names, (cand, ""))
                    if j < len(names) and names[j][0] == cand and self._expandable(*names[j]):
                        self._expand(j, label(cand))
                    k = token.find(ext, k + 1)
        i = bisect.bisect_right(names, (token, "\U0010ffff")) if token else 0
        j = i
        while j < len(names) and j - i < pagesize:
            if self.arch and self._expandable(*names[j]):
                self._expand(j, label(names[j][0]))
            j += 1
        return names[i:j], j < len(names)


class Target:
    """One storage target: objects on mountpaths behind an aiohttp app.

    The composition root of a target process: it builds the services
    (:mod:`aioetl.engine.target.services`) and hands each component the ones it
    uses; no component holds the target itself.

    Args:
        cfg: the target's configuration.
        runtime: the pod runtime (default: local processes under ``cfg.data_dir``);
            tests pass their own.
        backends: the remote backends (default: S3 from the AWS environment, :mod:`.backend`).
    """

    def __init__(self, cfg: TargetConfig, runtime: PodRuntime | None = None,
                 backends: Backends | None = None) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.node = NodeInfo(cfg.node_id, cfg.gateway_url, cfg.data_dir or os.path.dirname(cfg.mountpaths[0]))
        self.store = Store(cfg.mountpaths)
        self.cluster = ClusterView(cfg.node_id, bmd=self.store.load_bmd_copy() or {"version": 0, "buckets": {}})
        self.peers = Peers(self.cluster, cfg.gateway_url, cfg.cluster_secret)
        self.receipts = Receipts()  # the receive side of every job's direct puts here
        self.remote = RemoteObjects(self.store, self.cluster, backends)
        self.objects = ObjectIO(cfg.node_id, self.store, self.receipts, self.remote)
        self.runtime: PodRuntime = runtime or LocalProcessRuntime(self.node.data_dir)
        self.jobs = OfflineJobs(self.node, self.cluster, self.store, self.peers, self.receipts, self.remote)
        self.etl = EtlManager(self.node, self.cluster, self.store, self.objects, self.peers, self.runtime, self.jobs)
        self.jobs.etls = self.etl
        self._lists: dict[str, _ListSession] = {}
        self.log = log.bind(target=cfg.node_id)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def smap(self) -> Smap | None:
        return self.cluster.smap

    @property
    def bmd(self) -> dict[str, Any]:
        return self.cluster.bmd

    def _background(self, coro: Any, what: str) -> None:
        """Run ``coro`` as a task the target keeps a reference to (cancelled at shutdown);
        its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.log.warning(f"{what} failed", error=str(t.exception()))

        task.add_done_callback(done)

    async def _cancel_background(self, _: web.Application) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
        app.on_cleanup.append(self._cancel_background)
        return app

    # -- helpers -----------------------------------------------------------
    def _misdirected(self, request: web.Request, bck: str, obj: str) -> None:
        """Raise a 307 to the HRW owner when that is another target (stale client map)."""
        owner = self.cluster.owner(bck, obj)
        if owner is not None:
            raise web.HTTPTemporaryRedirect(owner.url + request.raw_path)

    def _obj(self, request: web.Request) -> tuple[str, str]:
        """``(bucket key, object)`` of an object request (``?provider=`` picks the provider)."""
        name, obj = split_obj_path(request)
        bck = bck_key(request.query.get("provider", ""), name)
        self.cluster.check_bck(bck)
        validate_obj_name(obj)
        self._misdirected(request, bck, obj)
        return bck, obj

    @staticmethod
    def _latest(request: web.Request) -> bool:
        return request.query.get("latest-ver", "").lower() in ("true", "1")

    # -- objects -----------------------------------------------------------
    async def put_object(self, request: web.Request) -> web.StreamResponse:
        """Store the body atomically; a failed or cut upload leaves nothing."""
        bck, obj = self._obj(request)
        if "object_to" in request.query:
            return await self.etl.copy_object(request, bck, obj)
        xid = request.query.get("uuid", "")
        md = await self.objects.receive(request, bck, obj, xid=xid)  # remote buckets: written through
        if xid:
            self.jobs.count_in(xid, md.size)
        return web.Response(status=200)


    async def get_object(self, request: web.Request) -> web.StreamResponse:
        """GET (or inline ETL) of an object; a remote bucket's object is cached first
        (cold GET, or a changed one with ``latest-ver``, :mod:`.remote`)."""
        bck, obj = self._obj(request)
        if is_remote(bck):
            await self.remote.ensure(bck, obj, latest=self._latest(request))
        aq = parse_arch_query(request.query, obj)
        if aq is not None and request.query.get("etl_name"):
            return await self._etl_member(request, bck, obj, aq)
        if request.query.get("etl_name"):
            return await self.etl.inline_get(request, bck, obj)
        if aq is not None:
            return await self.objects.serve_archive(request, bck, obj, aq)
        return await self.objects.serve(request, bck, obj)

    async def _etl_member(self, request: web.Request, bck: str, obj: str, aq: ArchQuery) -> web.StreamResponse:
        """``etl_name`` with ``archpath`` on GET: transform one member of a shard.

        The member is extracted (streamed) into a work file on the shard's mountpath,
        which the pod is sent as the FQN (lent like an object's file when the pod is
        confined; hpull is answered here too, not redirected), and the pod's output is
        the answer. The work file is removed when the reply is read; cancelling loses
        nothing else.

        Raises:
            BadRequest: ``archregx``/``archmode`` with ``etl_name`` (one member only), or a ``Range``.
            NotFound: no such shard or member.
            EtlFailed: the pod failed (424).
        """
        if not aq.archpath:
            raise BadRequest("etl_name takes one archived file (archpath), not archregx/archmode")
        if request.headers.get("Range"):
            raise AioetlError("Range is not supported with archpath and etl_name", status=501)
        inst = self.etl.get(request.query["etl_name"])
        pipeline = self.etl.pipeline_urls(self.etl.parse_pipeline(request.query.get("etl_pipeline", "")))
        fd, _md, fqn = self.store.open_object(bck, obj)
        os.close(fd)
        loop = asyncio.get_running_loop()
        label = bck_uri(bck, obj)
        wf = self.store.open_work(bck, obj)
        try:
            def extract() -> int:
                fmt = archive.detect_format(obj, mime=aq.mime, path=fqn)
                with archive.open_member(fqn, fmt, aq.archpath, label=label) as src:
                    while chunk := src.read_chunk():
                        wf.write(chunk)
                return wf.size

            size = await loop.run_in_executor(None, extract)
            comm = inst.comm
            assert comm is not None
            member = f"{obj}/{aq.archpath}"
            try:
                async with comm.send(bck, member, fqn=wf.path, etl_args=request.query.get("etl_args", ""),
                                     pipeline=pipeline) as reply:
                    data = await reply.read()
            except AioetlError as e:
                inst.errors.add(bck_uri(bck, member), e.message, e.status)
                raise
            inst.obj_count += 1
            inst.in_bytes += size
            inst.out_bytes += len(data)
        finally:
            wf.abort()
        return web.Response(body=data, content_type="application/octet-stream")


    async def head_object(self, request: web.Request) -> web.StreamResponse:
        """HEAD; a remote object not cached here is answered from the remote (``ais-present:
        false``), with ``latest-ver`` a cached one is checked against the remote first."""
        bck, obj = self._obj(request)
        props = request.query.get("props", "")
        if is_remote(bck):
            if self._latest(request):
                await self.remote.ensure(bck, obj, latest=True)
            elif not self.store.has(bck, obj):
                return self.objects.head_remote(bck, obj, await self.remote.head(bck, obj), props)
        return await self.objects.head(bck, obj, props)


    async def delete_object(self, request: web.Request) -> web.StreamResponse:
        """DELETE; for a remote bucket the remote object and the cached copy (AIStore),
        with ``?evict=true`` (an aioetl extension, as ``evict-listrange`` for one object)
        the cached copy only."""
        bck, obj = self._obj(request)
        if is_remote(bck):
            if request.query.get("evict", "").lower() == "true":
                if not self.remote.evict(bck, obj):
                    raise obj_not_found(bck, obj)
            else:
                await self.remote.delete(bck, obj)
            return web.Response(status=200)
        self.store.delete(bck, obj)
        return web.Response(status=200)

    # -- listing -----------------------------------------------------------
    async def list_page(self, request: web.Request) -> web.StreamResponse:
        """One sorted page of this target's objects (intra-cluster).

        Body: ``{"uuid", "prefix", "token", "pagesize", "flags"}``; entries strictly
        after ``token`` in name order. A listing session (``uuid``) keeps the
        sorted names, so paging a large bucket walks the disk once. With ``flags``
        holding ``LS_ARCH_DIR`` the shards met are listed too (:class:`_ListSession`).

        Returns (msgpack): ``{"entries": [[name, size, cksum, version, atime_ns, custom], ...], "more": bool}``;
        with ``LS_ARCH_DIR`` each entry has a 7th field, its archive flags (:meth:`_arch_rows`).
        """
        bck = request.match_info["bck"]
        what = request.query.get("what", "")
        msg = await read_json(request)
        if what == "remote-head":  # before the bucket is in the BMD: the gateway asks first
            be, _ = self.remote.backend(bck)
            await be.head_bucket(bck, msg.get("props") if isinstance(msg.get("props"), dict) else None)
            return web.Response(body=LSO_PAGE_ENCODER.encode({"ok": True}), content_type="application/msgpack")
        self.cluster.check_bck(bck)
        if what == "remote-page":
            return await self._remote_page(bck, msg)
        if what == "present":
            return self._present(bck, msg)
        if what == "remote-summary":
            be, props = self.remote.backend(bck)
            n = size = 0
            async for batch in be.list_all(bck, props, str(msg.get("prefix") or "")):
                n += len(batch)
                size += sum(e.size for e in batch)
            return web.Response(body=LSO_PAGE_ENCODER.encode({"count": n, "size": size}),
                                content_type="application/msgpack")
        if what == "summary":
            return await self._summary(bck, str(msg.get("prefix", "")))
        uuid, prefix = str(msg.get("uuid", "")), str(msg.get("prefix", ""))
        token, pagesize = str(msg.get("token", "")), int(msg.get("pagesize", 0) or 10000)
        arch = bool(int(msg.get("flags") or 0) & archive.LS_ARCH_DIR)
        now = time.monotonic()
        for k in [k for k, s in self._lists.items() if now - s.touched > LIST_CACHE_TTL_S]:
            del self._lists[k]
        key = f"{uuid}\x00{bck}\x00{prefix}\x00{int(arch)}"
        sess = self._lists.get(key) if uuid else None
        loop = asyncio.get_running_loop()
        if sess is None:
            names = await loop.run_in_executor(None, lambda: sorted(self.store.iter_names(bck, prefix)))
            sess = _ListSession(names, arch=arch, prefix=prefix)
            if uuid:
                self._lists[key] = sess
        sess.touched = now
        async with sess.lock:  # a page may expand shards: one page of a session at a time
            if arch:
                chunk, more = await loop.run_in_executor(
                    None, sess.page, token, pagesize, lambda n: bck_uri(bck, n))
            else:
                chunk, more = sess.page(token, pagesize, None)
        if not more and uuid:
            self._lists.pop(key, None)
        if arch:
            rows = self._arch_rows(bck, sess, chunk)
        else:
            rows = [[n, m.size, m.cksum, m.version, m.atime_ns, m.custom]
                    for n, m in self.store.list_page_entries(bck, chunk)]
        body = LSO_PAGE_ENCODER.encode({"entries": rows, "more": more})
        return web.Response(body=body, content_type="application/msgpack")

    def _arch_rows(self, bck: str, sess: _ListSession, chunk: list[tuple[str, str]]) -> list[list[Any]]:
        """Page rows with a 7th field, the entry's archive flags: ``ENTRY_IS_ARCHIVE`` on an
        expanded shard, ``ENTRY_IN_ARCH`` on a member (``[name, size, "", 0, 0, {}, flags]``)."""
        objs = dict(self.store.list_page_entries(bck, [(n, f) for n, f in chunk if f]))
        rows: list[list[Any]] = []
        for n, f in chunk:
            if not f:
                rows.append([n, sess.member_size[n], "", 0, 0, {}, archive.ENTRY_IN_ARCH])
            elif (m := objs.get(n)) is not None:
                flags = archive.ENTRY_IS_ARCHIVE if n in sess.expanded else 0
                rows.append([n, m.size, m.cksum, m.version, m.atime_ns, m.custom, flags])
        return rows

    async def _remote_page(self, bck: str, msg: dict[str, Any]) -> web.StreamResponse:
        """One page of a remote bucket's listing, as the remote gives it (intra-cluster).

        Body: ``{"prefix", "token", "pagesize"}`` (``token``: list after this name).
        Returns (msgpack): ``{"entries": [[name, size, etag, mtime_ns], ...], "more": bool}``.
        """
        be, props = self.remote.backend(bck)
        entries, more = await be.list_page(bck, props, str(msg.get("prefix") or ""), str(msg.get("token") or ""),
                                           int(msg.get("pagesize") or 1000))
        body = {"entries": [[e.name, e.size, e.etag, e.mtime_ns] for e in entries], "more": more}
        return web.Response(body=LSO_PAGE_ENCODER.encode(body), content_type="application/msgpack")

    def _present(self, bck: str, msg: dict[str, Any]) -> web.StreamResponse:
        """Which of ``msg["names"]`` are cached here (intra-cluster): ``{"present": {name:
        [size, cksum, version, atime_ns, custom]}}`` (msgpack)."""
        names = [str(n) for n in (msg.get("names") or [])]
        found = {}
        for n in names:
            try:
                m = self.store.head(bck, n)
            except (NotFound, OSError):
                continue
            except AioetlError:
                continue
            found[n] = [m.size, m.cksum, m.version, m.atime_ns, m.custom]
        return web.Response(body=LSO_PAGE_ENCODER.encode({"present": found}), content_type="application/msgpack")

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
            if self.cluster.smap is None or smap.version >= self.cluster.smap.version:
                self.cluster.smap = smap
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
            self.cluster.bmd = bmd

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
        body = {"daemon_id": self.node_id, "daemon_type": "target", "url": self.url}
        deadline = time.monotonic() + 60
        while True:
            try:
                async with self.peers.session.post(f"{self.cfg.gateway_url}/v1/cluster/join", json=body) as r:
                    if r.status == 200:
                        self.apply_meta(await r.json(), joining=True)
                        return
                    text = await r.text()
                    raise RuntimeError(f"gateway refused join: {r.status} {text}")
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


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
        t.node.url = url
        await t.peers.start()  # intra-cluster calls only (gateway, peers); pods get their own session
        await t.join()
        write_ready_file(cfg.run_dir, cfg.node_id, url)
        t.log.info("target ready", url=url, mountpaths=cfg.mountpaths)

    async def close_session(_: web.Application) -> None:
        await t.peers.close()

    app.on_cleanup.append(close_session)
    await serve_until_signalled(app, cfg.host, cfg.port, started)
