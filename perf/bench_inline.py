"""Inline-transform benchmark: ``GET /v1/objects/<b>/<o>?etl_name=..`` of 10 KiB objects.

One target; concurrency 32 (``--inline-concurrency``); the client is aiohttp on
uvloop. The same echo transform runs in two kinds of pod, each over ``hpush``
and ``ws``, side by side in one run (interleaved rounds, order rotated):

- ``aiohttp``: our pod, the built-in image ``aistorage/transformer_echo``
  (a :class:`communicators.AiohttpServer` subclass) initialized with
  ``Etl.init(image=...)``; ``--inline-pods`` can add ``aiohttp_class``, an
  ``AiohttpServer`` echo subclass sent with ``Etl.init_class``;
- ``fastapi``: ``aistore[etl]``'s own ``FastAPIServer`` with an echo
  ``transform`` (:class:`AisFastApiEcho`), sent with the official SDK's
  ``Etl.init_class``, served by uvicorn as the ``runtime_python`` image does.

Both pods run with the default ``NUM_WORKERS`` and get the object by its FQN
(the target's default for hpush and ws). The classes are pickled by value
(``cloudpickle.register_pickle_by_value`` on this module).

Variants (``<pod>_<comm>``): GETs go straight to the owning target. For
reference, ``aiohttp_hpush_gw`` sends the same GETs to the gateway (aiohttp
follows its 307 to the target), and ``plain`` is a GET without ETL.

Ratios (objects/s within a round, median over rounds):

- ``pod_vs_aistore_fastapi_<comm>``: ``aiohttp_<comm>`` / ``fastapi_<comm>``
  (issue #5's target: >= 3);
- ``gateway_vs_direct_hpush``: ``aiohttp_hpush_gw`` / ``aiohttp_hpush``;
- ``<variant>_vs_plain``: each ETL variant against the GET without ETL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import cloudpickle
from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer as _AisFastAPIServer

from aioetl.communicators import AiohttpServer
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.launcher import LocalCluster

from .bench_cluster import _nodes_under_cprofile, _run_pass, _summarize_profiles
from .bench_offline import _Data, _Placement, _populate
from .common import (
    BenchResult,
    CommonOptions,
    Measurement,
    RssSampler,
    cpu_seconds,
    delete_etls,
    filesystem_of,
    interleave,
    loop_name,
    process_tree,
    ratio_median,
    run_loop,
    summarize,
)

__all__ = ["NAME", "AiohttpEcho", "AisFastApiEcho", "InlineBenchConfig", "InlineBenchError", "add_arguments",
           "config_from_args", "run"]

NAME = "inline"
KiB = 1024
COMMS = ("hpush", "ws")
POD_KINDS = ("aiohttp", "fastapi", "aiohttp_class")
DEFAULT_PODS = ("aiohttp", "fastapi")
ECHO_IMAGE = "aistorage/transformer_echo:latest"

# mode -> (GETs per pass, distinct objects, rounds)
_MODE_DEFAULTS = {"full": (5000, 1000, 5), "quick": (1500, 500, 3), "tiny": (8, 8, 1)}

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, str):  # direct file access: a path
        with open(data, "rb") as f:
            return f.read()
    return data


class AisFastApiEcho(_AisFastAPIServer):
    """aistore[etl]'s FastAPIServer returning the object unchanged."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return _as_bytes(data)


class AiohttpEcho(AiohttpServer):
    """Our AiohttpServer returning the object unchanged (for ``init_class``)."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return _as_bytes(data)


class InlineBenchError(RuntimeError):
    """A GET failed or returned the wrong bytes (the numbers would be meaningless)."""


@dataclass(kw_only=True)
class InlineBenchConfig:
    """Settings of one inline benchmark run.

    Attributes:
        requests: GETs per pass.
        objects: distinct 10 KiB objects the GETs cycle through.
        object_size: bytes per object.
        concurrency: GETs in flight.
        rounds: interleaved rounds.
        pods: pod kinds (:data:`POD_KINDS`).
        comms: comm types (:data:`COMMS`).
        gateway_ref: add ``aiohttp_hpush_gw`` (through the gateway).
        plain_ref: add ``plain`` (GET without ETL).
        data_parent, keep_data, profile_dir, log_level: as the other benchmarks.
    """

    requests: int = 5000
    objects: int = 1000
    object_size: int = 10 * KiB
    concurrency: int = 32
    rounds: int = 5
    pods: tuple[str, ...] = DEFAULT_PODS
    comms: tuple[str, ...] = COMMS
    gateway_ref: bool = True
    plain_ref: bool = True
    data_parent: str = "/dev/shm"
    keep_data: bool = False
    profile_dir: str = ""
    log_level: str = "warning"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark for ``python -m perf``."""
    g = parser.add_argument_group("inline benchmark")
    g.add_argument("--inline-requests", type=int, default=None, help="GETs per pass (full 5000, quick 1500)")
    g.add_argument("--inline-objects", type=int, default=None, help="distinct objects (full 1000, quick 500)")
    g.add_argument("--inline-concurrency", type=int, default=32, help="GETs in flight (default 32)")
    g.add_argument("--inline-pods", default=",".join(DEFAULT_PODS),
                   help=f"comma-separated subset of {','.join(POD_KINDS)}")
    g.add_argument("--inline-comms", default=",".join(COMMS), help=f"comma-separated subset of {','.join(COMMS)}")


