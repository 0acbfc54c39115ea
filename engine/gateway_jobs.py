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
- ``GET /v1/jobs``: every job the targets know, one merged summary each.

A target that stops answering while its job runs aborts the job on the others
("target ... unreachable"), so ``job.wait()`` ends instead of hanging.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from xactions.tcb import COPY_BCK, DELETE_LISTRANGE, ETL_BCK, LISTRANGE_KINDS, TcbMsg
from xactions.xact import new_xid

from .errors import BadRequest, NotFound
from .httpd import json_response, read_action, read_json
from .names import parse_uname, validate_bck_name
from .smap import Snode

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["GatewayJobs", "aggregate_status"]

log = structlog.get_logger("aioetl.gateway.jobs")


def aggregate_status(xid: str, kind: str, snaps: dict[str, list[dict[str, Any]]], lost: list[str]) -> dict[str, Any]:
    """The job status the SDK polls, from every target's snapshot (pure).

    Args:
        snaps: ``{target_id: [snap of this job]}``.
        lost: targets that did not answer.
    """
    all_snaps = [s for ss in snaps.values() for s in ss]
    aborted = any(s.get("aborted") for s in all_snaps) or bool(lost)
    running = any(not s.get("is_idle") for s in all_snaps) and not aborted
    errs = [s["abort-err"] for s in all_snaps if s.get("abort-err")] + [s["err"] for s in all_snaps if s.get("err")]
    if lost:
        errs.insert(0, f"job {xid}: target(s) {', '.join(lost)} unreachable")
    end = 0
    if not running:
        end = time.time_ns()
    return {"kind": kind or (all_snaps[0]["kind"] if all_snaps else ""), "uuid": xid,
            "err": errs[0] if errs else "", "end_time": end, "aborted": aborted, "is_idle": not running}


