"""Cluster benchmark: PUT then GET of small and large objects through a real LocalCluster.

Three variants serve the same objects to the same aiohttp client at the same
concurrency, interleaved in rounds (:func:`perf.common.interleave`):

- ``cluster``: requests go to the gateway, which answers each with a 307 to the
  owning target; aiohttp follows it (for PUT it re-sends the ``bytes`` body, as
  the aistore SDK's ``requests`` does). The run checks that it did.
- ``direct``: requests go straight to the HRW owner (the client computes HRW on
  the smap it fetched once), as :class:`aioetl.engine.client.data.DataClient` does; no redirect.
- ``echo``: a bare aiohttp server in its own process: PUT keeps the body in a
  dict, GET returns it. The floor of what aiohttp on this machine can do.

Ratios (all throughput ratios, objects/s of the first over the second, computed
within each round then the median over rounds; < 1 means slower):

- ``cluster_vs_echo_<op>_<size>``: the whole cluster path against the baseline.
- ``direct_vs_echo_<op>_<size>``: the target alone against the baseline.
- ``cluster_vs_direct_<op>_<size>``: what the gateway redirect costs.

``<op>`` is ``put`` or ``get``; ``<size>`` is e.g. ``10KiB`` or ``16MiB``.

The cluster's data root is made under ``/dev/shm`` (tmpfs) unless ``--disk`` or
``--data-dir`` says otherwise; ``info.data_fs`` records which filesystem it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from aioetl.engine.core.names import make_uname
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.launcher import LocalCluster

from .common import (
    BenchResult,
    CommonOptions,
    Measurement,
    MiB,
    RssSampler,
    ServerProcess,
    cpu_seconds,
    filesystem_of,
    interleave,
    loop_name,
    ratio_median,
    run_loop,
    size_label,
    summarize,
)

__all__ = ["NAME", "BenchError", "ClusterBenchConfig", "EchoServer", "add_arguments", "config_from_args", "echo_main",
           "run"]

NAME = "cluster"
KiB = 1024
VARIANTS = ("echo", "cluster", "direct")
RATIO_PAIRS = (("cluster", "echo"), ("direct", "echo"), ("cluster", "direct"))
_REPO_ROOT = Path(__file__).resolve().parent.parent

# mode -> (small count, large count, rounds)
_MODE_DEFAULTS = {"full": (2000, 32, 5), "quick": (300, 8, 3), "tiny": (6, 2, 1)}


class BenchError(RuntimeError):
    """A benchmark request failed or returned the wrong bytes (the numbers would be meaningless)."""


@dataclass(kw_only=True)
class ClusterBenchConfig:
    """Settings of one cluster benchmark run.

    Attributes:
        targets: target processes in the cluster.
        concurrency: requests in flight per pass.
        workloads: ``(object size in bytes, object count)`` pairs, run in order.
        rounds: interleaved rounds per workload.
        variants: which of ``echo``, ``cluster``, ``direct`` to run.
        data_parent: directory under which a fresh data root is created.
        keep_data: keep the data root afterwards.
        profile_dir: if set, cluster nodes run under cProfile and write
            ``<profile_dir>/<node>.prof`` (+ a text summary) on exit.
        log_level: the nodes' log level.
        warmup: do an untimed PUT+GET of a few objects per variant first.
    """

    targets: int = 1
    concurrency: int = 16
    workloads: tuple[tuple[int, int], ...] = ((10 * KiB, 2000), (16 * MiB, 32))
    rounds: int = 5
    variants: tuple[str, ...] = VARIANTS
    data_parent: str = "/dev/shm"
    keep_data: bool = False
    profile_dir: str = ""
    log_level: str = "warning"
    warmup: bool = True


# -- CLI -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark for ``python -m perf``."""
    g = parser.add_argument_group("cluster benchmark")
    g.add_argument("--targets", type=int, default=1, help="targets in the cluster (default 1)")
    g.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    g.add_argument("--small-count", type=int, default=None, help="10 KiB objects per pass (full 2000, quick 300)")
    g.add_argument("--large-count", type=int, default=None, help="16 MiB objects per pass (full 32, quick 8)")
    g.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}"
    )


