"""The ETL REST API of the gateway (AIStore ``ais/prxetl.go``), and etlMD.

- ``PUT /v1/etl``: init (runtime spec, class payload, or 1.26 pod spec). Two
  phases: every target starts its pod; if any fails, all are stopped and the
  ETL is left ``Aborted`` with the error, which the reply carries (400).
  Reply: the xaction id as plain text.
- ``GET /v1/etl``: ``[{"id","xaction_id","stage","obj_count","in_bytes","out_bytes"}]``.
- ``GET /v1/etl/<n>?uuid=``: ``{"init_msg", "obj_errors"}`` (``view()``).
- ``POST /v1/etl/<n>/stop|start``, ``DELETE /v1/etl/<n>``.
- ``GET /v1/etl/<n>/logs[/<tid>]`` -> ``[{"target_id","logs":<base64>}]``;
  ``/health`` -> ``[{"target_id","health_status"}]``; ``/metrics`` -> ``[{"target_id","cpu","mem"}]``.

etlMD (``<data>/gateway/etlmd.json``) keeps each ETL's init message, stage,
secret and xid. After a cluster restart, ETLs that were Running are started
again once every target has joined and applied the map of its join (until then
they read ``Aborted`` with the reason). A target that joins later, or rejoins
after a restart of its own, gets every Running ETL initialized on it once it has
applied that map (:meth:`PeerClient.wait_ready`; the ETL reads ``Initializing``
at the gateway meanwhile; if that init fails, the ETL is aborted everywhere with
the reason). ``GET /v1/etl`` never shows ``Running`` for an ETL a target has no
pod of: it shows ``Initializing`` and starts the pod there.

The service is given what it uses (:class:`GatewayEtl`): the etlMD registry, the
cluster map, the peer client, a task owner and a callback for a stopped ETL; it
does not know the gateway or the job service.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from aioetl.engine.core.etl import (
    STAGE_ABORTED,
    STAGE_INITIALIZING,
    STAGE_RUNNING,
    EtlEvent,
    next_stage,
    parse_init_msg,
    validate_etl_name,
)
from aioetl.engine.core.smap import Snode
from aioetl.engine.gateway.cluster import ClusterMap, PeerClient, Reply, err_text
from aioetl.engine.gateway.metadata import EtlEntry, EtlMd
from aioetl.engine.gateway.tasks import TaskOwner
from aioetl.engine.node.httpd import json_response, read_json
from aioetl.errors import AlreadyExists, BadRequest
from aioetl.xactions.errs import MAX_OBJ_ERRS

__all__ = ["GatewayEtl"]

log = structlog.get_logger("aioetl.gateway.etl")

RESTART_WAIT_REASON = "cluster restarted: the ETL starts again once every target has joined"


def new_secret() -> str:
    """10 random ASCII letters, as AIStore's ``cos.CryptoRandS(10)``."""
    return "".join(secrets.choice(string.ascii_letters) for _ in range(10))


