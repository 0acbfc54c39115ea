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

Intra-cluster (cluster secret required, :mod:`aioetl.engine.node.auth`):
``POST /v1/cluster/join`` (a target registers; the reply is the current smap and
BMD, which are then pushed to every other target with ``PUT /v1/metasync``). A
target that (re)joins once the cluster runs gets every Running ETL initialized on
it once it has applied that map (``GatewayEtl.on_target_joined``).

The BMD persists in ``<data>/gateway/bmd.json`` (write-to-temp, fsync, rename),
so a restarted cluster has its buckets.

This module is the gateway's entry point: :func:`run_gateway` builds the
:class:`Gateway`, which builds the services (:mod:`.cluster`, :mod:`.metadata`,
:mod:`.tasks`, :mod:`.etl`, :mod:`.jobs`) and hands each what it needs; none of
them imports this module.
"""

from __future__ import annotations

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

from aioetl.engine.core.names import (
    bck_key,
    bck_uri,
    is_remote,
    make_uname,
    normalize_provider,
    split_bck_key,
    validate_obj_name,
)
from aioetl.engine.core.smap import Snode
from aioetl.engine.gateway.cluster import ClusterMap, PeerClient
from aioetl.engine.gateway.etl import GatewayEtl
from aioetl.engine.gateway.jobs import GatewayJobs
from aioetl.engine.gateway.metadata import ClusterMeta, EtlMd, load_bmd
from aioetl.engine.gateway.tasks import TaskOwner
from aioetl.engine.node.auth import GATEWAY_INTERNAL, auth_headers, cluster_auth_middleware
from aioetl.engine.node.httpd import error_middleware, error_response, json_response, read_action, split_obj_path
from aioetl.engine.node.serve import serve_until_signalled, write_ready_file
from aioetl.errors import AioetlError, AlreadyExists, BadRequest, NodeUnavailable, NotFound

__all__ = ["Gateway", "GatewayConfig", "run_gateway"]

log = structlog.get_logger("aioetl.gateway")

DEFAULT_PAGE_SIZE = 10000
_lso_enc = msgspec.msgpack.Encoder()


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


class Gateway:
    """The cluster's single gateway: the bucket and cluster routes, and the services it builds.

    Built here, once, and passed to whoever needs them (no service reaches another
    through the gateway):

    - ``cluster`` (:class:`ClusterMap`): the smap; ``peers`` (:class:`PeerClient`): calls to
      targets over ``session`` (the intra-cluster session, with the cluster credential;
      attached by :func:`run_gateway` when not given);
    - ``meta`` (:class:`ClusterMeta`): BMD, joins, metasync; ``etlmd`` (:class:`EtlMd`);
    - ``tasks`` (:class:`TaskOwner`): background work, cancelled when the app shuts down;
    - ``jobs`` (:class:`GatewayJobs`) and ``etl`` (:class:`GatewayEtl`), whose stop of an
      ETL aborts the jobs using it (``on_stopped=jobs.abort_etl_jobs``).
    """

    def __init__(self, cfg: GatewayConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        gw_dir = os.path.join(cfg.data_dir, "gateway")
        bmd = load_bmd(os.path.join(gw_dir, "bmd.json"))
        self.cluster = ClusterMap(proxy_id=cfg.node_id, uuid=bmd.uuid,
                                  cluster_json=os.path.join(cfg.data_dir, "cluster.json"))
        self.peers = PeerClient(self.cluster, session)
        self.meta = ClusterMeta(bmd=bmd, path=os.path.join(gw_dir, "bmd.json"), cluster=self.cluster, peers=self.peers)
        self.etlmd = EtlMd(os.path.join(gw_dir, "etlmd.json"))
        self.tasks = TaskOwner(cfg.node_id)
        self.jobs = GatewayJobs(records_dir=os.path.join(gw_dir, "jobs"), meta=self.meta, etlmd=self.etlmd,
                                cluster=self.cluster, peers=self.peers, tasks=self.tasks,
                                ensure_bucket=self.ensure_bucket)
        self.etl = GatewayEtl(etlmd=self.etlmd, cluster=self.cluster, peers=self.peers, tasks=self.tasks,
                              on_stopped=self.jobs.abort_etl_jobs)
        self.log = log.bind(gateway=cfg.node_id)
        self._summaries: dict[str, tuple[float, dict[str, Any]]] = {}

    def make_app(self) -> web.Application:
        """The gateway's routes; the background tasks end when the app shuts down."""
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
        r.add_route("PATCH", "/v1/buckets/{bck}", self.bck_patch)
        r.add_route("HEAD", "/v1/buckets/{bck}", self.bck_head)
        r.add_route("HEAD", "/v1/buckets/{bck}/{prefix:.*}", self.bck_head)
        r.add_route("*", "/v1/objects/{tail:.+}", self.redirect_object, expect_handler=self.expect_redirect)
        r.add_route("GET", "/v1/reverse/daemon", self.reverse_daemon)
        self.etl.add_routes(app)
        self.jobs.add_routes(app)
        app.on_shutdown.append(self._end_tasks)
        return app

    async def _end_tasks(self, _: web.Application) -> None:
        await self.tasks.aclose()

    # -- cluster -----------------------------------------------------------
    async def daemon(self, request: web.Request) -> web.StreamResponse:
        what = request.query.get("what", "smap")
        if what == "smap":
            return json_response(self.cluster.smap.to_json())
        if what == "bmd":
            return json_response(self.meta.bmd.to_json())
        if what == "snode":
            return json_response(self.cluster.proxy.to_json())
        raise BadRequest(f'invalid query "what={what}"')

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def join(self, request: web.Request) -> web.StreamResponse:
        """A target registers (or re-registers with a new URL after a restart).

        The new map goes to the other targets before the reply, the joiner takes it
        from the reply; then the ETL service starts what the joiner should run, once
        the joiner says it applied the map (:meth:`GatewayEtl.on_target_joined`).
        """
        doc = await request.json()
        node = Snode(str(doc["daemon_id"]), "target", str(doc["url"]))
        meta = await self.meta.join(node)
        self.etl.on_target_joined(node)
        return json_response(meta)

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
                return json_response(self._node_status(self.cluster.proxy, None))
            return await self.daemon(request)
        t = self.cluster.target(node_id)
        if t is None:
            raise NotFound(f"node {node_id} does not exist (not in the cluster map v{self.cluster.version})")
        path = "/v1/daemon?what=" + ("capacity" if what == "node_status" else what)
        status, body, ctype = await self.peers.get(t, path, timeout_s=15)
        if what != "node_status" or status != 200:
            return web.Response(status=status, body=body, content_type=ctype)
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
        smap = self.cluster.smap
        primary = smap.proxy
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
            "cluster": {"smap": {"primary": {"pub_url": primary.url, "control_url": primary.url,
                                             "id": primary.daemon_id},
                                 "uuid": smap.uuid, "version": str(smap.version)},
                        "bmd": {"uuid": smap.uuid, "version": str(self.meta.version)},
                        "flags": 0},
            "sys_info": {"mem_used": max(mem_total - mem_avail, 0), "mem_avail": mem_avail,
                         "pct_mem_used": round(100.0 * (mem_total - mem_avail) / mem_total, 2) if mem_total else 0.0,
                         "pct_cpu_used": 0.0, "load_avg": {"one": load[0], "five": load[1], "fifteen": load[2]},
                         "cpu_util": 0},
            "smap_version": str(smap.version),
        }

    # -- buckets -----------------------------------------------------------
    def _bck(self, request: web.Request) -> str:
        """The bucket key of a bucket request (``?provider=ais|aws|s3``, :mod:`aioetl.engine.core.names`)."""
        return bck_key(request.query.get("provider", ""), request.match_info["bck"])

    async def ensure_bucket(self, bck: str) -> dict[str, Any]:
        """The props of ``bck``; a remote bucket not in the BMD yet is checked with its
        backend (by one target) and added, as AIStore adds a remote bucket on first use
        (``ais/proxy.go`` lookup-and-add).

        Raises:
            NotFound: an ``ais://`` bucket that does not exist, or a remote one the remote
                does not have (with the remote's reason).
            Forbidden: the remote refused the credentials.
            RemoteUnavailable: the remote did not answer.
        """
        if self.meta.has_bucket(bck) or not is_remote(bck):
            return self.meta.require_bucket(bck)
        await self.head_remote_bucket(bck, {})
        await self.meta.create_bucket(bck)
        self.log.info("remote bucket added", bck=bck_uri(bck))
        return self.meta.require_bucket(bck)

    async def head_remote_bucket(self, bck: str, props: dict[str, Any]) -> None:
        """Ask a target (HRW by bucket) whether the remote has ``bck`` and lets us in."""
        targets = self.cluster.targets()
        if not targets:
            raise NodeUnavailable("no targets in the cluster map")
        t = self.cluster.smap.hrw_target(make_uname(bck, ""))
        await self.peers.call(t, "GET", f"/v1/buckets/{bck}?what=remote-head", {"props": props})

    async def bck_post(self, request: web.Request) -> web.StreamResponse:
        bck = self._bck(request)
        action, value = await read_action(request)
        if action == "create-bck":
            if is_remote(bck):
                raise BadRequest(f'cannot create remote bucket "{bck_uri(bck)}" through aioetl: create it in the '
                                 "remote store; aioetl adds it on first use (HEAD, list, GET)")
            if self.meta.has_bucket(bck):
                raise AlreadyExists(f'bucket "{bck_uri(bck)}" already exists')
            await self.meta.create_bucket(bck)
            return web.Response(status=200)
        if action in ("etl-bck", "etl-listrange", "copy-bck", "copy-listrange"):
            await self.ensure_bucket(bck)
            return await self.jobs.start(request, bck, action, value)
        if action == "prefetch-listrange":
            self._require_remote(bck, action)
            await self.ensure_bucket(bck)
            return await self.jobs.start(request, bck, action, value)
        raise BadRequest(f'invalid action "{action}" for POST /v1/buckets/{bck}')

    async def bck_delete(self, request: web.Request) -> web.StreamResponse:
        bck = self._bck(request)
        action, value = await read_action(request, required=False)
        if action == "delete-listrange":
            await self.ensure_bucket(bck)
            return await self.jobs.start(request, bck, action, value)
        if action == "evict-listrange":
            self._require_remote(bck, action)
            await self.ensure_bucket(bck)
            return await self.jobs.start(request, bck, action, value)
        if action == "evict-remote-bck":
            self._require_remote(bck, action)
            await self.ensure_bucket(bck)
            keep_md = request.query.get("keep_bck_md", "").lower() == "true"
            await self.meta.evict_bucket(bck, keep_md=keep_md)
            return web.Response(status=200)
        if action not in ("", "destroy-bck"):
            raise BadRequest(f'invalid action "{action}" for DELETE /v1/buckets/{bck}')
        if is_remote(bck):
            raise BadRequest(f'cannot destroy remote bucket "{bck_uri(bck)}": evict it instead '
                             "(evict-remote-bck drops the cached copies and keeps the remote)")
        self.meta.require_bucket(bck)
        await self.meta.destroy_bucket(bck)
        return web.Response(status=200)

    @staticmethod
    def _require_remote(bck: str, action: str) -> None:
        if not is_remote(bck):
            raise BadRequest(f'{action}: "{bck_uri(bck)}" is not a remote bucket (only remote buckets are '
                             "evicted or prefetched)")

    async def bck_patch(self, request: web.Request) -> web.StreamResponse:
        """``PATCH /v1/buckets/<b>`` ``set-bprops``: for a remote bucket, ``extra.aws.endpoint``
        and ``extra.aws.profile`` (AIStore ``cmn.ExtraProps``); the new props are checked
        against the remote before they are kept. Other props are refused with 400."""
        bck = self._bck(request)
        action, value = await read_action(request)
        if action not in ("set-bprops", "reset-bprops"):
            raise BadRequest(f'invalid action "{action}" for PATCH /v1/buckets/{bck_uri(bck)}')
        props = dict(await self.ensure_bucket(bck))
        if action == "reset-bprops":
            props.pop("extra", None)
        else:
            if not isinstance(value, dict):
                raise BadRequest("set-bprops: expected the props to change as a JSON object")
            unknown = sorted(set(value) - {"extra"})
            aws = (value.get("extra") or {}).get("aws") if isinstance(value.get("extra"), dict) else None
            if unknown or not isinstance(aws, dict) or not is_remote(bck):
                raise BadRequest(f"set-bprops: aioetl keeps only extra.aws.endpoint and extra.aws.profile of a "
                                 f"remote bucket; refused: {', '.join(unknown) or 'extra'}")
            bad = sorted(set(aws) - {"endpoint", "profile"})
            if bad or not all(isinstance(v, str) for v in aws.values()):
                raise BadRequest(f"set-bprops: extra.aws takes string endpoint and profile; refused: {bad or aws}")
            cur = dict((props.get("extra") or {}).get("aws") or {})
            cur.update(aws)
            props["extra"] = {"aws": cur}
            await self.head_remote_bucket(bck, props)
        await self.meta.set_bucket_props(bck, props)
        return web.Response(status=200)

    async def bck_head(self, request: web.Request) -> web.StreamResponse:
        """Bucket props; with ``presence`` (the SDK's ``info()``), an async summary:
        202 + ``Ais-Xaction-Id`` first, then 200 + ``Ais-Bucket-Summ`` when asked with ``uuid``."""
        bck = self._bck(request)
        props = await self.ensure_bucket(bck)
        provider, name = split_bck_key(bck)
        doc = {
            "provider": provider,
            "name": name,
            "created": props["created"],
            "bid": props["bid"],
            "checksum": {"type": "xxhash"},
        }
        if props.get("extra"):
            doc["extra"] = props["extra"]
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
        """Objects and bytes of ``bck`` (with ``prefix``) across all targets, as AIStore's BsummResult;
        for a remote bucket also the remote's count and bytes (one listing walk by one target)."""
        pages = await self.peers.gather_pages("GET", f"/v1/buckets/{bck}?what=summary", {"prefix": prefix})
        r_count = r_size = 0
        if is_remote(bck):
            t = self.cluster.smap.hrw_target(make_uname(bck, ""))
            rs = await self.peers.call(t, "GET", f"/v1/buckets/{bck}?what=remote-summary", {"prefix": prefix},
                                       timeout_s=600)
            r_count, r_size = int(rs["count"]), int(rs["size"])
        provider, name = split_bck_key(bck)
        count = sum(int(p["count"]) for p in pages)
        size = sum(int(p["size"]) for p in pages)
        disks = sum(int(p["disks"]) for p in pages)
        mn = min((int(p["min"]) for p in pages if p["count"]), default=0)
        mx = max((int(p["max"]) for p in pages if p["count"]), default=0)
        return {
            "name": name, "provider": provider, "namespace": {"uuid": "", "name": ""},
            "ObjCount": {"obj_count_present": str(count), "obj_count_remote": str(r_count)},
            "ObjSize": {"obj_min_size": mn, "obj_avg_size": size // count if count else 0, "obj_max_size": mx},
            "TotalSize": {"size_on_disk": str(size), "size_all_present_objs": str(size),
                          "size_all_remote_objs": str(r_size), "total_disks_size": str(disks)},
            "used_pct": int(100 * size / disks) if disks else 0,
            "is_present": True,
        }

    async def list_buckets(self, request: web.Request) -> web.StreamResponse:
        """The buckets in the BMD, all or of one ``?provider=`` (remote ones once added)."""
        want = request.query.get("provider", "")
        want = normalize_provider(want) if want else ""
        out = []
        for key in self.meta.bucket_names():
            provider, name = split_bck_key(key)
            if not want or provider == want:
                out.append({"name": name, "provider": provider, "namespace": {"uuid": "", "name": ""}})
        return json_response(out)

    async def bck_get(self, request: web.Request) -> web.StreamResponse:
        bck = self._bck(request)
        action, value = await read_action(request, required=False)
        if action in ("", "list"):
            await self.ensure_bucket(bck)
            return await self.list_objects(bck, value if value is not None else {})
        if action == "summary-bck":
            await self.ensure_bucket(bck)
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
        With ``flags`` bit 3 (``apc.LsArchDir``) each target adds its shards' members
        (``shard.tar/member``, flags ``EntryInArch``) to its page in name order and marks
        the shards ``EntryIsArchive`` (:class:`aioetl.engine.target.target.Target.list_page`),
        so the token may land between two members of a shard.
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
        if is_remote(bck) and not flags & (1 << 0):  # not apc.LsCached: list the remote
            return await self.list_remote(bck, prefix, token, pagesize, uuid, props,
                                          not_cached=bool(flags & (1 << 9)), name_only=name_only or name_size)
        body: dict[str, Any] = {"uuid": uuid, "prefix": prefix, "token": token, "pagesize": pagesize}
        arch_dir = bool(flags & (1 << 3))  # apc.LsArchDir: targets add shards' members to their pages
        if arch_dir:
            body["flags"] = 1 << 3
        pages = await self.peers.gather_pages("GET", f"/v1/buckets/{bck}", body)
        more = any(p["more"] for p in pages)
        merged = heapq.merge(*(p["entries"] for p in pages), key=lambda e: e[0])
        entries: list[list[Any]] = []  # [name, size, cksum, version, atime_ns, custom(, arch flags)] per entry
        for e in merged:
            if len(entries) == pagesize:
                more = True
                break
            entries.append(e)
        next_token = entries[-1][0] if (more and entries) else ""
        want_all = not props or "all" in props
        out_entries = []
        for name, size, cksum, version, atime_ns, custom, *rest in entries:
            f = (1 << 6) | (rest[0] if rest else 0)  # apc.EntryIsCached | EntryIsArchive / EntryInArch
            if name_only or name_size or f & (1 << 7):  # a shard's member: name, size, flags (xs/lso.go)
                out_entries.append({"n": name, "s": size if (name_size or not name_only) else 0, "f": f})
                continue
            ent: dict[str, Any] = {"n": name, "s": size, "f": f, "c": 1}
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

    async def list_remote(self, bck: str, prefix: str, token: str, pagesize: int, uuid: str, props: str, *,
                          not_cached: bool, name_only: bool) -> web.StreamResponse:
        """One page of a remote bucket: the remote's page (read by one target, HRW by
        bucket) with each entry's cached status from its owner (``EntryIsCached``, and the
        cached copy's checksum/version/atime/custom when it is cached); ``not_cached``
        (``apc.LsNotCached``) keeps only the others. The continuation token is the last
        name the remote gave, so paging walks the remote once."""
        t = self.cluster.smap.hrw_target(make_uname(bck, ""))
        page = await self.peers.call(t, "GET", f"/v1/buckets/{bck}?what=remote-page",
                                     {"prefix": prefix, "token": token, "pagesize": min(pagesize, 1000)})
        entries = page["entries"]
        names = [e[0] for e in entries]
        present: dict[str, list[Any]] = {}
        if names:
            for got in await self.peers.gather_pages("GET", f"/v1/buckets/{bck}?what=present", {"names": names}):
                present.update(got["present"])
        want_all = not props or "all" in props
        out = []
        for name, size, etag, mtime_ns in entries:
            loc = present.get(name)
            if not_cached and loc is not None:
                continue
            if name_only:
                out.append({"n": name, "s": size, "f": (1 << 6) if loc is not None else 0})
                continue
            ent: dict[str, Any] = {"n": name, "s": size, "f": (1 << 6) if loc is not None else 0}
            if loc is not None:
                _size, cksum, version, atime_ns, custom = loc
                ent["c"] = 1
                if want_all or "checksum" in props:
                    ent["cs"] = cksum
                if want_all or "version" in props:
                    ent["v"] = str(version)
                if want_all or "atime" in props:
                    ent["a"] = time.strftime("%d %b %y %H:%M UTC", time.gmtime(atime_ns / 1e9))
                if custom and (want_all or "custom" in props):
                    ent["m"] = ", ".join(f"{k}={v}" for k, v in sorted(custom.items()))
            else:
                if want_all or "checksum" in props:
                    ent["cs"] = etag
                if want_all or "atime" in props:
                    ent["a"] = time.strftime("%d %b %y %H:%M UTC", time.gmtime(mtime_ns / 1e9))
            out.append(ent)
        next_token = names[-1] if (page["more"] and names) else ""
        res = {"UUID": uuid, "ContinuationToken": next_token, "Entries": out, "Flags": 0}
        return web.Response(body=_lso_enc.encode(res), content_type="application/msgpack")

    # -- objects -----------------------------------------------------------
    async def redirect_object(self, request: web.Request) -> web.StreamResponse:
        """307 to the HRW owner, after checking the names and the bucket (a remote
        bucket is added on first use, :meth:`ensure_bucket`)."""
        name, obj = split_obj_path(request)
        bck = bck_key(request.query.get("provider", ""), name)
        await self.ensure_bucket(bck)
        validate_obj_name(obj)
        q = request.query
        if q.get("etl_name"):
            self.etlmd.require_running(q["etl_name"])
            for stage in (q.get("etl_pipeline") or "").split(","):
                if stage.strip():
                    self.etlmd.require_running(stage.strip())
        owner = self.cluster.smap.hrw_target(make_uname(bck, obj))
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
            return error_response(request, e.status, e.message, self.node_id)


async def run_gateway(cfg: GatewayConfig) -> None:
    """Process main of the gateway: build it and its services, serve until SIGTERM/SIGINT.

    On the way out the app's shutdown cancels the background tasks (:class:`TaskOwner`),
    then its cleanup closes the intra-cluster session they used.
    """
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=auth_headers(cfg.cluster_secret))
    gw = Gateway(cfg, session=session)
    app = gw.make_app()

    async def started(url: str) -> None:
        gw.cluster.set_proxy_url(url)
        write_ready_file(cfg.run_dir, cfg.node_id, url)
        gw.log.info("gateway ready", url=url, buckets=len(gw.meta.bucket_names()))

    async def close_session(_: web.Application) -> None:
        await session.close()

    app.on_cleanup.append(close_session)
    try:
        await serve_until_signalled(app, cfg.host, cfg.port, started)
    finally:
        if not session.closed:  # the app never started (its cleanup did not run)
            await session.close()
