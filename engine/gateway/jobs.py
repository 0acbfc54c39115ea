"""Job APIs of the gateway: start offline transforms, status, stats, abort.

As the aistore SDK calls them (``reference/ais-etl-protocol.md`` §5.5):

- ``POST /v1/buckets/<src>?bck_to=ais/@#/<dst>/`` ``{"action":"etl-bck","value":TCBMsg}``
  and ``POST /v1/buckets/<src>`` ``{"action":"etl-listrange","value":TCOMsg}``: validate
  (ETL and every pipeline stage Running, else 404; same-bucket only as a dry run),
  create a missing destination with the source's props, start the job on every
  target; reply: the job id as text.
- ``GET /v1/cluster?what=status`` (body ``{"ID","Kind"}``): ``{"kind","uuid","err",
  "end_time","aborted","is_idle"}``; ``end_time`` is 0 until every target finished.
- ``GET /v1/cluster?what=qryxstats``: ``{"<tid>": [Snap, ...]}``.
- ``PUT /v1/cluster`` ``{"action":"stop","value":{"ID","Kind"}}``: abort.
- ``GET /v1/jobs/<id>/errors``: every per-object failure (JSON lines), past the cap of 128.
- ``GET /v1/jobs``: every job the targets know or the gateway recorded, one summary each.
- ``GET /v1/cluster?what=status_all|running_all``: the SDK's ``list_jobs_status()``
  and ``list_running_jobs()``.

A target that stops answering while its job runs aborts the job on the others
("target ... unreachable"), so ``job.wait()`` ends instead of hanging; so does a
target that answers without a record of a running job (it restarted and lost
its share): the job is aborted with a reason naming it, never a success with
outputs missing. Job records (``<data>/gateway/jobs/<xid>.json``) keep ended
jobs answerable across restarts; a job running when the cluster stopped reads
as aborted with "cluster restarted while the job was running" (AIStore itself
answers 404 for such a job: its job state lives in memory).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from aioetl.engine.core.names import bck_key, bck_uri, is_remote, uname_key
from aioetl.engine.core.smap import Snode
from aioetl.engine.gateway.cluster import ClusterMap, PeerClient, Reply, err_text
from aioetl.engine.gateway.metadata import ClusterMeta, EtlMd
from aioetl.engine.gateway.tasks import TaskOwner
from aioetl.engine.node.httpd import json_response, read_action, read_json
from aioetl.errors import BadRequest, NotFound
from aioetl.xactions.records import atomic_write_json
from aioetl.xactions.tcb import COPY_BCK, ETL_BCK, IN_PLACE_KINDS, LISTRANGE_KINDS, TcbMsg
from aioetl.xactions.xact import GO_ZERO_TIME, State, Xaction, new_xid, rfc3339

__all__ = ["RESTART_REASON", "GatewayJobs", "aggregate_status", "ended_snap", "lost_reason", "missing_reason",
           "sum_stats"]

log = structlog.get_logger("aioetl.gateway.jobs")


RESTART_REASON = "cluster restarted while the job was running"
WATCH_INTERVAL_S = 1.0
SAVE_RUNNING_EVERY_S = 5.0
MAX_ERR_MSGS = 8  # distinct object errors quoted in a job's err (as one xaction keeps)
_FINAL = ("finished", "aborted")
_OBJ_ERRS_RE = re.compile(r"^(\d+) object error\(s\): (.*?)(?: \(and \d+ more\))?$", re.S)


def missing_reason(xid: str, tid: str) -> str:
    """Why a job fails when one of its targets answers without a record of it."""
    return f"job {xid}: target {tid} restarted while the job was running (it has no record of the job)"


def lost_reason(xid: str, lost: list[str]) -> str:
    """Why a job fails when some of its targets do not answer (or left the cluster map)."""
    return f"job {xid}: target(s) {', '.join(lost)} unreachable"


def _snap_obj_errs(s: dict[str, Any]) -> tuple[int, list[str]]:
    """``(count, distinct messages)`` of one snapshot's object errors: the ``err-total`` and
    ``obj-errs`` fields when present, else parsed from ``err`` (``"N object error(s): a; b"``)."""
    if "err-total" in s:
        n = int(s.get("err-total") or 0)
        msgs = [str(m) for m in s.get("obj-errs") or []]
        if n and not msgs and s.get("err") and s.get("err") != s.get("abort-err"):
            m = _OBJ_ERRS_RE.match(str(s["err"]))
            msgs = [m.group(2)] if m else [str(s["err"])]
        return n, msgs
    m = _OBJ_ERRS_RE.match(str(s.get("err") or ""))
    if m:
        return int(m.group(1)), [m.group(2)]
    return 0, []


def _err_total(snaps: dict[str, list[dict[str, Any]]]) -> int:
    """Object errors summed over every snapshot of ``snaps`` (``{tid: [snap]}``)."""
    return sum(_snap_obj_errs(s)[0] for ss in snaps.values() for s in ss)


def aggregate_status(xid: str, kind: str, snaps: dict[str, list[dict[str, Any]]], lost: list[str],
                     missing: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The job status the SDK polls, from every target's snapshot (pure).

    Follows AIStore's ``nl.Status`` (``nl/listener.go``): ``{"kind","uuid","err",
    "end_time","aborted","is_idle"}``.

    Args:
        snaps: ``{target_id: [snap of this job]}``.
        lost: targets of the job that did not answer (or left the cluster map).
        missing: targets of the job that answered without a record of it (restarted).

    ``err`` is the first abort reason (a restarted or lost target first), else the
    object errors summed over every target: ``"<total> object error(s): <up to 8
    distinct messages>[ (and K more)]"``.
    """
    all_snaps = [s for ss in snaps.values() for s in ss]
    aborted = any(s.get("aborted") for s in all_snaps) or bool(lost) or bool(missing)
    running = any(not s.get("is_idle") for s in all_snaps) and not aborted
    aborts: list[str] = [missing_reason(xid, t) for t in missing]
    if lost:
        aborts.append(lost_reason(xid, lost))
    for s in all_snaps:
        if s.get("abort-err") and s["abort-err"] not in aborts:
            aborts.append(str(s["abort-err"]))
    total = 0
    msgs: list[str] = []
    for s in all_snaps:
        n, ms = _snap_obj_errs(s)
        total += n
        for m in ms:
            if m not in msgs:
                msgs.append(m)
    err = ""
    if aborts:
        err = aborts[0]
    elif total:
        shown = msgs[:MAX_ERR_MSGS]
        more = total - len(shown)
        err = f"{total} object error(s): " + "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")
    else:
        other = [str(s["err"]) for s in all_snaps if s.get("err")]
        err = other[0] if other else ""
    end = 0
    if not running:
        end = time.time_ns()
    return {"kind": kind or (all_snaps[0]["kind"] if all_snaps else ""), "uuid": xid,
            "err": err, "end_time": end, "aborted": aborted, "is_idle": not running}


