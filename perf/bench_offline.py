"""Offline (bucket-to-bucket) transform benchmark: the echo ETL over hpush, hpull and ws.

Workloads: ``small`` = N x 10 KiB objects (full 20,000, quick 2,000) and
``large`` = M x 16 MiB (full 64, quick 8), on a tmpfs data root (``/dev/shm``)
unless ``--disk``/``--data-dir`` says otherwise. One target (``--offline-targets``).

Variants, interleaved in rounds (:func:`perf.common.interleave`, order rotated
each round), all reading the same source files:

- ``hpush``, ``hpull``, ``ws``: an ``etl-bck`` job of the built-in echo ETL
  (``aistorage/transformer_echo``, initialized through the SDK with that comm
  type and ``direct_put=True``) from the source bucket into a fresh destination
  bucket (created, untimed, before the job; destroyed, untimed, after it). Timed
  from the ``POST /v1/buckets/<src>`` to the first ``qryxstats`` poll (every
  20 ms) in which every target's snapshot is idle. The run checks that every
  object was done without error and compares a few outputs byte for byte.
- ``raw``: :func:`perf.rawpipe.raw_loop`, the raw pipeline limit: one object at
  a time, read the file, one round trip to a bare ws echo server in another
  process over one persistent connection, write a new file. Which server and
  client library (aiohttp or websockets) is measured first, interleaved, on
  part of the workload (``info.raw_calibration``), and the fastest pair is used
  (``--raw-impl`` forces one).
- ``inproc``: :func:`perf.rawpipe.inproc_loop`: read, identity, write, in the
  benchmark process.

Source objects are written straight into the target's mountpath with
:class:`aioetl.engine.target.storage.Store` (HRW picks the target) after the cluster is up and
the buckets exist; the target serves what is on disk.

Ratios (objects/s of the first over the second within each round, median over
rounds; equal to the MiB/s ratio since both move the same bytes):
``<comm>_<small|large>_vs_raw``, ``<comm>_<small|large>_vs_inproc`` and
``raw_<small|large>_vs_inproc``. Issue #4's acceptance: ``ws_small_vs_raw >= 0.6``,
``ws_large_vs_raw >= 0.8``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from aioetl.engine.core.names import make_uname
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.launcher import LocalCluster
from aioetl.engine.target.storage import Store

from .bench_cluster import _nodes_under_cprofile, _summarize_profiles
from .common import (
    BenchResult,
    CommonOptions,
    Measurement,
    MiB,
    RssSampler,
    cpu_seconds,
    delete_etls,
    filesystem_of,
    interleave,
    loop_name,
    median,
    parse_rfc3339,
    ratio_median,
    run_loop,
    size_label,
    summarize,
)
from .rawpipe import CLIENT_IMPLS, SERVER_IMPLS, WsEchoProcess, inproc_loop, raw_loop

__all__ = ["NAME", "OfflineBenchConfig", "OfflineBenchError", "add_arguments", "config_from_args", "run"]

NAME = "offline"
KiB = 1024
COMMS = ("hpush", "hpull", "ws")
BASELINES = ("raw", "inproc")
VARIANTS = ("raw", "inproc", *COMMS)
ECHO_IMAGE = "aistorage/transformer_echo:latest"
RAW_IMPLS = tuple(f"{s}/{c}" for s in SERVER_IMPLS for c in CLIENT_IMPLS)

# mode -> (small count, large count, rounds)
_MODE_DEFAULTS = {"full": (20000, 64, 5), "quick": (2000, 8, 3), "tiny": (8, 1, 1)}


class OfflineBenchError(RuntimeError):
    """A job failed, lost objects or produced wrong bytes (the numbers would be meaningless)."""


@dataclass(kw_only=True)
class OfflineBenchConfig:
    """Settings of one offline benchmark run.

    Attributes:
        targets: target processes.
        workloads: ``(label, object size in bytes, object count)``, run in order.
        rounds: interleaved rounds per workload.
        variants: subset of :data:`VARIANTS`.
        raw_impl: ``auto`` (calibrate) or ``<server>/<client>`` of :data:`RAW_IMPLS`.
        poll_s: job status poll period, seconds.
        data_parent: directory under which a fresh data root is created.
        keep_data: keep the data root afterwards.
        profile_dir: if set, cluster nodes run under cProfile (see bench_cluster).
        log_level: the nodes' log level.
        warmup: run an untimed small job per comm type (and raw/inproc) first.
    """

    targets: int = 1
    workloads: tuple[tuple[str, int, int], ...] = (("small", 10 * KiB, 20000), ("large", 16 * MiB, 64))
    rounds: int = 5
    variants: tuple[str, ...] = VARIANTS
    raw_impl: str = "auto"
    poll_s: float = 0.1
    data_parent: str = "/dev/shm"
    keep_data: bool = False
    profile_dir: str = ""
    log_level: str = "warning"
    warmup: bool = True


# -- CLI -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark for ``python -m perf``."""
    g = parser.add_argument_group("offline benchmark")
    g.add_argument("--offline-small-count", type=int, default=None, help="10 KiB objects (full 20000, quick 2000)")
    g.add_argument("--offline-large-count", type=int, default=None, help="16 MiB objects (full 64, quick 8)")
    g.add_argument("--offline-targets", type=int, default=1, help="targets (default 1)")
    g.add_argument("--offline-variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)}")
    g.add_argument("--raw-impl", default="auto",
                   help=f"raw baseline's ws server/client: auto (fastest, measured) or one of {', '.join(RAW_IMPLS)}")