def config_from_args(args: argparse.Namespace, common: CommonOptions) -> ClusterBenchConfig:
    """Build the config from parsed flags and the mode's defaults.

    Raises:
        ValueError: unknown variant or non-positive counts.
    """
    small, large, rounds = _MODE_DEFAULTS[common.mode]
    small = args.small_count if args.small_count is not None else small
    large = args.large_count if args.large_count is not None else large
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ValueError(f"unknown variants {bad}; choose from {VARIANTS}")
    if small < 1 or large < 1 or args.targets < 1 or args.concurrency < 1:
        raise ValueError("counts, targets and concurrency must be >= 1")
    return ClusterBenchConfig(
        targets=args.targets,
        concurrency=args.concurrency,
        workloads=((10 * KiB, small), (16 * MiB, large)),
        rounds=common.rounds or rounds,
        variants=variants,
        data_parent=common.data_parent,
        keep_data=common.keep_data,
        profile_dir=os.path.join(common.out_dir, "profiles") if common.profile else "",
    )


# -- echo baseline server --------------------------------------------------------


def _echo_app() -> web.Application:
    store: dict[str, bytes] = {}

    async def put(request: web.Request) -> web.StreamResponse:
        store[request.raw_path] = await request.read()
        return web.Response(status=200)

    async def get(request: web.Request) -> web.StreamResponse:
        body = store.get(request.raw_path)
        if body is None:
            return web.Response(status=404)
        return web.Response(status=200, body=body, content_type="application/octet-stream")

    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("PUT", "/v1/objects/{tail:.+}", put)
    app.router.add_route("GET", "/v1/objects/{tail:.+}", get)
    return app


async def _echo_serve() -> None:
    runner = web.AppRunner(_echo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"http://127.0.0.1:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def echo_main() -> None:
    """Process entry of the echo server: prints its URL on stdout, serves until SIGTERM."""
    run_loop(_echo_serve())


class EchoServer(ServerProcess):
    """The echo baseline as a child process on 127.0.0.1 (ephemeral port).

    Args:
        start_timeout_s: how long to wait for it to print its URL.

    Raises:
        BenchError: on start, if it exits or stays silent.
    """

    name = "echo server"
    error = BenchError

    def argv(self) -> list[str]:
        return [sys.executable, "-c", "from perf.bench_cluster import echo_main; echo_main()"]


# -- profiling support -----------------------------------------------------------


@contextlib.contextmanager
def _nodes_under_cprofile(profile_dir: str) -> Iterator[None]:
    """While active, node processes the launcher spawns run under cProfile.

    The launcher starts ``sys.executable -m aioetl.engine.node.main ...``; this points
    ``sys.executable`` at a wrapper that ``exec``s the same interpreter with
    ``-m cProfile -o <profile_dir>/<pid>.prof`` (same pid, so the launcher's
    readiness and ownership checks still hold). A node stopped by SIGTERM
    exits normally and cProfile writes its file.
    """
    os.makedirs(profile_dir, exist_ok=True)
    for old in os.listdir(profile_dir):  # profiles of an earlier run in the same place
        if old.endswith((".prof", ".txt")):
            os.unlink(os.path.join(profile_dir, old))
    wrapper = os.path.join(profile_dir, "python-cprofile.sh")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" -m cProfile -o "{os.path.abspath(profile_dir)}/$$.prof" "$@"\n')
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IXUSR)
    saved = sys.executable
    sys.executable = wrapper
    try:
        yield
    finally:
        sys.executable = saved


