"""The ETL half of a target: pods, communicators, inline transforms, ``_object``.

Intra-cluster routes (gateway -> target):

- ``POST /v1/etl/_init`` ``{"msg", "secret", "xid"}``: start this target's pod and
  wait until ready (phase one of the gateway's two-phase init).
- ``DELETE /v1/etl/<name>``: stop the pod (its process tree) and forget it.
- ``GET /v1/etl``, ``GET /v1/etl/<name>/details?uuid=``, ``/logs``, ``/health``,
  ``/metrics``: local state, aggregated by the gateway.

Pod-facing (AIStore ``ais/tgtetl.go``):

- ``GET|HEAD|PUT /v1/etl/_object/<etl>/<secret>/<PathEscape(uname)>``: pods fetch
  objects (hpull) and direct-put results here; a wrong secret is refused (401).

Inline transform: ``GET /v1/objects/<b>/<o>?etl_name=..&etl_args=..&etl_pipeline=..``
streams the object through the pod (hpush, ws) or redirects the client to the
pod (hpull). Object copy through an ETL: ``PUT ...?object_to=<uname>&etl_name=..``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import secrets
from typing import Any
from urllib.parse import unquote

import aiohttp
import structlog
from aiohttp import web

from aioetl.communicators.target.comm import CommFactory, Communicator, EtlFailed, Reply, make_communicator
from aioetl.engine.core.etl import EtlEvent, EtlSpec, EtlStage, etl_not_found, next_stage, parse_init_msg
from aioetl.engine.core.names import bck_uri, is_remote, make_uname, uname_key, validate_obj_name
from aioetl.engine.node.httpd import json_response, read_json
from aioetl.engine.scheduler.delivery import Sinks, plan
from aioetl.engine.target.objects import ObjectIO
from aioetl.engine.target.peers import Peers
from aioetl.engine.target.pods import LocalPod, PodRuntime
from aioetl.engine.target.remote import RemoteObjects
from aioetl.engine.target.services import ClusterView, JobControl, NodeInfo
from aioetl.engine.target.storage import FqnLender, Store
from aioetl.errors import AioetlError, BadRequest, ClientError, NotFound
from aioetl.xactions.errs import ObjErrs

__all__ = ["EtlInstance", "EtlManager"]

log = structlog.get_logger("aioetl.target.etl")

INLINE_BUFFER_BYTES = 4 << 20  # inline replies up to this size are read whole before answering


class Unauthorized(ClientError):
    status = 401


class EtlInstance:
    """One ETL on this target: its spec, pod, communicator, inline stats and errors."""

    def __init__(self, spec: EtlSpec, secret: str, xid: str) -> None:
        self.spec = spec
        self.secret = secret
        self.xid = xid
        self.pod: LocalPod | None = None
        self.comm: Communicator | None = None
        self.lender: FqnLender | None = None  # a confined pod reads only what is lent
        self.stage = EtlStage.INITIALIZING
        self.errors = ObjErrs()
        self.obj_count = 0
        self.in_bytes = 0
        self.out_bytes = 0
        self.abort_reason = ""

    def info(self) -> dict[str, Any]:
        return {"id": self.spec.name, "xaction_id": self.xid, "stage": self.stage,
                "obj_count": self.obj_count, "in_bytes": self.in_bytes, "out_bytes": self.out_bytes}


class EtlManager:
    """All ETLs of one target (the ETL registry).

    Args:
        node: this target's identity (id, URL, gateway).
        cluster: its cluster view (bucket checks, HRW owners).
        store: its object store (FQNs; bytes for copies).
        objects: object bytes over HTTP (the pods' ``_object`` route).
        peers: intra-cluster client (gateway notices, PUTs to owners).
        runtime: the pod runtime.
        jobs: the job registry (aborts the jobs of a stopped ETL; job errors).
        make_comm: builds a pod's communicator (tests pass a fault-injecting one).
    """

    def __init__(self, node: NodeInfo, cluster: ClusterView, store: Store, objects: ObjectIO, peers: Peers,
                 runtime: PodRuntime, jobs: JobControl, make_comm: CommFactory = make_communicator) -> None:
        self.node = node
        self.cluster = cluster
        self.store = store
        self.objects = objects
        self.peers = peers
        self.remote = objects.remote or RemoteObjects(store, cluster)  # the target shares its own
        self.sinks = Sinks(store, peers, self.remote)
        self.runtime = runtime
        self.jobs = jobs
        self.make_comm = make_comm
        self.etls: dict[str, EtlInstance] = {}
        self.pod_session: aiohttp.ClientSession | None = None
        self._inits: dict[str, asyncio.Lock] = {}
        self._notifications: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_route("POST", "/v1/etl/_init", self.h_init)
        r.add_route("GET", "/v1/etl", self.h_list)
        r.add_route("*", "/v1/etl/_object/{tail:.+}", self.h_object)
        r.add_route("DELETE", "/v1/etl/{name}", self.h_stop)
        r.add_route("GET", "/v1/etl/{name}/details", self.h_details)
        r.add_route("GET", "/v1/etl/{name}/logs", self.h_logs)
        r.add_route("GET", "/v1/etl/{name}/health", self.h_health)
        r.add_route("GET", "/v1/etl/{name}/metrics", self.h_metrics)
        app.on_cleanup.append(self._on_cleanup)

    async def _session(self) -> aiohttp.ClientSession:
        if self.pod_session is None:
            conn = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=60, force_close=False)
            self.pod_session = aiohttp.ClientSession(connector=conn, auto_decompress=False)
        return self.pod_session

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop everything this registry runs (at target shutdown)."""
        for name in list(self.etls):
            await self.stop(name)
        for task in list(self._notifications):
            task.cancel()
        await asyncio.gather(*self._notifications, return_exceptions=True)
        if self.pod_session is not None:
            await self.pod_session.close()

    # -- lifecycle -----------------------------------------------------------
    def get(self, name: str) -> EtlInstance:
        """The running ETL ``name``; raises the SDK-recognized 404 otherwise."""
        inst = self.etls.get(name)
        if inst is None or inst.stage is not EtlStage.RUNNING:
            raise etl_not_found(name)
        return inst

    async def h_init(self, request: web.Request) -> web.StreamResponse:
        doc = await read_json(request)
        spec = parse_init_msg(doc.get("msg"))
        secret, xid = str(doc.get("secret") or ""), str(doc.get("xid") or "")
        if not secret:
            raise BadRequest("init without a secret")
        inst = await self.init(spec, secret, xid)
        assert inst.pod is not None
        return json_response({"target_id": self.node.node_id, "pod_url": inst.pod.url, "pid": inst.pod.pid,
                              "pid_namespace": inst.pod.pid_namespace})

    async def init(self, spec: EtlSpec, secret: str, xid: str) -> EtlInstance:
        """Start ``spec``'s pod here (replacing a running one of the same name) and its
        communicator; returns the running instance.

        Raises:
            PodError: the pod did not start (the instance is dropped, nothing is left).
        """
        lock = self._inits.setdefault(spec.name, asyncio.Lock())
        async with lock:
            if spec.name in self.etls:
                await self.stop(spec.name)
            inst = EtlInstance(spec, secret, xid)
            self.etls[spec.name] = inst
            try:
                if self.runtime.confined:
                    inst.lender = FqnLender([mp.path for mp in self.store.mountpaths], spec.name)
                inst.pod = await self.runtime.start(
                    spec, target_id=self.node.node_id, target_url=self.node.url, secret=secret,
                    on_exit=functools.partial(self._on_pod_exit, spec.name),
                    read_dirs=inst.lender.dirs if inst.lender else (),
                )
                session = await self._session()
                inst.comm = self.make_comm(spec.comm_type, spec.name, inst.pod.url, spec.obj_timeout_s, session,
                                           lender=inst.lender, n_conns=2)
            except BaseException:
                self.etls.pop(spec.name, None)
                if inst.lender is not None:
                    inst.lender.close()
                raise
            inst.stage = next_stage(inst.stage, EtlEvent.READY)
        log.info("etl running", etl=spec.name, target=self.node.node_id, pod=inst.pod.url,
                 pid_namespace=inst.pod.pid_namespace)
        return inst

    async def stop(self, name: str) -> bool:
        inst = self.etls.pop(name, None)
        if inst is None:
            return False
        inst.stage = next_stage(inst.stage, EtlEvent.STOP)
        self.jobs.abort(etl=name, err=f'etl job "{name}" stopped')
        if inst.comm is not None:
            await inst.comm.close()
        if inst.pod is not None:
            await inst.pod.stop()
        if inst.lender is not None:
            inst.lender.close()
        self.runtime.forget(self.node.node_id, name)
        return True

    async def h_stop(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not await self.stop(name):
            raise etl_not_found(name)
        return web.Response(status=200)

    async def _on_pod_exit(self, name: str, pod: LocalPod) -> None:
        """A pod died on its own: mark the ETL aborted here and tell the gateway."""
        inst = self.etls.get(name)
        if inst is None or inst.pod is not pod:
            return
        reason = f"pod of etl job \"{name}\" on target {self.node.node_id} exited with code {pod.proc.returncode}"
        inst.stage = next_stage(inst.stage, EtlEvent.FAIL)
        inst.abort_reason = reason
        self.jobs.abort(etl=name, err=reason)
        if inst.comm is not None:
            await inst.comm.close()
        # tell the gateway from a task of our own: it will call back (DELETE) to stop this pod
        task = asyncio.get_running_loop().create_task(self._notify_aborted(name, reason))
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

    async def _notify_aborted(self, name: str, reason: str) -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, RuntimeError):  # RuntimeError: shutting down
            await self.peers.post_gateway(f"/v1/etl/{name}/_aborted", {"target_id": self.node.node_id, "error": reason})

    # -- info ----------------------------------------------------------------
    async def h_list(self, request: web.Request) -> web.StreamResponse:
        return json_response([i.info() for i in self.etls.values()])

    def _any(self, name: str) -> EtlInstance:
        inst = self.etls.get(name)
        if inst is None:
            raise etl_not_found(name)
        return inst

    async def h_details(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        uuid = request.query.get("uuid", "")
        inst = self.etls.get(name)
        errs: list[dict[str, Any]] = []
        if uuid:
            errs = self.jobs.obj_errors(uuid)
        elif inst is not None:
            errs = inst.errors.to_list()
        return json_response({"target_id": self.node.node_id, "obj_errors": errs,
                              "stage": inst.stage if inst else "", "info": inst.info() if inst else None})

    async def h_logs(self, request: web.Request) -> web.StreamResponse:
        inst = self._any(request.match_info["name"])
        data = inst.pod.logs() if inst.pod else b""
        return json_response({"target_id": self.node.node_id, "logs": base64.b64encode(data).decode()})

    async def h_health(self, request: web.Request) -> web.StreamResponse:
        inst = self._any(request.match_info["name"])
        phase = inst.pod.phase() if inst.pod else "Unknown"
        return json_response({"target_id": self.node.node_id, "health_status": phase})

    async def h_metrics(self, request: web.Request) -> web.StreamResponse:
        inst = self._any(request.match_info["name"])
        m = inst.pod.metrics() if inst.pod else {"cpu": 0.0, "mem": 0}
        return json_response({"target_id": self.node.node_id, **m})

    # -- pipeline --------------------------------------------------------------
    def pipeline_urls(self, names: list[str]) -> list[str]:
        """Pod URLs of the pipeline stages on this target; 404 for a missing stage."""
        return [self.get(n).pod.url for n in names if n]  # type: ignore[union-attr]

    @staticmethod
    def parse_pipeline(value: str) -> list[str]:
        return [n.strip() for n in value.split(",") if n.strip()]

    # -- inline GET --------------------------------------------------------------
    async def inline_get(self, request: web.Request, bck: str, obj: str) -> web.StreamResponse:
        """Transform one object on GET (hpush/ws: stream through; hpull: 307 to the pod)."""
        name = request.query.get("etl_name", "")
        inst = self.get(name)
        stages = self.parse_pipeline(request.query.get("etl_pipeline", ""))
        pipeline = self.pipeline_urls(stages)
        etl_args = request.query.get("etl_args", "")
        md = self.store.head(bck, obj)  # 404 before bothering the pod
        fqn = self.store.fqn(bck, obj)
        comm = inst.comm
        assert comm is not None
        cname = bck_uri(bck, obj)
        try:
            url = comm.redirect_url(make_uname(bck, obj), fqn, etl_args)
            if url is not None:  # hpull: the client fetches the result from the pod itself
                if pipeline:
                    raise BadRequest("inline transform pipeline not supported for hpull://")
                inst.obj_count += 1
                inst.in_bytes += md.size
                raise web.HTTPTemporaryRedirect(url)
            async with comm.send(bck, obj, fqn=fqn, etl_args=etl_args, pipeline=pipeline) as reply:
                inst.obj_count += 1
                inst.in_bytes += md.size
                return await self._relay(request, inst, reply)
        except AioetlError as e:
            inst.errors.add(cname, e.message, e.status)
            raise

    async def _relay(self, request: web.Request, inst: EtlInstance, reply: Reply) -> web.StreamResponse:
        """Answer an inline GET with the pod's reply, all or nothing.

        Up to :data:`INLINE_BUFFER_BYTES` the reply is read whole first, so a pod that
        fails mid-body gets an honest error status (424). A larger one is streamed;
        if it then breaks, the client connection is aborted, so the client sees a
        cut transfer (Content-Length or chunked framing unmet), never a short or
        padded body with 200.

        Raises:
            EtlFailed: the reply broke before anything was sent to the client (424).
        """
        head: list[bytes] = []
        n = 0
        chunks = reply.chunks()
        async for chunk in chunks:  # errors here: nothing sent yet, an honest 424
            head.append(chunk)
            n += len(chunk)
            if n > INLINE_BUFFER_BYTES:
                break
        else:
            inst.out_bytes += n
            return web.Response(body=b"".join(head), content_type="application/octet-stream")
        out = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        if reply.size is not None:
            out.content_length = reply.size
        await out.prepare(request)
        try:
            for chunk in head:
                await out.write(chunk)
            async for chunk in chunks:
                await out.write(chunk)
                n += len(chunk)
        except EtlFailed as e:
            inst.errors.add(reply.what, e.message, e.status)
            log.warning("inline transform failed after the reply started: client connection aborted",
                        etl=inst.spec.name, obj=reply.what, error=e.message)
            if request.transport is not None:
                request.transport.abort()
            return out
        await out.write_eof()
        inst.out_bytes += n
        return out

    async def transform_bytes(self, inst: EtlInstance, bck: str, obj: str, etl_args: str,
                              pipeline: list[str]) -> bytes:
        """Transform one local object and return the bytes.

        Raises:
            EtlFailed: the pod failed, or answered "delivered" where the bytes were asked for.
        """
        comm = inst.comm
        assert comm is not None
        async with comm.send(bck, obj, fqn=self.store.fqn(bck, obj), etl_args=etl_args, pipeline=pipeline) as reply:
            return await reply.read()

    async def copy_object(self, request: web.Request, bck: str, obj: str) -> web.StreamResponse:
        """``PUT ...?object_to=<uname>[&etl_name=..]``: copy, transformed, to another object.

        A remote source is cached first (``latest-ver=true``: revalidated); with
        ``synchronize=true`` a source the remote no longer has removes the destination
        object too (AIStore ``apc.QparamSync``), and the answer is the source's 404.
        """
        dst_bck, dst_obj = uname_key(request.query["object_to"])
        validate_obj_name(dst_obj)
        self.cluster.check_bck(dst_bck)
        if is_remote(bck):
            q = request.query
            sync = q.get("synchronize", "").lower() == "true"
            try:
                await self.remote.ensure(bck, obj, latest=sync or q.get("latest-ver", "").lower() == "true")
            except NotFound:
                if sync:
                    await self._drop_dst(dst_bck, dst_obj)
                raise
        self.store.head(bck, obj)
        name = request.query.get("etl_name", "")
        if name:
            inst = self.get(name)
            pipeline = self.pipeline_urls(self.parse_pipeline(request.query.get("etl_pipeline", "")))
            try:
                data = await self.transform_bytes(inst, bck, obj, request.query.get("etl_args", ""), pipeline)
            except AioetlError as e:
                inst.errors.add(bck_uri(bck, obj), e.message, e.status)
                raise
            inst.obj_count += 1
        else:
            data = await asyncio.get_running_loop().run_in_executor(None, self.store.read_bytes, bck, obj)
        await self.sinks.put_bytes(plan(self.cluster, dst_bck, dst_obj), dst_bck, dst_obj, data)
        return web.Response(status=200)

    async def _drop_dst(self, bck: str, obj: str) -> None:
        """Remove ``bck/obj`` wherever HRW keeps it (here, or through its owner)."""
        owner = self.cluster.owner(bck, obj)
        if owner is None:
            with contextlib.suppress(NotFound):
                if is_remote(bck):
                    await self.remote.delete(bck, obj)
                else:
                    self.store.delete(bck, obj)
            return
        await self.peers.delete_object(owner.url, bck, obj)

    # -- /v1/etl/_object -----------------------------------------------------------
    async def h_object(self, request: web.Request) -> web.StreamResponse:
        """Pods' access to objects: ``<etl>/<secret>/<PathEscape(uname)>``."""
        raw = request.raw_path.partition("?")[0]
        rest = raw[len("/v1/etl/_object/"):]
        parts = rest.split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise BadRequest(f"invalid URL path {raw[:200]!r}: expected /v1/etl/_object/<etl>/<secret>/<uname>")
        name, secret, uname = parts[0], parts[1], unquote(parts[2])
        inst = self.etls.get(name)
        if inst is None:
            raise etl_not_found(name)
        if not secrets.compare_digest(secret, inst.secret):
            raise Unauthorized(f'etl job "{name}": unrecognized request source (bad secret)')
        bck, obj = uname_key(uname)
        self.cluster.check_bck(bck)
        validate_obj_name(obj)
        if request.method == "GET":
            return await self.objects.serve(request, bck, obj)
        if request.method == "HEAD":
            return await self.objects.head(bck, obj)
        if request.method == "PUT":
            xid = request.query.get("uuid", "")
            md = await self.objects.receive(request, bck, obj, xid=xid, receipt=bool(xid))
            if xid:
                self.jobs.count_in(xid, md.size)
            return web.Response(status=200)
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "PUT"])