def config_from_args(args: argparse.Namespace, common: CommonOptions) -> OfflineBenchConfig:
    """Build the config from parsed flags and the mode's defaults.

    Raises:
        ValueError: unknown variant or raw implementation, non-positive counts.
    """
    small, large, rounds = _MODE_DEFAULTS[common.mode]
    small = args.offline_small_count if args.offline_small_count is not None else small
    large = args.offline_large_count if args.offline_large_count is not None else large
    variants = tuple(v.strip() for v in args.offline_variants.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ValueError(f"unknown variants {bad}; choose from {VARIANTS}")
    if args.raw_impl != "auto" and args.raw_impl not in RAW_IMPLS:
        raise ValueError(f"unknown --raw-impl {args.raw_impl!r}; choose auto or one of {RAW_IMPLS}")
    if small < 0 or large < 0 or small + large == 0 or args.offline_targets < 1:
        raise ValueError("object counts must be >= 0 (not both 0) and targets >= 1")
    workloads = tuple(w for w in (("small", 10 * KiB, small), ("large", 16 * MiB, large)) if w[2] > 0)
    return OfflineBenchConfig(
        targets=args.offline_targets,
        workloads=workloads,
        rounds=common.rounds or rounds,
        variants=variants,
        raw_impl=args.raw_impl,
        data_parent=common.data_parent,
        keep_data=common.keep_data,
        profile_dir=os.path.join(common.out_dir, "profiles-offline") if common.profile else "",
    )


# -- data ------------------------------------------------------------------------


class _Data:
    """Deterministic object contents: an 8-byte big-endian index, then a shared random tail."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.tail = os.urandom(max(0, size - 8))

    def body(self, i: int) -> bytes:
        head = i.to_bytes(8, "big")
        return (head + self.tail)[: self.size]


def _obj_name(label: str, i: int) -> str:
    return f"{label}/{i:06d}"


class _Placement:
    """Which target's store holds an object (HRW over the smap), as the targets decide."""

    def __init__(self, data_dir: str, smap: Smap) -> None:
        with open(os.path.join(data_dir, "cluster.json")) as f:
            layout = json.load(f)
        self.smap = smap
        self.stores = {t["id"]: Store([os.path.join(data_dir, mp) for mp in t["mountpaths"]])
                       for t in layout["targets"]}

    def store_of(self, bck: str, obj: str) -> Store:
        if len(self.stores) == 1:
            return next(iter(self.stores.values()))
        return self.stores[self.smap.hrw_target(make_uname(bck, obj)).daemon_id]

    def fqn(self, bck: str, obj: str) -> str:
        return self.store_of(bck, obj).fqn(bck, obj)


def _populate(place: _Placement, bck: str, label: str, data: _Data, count: int) -> float:
    t0 = time.perf_counter()
    for i in range(count):
        name = _obj_name(label, i)
        place.store_of(bck, name).put_bytes(bck, name, data.body(i))
    return time.perf_counter() - t0


# -- HTTP helpers ------------------------------------------------------------------


async def _api(s: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> bytes:
    async with s.request(method, url, **kw) as r:
        body = await r.read()
        if r.status != 200:
            raise OfflineBenchError(f"{method} {url}: {r.status} {body[:500]!r}")
        return body


async def _create_bucket(s: aiohttp.ClientSession, endpoint: str, bck: str) -> None:
    await _api(s, "POST", f"{endpoint}/v1/buckets/{bck}", json={"action": "create-bck", "name": "", "value": None})


async def _destroy_bucket(s: aiohttp.ClientSession, endpoint: str, bck: str) -> None:
    await _api(s, "DELETE", f"{endpoint}/v1/buckets/{bck}", json={"action": "destroy-bck", "name": "", "value": None})


def _etl_bck_body(etl: str) -> dict[str, Any]:
    return {"action": "etl-bck", "name": "", "value": {
        "id": etl, "prefix": "", "prepend": "", "dry_run": False, "force": False, "latest-ver": False,
        "synchronize": False, "request_timeout": "5m", "pipeline": None}}


@dataclass
class _JobOutcome:
    seconds: float
    polls: int
    snaps: dict[str, list[dict[str, Any]]]


async def run_job(s: aiohttp.ClientSession, endpoint: str, etl: str, src: str, dst: str, poll_s: float,
                  n_targets: int, timeout_s: float = 1800.0) -> _JobOutcome:
    """Start an ``etl-bck`` job and wait until every target reports it idle.

    Returns:
        seconds from just before the POST to the latest ``end-time`` the targets'
        snapshots report (the xaction's own end, ns resolution, so the poll period
        only decides how soon it is seen, not the measurement; the time of the
        poll that saw every target idle when a snapshot has no end time), the
        number of polls, and the final ``qryxstats`` snapshots.

    Raises:
        OfflineBenchError: the start failed, the job aborted, or it ran past ``timeout_s``.
    """
    url = f"{endpoint}/v1/buckets/{src}?provider=ais&bck_to={quote(f'ais/@#/{dst}/', safe='')}"
    t0, t0_wall = time.perf_counter(), time.time()
    xid = (await _api(s, "POST", url, json=_etl_bck_body(etl))).decode().strip()
    polls = 0
    while True:
        await asyncio.sleep(poll_s)
        polls += 1
        snaps: dict[str, list[dict[str, Any]]] = json.loads(
            await _api(s, "GET", f"{endpoint}/v1/cluster", params={"what": "qryxstats"}, json={"ID": xid}))
        all_snaps = [x for ss in snaps.values() for x in ss]
        if len(snaps) >= n_targets and all_snaps and all(x.get("is_idle") for x in all_snaps):
            seconds = time.perf_counter() - t0
            ends = [parse_rfc3339(x.get("end-time")) for x in all_snaps]
            if all(e is not None for e in ends):
                seconds = min(seconds, max(ends) - t0_wall)  # type: ignore[type-var]
            break
        if any(x.get("aborted") for x in all_snaps):
            raise OfflineBenchError(f"job {xid} aborted: {[x.get('abort-err') for x in all_snaps]}")
        if time.perf_counter() - t0 > timeout_s:
            raise OfflineBenchError(f"job {xid} not done in {timeout_s} s")
    for x in all_snaps:
        if x.get("aborted") or x.get("abort-err") or int(x.get("err-total") or 0):
            raise OfflineBenchError(f"job {xid} on {x.get('node')}: aborted={x.get('aborted')} "
                                    f"abort-err={x.get('abort-err')!r} errors={x.get('err-total')}")
    return _JobOutcome(seconds, polls, snaps)


def _job_counts(snaps: dict[str, list[dict[str, Any]]]) -> tuple[int, int, int]:
    """(done objects, objects written, workers per target) summed over targets."""
    done = written = workers = 0
    for ss in snaps.values():
        for x in ss:
            done += int(x.get("done-objs") or 0)
            st = x.get("stats") or {}
            written += int(st.get("loc-objs") or 0) + int(st.get("in-objs") or 0)
            workers = max(workers, int(x.get("glob.id") or 0) >> 10)
    return done, written, workers


# -- the benchmark ----------------------------------------------------------------------


@dataclass
class _Env:
    cfg: OfflineBenchConfig
    endpoint: str
    place: _Placement
    etls: dict[str, str]  # comm -> ETL name
    cluster_pids: list[int]
    echo: dict[str, WsEchoProcess]
    root: str


def _server_pids(env: _Env) -> list[int]:
    """Gateway and targets, plus every process under the targets (the pods)."""
    pids = list(env.cluster_pids)
    try:
        import psutil

        for p in env.cluster_pids:
            with contextlib.suppress(psutil.Error):
                pids += [c.pid for c in psutil.Process(p).children(recursive=True)]
    except ImportError:  # pragma: no cover
        pass
    return pids


def _check_outputs(env: _Env, bck: str, label: str, data: _Data, count: int) -> None:
    for i in sorted({0, count // 2, count - 1}):
        name = _obj_name(label, i)
        got = env.place.store_of(bck, name).read_bytes(bck, name)
        if got != data.body(i):
            raise OfflineBenchError(f"ais://{bck}/{name}: {len(got)} bytes that differ from the source")


def _check_files(pairs: list[tuple[str, str]], data: _Data) -> None:
    n = len(pairs)
    for i in sorted({0, n // 2, n - 1}):
        with open(pairs[i][1], "rb") as f:
            if f.read() != data.body(i):
                raise OfflineBenchError(f"{pairs[i][1]}: differs from {pairs[i][0]}")


async def _job_pass(env: _Env, s: aiohttp.ClientSession, comm: str, src: str, label: str, data: _Data,
                    count: int, tag: str) -> Measurement:
    dst = f"{src}-{comm}-{tag}"
    await _create_bucket(s, env.endpoint, dst)
    pids = _server_pids(env)
    try:
        cpu0, ccpu0 = cpu_seconds(pids), time.process_time()
        with RssSampler(env.cluster_pids) as rss:
            out = await run_job(s, env.endpoint, env.etls[comm], src, dst, env.cfg.poll_s, env.cfg.targets)
        cpu1, ccpu1 = cpu_seconds(pids), time.process_time()
        done, written, workers = _job_counts(out.snaps)
        if done != count or written != count:
            raise OfflineBenchError(f"{comm} job {src}->{dst}: done {done}, written {written}, expected {count}")
        _check_outputs(env, dst, label, data, count)
    finally:
        await _destroy_bucket(s, env.endpoint, dst)
    return Measurement(
        name=f"offline_{size_label(data.size)}", variant=comm, object_size_bytes=data.size, count=count,
        concurrency=workers, seconds=out.seconds, objects_per_s=count / out.seconds,
        mib_per_s=count * data.size / MiB / out.seconds,
        p50_ms=None, p99_ms=None,  # type: ignore[arg-type] # a job has no per-request latencies
        peak_rss_mib=rss.peak_mib,
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0, client_cpu_s=ccpu1 - ccpu0,
        extra={"polls": out.polls, "workers_per_target": workers, "etl": env.etls[comm]},
    )


def _pairs(env: _Env, src: str, label: str, count: int, out_dir: str) -> list[tuple[str, str]]:
    return [(env.place.fqn(src, _obj_name(label, i)), os.path.join(out_dir, f"{i:06d}")) for i in range(count)]


async def _base_pass(env: _Env, variant: str, impl: str, src: str, label: str, data: _Data, count: int,
                     tag: str, check: bool = True) -> Measurement:
    out_dir = os.path.join(env.root, "base-out", f"{variant}-{tag}")
    os.makedirs(out_dir)
    pairs = _pairs(env, src, label, count, out_dir)
    try:
        pids = [env.echo[impl.split("/")[0]].pid] if variant == "raw" else []
        cpu0, ccpu0 = cpu_seconds(pids), time.process_time()
        with RssSampler(pids) if pids else contextlib.nullcontext() as rss:  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            if variant == "raw":
                server, client = impl.split("/")
                lat = (await raw_loop(env.echo[server].url, pairs, client)).latencies_s
            else:
                lat = inproc_loop(pairs)
            seconds = time.perf_counter() - t0
        cpu1, ccpu1 = cpu_seconds(pids), time.process_time()
        if check:
            _check_files(pairs, data)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return Measurement.from_latencies(
        name=f"offline_{size_label(data.size)}", variant=variant, object_size_bytes=data.size, concurrency=1,
        seconds=seconds, latencies_s=lat, peak_rss_mib=rss.peak_mib if rss is not None else None,
        server_cpu_s=(cpu1 - cpu0) if pids and cpu0 is not None and cpu1 is not None else None,
        client_cpu_s=ccpu1 - ccpu0, extra={"impl": impl} if variant == "raw" else {},
    )


async def _calibrate(env: _Env, src: str, label: str, data: _Data, count: int,
                     reps: int = 3) -> tuple[str, dict[str, Any]]:
    """Run every raw server/client pair on part of the workload, interleaved; the fastest wins."""
    n = min(count, 500 if data.size <= MiB else 3)
    fns: dict[str, Callable[[], Awaitable[Measurement]]] = {}
    k = [0]

    def make(impl: str) -> Callable[[], Awaitable[Measurement]]:
        async def one() -> Measurement:
            k[0] += 1
            return await _base_pass(env, "raw", impl, src, label, data, n, f"cal{k[0]}", check=False)
        return one

    for impl in RAW_IMPLS:
        fns[impl] = make(impl)
    res = await interleave(fns, reps)
    med = {impl: median([m.objects_per_s for m in ms]) for impl, ms in res.items()}
    best = max(med, key=lambda i: med[i])
    return best, {"objects": n, "reps": reps, "chosen": best,
                  "median_objects_per_s": {i: round(v, 1) for i, v in med.items()}}


def _summarize(passes: list[Measurement]) -> Measurement:
    """:func:`summarize`, tolerating the ``None`` latencies of job passes."""
    if all(p.p50_ms is None for p in passes):
        tmp = [Measurement(**{**asdict(p), "p50_ms": 0.0, "p99_ms": 0.0}) for p in passes]
        out = summarize(tmp)
        out.p50_ms = out.p99_ms = None  # type: ignore[assignment]
        return out
    return summarize(passes)


async def _bench(env: _Env) -> tuple[list[Measurement], dict[str, float], dict[str, Any]]:
    cfg = env.cfg
    info: dict[str, Any] = {"client_loop": loop_name(), "etls": env.etls, "raw_calibration": {}, "populate_s": {},
                            "ratio_definition": "<A>_<workload>_vs_<B> = objects/s of A / objects/s of B within "
                            "one round, median over rounds; < 1 means A is slower"}
    comms = [c for c in COMMS if c in cfg.variants]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    measurements: list[Measurement] = []
    ratios: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=timeout) as s:
        if cfg.warmup and comms:
            wdata = _Data(10 * KiB)
            wb = f"warm-{secrets.token_hex(2)}"
            await _create_bucket(s, env.endpoint, wb)
            _populate(env.place, wb, "w", wdata, 64)
            for comm in comms:
                await _job_pass(env, s, comm, wb, "w", wdata, 64, "warm")
            await _destroy_bucket(s, env.endpoint, wb)
        for label, size, count in cfg.workloads:
            data = _Data(size)
            src = f"src-{label}-{secrets.token_hex(2)}"
            await _create_bucket(s, env.endpoint, src)
            info["populate_s"][label] = round(_populate(env.place, src, label, data, count), 2)
            impl = cfg.raw_impl
            if "raw" in cfg.variants and impl == "auto":
                impl, cal = await _calibrate(env, src, label, data, count)
                info["raw_calibration"][label] = cal
            if cfg.warmup and "inproc" in cfg.variants:
                await _base_pass(env, "inproc", "", src, label, data, min(count, 64), "warm")
            rnd = [0]

            def variant_fn(v: str) -> Callable[[], Awaitable[Measurement]]:
                async def one() -> Measurement:
                    rnd[0] += 1
                    tag = f"r{rnd[0]}"
                    if v in BASELINES:
                        return await _base_pass(env, v, impl, src, label, data, count, tag)
                    return await _job_pass(env, s, v, src, label, data, count, tag)
                return one

            per = await interleave({v: variant_fn(v) for v in cfg.variants}, cfg.rounds)
            for _v, passes in per.items():
                measurements.append(_summarize(passes))
            for a in comms:
                for b in BASELINES:
                    if b in per:
                        ratios[f"{a}_{label}_vs_{b}"] = ratio_median([m.objects_per_s for m in per[a]],
                                                                    [m.objects_per_s for m in per[b]])
            if "raw" in per and "inproc" in per:
                ratios[f"raw_{label}_vs_inproc"] = ratio_median([m.objects_per_s for m in per["raw"]],
                                                               [m.objects_per_s for m in per["inproc"]])
            await _destroy_bucket(s, env.endpoint, src)
    return measurements, ratios, info


def _init_etls(endpoint: str, comms: list[str]) -> dict[str, str]:
    """Initialize the echo ETL once per comm type through the official SDK."""
    from aistore.sdk import Client

    client = Client(endpoint, timeout=(5, 300))
    names: dict[str, str] = {}
    for comm in comms:
        name = f"echo-{comm}-{secrets.token_hex(3)}"
        client.etl(name).init(image=ECHO_IMAGE, comm_type=comm, direct_put=True, init_timeout="2m",
                              obj_timeout="60s")
        names[comm] = name
    return names


def run(cfg: OfflineBenchConfig) -> BenchResult:
    """Start a cluster, the ETLs and the echo servers; run every workload; stop everything.

    Returns:
        one summarized record per workload and variant, the ratios of the module
        docstring, and ``info`` (data filesystem, raw calibration, ETL names, profiles).

    Raises:
        OfflineBenchError: a job failed or produced wrong bytes.
        aioetl.engine.node.launcher.ClusterError: the cluster did not start.
    """
    os.makedirs(cfg.data_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="aioetl-perf-offline-", dir=cfg.data_parent)
    info: dict[str, Any] = {"data_root": root, "data_fs": filesystem_of(root), "echo_image": ECHO_IMAGE}
    comms = [c for c in COMMS if c in cfg.variants]
    cluster: LocalCluster | None = None
    echo: dict[str, WsEchoProcess] = {}
    etls: dict[str, str] = {}
    node_pids: dict[int, str] = {}
    try:
        data_dir = os.path.join(root, "cluster")
        cluster = LocalCluster(targets=cfg.targets, data_dir=data_dir, port=0, log_level=cfg.log_level)
        with _nodes_under_cprofile(cfg.profile_dir) if cfg.profile_dir else contextlib.nullcontext():
            cluster.start()
        node_pids = {n.pid: n.node_id for n in cluster.nodes()}
        if "raw" in cfg.variants:
            servers = SERVER_IMPLS if cfg.raw_impl == "auto" else (cfg.raw_impl.split("/")[0],)
            for impl in servers:
                echo[impl] = WsEchoProcess(impl).start()
        import requests

        smap = Smap.from_json(requests.get(f"{cluster.endpoint}/v1/daemon", params={"what": "smap"}, timeout=10).json())
        etls = _init_etls(cluster.endpoint, comms)
        env = _Env(cfg, cluster.endpoint, _Placement(data_dir, smap), etls,
                   [n.pid for n in cluster.nodes()], echo, root)
        os.makedirs(os.path.join(root, "base-out"), exist_ok=True)
        measurements, ratios, binfo = run_loop(_bench(env))
        info.update(binfo)
        info["echo_servers"] = {k: v.url for k, v in echo.items()}
    finally:
        if cluster is not None and etls:
            with contextlib.suppress(Exception):
                delete_etls(cluster.endpoint, etls)
        for e in echo.values():
            e.stop()
        if cluster is not None:
            cluster.stop()
        if not cfg.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    if cfg.profile_dir and node_pids:
        info["profiles"] = _summarize_profiles(cfg.profile_dir, node_pids)
        info["profiled"] = True
    config = asdict(cfg)
    config["workloads"] = [{"label": lb, "object_size_bytes": sz, "count": c} for lb, sz, c in cfg.workloads]
    return BenchResult(name=NAME, measurements=measurements, ratios=ratios, config=config, info=info)
