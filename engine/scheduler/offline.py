"""The per-target scheduler of offline transforms (``etl-bck``, ``etl-listrange``).

On each target, for one job::

    joggers (one per mountpath; or the list/template)   --->  ByteQueue  --->  workers (num_workers)
        walk <mp>/@ais/<src>/%ob with the prefix            items+bytes,        transform through the ETL's
        filter; keep only objects this target owns         high/low marks       communicator, then write
                                                                                 locally / PUT to the peer /
                                                                                 let the pod direct-put

All tasks belong to one task group owned by the job's runner task; aborting
the job cancels that task, which cancels every worker and jogger (in-flight pod
requests are closed; partial work files are removed; nothing partial becomes
visible). The queue admits an item into an empty queue whatever its size, so
backpressure cannot deadlock.

Destinations (AIStore ``ais/tgtobj.go`` §2.1): HRW of the destination uname
picks the owner. When the owner is another target and the ETL supports direct
put (always for ws), its ``_object`` URL is appended to the pipeline, and the
pod delivers the result itself (204 / ws TEXT: counted ``out`` here, ``in`` on
the receiver). Otherwise the result comes back and is written here (``loc``) or
PUT to the owner (``out``), streamed, never held whole (except ws replies,
which arrive as one message).

Intra-cluster routes (gateway -> target): ``POST /v1/xactions/_start``,
``GET /v1/xactions?id=&kind=``, ``POST /v1/xactions/_abort``,
``GET /v1/xactions/<id>/errors`` (the full report, JSON lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from aioetl.communicators.target.comm import Communicator, EtlFailed, EtlRetry
from aioetl.engine.core.etl import WS, EtlStage
from aioetl.engine.core.names import bck_uri, is_remote
from aioetl.engine.node.httpd import json_response, read_json
from aioetl.engine.scheduler.delivery import Delivery, Route, Sinks, direct_put_hop, plan
from aioetl.engine.scheduler.receipts import Receipts
from aioetl.engine.target.etl import EtlInstance, EtlManager
from aioetl.engine.target.peers import Peers
from aioetl.engine.target.remote import RemoteObjects
from aioetl.engine.target.services import ClusterView, NodeInfo
from aioetl.engine.target.storage import Mountpath, Store
from aioetl.errors import AioetlError, BadRequest, InsufficientStorage, NotFound, TransientError
from aioetl.xactions.queue import ByteQueue, QueueClosed
from aioetl.xactions.records import JobRecords
from aioetl.xactions.tcb import (
    DELETE_LISTRANGE,
    EVICT_LISTRANGE,
    IN_PLACE_KINDS,
    LISTRANGE_KINDS,
    PREFETCH_LISTRANGE,
    TcbMsg,
    expand_template,
)
from aioetl.xactions.xact import State, Xaction, validate_xid

__all__ = ["OfflineJobs", "resolve_num_workers"]

log = structlog.get_logger("aioetl.offline")

RETRY_TRANSIENT = 3
# ws connections per job and pod, as AIStore (bundle_multiplier 2 x 4). A multi-process pod
# spreads connections over its workers by SO_REUSEPORT hashing; with 8 the chance that one
# worker gets none is 2/256 for 2 workers, and min-pending selection balances the rest.
# Our pods name their process count: then WS_CONNS_PER_POD_PROCESS per process (WsComm).
WS_CONNS_PER_JOB = 8
WS_CONNS_PER_POD_PROCESS = 2
# objects in flight per target for a ws job with num_workers auto (0): two write-batches
# (aioetl.communicators.wire.const.WS_REPLIES_PER_SEND) per connection of a 2-process pod, so a pod
# process answering one batch still has the next queued, and the target handles a batch
# of replies per wakeup
WS_MIN_INFLIGHT = 16
SETTLE_BATCH = 1024  # direct-put claims per destination settled at once (bounds memory)
JOB_TTL_S = 3600.0


def resolve_num_workers(requested: int, n_mountpaths: int, cpus: int | None = None) -> int:
    """``num_workers``: 0 = auto (I/O-bound: 8 per mountpath, at least 4 per CPU, at most 64),
    -1 = serial (one in flight), N = N."""
    if requested == -1:
        return 1
    if requested > 0:
        return requested
    cpus = cpus or os.cpu_count() or 2
    return max(4, min(64, max(8 * n_mountpaths, 4 * cpus)))


class _Job:
    def __init__(self, xact: Xaction, msg: TcbMsg, inst: EtlInstance | None) -> None:
        self.xact = xact
        self.msg = msg
        self.inst = inst
        self.task: asyncio.Task[None] | None = None
        self.comm: Communicator | None = None  # the job's own ws session (other types share the ETL's)
        # direct puts the pod reported delivered, not yet confirmed by their destination:
        # destination target URL -> {"<dst bck>/<dst obj>": source object name}
        self.claims: dict[str, dict[str, str]] = {}
        self.failed = 0  # objects handed to the workers that ended as errors
        self.remote_src = is_remote(xact.src_bck)
        self.src_names: set[str] = set()  # synchronize: every source name the remote listed


class OfflineJobs:
    """Offline transform jobs of one target (the job registry and its runner).

    Args:
        node: this target's identity.
        cluster: its cluster view (which objects are its own; where results go).
        store: its object store.
        peers: intra-cluster client (PUTs to owners, settlement, gateway aborts).
        receipts: the receive side of every job's direct puts here.
        remote: remote buckets (a job's ``aws://`` source objects are fetched by their
            owner as the job reaches them; outputs to ``aws://`` are written through).

    ``etls`` (the ETL registry) is set by the target after both exist: each
    needs the other, the registry only through :class:`.services.JobControl`.
    """

    def __init__(self, node: NodeInfo, cluster: ClusterView, store: Store, peers: Peers,
                 receipts: Receipts, remote: RemoteObjects | None = None) -> None:
        self.node = node
        self.cluster = cluster
        self.store = store
        self.peers = peers
        self.remote = remote or RemoteObjects(store, cluster)
        self.sinks = Sinks(store, peers, self.remote)
        self.etls: EtlManager | None = None
        self.jobs: dict[str, _Job] = {}
        self.receipts = receipts
        # every job's last snapshot and message, kept across restarts (aioetl.xactions.records);
        # jobs that were running when this target died come back aborted, naming it
        self.records = JobRecords(node.data_dir, node.node_id,
                                  fsync=not all(mp.volatile for mp in store.mountpaths))
        self.restored: dict[str, dict[str, Any]] = {x: r.snap for x, r in self.records.load_all().items()}

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_route("POST", "/v1/xactions/_start", self.h_start)
        r.add_route("POST", "/v1/xactions/_abort", self.h_abort)
        r.add_route("GET", "/v1/xactions", self.h_snaps)
        r.add_route("GET", "/v1/xactions/{id}/errors", self.h_errors)
        r.add_route("POST", "/v1/xactions/_settle", self.h_settle)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop everything this registry runs (at target shutdown)."""
        for job in list(self.jobs.values()):
            job.xact.abort("target shutting down")
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(j.task for j in self.jobs.values() if j.task), return_exceptions=True)

    @property
    def _etls(self) -> EtlManager:
        if self.etls is None:
            raise RuntimeError("OfflineJobs.etls was never set (the target wires it at start)")
        return self.etls

    def report_path(self, xid: str) -> str:
        return os.path.join(self.node.data_dir, "jobs", xid, f"{self.node.node_id}.errors.jsonl")

    # -- routes ------------------------------------------------------------------
    async def h_start(self, request: web.Request) -> web.StreamResponse:
        doc = await read_json(request)
        xid = str(doc["id"])
        self.start(xid, str(doc["kind"]), str(doc["src"]), str(doc["dst"]), doc["msg"])
        return json_response({"id": xid, "target_id": self.node.node_id})

    def start(self, xid: str, kind: str, src: str, dst: str, wire_msg: Any) -> Xaction:
        """Start this target's share of job ``xid`` (``wire_msg``: the job's TCBMsg as
        the gateway sent it); returns its xaction, running in a task of this registry.

        Raises:
            InvalidMsg: a bad job id or message (400).
            BadRequest: the job exists here already. NotFound: the ETL or a pipeline stage.
        """
        validate_xid(xid)  # before report_path() and the job record build paths from it
        msg = TcbMsg.parse(kind, wire_msg, remote_src=is_remote(src))
        inst = self._etls.get(msg.etl_name) if msg.etl_name else None  # none: a plain copy
        self._etls.pipeline_urls(msg.pipeline)  # 404 if a stage is missing here
        self._gc()
        if xid in self.jobs or xid in self.restored:
            raise BadRequest(f"job {xid} already exists on {self.node.node_id}")
        xact = Xaction(xid=xid, kind=kind, node_id=self.node.node_id, src_bck=src, dst_bck=dst,
                       ctlmsg=f"{'etl:' + msg.etl_name if msg.etl_name else 'copy'} {src}->{dst}",
                       report_path=self.report_path(xid))
        job = _Job(xact, msg, inst)
        self.jobs[xid] = job

        def record(x: Xaction, wire: Any = wire_msg) -> None:
            with contextlib.suppress(OSError, ValueError):  # runs inside transition(): never raise
                self.records.save(x.snap(), wire)

        record(xact)
        xact.on_done(record)
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return xact

    async def wait(self, xid: str) -> Xaction:
        """Wait until this target's share of job ``xid`` has ended; returns its xaction.

        Raises:
            KeyError: no such job here.
        """
        job = self.jobs[xid]
        if job.task is not None:
            await asyncio.gather(job.task, return_exceptions=True)
        return job.xact

    async def h_abort(self, request: web.Request) -> web.StreamResponse:
        doc = await read_json(request)
        n = self.abort(xid=str(doc.get("id") or ""), kind=str(doc.get("kind") or ""),
                       etl=str(doc.get("etl") or ""), err=str(doc.get("err") or "aborted by user"))
        return json_response({"aborted": n})

    def abort(self, *, xid: str = "", kind: str = "", etl: str = "", err: str) -> int:
        """Abort matching running jobs; returns how many."""
        n = 0
        for job in self.jobs.values():
            if xid and job.xact.xid != xid:
                continue
            if kind and job.xact.kind != kind:
                continue
            if etl and etl != job.msg.etl_name and etl not in job.msg.pipeline:
                continue
            if job.xact.abort(err):
                n += 1
                self.receipts.abort(job.xact.xid, err)
                if job.task is not None:
                    job.task.cancel()
        if xid:  # finished here, or not started here (yet): refuse its late objects all the same
            self.receipts.abort(xid, err)
        return n

    async def h_settle(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/xactions/_settle`` ``{"id", "keys": ["<bck>/<obj>", ...], "revoke": bool}``:
        which of a sender's direct puts arrived here (:mod:`.receipts`).

        Returns:
            ``{"received": {key: size}, "missing": [key, ...], "reasons": {key: why}}``
            (``reasons``: the missing keys whose store failed here, e.g. out of space).
        """
        doc = await read_json(request)
        xid, keys = doc.get("id") if isinstance(doc, dict) else None, doc.get("keys") if isinstance(doc, dict) else None
        if (not isinstance(xid, str) or not xid or not isinstance(keys, list)
                or not all(isinstance(k, str) for k in keys)):
            raise BadRequest('settle: expected {"id": "<job>", "keys": ["<bck>/<obj>", ...], "revoke": bool}')
        received, missing, reasons = await self.receipts.settle(xid, keys, bool(doc.get("revoke")))
        return json_response({"received": received, "missing": missing, "reasons": reasons})

    async def h_snaps(self, request: web.Request) -> web.StreamResponse:
        xid, kind = request.query.get("id", ""), request.query.get("kind", "")
        snaps = [j.xact.snap() for j in self.jobs.values()
                 if (not xid or j.xact.xid == xid) and (not kind or j.xact.kind == kind)]
        snaps += [s for x, s in self.restored.items()  # jobs of an earlier run of this target
                  if x not in self.jobs and (not xid or x == xid) and (not kind or s.get("kind") == kind)]
        return json_response(snaps)

    async def h_errors(self, request: web.Request) -> web.StreamResponse:
        path = self.report_path(validate_xid(request.match_info["id"]))
        if not os.path.exists(path):
            return web.Response(body=b"", content_type="application/x-ndjson")
        return web.FileResponse(path, headers={"Content-Type": "application/x-ndjson"})

    def _gc(self) -> None:
        self.receipts.gc()
        now = time.time_ns()
        for xid in [x for x, j in self.jobs.items() if not j.xact.running and now - j.xact.end_ns > JOB_TTL_S * 1e9]:
            del self.jobs[xid]

    # -- hooks ---------------------------------------------------------------------
    def count_in(self, xid: str, size: int) -> None:
        """A peer (or its pod) delivered an object of job ``xid`` here."""
        job = self.jobs.get(xid)
        if job is not None:
            job.xact.stats.in_objs += 1
            job.xact.stats.in_bytes += size

    def obj_errors(self, xid: str) -> list[dict[str, Any]]:
        job = self.jobs.get(xid)
        return job.xact.obj_errs.to_list() if job else []

    # -- the runner --------------------------------------------------------------------
    async def _run(self, job: _Job) -> None:
        x, msg = job.xact, job.msg
        nworkers = resolve_num_workers(msg.num_workers, len(self.store.mountpaths))
        ws_job = job.inst is not None and job.inst.spec.comm_type == WS
        if ws_job and msg.num_workers == 0:
            nworkers = max(nworkers, WS_MIN_INFLIGHT)
        x.njoggers = len(self.store.mountpaths)
        x.nworkers = msg.num_workers if msg.num_workers > 0 else (0 if msg.num_workers == -1 else nworkers)
        queue: ByteQueue[tuple[str, str]] = ByteQueue(high_items=max(64, nworkers * 16), high_bytes=256 << 20)
        x.transition(State.RUNNING)
        try:
            if ws_job:
                assert job.inst is not None and job.inst.pod is not None and self._etls.pod_session is not None
                job.comm = self._etls.make_comm(WS, job.inst.spec.name, job.inst.pod.url,
                                                msg.obj_timeout_s(job.inst.spec.obj_timeout_s), self._etls.pod_session,
                                                lender=job.inst.lender, n_conns=WS_CONNS_PER_JOB,
                                                conns_per_process=WS_CONNS_PER_POD_PROCESS)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._produce(job, queue))
                tg.create_task(self._count_total(job))
                for _ in range(nworkers):
                    tg.create_task(self._worker(job, queue))
            await self._settle_all(job)
            self._check_outcomes(job)
            if job.msg.sync and job.remote_src and not job.msg.dry_run and x.running:
                await self._prune(job)
            if x.running:
                x.transition(State.DRAINING)
                x.transition(State.FINISHED)
                x.log.info("job finished", stats=x.stats.to_wire(), errors=x.err_total)
        except asyncio.CancelledError:
            x.abort(x.abort_err or "cancelled")
        except Exception as e:
            err = _first_error(e)
            x.abort(err)
            await self._abort_cluster(x.xid, err)
        finally:
            if job.comm is not None:
                with contextlib.suppress(Exception):
                    await job.comm.close()

    async def _prune(self, job: _Job) -> None:
        """``synchronize``: remove the destination objects this target owns whose source
        the remote no longer has (AIStore ``xact/xs/prune.go``); each target listed the
        whole remote source, so it knows every source name. Counted in ``loc-objs``."""
        x, msg = job.xact, job.msg
        keep = {msg.to_name(n) for n in job.src_names}
        dst = x.dst_bck
        if is_remote(dst):
            be, props = self.remote.backend(dst)
            doomed = []
            async for entries in be.list_all(dst, props, msg.prefix):
                doomed += [e.name for e in entries if e.name not in keep and self._owned(dst, e.name)]
            for name in doomed:
                with contextlib.suppress(NotFound):
                    await self.remote.delete(dst, name)
        else:
            doomed = [n for n, _ in self.store.iter_names(dst, msg.prefix) if n not in keep]
            for name in doomed:
                with contextlib.suppress(NotFound):
                    self.store.delete(dst, name)
        if doomed:
            x.log.info("pruned destination objects whose source is gone", count=len(doomed))

    async def _abort_cluster(self, xid: str, err: str) -> None:
        """Ask the gateway to abort ``xid`` on every target (first error without ``coer``)."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, RuntimeError):  # RuntimeError: shutting down
            await self.peers.post_gateway(f"/v1/jobs/{xid}/_abort", {"err": err, "from": self.node.node_id})

    # -- producers ---------------------------------------------------------------------
    def _owned(self, bck: str, name: str) -> bool:
        return self.cluster.owner(bck, name) is None

    async def _names(self, job: _Job) -> AsyncIterator[tuple[str, str, int]]:
        """``(name, fqn, size)`` of the objects this target transforms."""
        msg, src = job.msg, job.xact.src_bck
        remote = is_remote(src)
        if msg.kind in LISTRANGE_KINDS and (msg.obj_names or msg.template):
            names = msg.obj_names if msg.obj_names else expand_template(msg.template)
            explicit = bool(msg.obj_names)
            for name in names:
                if not self._owned(src, name):
                    continue
                fqn = self.store.fqn(src, name)
                if remote:  # cached or not: the worker fetches it (a template's missing names: skipped there)
                    yield name, fqn, -1 if explicit else -2
                    continue
                try:
                    size = os.stat(fqn).st_size
                except OSError:
                    if explicit:
                        job.xact.add_obj_err(bck_uri(src, name), f'object "{bck_uri(src, name)}" does not exist', 404)
                        if not msg.coer:
                            raise NotFound(f'object "{bck_uri(src, name)}" does not exist') from None
                    continue
                yield name, fqn, size
            return
        if remote and msg.kind not in IN_PLACE_KINDS:
            # every object of the remote, cached or not (AIStore's "all objects, not only present
            # ones"): each target lists the remote and takes the names HRW gives it
            n = b = 0
            be, props = self.remote.backend(src)
            async for entries in be.list_all(src, props, msg.prefix):
                for e in entries:
                    if msg.sync:
                        job.src_names.add(e.name)
                    if self._owned(src, e.name):
                        n += 1
                        b += e.size
                        yield e.name, self.store.fqn(src, e.name), e.size
            job.xact.total_objs, job.xact.total_bytes = n, b
            return
        # joggers: one per mountpath, each walking its directory tree in batches
        for mp in self.store.mountpaths:
            async for batch in self._walk_mp(mp, src, msg.prefix):
                for name, fqn, size in batch:
                    yield name, fqn, size

    async def _walk_mp(self, mp: Mountpath, bck: str, prefix: str) -> AsyncIterator[list[tuple[str, str, int]]]:
        """``(name, fqn, size)`` batches of one mountpath's objects: walked in a thread
        on a disk; on tmpfs right on the loop (a stat costs ~2 us there, while a thread
        doing them costs the loop a GIL hand-off per syscall)."""
        loop = asyncio.get_running_loop()
        it = iter(self.store.iter_names_mp(mp, bck, prefix))
        while True:
            if mp.volatile:
                batch = _take_sized(it, 64)
                await asyncio.sleep(0)
            else:
                batch = await loop.run_in_executor(None, _take_sized, it, 512)
            if not batch:
                return
            yield batch

    async def _produce(self, job: _Job, queue: ByteQueue[tuple[str, str]]) -> None:
        try:
            async for name, fqn, size in self._names(job):
                await queue.put((name, fqn), size)
        finally:
            queue.close()

    async def _count_total(self, job: _Job) -> None:
        """Count the job's objects and bytes (for progress and ETA), walked as the joggers walk."""
        msg, src = job.msg, job.xact.src_bck
        if msg.kind in LISTRANGE_KINDS and (msg.obj_names or msg.template):
            return
        if is_remote(src) and msg.kind not in IN_PLACE_KINDS:
            return  # counted by the producer's listing (no second walk of the remote)
        n = b = 0
        for mp in self.store.mountpaths:
            async for batch in self._walk_mp(mp, src, msg.prefix):
                n += len(batch)
                b += sum(size for _, _, size in batch)
        job.xact.total_objs, job.xact.total_bytes = n, b

    # -- workers -------------------------------------------------------------------------
    async def _worker(self, job: _Job, queue: ByteQueue[tuple[str, str]]) -> None:
        x, msg = job.xact, job.msg
        while True:
            try:
                (name, fqn), size = await queue.get()
            except QueueClosed:
                return
            try:
                if size < 0:  # a remote source object, not looked at yet
                    size = await self._fetch_src(job, name, missing_ok=size == -2)
                    if size < 0:
                        continue  # a template name the remote does not have: skipped, as for ais://
                elif job.remote_src:
                    await self._fetch_src(job, name)
                await self._one(job, name, fqn, size)
                x.done_objs += 1
                x.done_bytes += size
            except (TimeoutError, AioetlError, OSError, aiohttp.ClientError) as e:
                # out of space too: a per-object error naming the target
                text, code = (e.message, e.status) if isinstance(e, AioetlError) else (f"{type(e).__name__}: {e}", 500)
                x.add_obj_err(bck_uri(x.src_bck, name), text, code)
                job.failed += 1
                x.done_objs += 1
                x.done_bytes += size
                if not msg.coer:
                    raise

    async def _fetch_src(self, job: _Job, name: str, *, missing_ok: bool = False) -> int:
        """Make sure this target has the remote source object ``name`` cached (fetched
        now if not, or if changed with ``latest-ver``); its size, or -1 when it does not
        exist and ``missing_ok``. Fetches count in ``remote-objs``/``remote-bytes``.

        Raises:
            NotFound: the remote does not have it. RemoteError, Forbidden: the remote failed.
        """
        x, msg = job.xact, job.msg
        if msg.kind in (EVICT_LISTRANGE, DELETE_LISTRANGE):
            return 0  # nothing to read
        try:
            md, fetched = await self.remote.ensure(x.src_bck, name, latest=msg.latest or msg.sync)
        except NotFound:
            if missing_ok:
                return -1
            raise
        if fetched:
            x.stats.remote_objs += 1
            x.stats.remote_bytes += md.size
        return md.size

    async def _one(self, job: _Job, name: str, fqn: str, size: int) -> None:
        """Transform one object and see it to exactly one outcome: written here, PUT to its
        owner, or direct-put by the pod (confirmed by the owner, :mod:`.receipts`); where
        it goes is planned once (:func:`.delivery.plan`).

        Raises:
            AioetlError: the object failed (the worker records it).
        """
        x, msg, inst = job.xact, job.msg, job.inst
        if inst is None:
            return await self._copy_one(job, name, fqn, size)
        if inst.stage is not EtlStage.RUNNING:
            raise EtlFailed(f'etl job "{inst.spec.name}" is not running ({inst.abort_reason or inst.stage})',
                            status=424)
        dst_name = msg.to_name(name)
        dst = x.dst_bck
        d = plan(self.cluster, dst, dst_name,
                 direct_put=not msg.dry_run and (inst.spec.direct_put or inst.spec.comm_type == WS))
        pipeline = self._etls.pipeline_urls(msg.pipeline)
        key = f"{dst}/{dst_name}"
        if d.route is Route.DIRECT:
            assert d.owner is not None
            pipeline = [*pipeline, direct_put_hop(d.owner, dst, dst_name, x.xid)]
        try:
            for attempt in range(RETRY_TRANSIENT + 1):
                try:
                    return await self._transform_deliver(job, name, fqn, dst, dst_name, key, pipeline, d)
                except EtlFailed as e:
                    if attempt < RETRY_TRANSIENT and isinstance(e, TransientError):
                        await asyncio.sleep(min(2**attempt, 5) * 0.1)
                        continue
                    raise
        except InsufficientStorage as e:
            if d.local:
                e.message = f"target {self.node.node_id}: {e.message}"
            raise
        except AioetlError as e:
            # the pod may have delivered it after all (a late reply, a broken connection):
            # the owner decides, and refuses it from now on if it has not arrived
            if d.route is Route.DIRECT and d.owner is not None:
                arrived, why = await self._settle_now(job, d.owner.url, key, revoke=True)
                if arrived:
                    return
                e.message += f" (direct put to target {d.owner.daemon_id}" + (f": {why})" if why else ")")
            raise

    async def _transform_deliver(self, job: _Job, name: str, fqn: str, dst: str, dst_name: str, key: str,
                                 pipeline: list[str], d: Delivery) -> None:
        """One attempt: through the pod, then to the destination (see :meth:`_one`)."""
        x, msg, inst = job.xact, job.msg, job.inst
        assert inst is not None
        comm = job.comm or inst.comm
        assert comm is not None
        async with comm.send(x.src_bck, name, fqn=fqn, etl_args=msg.etl_args, pipeline=pipeline,
                             direct=d.route is Route.DIRECT,
                             timeout_s=msg.obj_timeout_s(inst.spec.obj_timeout_s)) as reply:
            if reply.delivered is not None:  # only where a direct put was asked for (the comm refuses others)
                assert d.owner is not None
                if reply.uncertain:
                    # aistore[etl] answers "0" for an empty object delivered and for a failed
                    # direct put alike: ask the owner now, and send it again if it is not there
                    arrived, why = await self._settle_now(job, d.owner.url, key, revoke=False)
                    if arrived:
                        return
                    text = (f'ETL error: etl job "{inst.spec.name}": direct put of {bck_uri(key)} to '
                            f"{d.owner.url} reported as 0 bytes delivered, and it did not arrive")
                    if not why:  # nothing known against it: send it again
                        raise EtlRetry(text, status=502)
                    # a store that failed there will fail again
                    raise EtlFailed(f"{text} ({why})", status=507 if "out of space" in why else 502)
                await self._claim(job, d.owner.url, key, name)
                return
            if msg.dry_run:
                n = 0
                async for chunk in reply.chunks():
                    n += len(chunk)
                x.stats.loc_objs += 1
                x.stats.loc_bytes += n
                return
            if reply.data is not None:
                await self._deliver_bytes(job, dst, dst_name, reply.data, d)
                return
            n = await self.sinks.put_reply(d, dst, dst_name, reply, xid=x.xid)
            self._count(job, d, n)

    @staticmethod
    def _count(job: _Job, d: Delivery, n: int) -> None:
        """Count one delivered result: ``loc`` when written here, ``out`` when sent to its owner."""
        st = job.xact.stats
        if d.local:
            st.loc_objs += 1
            st.loc_bytes += n
        else:
            st.out_objs += 1
            st.out_bytes += n

    @staticmethod
    def _check_outcomes(job: _Job) -> None:
        """Every object the workers took ended in exactly one outcome: written here
        (``loc``), confirmed at its owner (``out``), or an error.

        Raises:
            AioetlError: the counts disagree (a bug, reported rather than hidden as success).
        """
        x = job.xact
        ended = x.stats.loc_objs + x.stats.out_objs + job.failed
        if ended != x.done_objs:
            raise AioetlError(f"job {x.xid} on {x.node_id}: {x.done_objs} objects processed but {ended} outcomes "
                              f"(loc {x.stats.loc_objs}, out {x.stats.out_objs}, failed {job.failed})", status=500)

    # -- direct-put settlement (aioetl.engine.scheduler.receipts) -------------------------------------------
    async def _claim(self, job: _Job, url: str, key: str, name: str) -> None:
        """The pod says it delivered ``key`` to ``url``: settle later, in batches."""
        claims = job.claims.setdefault(url, {})
        claims[key] = name
        if len(claims) >= SETTLE_BATCH:
            await self._settle(job, url, job.claims.pop(url))

    async def _settle_all(self, job: _Job) -> None:
        """At the end of the job's work here: every claim confirmed or failed."""
        while job.claims:
            url, claims = job.claims.popitem()
            await self._settle(job, url, claims)

    async def _settle(self, job: _Job, url: str, claims: dict[str, str]) -> None:
        """Count the claims ``url`` confirms as ``out``; fail the others (revoked there).

        Raises:
            AioetlError: some did not arrive, and the job does not continue on errors.
        """
        x = job.xact
        reasons: dict[str, str] = {}
        try:
            received, missing, reasons = await self._settle_call(url, x.xid, list(claims), revoke=True)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            received, missing = {}, list(claims)
            why = f"could not be confirmed: target {url} unreachable ({type(e).__name__}: {e})"
        else:
            why = f"was reported delivered by the pod but never arrived at target {url}"
        for size in received.values():
            x.stats.out_objs += 1
            x.stats.out_bytes += size
        for key in missing:
            detail = f" ({reasons[key]})" if key in reasons else ""
            x.add_obj_err(bck_uri(x.src_bck, claims[key]), f"direct put of {bck_uri(key)} {why}{detail}", 502)
            job.failed += 1
        if missing and not job.msg.coer:
            raise EtlFailed(f"direct put of {bck_uri(missing[0])} {why}", status=502)

    async def _settle_now(self, job: _Job, url: str, key: str, revoke: bool) -> tuple[bool, str]:
        """Settle one key at once: ``(True, "")`` (and counted ``out``) if it arrived, else
        ``(False, why)`` with the destination's reason when its store failed there."""
        try:
            received, _, reasons = await self._settle_call(url, job.xact.xid, [key], revoke=revoke)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return False, ""
        if key not in received:
            return False, reasons.get(key, "")
        job.xact.stats.out_objs += 1
        job.xact.stats.out_bytes += received[key]
        return True, ""

    async def _settle_call(self, url: str, xid: str, keys: list[str],
                           revoke: bool) -> tuple[dict[str, int], list[str], dict[str, str]]:
        return await self.peers.settle(url, xid, keys, revoke)

    async def _copy_one(self, job: _Job, name: str, fqn: str, size: int) -> None:
        """copy-bck / copy-listrange: the same destinations, no ETL; delete-listrange: remove."""
        x, msg = job.xact, job.msg
        if msg.kind == DELETE_LISTRANGE:
            if is_remote(x.src_bck):
                await self.remote.delete(x.src_bck, name)
            else:
                self.store.delete(x.src_bck, name)
            x.stats.loc_objs += 1
            x.stats.loc_bytes += size
            return
        if msg.kind == EVICT_LISTRANGE:
            if self.remote.evict(x.src_bck, name):
                x.stats.loc_objs += 1
            return
        if msg.kind == PREFETCH_LISTRANGE:  # _fetch_src did the work
            x.stats.loc_objs += 1
            x.stats.loc_bytes += size
            return
        dst_name = msg.to_name(name)
        d = plan(self.cluster, x.dst_bck, dst_name)
        if msg.dry_run:
            x.stats.loc_objs += 1
            x.stats.loc_bytes += size
            return
        if size <= 1 << 20 or d.local:
            data = await asyncio.get_running_loop().run_in_executor(None, self.store.read_bytes, x.src_bck, name)
            await self._deliver_bytes(job, x.dst_bck, dst_name, data, d)
            return
        with open(fqn, "rb") as f:
            n = await self.sinks.put_stream(d, x.dst_bck, dst_name, f, size=size, xid=x.xid)
        self._count(job, d, n)

    async def _deliver_bytes(self, job: _Job, dst: str, dst_name: str, data: bytes, d: Delivery) -> None:
        if job.msg.dry_run:
            job.xact.stats.loc_objs += 1
            job.xact.stats.loc_bytes += len(data)
            return
        n = await self.sinks.put_bytes(d, dst, dst_name, data, xid=job.xact.xid)
        self._count(job, d, n)


def _take_sized(it: Any, n: int) -> list[tuple[str, str, int]]:
    out = []
    for name, fqn in it:
        try:
            out.append((name, fqn, os.stat(fqn).st_size))
        except OSError:
            continue  # removed meanwhile: AIStore skips it silently too
        if len(out) >= n:
            break
    return out


def _first_error(e: BaseException) -> str:
    """The first real error inside (nested) exception groups, as text."""
    while isinstance(e, BaseExceptionGroup):
        inner = [x for x in e.exceptions if not isinstance(x, asyncio.CancelledError)]
        if not inner:
            return "cancelled"
        e = inner[0]
    if isinstance(e, AioetlError):
        return e.message
    return f"{type(e).__name__}: {e}"