def config_from_args(args: argparse.Namespace, common: CommonOptions) -> InlineBenchConfig:
    """Build the config from parsed flags and the mode's defaults.

    Raises:
        ValueError: unknown pod kind or comm type, non-positive counts.
    """
    reqs, objs, rounds = _MODE_DEFAULTS[common.mode]
    reqs = args.inline_requests if args.inline_requests is not None else reqs
    objs = args.inline_objects if args.inline_objects is not None else objs
    pods = tuple(p.strip() for p in args.inline_pods.split(",") if p.strip())
    comms = tuple(c.strip() for c in args.inline_comms.split(",") if c.strip())
    if not pods or any(p not in POD_KINDS for p in pods):
        raise ValueError(f"unknown pod kinds {pods}; choose from {POD_KINDS}")
    if not comms or any(c not in COMMS for c in comms):
        raise ValueError(f"unknown comm types {comms}; choose from {COMMS}")
    if reqs < 1 or objs < 1 or args.inline_concurrency < 1:
        raise ValueError("requests, objects and concurrency must be >= 1")
    return InlineBenchConfig(
        requests=reqs, objects=objs, concurrency=args.inline_concurrency, rounds=common.rounds or rounds,
        pods=pods, comms=comms, data_parent=common.data_parent, keep_data=common.keep_data,
        profile_dir=os.path.join(common.out_dir, "profiles-inline") if common.profile else "",
    )


# -- ETLs ------------------------------------------------------------------------


def _init_etls(endpoint: str, pods: tuple[str, ...], comms: tuple[str, ...]) -> dict[str, str]:
    """``{"<pod>_<comm>": etl name}``, initialized through the official SDK."""
    from aistore.sdk import Client

    client = Client(endpoint, timeout=(5, 300))
    out: dict[str, str] = {}
    for pod in pods:
        for comm in comms:
            name = f"{pod.replace('_', '-')}-{comm}-{secrets.token_hex(3)}"
            etl = client.etl(name)
            if pod == "aiohttp":
                etl.init(image=ECHO_IMAGE, comm_type=comm, direct_put=True, init_timeout="2m")
            else:
                cls = AisFastApiEcho if pod == "fastapi" else AiohttpEcho
                etl.init_class(comm_type=comm, direct_put=True, init_timeout="2m")(cls)
            out[f"{pod}_{comm}"] = name
    return out


# -- passes ----------------------------------------------------------------------


@dataclass
class _Variant:
    name: str
    base_url: str  # target or gateway
    etl: str  # "" = no ETL


async def _measure(s: aiohttp.ClientSession, v: _Variant, cfg: InlineBenchConfig, bck: str, data: _Data,
                   pids: list[int], watch: list[int], n: int | None = None) -> Measurement:
    count = n or cfg.requests
    q = f"?etl_name={v.etl}" if v.etl else ""
    urls = [f"{v.base_url}/v1/objects/{bck}/{quote(f'obj/{i:06d}', safe='/')}{q}" for i in range(cfg.objects)]
    redirects = [0]

    async def one(i: int) -> None:
        k = i % cfg.objects
        async with s.get(urls[k]) as r:
            body = await r.read()
            redirects[0] += len(r.history)
        if r.status != 200:
            raise InlineBenchError(f"GET {urls[k]}: {r.status} {body[:300]!r}")
        if len(body) != data.size or (i % 97 == 0 and body != data.body(k)):
            raise InlineBenchError(f"GET {urls[k]}: {len(body)} bytes that differ from the object")

    cpu0, ccpu0 = cpu_seconds(pids), time.process_time()
    with RssSampler(watch) as rss:
        seconds, lat = await _run_pass(one, count, cfg.concurrency)
    cpu1, ccpu1 = cpu_seconds(pids), time.process_time()
    return Measurement.from_latencies(
        name=f"inline_get_{data.size // KiB}KiB", variant=v.name, object_size_bytes=data.size,
        concurrency=cfg.concurrency, seconds=seconds, latencies_s=lat, peak_rss_mib=rss.peak_mib,
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0, client_cpu_s=ccpu1 - ccpu0,
        extra={"etl": v.etl, "redirects_followed": redirects[0]},
    )