class GatewayJobs:
    """Offline transform jobs as seen from the gateway."""

    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw
        self.jobs: dict[str, dict[str, Any]] = {}

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_route("GET", "/v1/cluster", self.h_cluster_get)
        r.add_route("PUT", "/v1/cluster", self.h_cluster_put)
        r.add_route("GET", "/v1/jobs", self.h_jobs)
        r.add_route("GET", "/v1/jobs/{id}/errors", self.h_errors)
        r.add_route("POST", "/v1/jobs/{id}/_abort", self.h_abort_from_target)

    async def _each(self, method: str, path: str, body: Any = None, timeout_s: float = 15.0,
                    targets: list[Snode] | None = None) -> list[tuple[Snode, int, bytes]]:
        return await self.gw.etl._each_target(method, path, body=body, timeout_s=timeout_s, targets=targets)

    # -- start ---------------------------------------------------------------------
    async def start(self, request: web.Request, src: str, action: str, value: Any) -> web.StreamResponse:
        """Validate and start an ``etl-bck``/``etl-listrange`` job; reply with its id."""
        msg = TcbMsg.parse(action, value)
        self.gw._require(src)
        if msg.etl_name:
            self.gw.etl.require_running(msg.etl_name)
        for stage in msg.pipeline:
            self.gw.etl.require_running(stage)
        if action in (ETL_BCK, COPY_BCK):
            bck_to = request.query.get("bck_to", "")
            if not bck_to:
                raise BadRequest(f"{action}: missing destination (query bck_to=ais/@#/<bucket>/)")
            provider, dst, _ = parse_uname(bck_to.rstrip("/") + "/")
            if provider != "ais":
                raise BadRequest(f'provider "{provider}" is not supported')
        else:
            dst = msg.to_bck or src
        validate_bck_name(dst)
        if dst == src and not msg.dry_run and action != DELETE_LISTRANGE:
            raise BadRequest(f'{action}: source and destination are the same bucket "ais://{src}" '
                             "(only a dry run may transform a bucket onto itself)")
        if dst not in self.gw.bmd["buckets"]:
            await self.gw.create_bucket(dst, like=src)
        xid = new_xid("tco-" if action in LISTRANGE_KINDS else "")
        targets = list(self.gw.smap.targets.values())
        self.jobs[xid] = {"id": xid, "kind": action, "src": src, "dst": dst, "etl": msg.etl_name,
                          "pipeline": msg.pipeline, "targets": [t.daemon_id for t in targets], "start": time.time_ns()}
        body = {"id": xid, "kind": action, "src": src, "dst": dst, "msg": msg.to_wire()}
        res = await self._each("POST", "/v1/xactions/_start", body)
        failed = [(t, st, b) for t, st, b in res if st != 200]
        if failed:
            await self._each("POST", "/v1/xactions/_abort", {"id": xid, "err": "job start failed"})
            t, st, b = failed[0]
            text = self.gw.etl._err_text(b)
            if st == 404:
                raise NotFound(text)
            raise BadRequest(f"{action}: could not start on target {t.daemon_id}: {text}")
        log.info("job started", xid=xid, kind=action, src=src, dst=dst, etl=msg.etl_name)
        return web.Response(text=xid)

    # -- status ----------------------------------------------------------------------
    async def snaps(self, xid: str, kind: str) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
        q = f"/v1/xactions?id={xid}&kind={kind}"
        out: dict[str, list[dict[str, Any]]] = {}
        lost: list[str] = []
        job = self.jobs.get(xid)
        for t, st, body in await self._each("GET", q, timeout_s=10):
            if st == 200:
                out[t.daemon_id] = json.loads(body)
            elif job is not None and t.daemon_id in job["targets"]:
                lost.append(t.daemon_id)
        if job is not None:
            lost += [tid for tid in job["targets"] if tid not in self.gw.smap.targets]
        if lost and job is not None and not job.get("lost_handled"):
            job["lost_handled"] = True
            err = f"job {xid}: target(s) {', '.join(lost)} unreachable"
            log.warning("aborting job: target lost", xid=xid, lost=lost)
            await self._each("POST", "/v1/xactions/_abort", {"id": xid, "err": err}, timeout_s=5)
        return out, lost

    @staticmethod
    def _args(doc: Any, request: web.Request) -> tuple[str, str]:
        doc = doc if isinstance(doc, dict) else {}
        low = {str(k).lower(): v for k, v in doc.items()}
        xid = str(low.get("id") or request.query.get("id") or "")
        kind = str(low.get("kind") or request.query.get("kind") or "")
        return xid, kind

    async def h_cluster_get(self, request: web.Request) -> web.StreamResponse:
        what = request.query.get("what", "")
        if what not in ("status", "qryxstats"):
            raise BadRequest(f'invalid query "what={what}"')
        xid, kind = self._args(await read_json(request, required=False), request)
        snaps, lost = await self.snaps(xid, kind)
        if what == "qryxstats":
            return json_response(snaps)
        if not any(snaps.values()) and not lost:
            raise NotFound(f'job "{xid or kind}" not found')
        return json_response(aggregate_status(xid, kind, snaps, lost))

    async def h_cluster_put(self, request: web.Request) -> web.StreamResponse:
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
        doc = await read_json(request, required=False) or {}
        xid = request.match_info["id"]
        await self._each("POST", "/v1/xactions/_abort", {"id": xid, "err": str(doc.get("err") or "aborted")})
        return web.Response(status=200)

    async def h_jobs(self, request: web.Request) -> web.StreamResponse:
        per: dict[str, dict[str, Any]] = {}
        for t, st, body in await self._each("GET", "/v1/xactions", timeout_s=10):
            if st != 200:
                continue
            for s in json.loads(body):
                j = per.setdefault(s["id"], {"id": s["id"], "kind": s["kind"], "src": s["src-bck"]["name"],
                                              "dst": s["dst-bck"]["name"], "snaps": {}})
                j["snaps"][t.daemon_id] = s
        out = []
        for xid, j in sorted(per.items(), key=lambda kv: min(s["start-time"] for s in kv[1]["snaps"].values())):
            snaps = {tid: [s] for tid, s in j.pop("snaps").items()}
            st = aggregate_status(xid, j["kind"], snaps, [])
            stats: dict[str, int] = {}
            for ss in snaps.values():
                for k, v in ss[0]["stats"].items():
                    stats[k] = stats.get(k, 0) + int(v)
            out.append({**j, **st, "stats": stats})
        return json_response(out)

    async def h_errors(self, request: web.Request) -> web.StreamResponse:
        xid = request.match_info["id"]
        chunks = [b for _t, st, b in await self._each("GET", f"/v1/xactions/{xid}/errors", timeout_s=60) if st == 200]
        return web.Response(body=b"".join(chunks), content_type="application/x-ndjson")

