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
again once every target has joined.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import string
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web

from xactions.errs import MAX_OBJ_ERRS

from .errors import AlreadyExists, BadRequest
from .etl import STAGE_ABORTED, STAGE_INITIALIZING, STAGE_RUNNING, etl_not_found, parse_init_msg, validate_etl_name
from .httpd import json_response, read_json
from .smap import Snode

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["GatewayEtl"]

log = structlog.get_logger("aioetl.gateway.etl")


def new_secret() -> str:
    """10 random ASCII letters, as AIStore's ``cos.CryptoRandS(10)``."""
    return "".join(secrets.choice(string.ascii_letters) for _ in range(10))


class GatewayEtl:
    """etlMD and the ETL endpoints of the gateway."""

    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw
        self.path = os.path.join(gw.cfg.data_dir, "gateway", "etlmd.json")
        self.md: dict[str, dict[str, Any]] = self._load()
        self._lock = asyncio.Lock()
        self._restart_pending = {n for n, e in self.md.items() if e["stage"] in (STAGE_RUNNING, STAGE_INITIALIZING)}
        for n in self._restart_pending:
            self.md[n]["stage"] = STAGE_ABORTED

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path) as f:
                md: dict[str, dict[str, Any]] = json.load(f)
                return md
        except FileNotFoundError:
            return {}

    def _save(self) -> None:
        from .gateway import _atomic_write_json

        _atomic_write_json(self.path, self.md)

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
    def require(self, name: str) -> dict[str, Any]:
        e = self.md.get(name)
        if e is None:
            raise etl_not_found(name)
        return e

    def require_running(self, name: str) -> dict[str, Any]:
        e = self.require(name)
        if e["stage"] != STAGE_RUNNING:
            raise etl_not_found(name)
        return e

    async def _each_target(self, method: str, path: str, *, body: Any = None, timeout_s: float = 30.0,
                           targets: list[Snode] | None = None) -> list[tuple[Snode, int, bytes]]:
        assert self.gw.session is not None
        ts = targets if targets is not None else list(self.gw.smap.targets.values())

        async def one(t: Snode) -> tuple[Snode, int, bytes]:
            try:
                async with self.gw.session.request(method, t.url + path, json=body,  # type: ignore[union-attr]
                                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                    return t, r.status, await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                return t, 0, f"target {t.daemon_id} unreachable or timed out: {e!r}".encode()

        return list(await asyncio.gather(*(one(t) for t in ts)))

    @staticmethod
    def _err_text(body: bytes) -> str:
        try:
            doc = json.loads(body)
            if isinstance(doc, dict) and "message" in doc:
                return str(doc["message"])
        except ValueError:
            pass
        return body.decode(errors="replace")[:2000]

    async def _run_init(self, name: str) -> str:
        """Phase 1 on every target; undo on all if any fails. Returns the xid."""
        e = self.md[name]
        spec = parse_init_msg(e["msg"])
        e["secret"], e["xid"] = new_secret(), f"etl-{secrets.token_hex(5)}"
        e["stage"], e["error"] = STAGE_INITIALIZING, ""
        self._save()
        body = {"msg": e["msg"], "secret": e["secret"], "xid": e["xid"]}
        res = await self._each_target("POST", "/v1/etl/_init", body=body, timeout_s=spec.init_timeout_s + 30)
        failed = [(t, st, b) for t, st, b in res if st != 200]
        if failed:
            await self._each_target("DELETE", f"/v1/etl/{name}")
            t, st, b = failed[0]
            e["stage"], e["error"] = STAGE_ABORTED, self._err_text(b)
            self._save()
            msg = f'etl job "{name}": init failed on target {t.daemon_id}: {e["error"]}'
            log.warning("etl init failed", etl=name, target=t.daemon_id, status=st)
            raise BadRequest(msg)
        e["stage"] = STAGE_RUNNING
        e["pods"] = {t.daemon_id: json.loads(b) for t, _, b in res}
        self._save()
        log.info("etl running", etl=name, xid=e["xid"], comm=spec.comm_type)
        return str(e["xid"])

    # -- endpoints ---------------------------------------------------------------
    async def h_init(self, request: web.Request) -> web.StreamResponse:
        msg = await read_json(request)
        spec = parse_init_msg(msg)
        async with self._lock:
            if spec.name in self.md:
                raise AlreadyExists(f'etl job "{spec.name}" already exists')
            self.md[spec.name] = {"msg": msg, "stage": STAGE_INITIALIZING, "secret": "", "xid": "", "error": ""}
        xid = await self._run_init(spec.name)
        return web.Response(text=xid)

    async def h_list(self, request: web.Request) -> web.StreamResponse:
        stats: dict[str, dict[str, int]] = {}
        for _t, st, body in await self._each_target("GET", "/v1/etl", timeout_s=10):
            if st == 200:
                for i in json.loads(body):
                    s = stats.setdefault(i["id"], {"obj_count": 0, "in_bytes": 0, "out_bytes": 0})
                    for k in s:
                        s[k] += int(i.get(k, 0))
        out = []
        for name, e in sorted(self.md.items()):
            s = stats.get(name, {"obj_count": 0, "in_bytes": 0, "out_bytes": 0})
            out.append({"id": name, "xaction_id": e.get("xid", ""), "stage": e["stage"], **s})
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
        doc = {"init_msg": e["msg"], "obj_errors": errs, "stage": e["stage"], "error": e.get("error", "")}
        return json_response(doc)

    async def _stop(self, name: str, reason: str = "") -> None:
        e = self.require(name)
        await self._each_target("DELETE", f"/v1/etl/{name}")
        e["stage"] = STAGE_ABORTED
        if reason:
            e["error"] = reason
        self._save()
        await self.gw.on_etl_stopped(name, reason or f'etl job "{name}" stopped')

    async def h_stop(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        validate_etl_name(name)
        await self._stop(name)
        return web.Response(status=200)

    async def h_start(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        validate_etl_name(name)
        e = self.require(name)
        if e["stage"] != STAGE_ABORTED:
            raise BadRequest(f'etl job "{name}" is {e["stage"]}: only an Aborted (stopped) ETL can be started')
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
        if name in self.md and self.md[name]["stage"] == STAGE_RUNNING:
            reason = str(doc.get("error") or f"pod of etl job {name} exited")
            log.warning("etl aborted: pod died", etl=name, reason=reason)
            await self._stop(name, reason)
        return web.Response(status=200)

    async def _per_target(self, request: web.Request, what: str) -> web.StreamResponse:
        name = request.match_info["name"]
        validate_etl_name(name)
        self.require(name)
        targets = list(self.gw.smap.targets.values())
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
                out.append({"target_id": t.daemon_id, "error": self._err_text(body)})
        return json_response(out)

    async def h_logs(self, request: web.Request) -> web.StreamResponse:
        return await self._per_target(request, "logs")

    async def h_health(self, request: web.Request) -> web.StreamResponse:
        return await self._per_target(request, "health")

    async def h_metrics(self, request: web.Request) -> web.StreamResponse:
        return await self._per_target(request, "metrics")

    async def restart_after_boot(self) -> None:
        """Re-init ETLs that were Running before the cluster stopped (all targets joined)."""
        for name in sorted(self._restart_pending):
            try:
                await self._run_init(name)
            except Exception as e:  # noqa: BLE001 - recorded on the ETL
                log.warning("etl restart failed", etl=name, err=str(e))
        self._restart_pending.clear()
