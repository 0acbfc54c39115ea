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
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web

from aioetl.engine.core.names import bck_key, is_remote, validate_obj_name
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.auth import TARGET_INTERNAL, cluster_auth_middleware
from aioetl.engine.node.httpd import error_middleware, json_response, read_json, split_obj_path
from aioetl.engine.node.serve import serve_until_signalled, write_ready_file
from aioetl.engine.scheduler.offline import OfflineJobs
from aioetl.engine.scheduler.receipts import Receipts
from aioetl.engine.target.backend import Backends
from aioetl.engine.target.etl import EtlManager
from aioetl.engine.target.objects import ObjectIO, md_headers
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
    names: list[tuple[str, str]]
    touched: float = field(default_factory=time.monotonic)


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
        if request.query.get("etl_name"):
            return await self.etl.inline_get(request, bck, obj)
        return await self.objects.serve(request, bck, obj)


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

        Body: ``{"uuid", "prefix", "token", "pagesize"}``; entries strictly
        after ``token`` in name order. A listing session (``uuid``) keeps the
        sorted names, so paging a large bucket walks the disk once.

        Returns (msgpack): ``{"entries": [[name, size, cksum, version, atime_ns, custom], ...], "more": bool}``.
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