def _summarize_profiles(profile_dir: str, nodes: dict[int, str], top: int = 25) -> dict[str, Any]:
    """Rename ``<pid>.prof`` to ``<node>.prof``, write ``<node>.txt``; return the top functions."""
    out: dict[str, Any] = {}
    for pid, node in nodes.items():
        src = os.path.join(profile_dir, f"{pid}.prof")
        if not os.path.exists(src):
            out[node] = {"error": "no profile written"}
            continue
        dst = os.path.join(profile_dir, f"{node}.prof")
        os.replace(src, dst)
        st = pstats.Stats(dst)
        with open(os.path.join(profile_dir, f"{node}.txt"), "w") as f:
            s2 = pstats.Stats(dst, stream=f)
            s2.sort_stats("tottime").print_stats(top)
            s2.sort_stats("cumulative").print_stats(top)
        rows = []
        stats: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
        for (file, line, fn), (_cc, nc, tt, ct, _callers) in sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]:
            rows.append({"func": f"{os.path.basename(file)}:{line}({fn})", "ncalls": nc,
                         "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
        out[node] = {"total_s": round(st.total_tt, 3), "top_tottime": rows}  # type: ignore[attr-defined]
    return out


# -- client ----------------------------------------------------------------------


@dataclass
class _Variant:
    name: str
    session: aiohttp.ClientSession
    url_of: Callable[[str], str]
    pids: list[int]


@dataclass
class _PassStats:
    redirects_seen: int = 0
    manual_redirects: int = 0


async def _put(session: aiohttp.ClientSession, url: str, body: bytes, st: _PassStats) -> None:
    for _ in range(4):
        async with session.put(url, data=body) as r:
            st.redirects_seen += len(r.history)
            data = await r.read()
            if r.status in (301, 302, 303, 307, 308) and "Location" in r.headers:
                # aiohttp did not follow: resolve Location by hand
                url = str(r.url.join(URL(r.headers["Location"])))
                st.manual_redirects += 1
                continue
            if r.status != 200:
                raise BenchError(f"PUT {url}: {r.status} {data[:300]!r}")
            return
    raise BenchError(f"PUT {url}: too many redirects")


async def _get(session: aiohttp.ClientSession, url: str, size: int, st: _PassStats) -> None:
    async with session.get(url) as r:
        st.redirects_seen += len(r.history)
        if r.status != 200:
            raise BenchError(f"GET {url}: {r.status} {(await r.read())[:300]!r}")
        if size <= MiB:
            n = len(await r.read())
        else:
            n = 0
            async for chunk in r.content.iter_any():
                n += len(chunk)
    if n != size:
        raise BenchError(f"GET {url}: got {n} bytes, expected {size}")


async def _run_pass(fn: Callable[[int], Awaitable[None]], count: int, concurrency: int) -> tuple[float, list[float]]:
    """Run ``fn(0..count-1)`` with ``concurrency`` workers. Returns (wall s, latencies s)."""
    lat = [0.0] * count
    indexes = iter(range(count))

    async def worker() -> None:
        for i in indexes:  # one shared iterator: each index is taken once
            t0 = time.perf_counter()
            await fn(i)
            lat[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, count)):
            tg.create_task(worker())
    return time.perf_counter() - t0, lat


def _obj_name(variant: str, size: int, i: int) -> str:
    return f"{variant}/{size_label(size)}/{i:06d}"


async def _measure(
    v: _Variant, op: str, size: int, count: int, concurrency: int, payload: bytes
) -> Measurement:
    st = _PassStats()
    urls = [v.url_of(_obj_name(v.name, size, i)) for i in range(count)]
    if op == "put":
        async def fn(i: int) -> None:
            await _put(v.session, urls[i], payload, st)
    else:
        async def fn(i: int) -> None:
            await _get(v.session, urls[i], size, st)

    cpu0, ccpu0 = cpu_seconds(v.pids), time.process_time()
    with RssSampler(v.pids) as rss:
        seconds, lat = await _run_pass(fn, count, concurrency)
    cpu1, ccpu1 = cpu_seconds(v.pids), time.process_time()
    return Measurement.from_latencies(
        name=f"{op}_{size_label(size)}",
        variant=v.name,
        object_size_bytes=size,
        concurrency=concurrency,
        seconds=seconds,
        latencies_s=lat,
        peak_rss_mib=rss.peak_mib,
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        client_cpu_s=ccpu1 - ccpu0,
        extra={"redirects_followed": st.redirects_seen, "manual_redirects": st.manual_redirects},
    )


async def _check_redirect(gw: aiohttp.ClientSession, endpoint: str, bck: str, smap: Smap,
                          sizes: list[int]) -> dict[str, Any]:
    """PUT through the gateway and verify aiohttp followed the 307 with the body.

    Returns:
        per size: the redirect chain aiohttp reported and whether the bytes
        read back from the owner directly match.

    Raises:
        BenchError: the object did not arrive intact.
    """
    out: dict[str, Any] = {}
    for size in sizes:
        obj = f"check/{size_label(size)}"
        body = os.urandom(size)
        async with gw.put(f"{endpoint}/v1/objects/{bck}/{quote(obj)}", data=body) as r:
            await r.read()
            chain = [h.status for h in r.history]
            followed = r.status == 200 and chain == [307]
            final_url = str(r.url)
        owner = smap.hrw_target(make_uname(bck, obj)).url
        if not followed:
            # resolve it by hand, so that the check still leaves the object behind
            st = _PassStats()
            await _put(gw, f"{endpoint}/v1/objects/{bck}/{quote(obj)}", body, st)
        async with gw.get(f"{owner}/v1/objects/{bck}/{quote(obj)}") as r:
            back = await r.read()
        if back != body:
            raise BenchError(f"PUT through the gateway stored {len(back)} bytes that differ from the {size} sent")
        out[size_label(size)] = {
            "aiohttp_followed_307": followed,
            "redirect_chain": chain,
            "final_url_is_owner": final_url.startswith(owner),
            "bytes_intact": True,
        }
    return out


async def _api(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> bytes:
    async with session.request(method, url, **kw) as r:
        data = await r.read()
        if r.status != 200:
            raise BenchError(f"{method} {url}: {r.status} {data[:300]!r}")
        return data


async def _bench(cfg: ClusterBenchConfig, cluster: LocalCluster | None,
                 echo: EchoServer | None) -> tuple[list[Measurement], dict[str, float], dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=600, sock_connect=10)
    info: dict[str, Any] = {
        "client_loop": loop_name(),
        "ratio_definition": "A_vs_B_<op>_<size> = objects/s of A / objects/s of B within one round, "
        "median over rounds; < 1 means A is slower",
    }
    sessions: list[aiohttp.ClientSession] = []

    def session() -> aiohttp.ClientSession:
        s = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        sessions.append(s)
        return s

    try:
        variants: dict[str, _Variant] = {}
        if cluster is not None:
            endpoint = cluster.endpoint
            admin = session()
            bck = f"perf-{secrets.token_hex(3)}"
            await _api(admin, "POST", f"{endpoint}/v1/buckets/{bck}",
                       json={"action": "create-bck", "name": "", "value": None})
            smap = Smap.from_json(json.loads(await _api(admin, "GET", f"{endpoint}/v1/daemon",
                                                        params={"what": "smap"})))
            if len(smap.active_targets()) != cfg.targets:
                raise BenchError(f"smap has {len(smap.active_targets())} targets, expected {cfg.targets}")
            info["bucket"] = bck
            info["targets"] = {t.daemon_id: t.url for t in smap.active_targets()}
            info["redirect_check"] = await _check_redirect(admin, endpoint, bck, smap, [s for s, _ in cfg.workloads])
            pids = [n.pid for n in cluster.nodes()]
            if "cluster" in cfg.variants:
                variants["cluster"] = _Variant(
                    "cluster", session(), lambda o: f"{endpoint}/v1/objects/{bck}/{quote(o)}", pids
                )
            if "direct" in cfg.variants:
                owner_cache: dict[str, str] = {}

                def direct_url(o: str) -> str:
                    u = owner_cache.get(o)
                    if u is None:
                        u = owner_cache[o] = f"{smap.hrw_target(make_uname(bck, o)).url}/v1/objects/{bck}/{quote(o)}"
                    return u

                variants["direct"] = _Variant("direct", session(), direct_url, pids)
        if echo is not None:
            eurl = echo.url
            variants["echo"] = _Variant("echo", session(), lambda o: f"{eurl}/v1/objects/bench/{quote(o)}", [echo.pid])
        ordered = {name: variants[name] for name in VARIANTS if name in variants}

        all_passes: list[Measurement] = []
        ratios: dict[str, float] = {}
        for size, count in cfg.workloads:
            payload = os.urandom(size)
            if cfg.warmup:
                n = min(count, 2 * cfg.concurrency if size <= MiB else 4)
                for v in ordered.values():
                    await _measure(v, "put", size, n, cfg.concurrency, payload)
                    await _measure(v, "get", size, n, cfg.concurrency, payload)

            def round_of(v: _Variant) -> Callable[[], Awaitable[list[Measurement]]]:
                async def one() -> list[Measurement]:
                    put = await _measure(v, "put", size, count, cfg.concurrency, payload)
                    get = await _measure(v, "get", size, count, cfg.concurrency, payload)
                    return [put, get]

                return one

            per_variant = await interleave({name: round_of(v) for name, v in ordered.items()}, cfg.rounds)
            for _name, rounds in per_variant.items():
                for k in range(2):
                    all_passes.append(summarize([r[k] for r in rounds]))
            label = size_label(size)
            for k, op in enumerate(("put", "get")):
                for a, b in RATIO_PAIRS:
                    if a in per_variant and b in per_variant:
                        ratios[f"{a}_vs_{b}_{op}_{label}"] = ratio_median(
                            [r[k].objects_per_s for r in per_variant[a]],
                            [r[k].objects_per_s for r in per_variant[b]],
                        )
        return all_passes, ratios, info
    finally:
        for s in sessions:
            await s.close()


def run(cfg: ClusterBenchConfig) -> BenchResult:
    """Start the cluster and the echo server, run every workload, stop everything.

    Returns:
        measurements (one summarized record per op, size and variant), the
        ratios described in the module docstring, and ``info`` (data
        filesystem, redirect check, target URLs, profiles).

    Raises:
        BenchError: a request failed or returned wrong bytes.
        aioetl.engine.node.launcher.ClusterError: the cluster did not start.
    """
    os.makedirs(cfg.data_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="aioetl-perf-", dir=cfg.data_parent)
    info: dict[str, Any] = {"data_root": root, "data_fs": filesystem_of(root)}
    need_cluster = any(v in cfg.variants for v in ("cluster", "direct"))
    cluster: LocalCluster | None = None
    echo: EchoServer | None = None
    node_pids: dict[int, str] = {}
    try:
        if need_cluster:
            cluster = LocalCluster(targets=cfg.targets, data_dir=os.path.join(root, "cluster"), port=0,
                                   log_level=cfg.log_level)
            with _nodes_under_cprofile(cfg.profile_dir) if cfg.profile_dir else contextlib.nullcontext():
                cluster.start()
            node_pids = {n.pid: n.node_id for n in cluster.nodes()}
        if "echo" in cfg.variants:
            echo = EchoServer().start()
        measurements, ratios, binfo = run_loop(_bench(cfg, cluster, echo))
        info.update(binfo)
    finally:
        if echo is not None:
            echo.stop()
        if cluster is not None:
            cluster.stop()
        if not cfg.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    if cfg.profile_dir and node_pids:
        info["profiles"] = _summarize_profiles(cfg.profile_dir, node_pids)
        info["profiled"] = True
    config = asdict(cfg)
    config["workloads"] = [{"object_size_bytes": s, "count": c} for s, c in cfg.workloads]
    return BenchResult(name=NAME, measurements=measurements, ratios=ratios, config=config, info=info)