def sum_stats(snaps: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Counting stats (``loc-objs`` ... ``in-bytes``) summed over targets (pure)."""
    out: dict[str, int] = {}
    for ss in snaps.values():
        for s in ss:
            for k, v in (s.get("stats") or {}).items():
                out[k] = out.get(k, 0) + int(v)
    return out


def ended_snap(job: dict[str, Any], tid: str, reason: str, last: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``qryxstats`` snapshot of target ``tid``'s share of ``job``, aborted with ``reason``
    (pure): the last one seen, if any, else an empty one. For targets that lost their
    share (restarted, unreachable) and for jobs found running after a cluster restart."""
    if last:
        base = dict(last)
    else:  # an empty share, in the wire shape of Xaction.snap()
        x = Xaction(xid=job["id"], kind=job["kind"], node_id=tid, src_bck=job["src"], dst_bck=job["dst"])
        x.start_ns = int(job.get("start") or 0)
        x.abort_err = reason
        x.transition(State.ABORTED)
        base = x.snap()
    if not base.get("aborted"):
        base.update({"aborted": True, "abort-err": reason, "state": "aborted"})
        if not base.get("err"):
            base["err"] = reason
    base["is_idle"] = True
    if base.get("end-time", GO_ZERO_TIME) == GO_ZERO_TIME:
        base["end-time"] = rfc3339(time.time_ns())
    return base


class GatewayJobs:
    """Offline transform jobs as seen from the gateway, with their records.

    Each job has a record in ``<data>/gateway/jobs/<xid>.json`` (written with
    :func:`aioetl.xactions.records.atomic_write_json`): ``id, kind, src, dst, etl,
    pipeline, msg, targets, start`` (ns), ``state`` (``starting`` | ``running`` |
    ``finished`` | ``aborted``) and, once ended, ``end`` (ns), ``err``,
    ``aborted``, ``stats`` (summed), ``err_total`` and every target's last
    ``snaps``. A watcher polls the targets of running jobs every second, so a
    job's end (or a lost or restarted target) is recorded even if nobody asks.
    Ended jobs are answered from the record, so they read the same after a
    restart; jobs found running at start-up are recorded as aborted with
    :data:`RESTART_REASON`.

    Args:
        records_dir: where the job records live (``<data>/gateway/jobs``).
        meta: the buckets (a job's source must exist; a missing destination is created).
        etlmd: the ETLs (a job's ETL and pipeline stages must be Running).
        cluster: the targets a job starts on.
        peers: how the targets are called.
        tasks: owner of the watcher task.
        ensure_bucket: the gateway's bucket lookup that adds a remote bucket on first use.
    """

    def __init__(self, *, records_dir: str, meta: ClusterMeta, etlmd: EtlMd, cluster: ClusterMap, peers: PeerClient,
                 tasks: TaskOwner, ensure_bucket: Callable[[str], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.dir = records_dir
        self.ensure_bucket = ensure_bucket or self._require
        self.meta = meta
        self.etlmd = etlmd
        self.cluster = cluster
        self.peers = peers
        self.tasks = tasks
        self.jobs: dict[str, dict[str, Any]] = self._load()
        self._watcher: asyncio.Task[None] | None = None

    async def _require(self, bck: str) -> dict[str, Any]:
        return self.meta.require_bucket(bck)

    # -- records -------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        """Every job record; those still running are ended with :data:`RESTART_REASON`."""
        out: dict[str, dict[str, Any]] = {}
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return out
        now = time.time_ns()
        for n in names:
            if not n.endswith(".json") or n.startswith("."):
                if n.startswith(".") and n.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.dir, n))
                continue
            try:
                with open(os.path.join(self.dir, n)) as f:
                    job = json.load(f)
                xid = str(job["id"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("unreadable job record skipped", file=n)
                continue
            if job.get("state") not in _FINAL:
                last = job.get("snaps") or {}
                snaps = {tid: [ended_snap(job, tid, RESTART_REASON, (last.get(tid) or [None])[0])]
                         for tid in job.get("targets", [])}
                job.update(state="aborted", aborted=True, end=now, err=RESTART_REASON, snaps=snaps,
                           stats=sum_stats(snaps), err_total=_err_total(snaps))
                self._save_sync(job)
                log.info("job was running when the cluster stopped: recorded as aborted", xid=xid)
            out[xid] = job
        return out

    def _save_sync(self, job: dict[str, Any]) -> None:
        try:
            atomic_write_json(os.path.join(self.dir, f"{job['id']}.json"), job)
        except OSError as e:
            log.warning("job record not saved", xid=job["id"], err=str(e))

    async def _save(self, job: dict[str, Any]) -> None:
        job["saved"] = time.monotonic()
        doc = json.loads(json.dumps(job))  # a snapshot: the loop goes on changing ``job``
        await asyncio.get_running_loop().run_in_executor(None, self._save_sync, doc)

    @staticmethod
    def record_status(job: dict[str, Any]) -> dict[str, Any]:
        """The ``what=status`` answer of an ended job, from its record (pure)."""
        return {"kind": job["kind"], "uuid": job["id"], "err": job.get("err", ""), "end_time": int(job.get("end") or 0),
                "aborted": bool(job.get("aborted")), "is_idle": True}

    async def _finish_if_ended(self, job: dict[str, Any], snaps: dict[str, list[dict[str, Any]]], lost: list[str],
                               missing: list[str]) -> bool:
        """Record the end of ``job`` once every target's share ended (or is lost); True if ended."""
        if job.get("state") in _FINAL:
            return True
        if job.get("state") != "running":
            return False
        gone = set(lost) | set(missing)
        for tid in job["targets"]:
            if tid in gone:
                continue
            ss = snaps.get(tid) or []
            if not ss or any(not s.get("is_idle") for s in ss):
                return False
        full = dict(snaps)
        for tid in gone:
            reason = missing_reason(job["id"], tid) if tid in missing else lost_reason(job["id"], [tid])
            last = (job.get("snaps") or {}).get(tid) or [None]
            full[tid] = [ended_snap(job, tid, reason, last[0])]
        st = aggregate_status(job["id"], job["kind"], snaps, lost, missing)
        job.update(state="aborted" if st["aborted"] else "finished", aborted=st["aborted"], err=st["err"],
                   end=time.time_ns(), snaps=full, stats=sum_stats(snaps), err_total=_err_total(snaps))
        await self._save(job)
        log.info("job ended", xid=job["id"], state=job["state"], err=job["err"], stats=job["stats"])
        return True

    # -- watcher ---------------------------------------------------------------------
    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = self.tasks.spawn(self._watch(), name="job-watcher")

    async def _watch(self) -> None:
        """Poll running jobs until none is left: records ends, lost and restarted targets."""
        while True:
            running = [j for j in self.jobs.values() if j.get("state") == "running"]
            if not running and not any(j.get("state") == "starting" for j in self.jobs.values()):
                return
            await asyncio.sleep(WATCH_INTERVAL_S)
            for job in running:
                try:
                    snaps, lost, missing = await self.snaps(job["id"], "")
                    if not await self._finish_if_ended(job, snaps, lost, missing) and \
                            time.monotonic() - job.get("saved", 0) > SAVE_RUNNING_EVERY_S:
                        job["snaps"] = snaps
                        await self._save(job)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("job watch failed", xid=job.get("id"), err=repr(e))

    def add_routes(self, app: web.Application) -> None:
        """Register the job routes (module docstring); the watcher is a task of ``tasks``."""
        r = app.router
        r.add_route("GET", "/v1/cluster", self.h_cluster_get)
        r.add_route("PUT", "/v1/cluster", self.h_cluster_put)
        r.add_route("GET", "/v1/jobs", self.h_jobs)
        r.add_route("GET", "/v1/jobs/{id}/errors", self.h_errors)
        r.add_route("POST", "/v1/jobs/{id}/_abort", self.h_abort_from_target)

    async def _each(self, method: str, path: str, body: Any = None, timeout_s: float = 15.0,
                    targets: list[Snode] | None = None) -> list[Reply]:
        return await self.peers.each_target(method, path, body=body, timeout_s=timeout_s, targets=targets)

    # -- start ---------------------------------------------------------------------
    async def start(self, request: web.Request, src: str, action: str, value: Any) -> web.StreamResponse:
        """Validate and start an ``etl-bck``/``etl-listrange``/``copy-*`` job; reply with its id.

        Everything that can be refused is checked before anything is created (the
        message, templates included, the ETLs, the destination name), as AIStore's
        proxy does (``ais/proxy.go`` ``httpbckpost``); then a missing destination is
        created, the record written (state ``starting``), the job started on every
        target, and the record moved to ``running`` (or ``aborted`` if a target refused).

        Raises:
            BadRequest: an invalid message or destination; a target refused the job.
            NotFound: the source bucket or an ETL of the pipeline is missing or not Running.
        """
        msg = TcbMsg.parse(action, value, remote_src=is_remote(src))
        self.meta.require_bucket(src)
        if msg.etl_name:
            self.etlmd.require_running(msg.etl_name)
        for stage in msg.pipeline:
            self.etlmd.require_running(stage)
        if action in (ETL_BCK, COPY_BCK):
            bck_to = request.query.get("bck_to", "")
            if not bck_to:
                raise BadRequest(f"{action}: missing destination (query bck_to=ais/@#/<bucket>/)")
            dst, _ = uname_key(bck_to.rstrip("/") + "/")
        elif action in IN_PLACE_KINDS:
            dst = src
        else:
            dst = bck_key(msg.to_provider, msg.to_bck) if msg.to_bck else src
        if dst == src and not msg.dry_run and action not in IN_PLACE_KINDS and not is_remote(src):
            raise BadRequest(f'{action}: source and destination are the same bucket "{bck_uri(src)}" '
                             "(only a dry run may transform a bucket onto itself)")
        targets = self.cluster.targets()
        if not targets:
            raise BadRequest(f"{action}: no targets in the cluster map")
        if not self.meta.has_bucket(dst):
            if is_remote(dst):
                await self.ensure_bucket(dst)  # a remote destination must exist in the remote
            else:
                await self.meta.create_bucket(dst, like=src)
        xid = new_xid("tco-" if action in LISTRANGE_KINDS else "")
        targets = self.cluster.targets()
        wire = msg.to_wire()
        job: dict[str, Any] = {"id": xid, "kind": action, "src": src, "dst": dst, "etl": msg.etl_name,
                               "pipeline": msg.pipeline, "msg": wire, "targets": [t.daemon_id for t in targets],
                               "start": time.time_ns(), "state": "starting"}
        self.jobs[xid] = job
        await self._save(job)
        body = {"id": xid, "kind": action, "src": src, "dst": dst, "msg": wire}
        res = await self._each("POST", "/v1/xactions/_start", body, targets=targets)
        failed = [(t, st, b) for t, st, b in res if st != 200]
        if failed:
            await self._each("POST", "/v1/xactions/_abort", {"id": xid, "err": "job start failed"})
            t, st, b = failed[0]
            text = err_text(b)
            job.update(state="aborted", aborted=True, end=time.time_ns(), snaps={}, stats={}, err_total=0,
                       err=f"{action}: could not start on target {t.daemon_id}: {text}")
            await self._save(job)
            if st == 404:
                raise NotFound(text)
            raise BadRequest(job["err"])
        job["state"] = "running"
        await self._save(job)
        self._ensure_watcher()
        log.info("job started", xid=xid, kind=action, src=src, dst=dst, etl=msg.etl_name)
        return web.Response(text=xid)

    # -- status ----------------------------------------------------------------------
    async def snaps(self, xid: str, kind: str) -> tuple[dict[str, list[dict[str, Any]]], list[str], list[str]]:
        """Every target's snapshots of ``xid`` (or of every job of ``kind``), live.

        Returns:
            ``(snaps, lost, missing)``: ``{tid: [snap]}``; the job's targets that did not
            answer or left the cluster map; the job's targets that answered without a
            record of a job that runs (they restarted). The first time either list is
            non-empty the job is aborted on every target with the reason.
        """
        q = f"/v1/xactions?id={xid}&kind={kind}"
        out: dict[str, list[dict[str, Any]]] = {}
        lost: list[str] = []
        missing: list[str] = []
        job = self.jobs.get(xid) if xid else None
        mine = set(job["targets"]) if job is not None else set()
        started = job is not None and job.get("state") == "running"
        for t, st, body in await self._each("GET", q, timeout_s=10):
            if st == 200:
                got = [s for s in json.loads(body) if not xid or s.get("id") == xid]
                out[t.daemon_id] = got
                if started and not got and t.daemon_id in mine:
                    missing.append(t.daemon_id)
            elif t.daemon_id in mine:
                lost.append(t.daemon_id)
        if job is not None:
            lost += [tid for tid in job["targets"] if not self.cluster.has_target(tid)]
        # a target's share that ended aborted (e.g. its record says it restarted) aborts the rest
        # too; a target's own first error already does that through h_abort_from_target
        restarted = [s["abort-err"] for tid in mine for s in out.get(tid, []) if started and s.get("aborted")
                     and "restarted while the job was running" in str(s.get("abort-err"))]
        if (lost or missing or restarted) and job is not None and not job.get("lost_handled"):
            job["lost_handled"] = True
            err = missing_reason(xid, missing[0]) if missing else lost_reason(xid, lost) if lost else restarted[0]
            log.warning("aborting job: target lost or restarted", xid=xid, lost=lost, missing=missing)
            await self._each("POST", "/v1/xactions/_abort", {"id": xid, "err": err}, timeout_s=5)
        return out, lost, missing

    @staticmethod
    def _args(doc: Any, request: web.Request) -> tuple[str, str]:
        doc = doc if isinstance(doc, dict) else {}
        low = {str(k).lower(): v for k, v in doc.items()}
        xid = str(low.get("id") or request.query.get("id") or "")
        kind = str(low.get("kind") or request.query.get("kind") or "")
        return xid, kind

    async def job_view(self, xid: str, kind: str) -> tuple[dict[str, Any] | None, dict[str, list[dict[str, Any]]]]:
        """``(status, snaps)`` of one job: from its record once ended, else live from the
        targets (recording the end when it is reached). ``status`` is None for a job
        nobody knows."""
        job = self.jobs.get(xid) if xid else None
        if job is not None and job.get("state") in _FINAL:
            return self.record_status(job), job.get("snaps") or {}
        snaps, lost, missing = await self.snaps(xid, kind)
        if job is not None and await self._finish_if_ended(job, snaps, lost, missing):
            return self.record_status(job), job.get("snaps") or {}
        full = dict(snaps)
        if job is not None:
            for tid in missing:
                full[tid] = [ended_snap(job, tid, missing_reason(xid, tid))]
            for tid in lost:
                full[tid] = [ended_snap(job, tid, lost_reason(xid, [tid]))]
        if not any(snaps.values()) and not lost and not missing and job is None:
            return None, snaps
        st = aggregate_status(xid, kind or (job["kind"] if job else ""), snaps, lost, missing)
        return st, full

    async def h_cluster_get(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/cluster?what=status|qryxstats|status_all|running_all`` (``ais/prxclu.go`` httpcluget).

        - ``status``: one job (``{"ID","Kind"}``): ``nl.Status``; 404 for an unknown job.
        - ``qryxstats``: ``{tid: [Snap]}``; a target that lost its share appears with an
          aborted snapshot that says why.
        - ``status_all`` (SDK ``list_jobs_status``; ``xact.QueryMsg`` ``{"kind","node",
          "show_active"}``): ``[nl.Status]`` of every job this gateway started, oldest first
          (AIStore: the IC's notification listeners, ``ais/ic.go`` xstatusAll).
        - ``running_all`` (SDK ``list_running_jobs``): sorted unique ``"kind[id]"`` of the
          jobs the targets run now (``ais/prxclu.go`` xgetRunning, ``xact/xreg`` GetAllRunning).
        """
        what = request.query.get("what", "")
        if what not in ("status", "qryxstats", "status_all", "running_all"):
            raise BadRequest(f'invalid query "what={what}"')
        doc = await read_json(request, required=False)
        if what == "status_all":
            return json_response(await self.status_all(doc if isinstance(doc, dict) else {}))
        if what == "running_all":
            return json_response(await self.running_all(doc if isinstance(doc, dict) else {}))
        xid, kind = self._args(doc, request)
        st, snaps = await self.job_view(xid, kind)
        if what == "qryxstats":
            return json_response(snaps)
        if st is None:
            raise NotFound(f'job "{xid or kind}" not found')
        return json_response(st)

    async def status_all(self, q: dict[str, Any]) -> list[dict[str, Any]]:
        """Statuses of every recorded job matching ``q`` (``kind``, ``node``, ``show_active``)."""
        kind, node = str(q.get("kind") or ""), str(q.get("node") or "")
        active = bool(q.get("show_active"))
        out = []
        for job in sorted(self.jobs.values(), key=lambda j: int(j.get("start") or 0)):
            if (kind and job["kind"] != kind) or (node and node not in job.get("targets", [])):
                continue
            if active and job.get("state") in _FINAL:
                continue
            st, _ = await self.job_view(job["id"], "")
            if st is None or (active and st["is_idle"]):
                continue
            out.append(st)
        return out

    async def running_all(self, q: dict[str, Any]) -> list[str]:
        """``"kind[id]"`` of every job some target runs now (filtered by ``kind``), sorted."""
        kind = str(q.get("kind") or "")
        seen: set[str] = set()
        for _t, st, body in await self._each("GET", "/v1/xactions", timeout_s=10):
            if st != 200:
                continue
            for s in json.loads(body):
                if not s.get("is_idle") and (not kind or s.get("kind") == kind):
                    seen.add(f"{s['kind']}[{s['id']}]")
        return sorted(seen)

    async def h_cluster_put(self, request: web.Request) -> web.StreamResponse:
        """``PUT /v1/cluster`` ``{"action":"stop","value":{"ID","Kind"}}``: abort on every target."""
        action, value = await read_action(request)
        if action != "stop":
            raise BadRequest(f'invalid action "{action}" for PUT /v1/cluster')
        xid, kind = self._args(value, request)
        if not xid and not kind:
            raise BadRequest("stop: job ID or Kind is required")
        await self._each("POST", "/v1/xactions/_abort", {"id": xid, "kind": kind, "err": "aborted by user"})
        return web.Response(status=200)

    async def abort_etl_jobs(self, etl: str, reason: str) -> None:
        """Stopping an ETL aborts the jobs that use it."""
        await self._each("POST", "/v1/xactions/_abort", {"etl": etl, "err": reason}, timeout_s=10)

    async def h_abort_from_target(self, request: web.Request) -> web.StreamResponse:
        """A target's first error (without ``coer``) aborts the job on every target."""
        doc = await read_json(request, required=False) or {}
        xid = request.match_info["id"]
        await self._each("POST", "/v1/xactions/_abort", {"id": xid, "err": str(doc.get("err") or "aborted")})
        return web.Response(status=200)

    async def h_jobs(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/jobs``: one summary per job, oldest first: ``{"id","kind","src","dst",
        <nl.Status fields>, "stats"}``; ended jobs from their records (so they survive restarts)."""
        per: dict[str, dict[str, Any]] = {}
        for t, st, body in await self._each("GET", "/v1/xactions", timeout_s=10):
            if st != 200:
                continue
            for s in json.loads(body):
                j = per.setdefault(s["id"], {"id": s["id"], "kind": s["kind"], "src": _key_of(s["src-bck"]),
                                              "dst": _key_of(s["dst-bck"]), "snaps": {}})
                j["snaps"][t.daemon_id] = s
        rows: list[tuple[int, dict[str, Any]]] = []
        for xid, j in per.items():
            rec = self.jobs.get(xid)
            if rec is not None and rec.get("state") in _FINAL:
                continue
            snaps = {tid: [s] for tid, s in j.pop("snaps").items()}
            status = aggregate_status(xid, j["kind"], snaps, [])
            t0 = min(_parse_start(ss[0]) for ss in snaps.values())
            rows.append((t0, {**j, **status, "stats": sum_stats(snaps)}))
        for xid, rec in self.jobs.items():
            if xid in per and rec.get("state") not in _FINAL:
                continue
            if rec.get("state") in _FINAL:
                rows.append((int(rec.get("start") or 0), {"id": xid, "kind": rec["kind"], "src": rec["src"],
                                                          "dst": rec["dst"], **self.record_status(rec),
                                                          "stats": dict(rec.get("stats") or {})}))
        rows.sort(key=lambda r: r[0])
        return json_response([r for _, r in rows])

    async def h_errors(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/jobs/<id>/errors``: every target's full error report, JSON lines."""
        xid = request.match_info["id"]
        chunks = [b for _t, st, b in await self._each("GET", f"/v1/xactions/{xid}/errors", timeout_s=60) if st == 200]
        return web.Response(body=b"".join(chunks), content_type="application/x-ndjson")


def _key_of(wire_bck: dict[str, Any]) -> str:
    """The bucket key (``b``, ``aws:b``) of a snapshot's ``{"name","provider"}``."""
    return bck_key(str(wire_bck.get("provider") or ""), str(wire_bck["name"]))


def _parse_start(s: dict[str, Any]) -> int:
    """A snapshot's ``start-time`` (RFC 3339) as ns since the epoch (0 if unparsable)."""
    v = str(s.get("start-time") or "")
    try:
        whole, _, frac = v.rstrip("Z").partition(".")
        t = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return t * 10**9 + int((frac + "000000000")[:9] or 0)
    except ValueError:
        return 0