class GatewayEtl:
    """The ETL endpoints of the gateway: init and stop across targets (two phases), views.

    Args:
        etlmd: the ETL registry this service changes (and persists).
        cluster: the targets an ETL runs on.
        peers: how the targets are called.
        tasks: owner of the background pod inits on (re)joined targets and of the
            restart of a restarted cluster's ETLs.
        on_stopped: ``(name, reason)``, awaited after an ETL was stopped or lost
            everywhere (the jobs that use it are aborted).
    """

    def __init__(self, *, etlmd: EtlMd, cluster: ClusterMap, peers: PeerClient, tasks: TaskOwner,
                 on_stopped: Callable[[str, str], Awaitable[None]]) -> None:
        self.etlmd = etlmd
        self.md = etlmd.md
        self.cluster = cluster
        self.peers = peers
        self.tasks = tasks
        self.on_stopped = on_stopped
        self._lock = asyncio.Lock()  # guards the check-and-add of a new ETL name
        self._restart_pending = {n for n, e in self.md.items() if e.stage in (STAGE_RUNNING, STAGE_INITIALIZING)}
        for n in self._restart_pending:
            self.md[n].stage = next_stage(self.md[n].stage, EtlEvent.FAIL)  # restarted under it
            self.md[n].error = RESTART_WAIT_REASON
        self._restarting = False
        self._target_inits: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._joining: dict[str, set[str]] = {}  # ETL -> targets whose join init runs

    def _save(self) -> None:
        self.etlmd.save()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_route("PUT", "/v1/etl", self.h_init)
        r.add_route("GET", "/v1/etl", self.h_list)
        r.add_route("GET", "/v1/etl/{name}", self.h_view)
        r.add_route("DELETE", "/v1/etl/{name}", self.h_delete)
        r.add_route("POST", "/v1/etl/{name}/stop", self.h_stop)
        r.add_route("POST", "/v1/etl/{name}/start", self.h_start)
        r.add_route("POST", "/v1/etl/{name}/_aborted", self.h_aborted)
        r.add_route("GET", "/v1/etl/{name}/logs", self.h_logs)
        r.add_route("GET", "/v1/etl/{name}/logs/{tid}", self.h_logs)
        r.add_route("GET", "/v1/etl/{name}/health", self.h_health)
        r.add_route("GET", "/v1/etl/{name}/metrics", self.h_metrics)

    # -- helpers -----------------------------------------------------------------
    def require(self, name: str) -> EtlEntry:
        return self.etlmd.require(name)

    def require_running(self, name: str) -> EtlEntry:
        return self.etlmd.require_running(name)

    async def _each_target(self, method: str, path: str, *, body: Any = None, timeout_s: float = 30.0,
                           targets: list[Snode] | None = None) -> list[Reply]:
        return await self.peers.each_target(method, path, body=body, timeout_s=timeout_s, targets=targets)

    async def _run_init(self, name: str) -> str:
        """Phase 1 on every target; undo on all if any fails. Returns the xid."""
        e = self.md[name]
        spec = parse_init_msg(e.msg)
        e.secret, e.xid = new_secret(), f"etl-{secrets.token_hex(5)}"
        e.stage, e.error = next_stage(e.stage, EtlEvent.INIT), ""
        self._save()
        body = {"msg": e.msg, "secret": e.secret, "xid": e.xid}
        try:
            res = await self._each_target("POST", "/v1/etl/_init", body=body, timeout_s=spec.init_timeout_s + 30)
        except BaseException as ex:  # cancelled (shutdown) or a bug: never leave it Initializing
            if e.stage == STAGE_INITIALIZING:
                e.stage, e.error = next_stage(e.stage, EtlEvent.FAIL), f"init interrupted: {ex!r}"
                self._save()
            raise
        failed = [(t, st, b) for t, st, b in res if st != 200]
        if failed:
            await self._each_target("DELETE", f"/v1/etl/{name}")
            t, st, b = failed[0]
            e.stage, e.error = next_stage(e.stage, EtlEvent.FAIL), err_text(b)
            self._save()
            msg = f'etl job "{name}": init failed on target {t.daemon_id}: {e.error}'
            log.warning("etl init failed", etl=name, target=t.daemon_id, status=st)
            raise BadRequest(msg)
        e.stage = next_stage(e.stage, EtlEvent.READY)
        e.pods = {t.daemon_id: json.loads(b) for t, _, b in res}
        self._save()
        log.info("etl running", etl=name, xid=e.xid, comm=spec.comm_type)
        return e.xid

    # -- endpoints ---------------------------------------------------------------
    async def h_init(self, request: web.Request) -> web.StreamResponse:
        msg = await read_json(request)
        spec = parse_init_msg(msg)
        async with self._lock:
            if spec.name in self.md:
                raise AlreadyExists(f'etl job "{spec.name}" already exists')
            self.md[spec.name] = EtlEntry(msg=msg, stage=next_stage(None, EtlEvent.INIT))
        xid = await self._run_init(spec.name)
        return web.Response(text=xid)

    async def h_list(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/etl``: ``[{"id","xaction_id","stage","obj_count","in_bytes","out_bytes"}]``.

        ``stage`` is etlMD's, except for a Running ETL that some target lacks (it
        restarted and has not got its pod yet): ``Initializing``, and the pod is
        started there; or one whose pod a target reports dead: ``Aborted``.
        """
        stats: dict[str, dict[str, int]] = {}
        lacking: dict[str, list[Snode]] = {}
        dead: set[str] = set()
        for t, st, body in await self._each_target("GET", "/v1/etl", timeout_s=10):
            if st != 200:
                continue
            have = {}
            for i in json.loads(body):
                have[i["id"]] = i.get("stage", "")
                s = stats.setdefault(i["id"], {"obj_count": 0, "in_bytes": 0, "out_bytes": 0})
                for k in s:
                    s[k] += int(i.get(k, 0))
            for name, e in self.md.items():
                if e.stage != STAGE_RUNNING:
                    continue
                if name not in have:
                    lacking.setdefault(name, []).append(t)
                elif have[name] != STAGE_RUNNING:
                    dead.add(name)
        out = []
        for name, e in sorted(self.md.items()):
            s = stats.get(name, {"obj_count": 0, "in_bytes": 0, "out_bytes": 0})
            stage = e.stage
            if stage == STAGE_RUNNING and name in dead:
                stage = STAGE_ABORTED
            elif stage == STAGE_RUNNING and name in lacking:
                stage = STAGE_INITIALIZING
                for t in lacking[name]:
                    self.init_on_target(name, t)
            out.append({"id": name, "xaction_id": e.xid, "stage": stage, **s})
        return json_response(out)

    async def h_view(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        validate_etl_name(name)
        e = self.require(name)
        uuid = request.query.get("uuid", "")
        errs: list[Any] = []
        seen: set[str] = set()
        for _t, st, body in await self._each_target("GET", f"/v1/etl/{name}/details?uuid={uuid}", timeout_s=10):
            if st == 200:
                for err in json.loads(body).get("obj_errors") or []:
                    if len(errs) < MAX_OBJ_ERRS and err.get("msg") not in seen:
                        seen.add(err.get("msg"))
                        errs.append(err)
        doc = {"init_msg": e.msg, "obj_errors": errs, "stage": e.stage, "error": e.error}
        return json_response(doc)

    async def _stop(self, name: str, reason: str = "") -> None:
        e = self.require(name)
        e.stage = next_stage(e.stage, EtlEvent.STOP)  # first: no (re)join init may start a pod from here on
        if reason:
            e.error = reason
        self._save()
        await self._each_target("DELETE", f"/v1/etl/{name}")
        await self.on_stopped(name, reason or f'etl job "{name}" stopped')

    async def h_stop(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        validate_etl_name(name)
        await self._stop(name)
        return web.Response(status=200)

    async def h_start(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        validate_etl_name(name)
        e = self.require(name)
        if e.stage != STAGE_ABORTED:
            raise BadRequest(f'etl job "{name}" is {e.stage}: only an Aborted (stopped) ETL can be started')
        await self._run_init(name)
        return web.Response(status=200)

    async def h_delete(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        validate_etl_name(name)
        await self._stop(name)
        self.md.pop(name, None)
        self._save()
        return web.Response(status=200)

    async def h_aborted(self, request: web.Request) -> web.StreamResponse:
        """A target reports that its pod of ``name`` died: abort the ETL everywhere."""
        name = request.match_info["name"]
        doc = await read_json(request, required=False) or {}
        if name in self.md and self.md[name].stage in (STAGE_RUNNING, STAGE_INITIALIZING):
            reason = str(doc.get("error") or f"pod of etl job {name} exited")
            log.warning("etl aborted: pod died", etl=name, reason=reason)
            await self._stop(name, reason)
        return web.Response(status=200)

    async def _per_target(self, request: web.Request, what: str) -> web.StreamResponse:
        name = request.match_info["name"]
        validate_etl_name(name)
        self.require(name)
        targets = self.cluster.targets()
        tid = request.match_info.get("tid")
        if tid:
            targets = [t for t in targets if t.daemon_id == tid]
            if not targets:
                raise BadRequest(f'target "{tid}" is not in the cluster map')
        out = []
        for t, st, body in await self._each_target("GET", f"/v1/etl/{name}/{what}", targets=targets, timeout_s=10):
            if st == 200:
                out.append(json.loads(body))
            else:
                out.append({"target_id": t.daemon_id, "error": err_text(body)})
        return json_response(out)

    async def h_logs(self, request: web.Request) -> web.StreamResponse:
        return await self._per_target(request, "logs")

    async def h_health(self, request: web.Request) -> web.StreamResponse:
        return await self._per_target(request, "health")

    async def h_metrics(self, request: web.Request) -> web.StreamResponse:
        return await self._per_target(request, "metrics")

    async def restart_after_boot(self) -> None:
        """Re-init ETLs that were Running before the cluster stopped (all targets joined).

        Runs once: a second call while (or after) it runs does nothing. An ETL whose
        init fails stays ``Aborted`` with the error (``_run_init``).
        """
        if self._restarting or not self._restart_pending:
            return
        self._restarting = True
        names, self._restart_pending = sorted(self._restart_pending), set()
        try:
            for name in names:
                if name not in self.md or self.md[name].stage != STAGE_ABORTED:
                    continue  # deleted, or started by hand meanwhile
                try:
                    await self._run_init(name)
                except Exception as e:
                    log.warning("etl restart failed", etl=name, err=str(e))
        finally:
            self._restarting = False

    @property
    def restart_pending(self) -> bool:
        """True until the ETLs of a restarted cluster have been started again."""
        return bool(self._restart_pending) or self._restarting

    def on_target_joined(self, node: Snode) -> None:
        """A target joined or rejoined (after a restart of its own, with no pods).

        While the ETLs of a restarted cluster wait to start again: once every expected
        target is in the map (:meth:`ClusterMap.expected_joined`) and has applied the
        map of its join, they are started (:meth:`restart_after_boot`). Otherwise every
        Running ETL is initialized on ``node`` once it is ready. Both in the background,
        as tasks of this service's owner.
        """
        if self.restart_pending:
            if self.cluster.expected_joined():
                self.tasks.spawn(self._restart_when_ready(), name="etl-restart-after-boot")
            return
        for name, e in self.md.items():
            if e.stage == STAGE_RUNNING:
                self.init_on_target(name, node, wait_ready=True)

    async def _restart_when_ready(self) -> None:
        await asyncio.gather(*(self.peers.wait_ready(t.daemon_id) for t in self.cluster.targets()))
        await self.restart_after_boot()

    def init_on_target(self, name: str, node: Snode, *, wait_ready: bool = False) -> None:
        """Start ``name``'s pod on ``node`` in the background (one attempt in flight per ETL
        and target); with ``wait_ready``, once ``node`` has applied the map of its join."""
        key = (name, node.daemon_id)
        prev = self._target_inits.get(key)
        if prev is not None and not prev.done():
            return
        task = self.tasks.spawn(self._init_on_target(name, node, wait_ready), name=f"etl-init:{name}@{node.daemon_id}")
        self._target_inits[key] = task
        task.add_done_callback(lambda t: self._forget_init(key, t))

    def _forget_init(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._target_inits.get(key) is task:
            del self._target_inits[key]

    async def _init_on_target(self, name: str, node: Snode, wait_ready: bool) -> None:
        """``POST /v1/etl/_init`` on one target with the ETL's secret and xid; while any such
        init runs the ETL reads ``Initializing``; if one fails the ETL is aborted everywhere.

        Cancelled (gateway shutdown): the pod may be left starting on the target, and
        etlMD may keep ``Initializing``, which the next start of the gateway treats as
        Running (restarted once every target joined).
        """
        if wait_ready:
            await self.peers.wait_ready(node.daemon_id)
        e = self.md.get(name)
        joining = self._joining.setdefault(name, set())
        if e is None or not (e.stage == STAGE_RUNNING or (e.stage == STAGE_INITIALIZING and joining)):
            return
        node = self.cluster.target(node.daemon_id) or node  # the latest URL
        xid = e.xid
        spec = parse_init_msg(e.msg)
        joining.add(node.daemon_id)
        e.stage = next_stage(e.stage, EtlEvent.JOIN)
        self._save()
        log.info("etl: starting the pod on a (re)joined target", etl=name, target=node.daemon_id)
        body = {"msg": e.msg, "secret": e.secret, "xid": xid}
        try:
            res = await self._each_target("POST", "/v1/etl/_init", body=body, timeout_s=spec.init_timeout_s + 30,
                                          targets=[node])
        finally:
            joining.discard(node.daemon_id)
        _t, st, b = res[0]
        if self.md.get(name) is not e or e.xid != xid or e.stage != STAGE_INITIALIZING:
            # stopped, deleted or re-initialized meanwhile: undo this pod
            await self._each_target("DELETE", f"/v1/etl/{name}", targets=[node])
            return
        if st != 200:
            reason = f'etl job "{name}": init on target {node.daemon_id} (joined the cluster) failed: {err_text(b)}'
            log.warning("etl init on a joined target failed", etl=name, target=node.daemon_id, status=st)
            await self._stop(name, reason)
            return
        pods = e.pods if isinstance(e.pods, dict) else {}
        pods[node.daemon_id] = json.loads(b)
        e.pods = pods
        if not joining:
            e.stage, e.error = next_stage(e.stage, EtlEvent.READY), ""
        self._save()
        log.info("etl pod started on target", etl=name, target=node.daemon_id, running=not joining)
