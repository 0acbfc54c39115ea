"""Gateway (AIStore's primary proxy): cluster map, bucket metadata, redirects.

Public REST subset (as the aistore SDK 1.26 and 2.x send it; see
``reference/ais-etl-protocol.md`` §5):

- ``GET /v1/daemon?what=smap|bmd|snode``, ``GET /v1/health``
- ``GET /v1/buckets`` (list buckets), ``POST /v1/buckets/<b>`` ``create-bck``,
  ``DELETE /v1/buckets/<b>`` ``destroy-bck``, ``HEAD /v1/buckets/<b>``,
  ``GET /v1/buckets/<b>`` ``list`` (msgpack ``LsoRes`` with paging)
- ``* /v1/objects/<b>/<o>``: 307 to the target HRW picks (the same HRW the SDK
  computes client side)
- ``GET /v1/reverse/daemon?what=node_status`` with ``Ais-Node-Id``: a target's
  ``stats.NodeStatus`` (the SDK's ``cluster().get_performance()``)

Intra-cluster (cluster secret required, :mod:`aioetl.engine.node.auth`): ``POST /v1/cluster/join`` (a target registers; the reply is
the current smap and BMD, which are then pushed to every target with
``PUT /v1/metasync``). A target that (re)joins once the cluster runs gets every
Running ETL initialized on it (``GatewayEtl.on_target_joined``).

The BMD persists in ``<data>/gateway/bmd.json`` (write-to-temp, fsync, rename),
so a restarted cluster has its buckets.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import secrets
import time
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web

from aioetl.engine.core.names import make_uname, validate_bck_name, validate_obj_name
from aioetl.engine.core.smap import Smap, Snode
from aioetl.engine.node.auth import GATEWAY_INTERNAL, auth_headers, cluster_auth_middleware
from aioetl.engine.node.httpd import error_middleware, json_response, read_action, split_obj_path
from aioetl.engine.target.target import serve_until_signalled, write_ready_file
from aioetl.errors import AioetlError, AlreadyExists, BadRequest, NodeUnavailable, bck_not_found

__all__ = ["Gateway", "GatewayConfig", "run_gateway"]

log = structlog.get_logger("aioetl.gateway")

DEFAULT_PAGE_SIZE = 10000
_lso_enc = msgspec.msgpack.Encoder()
_page_dec = msgspec.msgpack.Decoder()


class GatewayConfig:
    """Gateway settings, read once at the entry point.

    Args:
        node_id: the gateway's id (e.g. ``p-1a2b3c``).
        data_dir: cluster data root; the BMD lives in ``<data_dir>/gateway``.
        host, port: listen address; port 0 = ephemeral.
        run_dir: where the ready file is written.
        cluster_secret: the cluster secret (:mod:`aioetl.engine.node.auth`): required on the
            intra-cluster routes served here, sent on every call to a target.
    """

    def __init__(self, *, node_id: str, data_dir: str, cluster_secret: str, host: str = "127.0.0.1", port: int = 0,
                 run_dir: str = "") -> None:
        if not cluster_secret:
            raise ValueError("GatewayConfig needs a cluster secret")
        self.node_id, self.data_dir, self.host, self.port, self.run_dir = node_id, data_dir, host, port, run_dir
        self.cluster_secret = cluster_secret


def _atomic_write_json(path: str, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path``: temp file (mode 0600: etlMD holds per-ETL
    secrets), fsync, rename."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Gateway:
    """The cluster's single gateway: owns smap and BMD, redirects object I/O."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.bmd_path = os.path.join(cfg.data_dir, "gateway", "bmd.json")
        self.bmd: dict[str, Any] = self._load_bmd()
        self.smap = Smap(proxy=Snode(cfg.node_id, "proxy", ""), uuid=self.bmd.get("cluster_uuid", ""))
        self.session: aiohttp.ClientSession | None = None
        self._meta_lock = asyncio.Lock()
        self.log = log.bind(gateway=cfg.node_id)
        from aioetl.engine.gateway.etl import GatewayEtl

        self.etl = GatewayEtl(self)
        from aioetl.engine.gateway.jobs import GatewayJobs

        self.jobs = GatewayJobs(self)
        self._bg: list[asyncio.Future[None]] = []
        self._summaries: dict[str, tuple[float, dict[str, Any]]] = {}

    def _load_bmd(self) -> dict[str, Any]:
        try:
            with open(self.bmd_path) as f:
                bmd: dict[str, Any] = json.load(f)
                return bmd
        except FileNotFoundError:
            return {"version": 0, "buckets": {}, "cluster_uuid": secrets.token_hex(5)}

    def make_app(self) -> web.Application:
        mws = [error_middleware(self.node_id),
               cluster_auth_middleware(self.cfg.cluster_secret, GATEWAY_INTERNAL, self.node_id)]
        app = web.Application(middlewares=mws, client_max_size=1 << 40)
        r = app.router
        r.add_route("GET", "/v1/daemon", self.daemon)
        r.add_route("GET", "/v1/health", self.health)
        r.add_route("POST", "/v1/cluster/join", self.join)
        r.add_route("GET", "/v1/buckets", self.list_buckets)
        r.add_route("GET", "/v1/buckets/", self.list_buckets)
        r.add_route("GET", "/v1/buckets/{bck}", self.bck_get)
        r.add_route("POST", "/v1/buckets/{bck:.*}", self.bck_post)
        r.add_route("DELETE", "/v1/buckets/{bck}", self.bck_delete)
        r.add_route("HEAD", "/v1/buckets/{bck}", self.bck_head)
        r.add_route("HEAD", "/v1/buckets/{bck}/{prefix:.*}", self.bck_head)
        r.add_route("*", "/v1/objects/{tail:.+}", self.redirect_object, expect_handler=self.expect_redirect)
        r.add_route("GET", "/v1/reverse/daemon", self.reverse_daemon)
        self.etl.add_routes(app)
        self.jobs.add_routes(app)
        return app

    async def on_etl_stopped(self, name: str, reason: str) -> None:
        """Stopping (or losing) an ETL aborts the jobs that use it."""
        await self.jobs.abort_etl_jobs(name, reason)

    # -- cluster -----------------------------------------------------------
    async def daemon(self, request: web.Request) -> web.StreamResponse:
        what = request.query.get("what", "smap")
        if what == "smap":
            return json_response(self.smap.to_json())
        if what == "bmd":
            return json_response(self.bmd)
        if what == "snode":
            return json_response(self.smap.proxy.to_json())
        raise BadRequest(f'invalid query "what={what}"')

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def join(self, request: web.Request) -> web.StreamResponse:
        """A target registers (or re-registers with a new URL after a restart)."""
        doc = await request.json()
        node = Snode(str(doc["daemon_id"]), "target", str(doc["url"]))
        async with self._meta_lock:
            self.smap.targets[node.daemon_id] = node
            self.smap.version += 1
            self.log.info("target joined", target=node.daemon_id, url=node.url, version=self.smap.version)
            meta = self._meta()
        # push to the others; the joiner gets it in the reply
        await self._metasync(meta, skip=node.daemon_id)
        if self.etl.restart_pending:
            if self._expected_joined():
                self._bg.append(asyncio.ensure_future(self._restart_etls_soon()))
        else:
            self.etl.on_target_joined(node)  # a restarted target has no pods: start the Running ETLs there
        return json_response(meta)

    def _expected_joined(self) -> bool:
        try:
            with open(os.path.join(self.cfg.data_dir, "cluster.json")) as f:
                want = {t["id"] for t in json.load(f)["targets"]}
        except (OSError, ValueError, KeyError):
            return True
        return want <= set(self.smap.targets)

    async def _restart_etls_soon(self) -> None:
        await asyncio.sleep(0.5)  # let the joiner finish its start-up (ready file, routes)
        await self.etl.restart_after_boot()

    def _meta(self) -> dict[str, Any]:
        return {"smap": self.smap.to_json(), "bmd": self.bmd}

    async def _metasync(self, meta: dict[str, Any], skip: str = "") -> None:
        """Push smap+BMD to every target; a target that does not answer is logged."""
        assert self.session is not None
        targets = [t for t in self.smap.targets.values() if t.daemon_id != skip]

        async def one(t: Snode) -> None:
            try:
                async with self.session.put(f"{t.url}/v1/metasync", json=meta) as r:  # type: ignore[union-attr]
                    if r.status != 200:
                        self.log.warning("metasync refused", target=t.daemon_id, status=r.status)
            except aiohttp.ClientError as e:
                self.log.warning("metasync failed", target=t.daemon_id, err=str(e))

        await asyncio.gather(*(one(t) for t in targets))

    async def _update_bmd(self, change: Any) -> None:
        async with self._meta_lock:
            change(self.bmd["buckets"])
            self.bmd["version"] += 1
            await asyncio.get_running_loop().run_in_executor(None, _atomic_write_json, self.bmd_path, self.bmd)
            meta = self._meta()
        await self._metasync(meta)

    async def reverse_daemon(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/reverse/daemon?what=..`` with header ``Ais-Node-Id``: a node's own
        answer through the gateway (AIStore ``ais/prxrev.go``), as the SDK's
        ``cluster().get_performance()`` asks it (``what=node_status``).

        ``node_status`` answers AIStore's ``stats.NodeStatus`` (``stats/api_wire.go``):
        ``{"snode","tracker","capacity","status","deployment","ais_version","build_time",
        "k8s_pod_name","cluster","sys_info","smap_version"}``; aioetl keeps no AIStore
        metric counters, so ``tracker`` is empty; ``capacity`` has the target's
        mountpaths (``fs.Tcdf``). Other ``what`` values go to the node's
        ``/v1/daemon`` as they are.

        Raises:
            BadRequest: no ``Ais-Node-Id`` header.
            NotFound: the node is not in the cluster map.
            NodeUnavailable: the target does not answer.
        """
        node_id = request.headers.get("Ais-Node-Id", "")
        what = request.query.get("what", "")
        if not node_id:
            raise BadRequest("reverse request without the Ais-Node-Id header")
        if node_id == self.node_id:
            if what == "node_status":
                return json_response(self._node_status(self.smap.proxy, None))
            return await self.daemon(request)
        t = self.smap.targets.get(node_id)
        if t is None:
            from aioetl.errors import NotFound

            raise NotFound(f"node {node_id} does not exist (not in the cluster map v{self.smap.version})")
        assert self.session is not None
        path = "/v1/daemon?what=" + ("capacity" if what == "node_status" else what)
        try:
            async with self.session.get(t.url + path, timeout=aiohttp.ClientTimeout(total=15)) as r:
                body = await r.read()
                if what != "node_status" or r.status != 200:
                    return web.Response(status=r.status, body=body, content_type=r.content_type)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise NodeUnavailable(f"target {node_id} unreachable: {e!r}") from e
        return json_response(self._node_status(t, json.loads(body).get("mountpaths") or []))

    def _node_status(self, node: Any, mountpaths: list[dict[str, Any]] | None) -> dict[str, Any]:
        """AIStore's ``stats.NodeStatus`` JSON for ``node`` (see :meth:`reverse_daemon`)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("aioetl")
        except PackageNotFoundError:
            ver = "0"
        mps: dict[str, Any] = {}
        pcts = []
        for m in mountpaths or []:
            pcts.append(float(m.get("pct_used", 0)))
            mps[str(m["mountpath"])] = {"cdf": {"used": int(m.get("used", 0)), "avail": int(m.get("avail", 0)),
                                                "pct_used": float(m.get("pct_used", 0)), "fs": {}},
                                        "disks": [], "label": ""}
        load = os.getloadavg()
        mem_total = mem_avail = 0
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k == "MemTotal":
                        mem_total = int(v.split()[0]) * 1024
                    elif k == "MemAvailable":
                        mem_avail = int(v.split()[0]) * 1024
        except OSError:
            pass
        primary = self.smap.proxy
        return {
            "snode": node.to_json(),
            "tracker": {},
            "capacity": {"mountpaths": mps, "pct_max": max(pcts, default=0.0),
                         "pct_avg": sum(pcts) / len(pcts) if pcts else 0.0,
                         "pct_min": min(pcts, default=0.0), "cs_err": ""},
            "status": "",
            "deployment": "dev",
            "ais_version": ver,
            "build_time": "",
            "k8s_pod_name": "",
            "cluster": {"smap": {"primary": {"pub_url": primary.url, "control_url": primary.url, "id": primary.daemon_id},
                                 "uuid": self.smap.uuid, "version": str(self.smap.version)},
                        "bmd": {"uuid": self.smap.uuid, "version": str(self.bmd.get("version", 0))},
                        "flags": 0},
            "sys_info": {"mem_used": max(mem_total - mem_avail, 0), "mem_avail": mem_avail,
                         "pct_mem_used": round(100.0 * (mem_total - mem_avail) / mem_total, 2) if mem_total else 0.0,
                         "pct_cpu_used": 0.0, "load_avg": {"one": load[0], "five": load[1], "fifteen": load[2]},
                         "cpu_util": 0},
            "smap_version": str(self.smap.version),
        }

    # -- buckets -----------------------------------------------------------
    def _bck(self, request: web.Request) -> str:
        bck = validate_bck_name(request.match_info["bck"])
        provider = request.query.get("provider", "ais") or "ais"
        if provider != "ais":
            raise BadRequest(f'provider "{provider}" is not supported: aioetl holds ais:// buckets only')
        return bck

    def _require(self, bck: str) -> dict[str, Any]:
        props: dict[str, Any] | None = self.bmd["buckets"].get(bck)
        if props is None:
            raise bck_not_found(bck)
        return props

    async def bck_post(self, request: web.Request) -> web.StreamResponse:
        bck = self._bck(request)
        action, value = await read_action(request)
        if action == "create-bck":
            if bck in self.bmd["buckets"]:
                raise AlreadyExists(f'bucket "ais://{bck}" already exists')
            await self.create_bucket(bck)
            return web.Response(status=200)
        if action in ("etl-bck", "etl-listrange", "copy-bck", "copy-listrange"):
            return await self.jobs.start(request, bck, action, value)
        raise BadRequest(f'invalid action "{action}" for POST /v1/buckets/{bck}')

    async def create_bucket(self, bck: str, like: str = "") -> None:
        """Add ``bck`` to the BMD (props copied from ``like`` if given), persist, push to targets."""
        props = {"provider": "ais", "created": time.time_ns(), "bid": secrets.randbits(48)}
        if like and like in self.bmd["buckets"]:
            props = {**self.bmd["buckets"][like], "created": props["created"], "bid": props["bid"]}

        def add(b: dict[str, Any]) -> None:
            b.setdefault(bck, props)

        await self._update_bmd(add)
        self.log.info("bucket created", bck=bck, like=like)

    async def bck_delete(self, request: web.Request) -> web.StreamResponse:
        bck = self._bck(request)
        action, value = await read_action(request, required=False)
        if action == "delete-listrange":
            return await self.jobs.start(request, bck, action, value)
        if action not in ("", "destroy-bck"):
            raise BadRequest(f'invalid action "{action}" for DELETE /v1/buckets/{bck}')
        self._require(bck)

        def drop(b: dict[str, Any]) -> None:
            b.pop(bck, None)

        await self._update_bmd(drop)
        self.log.info("bucket destroyed", bck=bck)
        return web.Response(status=200)

    async def bck_head(self, request: web.Request) -> web.StreamResponse:
        """Bucket props; with ``presence`` (the SDK's ``info()``), an async summary:
        202 + ``Ais-Xaction-Id`` first, then 200 + ``Ais-Bucket-Summ`` when asked with ``uuid``."""
        bck = self._bck(request)
        props = self._require(bck)
        doc = {
            "provider": "ais",
            "name": bck,
            "created": props["created"],
            "bid": props["bid"],
            "checksum": {"type": "xxhash"},
        }
        headers = {"Ais-Bucket-Props": json.dumps(doc)}
        if "presence" not in request.query:
            return web.Response(status=200, headers=headers)
        uuid = request.query.get("uuid", "")
        if not uuid:
            uuid = self._stash_summary(await self.bucket_summary(bck, request.match_info.get("prefix", "")))
            return web.Response(status=202, headers={**headers, "Ais-Xaction-Id": uuid})
        headers["Ais-Bucket-Summ"] = json.dumps(self._summary_of(uuid))
        return web.Response(status=200, headers=headers)

    def _stash_summary(self, summ: dict[str, Any]) -> str:
        now = time.monotonic()
        for k in [k for k, (t, _) in self._summaries.items() if now - t > 600]:
            del self._summaries[k]
        uuid = secrets.token_hex(5)
        self._summaries[uuid] = (now, summ)
        return uuid

    def _summary_of(self, uuid: str) -> dict[str, Any]:
        got = self._summaries.get(uuid)
        if got is None:
            raise BadRequest(f'bucket summary "{uuid}" not found (expired or never started)')
        return got[1]

    async def bucket_summary(self, bck: str, prefix: str = "") -> dict[str, Any]:
        """Objects and bytes of ``bck`` (with ``prefix``) across all targets, as AIStore's BsummResult."""
        pages = await self._gather_targets("GET", f"/v1/buckets/{bck}?what=summary", {"prefix": prefix})
        count = sum(int(p["count"]) for p in pages)
        size = sum(int(p["size"]) for p in pages)
        disks = sum(int(p["disks"]) for p in pages)
        mn = min((int(p["min"]) for p in pages if p["count"]), default=0)
        mx = max((int(p["max"]) for p in pages if p["count"]), default=0)
        return {
            "name": bck, "provider": "ais", "namespace": {"uuid": "", "name": ""},
            "ObjCount": {"obj_count_present": str(count), "obj_count_remote": "0"},
            "ObjSize": {"obj_min_size": mn, "obj_avg_size": size // count if count else 0, "obj_max_size": mx},
            "TotalSize": {"size_on_disk": str(size), "size_all_present_objs": str(size),
                          "size_all_remote_objs": "0", "total_disks_size": str(disks)},
            "used_pct": int(100 * size / disks) if disks else 0,
            "is_present": True,
        }

    async def list_buckets(self, request: web.Request) -> web.StreamResponse:
        provider = request.query.get("provider", "")
        if provider not in ("", "ais"):
            return json_response([])
        out = [
            {"name": name, "provider": "ais", "namespace": {"uuid": "", "name": ""}}
            for name in sorted(self.bmd["buckets"])
        ]
        return json_response(out)

    async def bck_get(self, request: web.Request) -> web.StreamResponse:
        bck = self._bck(request)
        action, value = await read_action(request, required=False)
        if action in ("", "list"):
            self._require(bck)
            return await self.list_objects(bck, value if value is not None else {})
        if action == "summary-bck":
            self._require(bck)
            v = value if isinstance(value, dict) else {}
            if not v.get("uuid"):
                uuid = self._stash_summary(await self.bucket_summary(bck, str(v.get("prefix") or "")))
                return web.Response(status=202, text=uuid)
            return json_response([self._summary_of(str(v["uuid"]))])
        raise BadRequest(f'invalid action "{action}" for GET /v1/buckets/{bck}')

    async def list_objects(self, bck: str, msg: dict[str, Any]) -> web.StreamResponse:
        """One page of the bucket, merged in name order from every target.

        ``msg`` is the SDK's ``ListObjectsMsg``: ``prefix``, ``pagesize``
        (0 = 10,000), ``uuid`` and ``continuation_token`` (the last name of
        the previous page). The reply is msgpack ``LsoRes`` with Go field names.
        """
        if not isinstance(msg, dict):
            raise BadRequest("invalid list-objects message: expected an object")
        prefix = str(msg.get("prefix") or "")
        try:
            pagesize = int(msg.get("pagesize") or 0) or DEFAULT_PAGE_SIZE
        except (TypeError, ValueError):
            raise BadRequest(f"invalid pagesize {msg.get('pagesize')!r}") from None
        if pagesize < 0:
            raise BadRequest(f"invalid pagesize {pagesize}")
        uuid = str(msg.get("uuid") or "") or secrets.token_hex(8)
        token = str(msg.get("continuation_token") or msg.get("start_after") or "")
        props = str(msg.get("props") or "")
        try:
            flags = int(msg.get("flags") or 0)
        except (TypeError, ValueError):
            raise BadRequest(f"invalid list flags {msg.get('flags')!r}") from None
        name_only = bool(flags & (1 << 4))  # apc.LsNameOnly
        name_size = bool(flags & (1 << 5))  # apc.LsNameSize
        body = {"uuid": uuid, "prefix": prefix, "token": token, "pagesize": pagesize}
        pages = await self._gather_targets("GET", f"/v1/buckets/{bck}", body)
        more = any(p["more"] for p in pages)
        merged = heapq.merge(*(p["entries"] for p in pages), key=lambda e: e[0])
        entries = []
        for e in merged:
            if len(entries) == pagesize:
                more = True
                break
            entries.append(e)
        next_token = entries[-1][0] if (more and entries) else ""
        want_all = not props or "all" in props
        out_entries = []
        for name, size, cksum, version, atime_ns, custom in entries:
            if name_only or name_size:
                out_entries.append({"n": name, "s": size if name_size else 0, "f": 1 << 6})
                continue
            ent: dict[str, Any] = {"n": name, "s": size, "f": 1 << 6, "c": 1}
            if want_all or "checksum" in props:
                ent["cs"] = cksum
            if want_all or "version" in props:
                ent["v"] = str(version)
            if want_all or "atime" in props:
                ent["a"] = time.strftime("%d %b %y %H:%M UTC", time.gmtime(atime_ns / 1e9))
            if custom and (want_all or "custom" in props):
                ent["m"] = ", ".join(f"{k}={v}" for k, v in sorted(custom.items()))
            out_entries.append(ent)
        res = {"UUID": uuid, "ContinuationToken": next_token, "Entries": out_entries, "Flags": 0}
        return web.Response(body=_lso_enc.encode(res), content_type="application/msgpack")

    async def _gather_targets(self, method: str, path: str, body: Any) -> list[Any]:
        assert self.session is not None
        targets = list(self.smap.targets.values())
        if not targets:
            raise NodeUnavailable("no targets in the cluster map")

        async def one(t: Snode) -> Any:
            try:
                async with self.session.request(method, t.url + path, json=body) as r:  # type: ignore[union-attr]
                    data = await r.read()
                    if r.status != 200:
                        raise NodeUnavailable(f"target {t.daemon_id} failed: {r.status} {data[:300]!r}")
                    return _page_dec.decode(data)
            except aiohttp.ClientError as e:
                raise NodeUnavailable(f"target {t.daemon_id} unreachable: {e}") from e

        return list(await asyncio.gather(*(one(t) for t in targets)))

    # -- objects -----------------------------------------------------------
    async def redirect_object(self, request: web.Request) -> web.StreamResponse:
        """307 to the HRW owner, after checking the names and the bucket."""
        bck, obj = split_obj_path(request)
        validate_bck_name(bck)
        self._require(bck)
        validate_obj_name(obj)
        q = request.query
        if q.get("etl_name"):
            self.etl.require_running(q["etl_name"])
            for stage in (q.get("etl_pipeline") or "").split(","):
                if stage.strip():
                    self.etl.require_running(stage.strip())
        owner = self.smap.hrw_target(make_uname(bck, obj))
        # a plain response: raising HTTPTemporaryRedirect costs ~8x more per request (measured)
        return web.Response(status=307, headers={"Location": owner.url + request.raw_path})

    async def expect_redirect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: answer with the 307 before the client sends the body,
        so a large PUT crosses loopback once (clients that ask: curl, aiohttp expect100)."""
        if request.version != aiohttp.HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
            return None
        try:
            return await self.redirect_object(request)
        except AioetlError as e:
            from aioetl.engine.node.httpd import error_response

            return error_response(request, e.status, e.message, self.node_id)


async def run_gateway(cfg: GatewayConfig) -> None:
    """Process main of the gateway: serve until SIGTERM/SIGINT."""
    gw = Gateway(cfg)
    app = gw.make_app()

    async def started(url: str) -> None:
        gw.smap.proxy = Snode(cfg.node_id, "proxy", url)
        gw.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=auth_headers(cfg.cluster_secret))
        write_ready_file(cfg.run_dir, cfg.node_id, url)
        gw.log.info("gateway ready", url=url, buckets=len(gw.bmd["buckets"]))

    async def close_session(_: web.Application) -> None:
        if gw.session is not None:
            await gw.session.close()

    app.on_cleanup.append(close_session)
    await serve_until_signalled(app, cfg.host, cfg.port, started)