async def _bench(cfg: InlineBenchConfig, endpoint: str, target_url: str, bck: str, data: _Data,
                 etls: dict[str, str],
                 cluster_pids: list[int]) -> tuple[list[Measurement], dict[str, float], dict[str, Any]]:
    variants: dict[str, _Variant] = {}
    if cfg.plain_ref:
        variants["plain"] = _Variant("plain", target_url, "")
    for key, etl in etls.items():
        variants[key] = _Variant(key, target_url, etl)
    if cfg.gateway_ref and "aiohttp_hpush" in etls:
        variants["aiohttp_hpush_gw"] = _Variant("aiohttp_hpush_gw", endpoint, etls["aiohttp_hpush"])
    pids = process_tree(cluster_pids)
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn, auto_decompress=False) as s:
        for v in variants.values():  # warm-up: connections, pods' offload policy, page cache
            await _measure(s, v, cfg, bck, data, pids, cluster_pids, n=min(cfg.requests, 4 * cfg.concurrency))

        def fn(v: _Variant) -> Callable[[], Awaitable[Measurement]]:
            return lambda: _measure(s, v, cfg, bck, data, pids, cluster_pids)

        per = await interleave({k: fn(v) for k, v in variants.items()}, cfg.rounds)
    measurements = [summarize(p) for p in per.values()]
    ratios: dict[str, float] = {}

    def ops(k: str) -> list[float]:
        return [m.objects_per_s for m in per[k]]

    for comm in cfg.comms:
        if f"aiohttp_{comm}" in per and f"fastapi_{comm}" in per:
            ratios[f"pod_vs_aistore_fastapi_{comm}"] = ratio_median(ops(f"aiohttp_{comm}"), ops(f"fastapi_{comm}"))
        if f"aiohttp_class_{comm}" in per and f"fastapi_{comm}" in per:
            ratios[f"pod_class_vs_aistore_fastapi_{comm}"] = ratio_median(ops(f"aiohttp_class_{comm}"),
                                                                          ops(f"fastapi_{comm}"))
    if "aiohttp_hpush_gw" in per:
        ratios["gateway_vs_direct_hpush"] = ratio_median(ops("aiohttp_hpush_gw"), ops("aiohttp_hpush"))
    if "plain" in per:
        for k in per:
            if k != "plain":
                ratios[f"{k}_vs_plain"] = ratio_median(ops(k), ops("plain"))
    for m in measurements:
        if m.variant == "aiohttp_hpush_gw" and m.extra["redirects_followed"] != m.count:
            raise InlineBenchError(f"gateway variant followed {m.extra['redirects_followed']} redirects "
                                   f"for {m.count} GETs (expected one 307 each)")
    info = {"client_loop": loop_name(), "etls": etls, "target_url": target_url, "bucket": bck,
            "ratio_definition": "A_vs_B = objects/s of A / objects/s of B within one round, median over rounds"}
    return measurements, ratios, info


def run(cfg: InlineBenchConfig) -> BenchResult:
    """Start a one-target cluster and the ETLs; run the interleaved GET passes; stop everything.

    Returns:
        one summarized record per variant, the ratios of the module docstring,
        and ``info`` (data filesystem, ETL names, profiles).

    Raises:
        InlineBenchError: a GET failed or returned wrong bytes.
        aioetl.engine.node.launcher.ClusterError: the cluster did not start.
    """
    os.makedirs(cfg.data_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="aioetl-perf-inline-", dir=cfg.data_parent)
    info: dict[str, Any] = {"data_root": root, "data_fs": filesystem_of(root), "echo_image": ECHO_IMAGE,
                            "fastapi_class": f"{AisFastApiEcho.__module__}.{AisFastApiEcho.__qualname__}"}
    cluster: LocalCluster | None = None
    etls: dict[str, str] = {}
    node_pids: dict[int, str] = {}
    try:
        data_dir = os.path.join(root, "cluster")
        cluster = LocalCluster(targets=1, data_dir=data_dir, port=0, log_level=cfg.log_level)
        with _nodes_under_cprofile(cfg.profile_dir) if cfg.profile_dir else contextlib.nullcontext():
            cluster.start()
        node_pids = {n.pid: n.node_id for n in cluster.nodes()}
        import requests

        endpoint = cluster.endpoint
        smap = Smap.from_json(requests.get(f"{endpoint}/v1/daemon", params={"what": "smap"}, timeout=10).json())
        target_url = smap.active_targets()[0].url
        bck = f"inline-{secrets.token_hex(3)}"
        r = requests.post(f"{endpoint}/v1/buckets/{bck}", json={"action": "create-bck", "name": "", "value": None},
                          timeout=30)
        if r.status_code != 200:
            raise InlineBenchError(f"create bucket: {r.status_code} {r.text[:300]}")
        data = _Data(cfg.object_size)
        info["populate_s"] = round(_populate(_Placement(data_dir, smap), bck, "obj", data, cfg.objects), 2)
        t0 = time.monotonic()
        etls = _init_etls(endpoint, cfg.pods, cfg.comms)
        info["etl_init_s"] = round(time.monotonic() - t0, 2)
        measurements, ratios, binfo = run_loop(
            _bench(cfg, endpoint, target_url, bck, data, etls, [n.pid for n in cluster.nodes()]))
        info.update(binfo)
    finally:
        if cluster is not None and etls:
            with contextlib.suppress(Exception):
                delete_etls(cluster.endpoint, etls)
        if cluster is not None:
            cluster.stop()
        if not cfg.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    if cfg.profile_dir and node_pids:
        info["profiles"] = _summarize_profiles(cfg.profile_dir, node_pids)
        info["profiled"] = True
    return BenchResult(name=NAME, measurements=measurements, ratios=ratios, config=asdict(cfg), info=info)
