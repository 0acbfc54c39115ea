"""The offline-transform matrix: sizes x comm types x direct put x FQN x pods, with baselines.

Every measurement is one ``etl-bck`` job (the echo transform) over the same
source bucket, or one baseline pass over the same source files, on a
**2-target** cluster (with one target a direct put never leaves the target, so
it could not be told apart), data root on tmpfs (``/dev/shm``) unless
``--disk``/``--data-dir`` says otherwise.

Sizes (object count full / quick): 1 KiB (5,000 / 1,000), 10 KiB (5,000 /
1,000), 1 MiB (300 / 64), 16 MiB (16 / 4). ``--matrix-sizes`` picks a subset.

The full cross product (4 sizes x 3 comms x 2 x 2 x 2 pods = 96 jobs a round)
does not fit 2 cores in minutes, so the matrix is a subset:

- at every size, our pod over every comm type, direct put on, the target
  passing the FQN (AIStore's default): ``aiohttp_hpush``, ``aiohttp_hpull``,
  ``aiohttp_ws``;
- at 10 KiB and 1 MiB, one factor at a time from those:
  ``aiohttp_hpush_nodp`` (direct put off: the pod answers the target, which
  forwards the bytes to the owner), ``aiohttp_ws_dfa`` (FQN to the transform:
  ``direct_file_access=True``, ``transform()`` gets the path and reads the file
  itself instead of the server reading it), ``fastapi_hpush`` and
  ``fastapi_ws`` (aistore[etl]'s ``FastAPIServer`` pod instead of ours);
- baselines on the same source files: ``inproc`` (read,
  identity, write, one at a time, in the benchmark process),
  ``mp_pool`` (``multiprocessing.Pool(os.cpu_count())`` mapping the same
  read-identity-write over the files; pool started before timing),
  ``raw`` (:func:`perf.rawpipe.raw_loop`: one ws round trip per file to a bare
  echo server, one in flight: the raw pipeline limit), ``client_loop`` (the
  official SDK, sequential: GET the object, transform (identity) locally, PUT
  it into the destination bucket, one object at a time) and
  ``client_threads`` (the same loop in 8 threads sharing one SDK client);
  the two client loops at 10 KiB and 1 MiB only (at ~150 objects/s they would
  dominate the run time), the others at every size.

"FQN off" in AIStore's sense (the target sends the bytes instead of the FQN,
with ``latest-ver``/``sync``) is not implemented by aioetl's targets; the pod
side of it is measured by :mod:`perf.bench_pods` (``*_body``).

Pods run with ``NUM_WORKERS=1`` (two targets, so two pod processes per ETL: one
per core); ETLs are initialized through the official SDK's ``init_class``
with :mod:`perf.bench_inline`'s echo classes. All variants of one size are
interleaved in rounds (order rotated each round); each job writes into a fresh
destination bucket, checked (object count, a few outputs byte for byte), then
destroyed.

Measurements: ``matrix_<size>`` x variant. Ratios (objects/s within a round,
median over rounds):

- ``vs_client_loop``: ``aiohttp_ws`` at 10 KiB / the faster of
  ``client_loop`` and ``client_threads`` in that round (issue #5: >= 5);
  ``vs_client_loop_sequential`` and ``vs_client_threads`` against each one;
- ``matrix_<size>_<variant>_vs_<mp_pool|raw>`` for every job variant;
- ``matrix_<size>_mp_pool_vs_inproc``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from aioetl.engine.core.smap import Smap
from aioetl.engine.node.launcher import LocalCluster

from .bench_offline import (
    _check_outputs,
    _create_bucket,
    _Data,
    _destroy_bucket,
    _job_counts,
    _obj_name,
    _Placement,
    _populate,
    _summarize,
    run_job,
)
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
    process_tree,
    ratio_median,
    run_loop,
)
from .rawpipe import WsEchoProcess, inproc_loop, raw_loop

__all__ = ["NAME", "MatrixBenchConfig", "MatrixBenchError", "add_arguments", "config_from_args", "run"]

NAME = "matrix"
KiB = 1024
SIZES = {"1KiB": KiB, "10KiB": 10 * KiB, "1MiB": MiB, "16MiB": 16 * MiB}
#: ETL variants: name -> (pod, comm, direct_put, direct_file_access)
ETL_VARIANTS: dict[str, tuple[str, str, bool, bool]] = {
    "aiohttp_hpush": ("aiohttp", "hpush", True, False),
    "aiohttp_hpull": ("aiohttp", "hpull", True, False),
    "aiohttp_ws": ("aiohttp", "ws", True, False),
    "aiohttp_hpush_nodp": ("aiohttp", "hpush", False, False),
    "aiohttp_ws_dfa": ("aiohttp", "ws", True, True),
    "fastapi_hpush": ("fastapi", "hpush", True, False),
    "fastapi_ws": ("fastapi", "ws", True, False),
}
CORE = ("aiohttp_hpush", "aiohttp_hpull", "aiohttp_ws")
ONE_FACTOR = ("aiohttp_hpush_nodp", "aiohttp_ws_dfa", "fastapi_hpush", "fastapi_ws")
ONE_FACTOR_SIZES = ("10KiB", "1MiB")
BASELINES = ("inproc", "mp_pool", "raw", "client_loop", "client_threads")
CLIENT_THREADS = 8
CLIENT_SIZES = ("10KiB", "1MiB")

# mode -> ({size label: count}, rounds)
_MODE_DEFAULTS: dict[str, tuple[dict[str, int], int]] = {
    "full": ({"1KiB": 5000, "10KiB": 5000, "1MiB": 300, "16MiB": 16}, 3),
    "quick": ({"1KiB": 1000, "10KiB": 1000, "1MiB": 64, "16MiB": 4}, 2),
    "tiny": ({"1KiB": 4, "10KiB": 4, "1MiB": 2, "16MiB": 1}, 1),
}


class MatrixBenchError(RuntimeError):
    """A job or baseline failed, lost objects or produced wrong bytes."""


@dataclass(kw_only=True)
class MatrixBenchConfig:
    """Settings of one matrix run.

    Attributes:
        targets: target processes (2: see the module docstring).
        workloads: ``(size label, object size, count)`` in order.
        rounds: interleaved rounds per size.
        baselines: which of :data:`BASELINES` to run.
        one_factor: run the one-factor-at-a-time variants (at :data:`ONE_FACTOR_SIZES`).
        pod_workers: ``NUM_WORKERS`` of every pod.
        data_parent, keep_data, log_level: as the other benchmarks.
    """

    targets: int = 2
    workloads: tuple[tuple[str, int, int], ...] = ()
    rounds: int = 3
    baselines: tuple[str, ...] = BASELINES
    one_factor: bool = True
    pod_workers: int = 1
    poll_s: float = 0.1
    data_parent: str = "/dev/shm"
    keep_data: bool = False
    log_level: str = "warning"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark for ``python -m perf``."""
    g = parser.add_argument_group("matrix benchmark")
    g.add_argument("--matrix-sizes", default=",".join(SIZES), help=f"comma-separated subset of {','.join(SIZES)}")
    g.add_argument("--matrix-counts", default=None,
                   help="objects per size, comma-separated in --matrix-sizes order (default: by mode)")
    g.add_argument("--matrix-baselines", default=",".join(BASELINES),
                   help=f"comma-separated subset of {','.join(BASELINES)}")
    g.add_argument("--matrix-no-one-factor", action="store_true", help="skip the one-factor-at-a-time variants")


def config_from_args(args: argparse.Namespace, common: CommonOptions) -> MatrixBenchConfig:
    """Build the config from parsed flags and the mode's defaults.

    Raises:
        ValueError: unknown size or baseline, bad counts.
    """
    counts, rounds = _MODE_DEFAULTS[common.mode]
    sizes = [s.strip() for s in args.matrix_sizes.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes):
        raise ValueError(f"unknown sizes {sizes}; choose from {list(SIZES)}")
    if args.matrix_counts:
        vals = [int(x) for x in args.matrix_counts.split(",")]
        if len(vals) != len(sizes):
            raise ValueError("--matrix-counts needs one count per size")
        counts = dict(zip(sizes, vals, strict=True))
    if any(counts[s] < 1 for s in sizes):
        raise ValueError("object counts must be >= 1")
    bases = tuple(b.strip() for b in args.matrix_baselines.split(",") if b.strip())
    if any(b not in BASELINES for b in bases):
        raise ValueError(f"unknown baselines {bases}; choose from {BASELINES}")
    return MatrixBenchConfig(
        workloads=tuple((s, SIZES[s], counts[s]) for s in sizes), rounds=common.rounds or rounds,
        baselines=bases, one_factor=not args.matrix_no_one_factor,
        data_parent=common.data_parent, keep_data=common.keep_data)


# -- baselines ---------------------------------------------------------------------


def _copy_file(pair: tuple[str, str]) -> int:
    """Read ``src``, identity transform, write ``dst`` (a pool task). Returns bytes."""
    src, dst = pair
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data)
    return len(data)


def _sdk_copy(client: Any, src: str, dst: str, name: str) -> int:
    """GET through the SDK, identity transform, PUT through the SDK. Returns bytes."""
    data = client.bucket(src).object(name).get_reader().read_all()
    client.bucket(dst).object(name).get_writer().put_content(bytes(data))
    return len(data)


# -- the benchmark -------------------------------------------------------------------


@dataclass
class _Env:
    cfg: MatrixBenchConfig
    endpoint: str
    place: _Placement
    etls: dict[str, str]
    cluster_pids: list[int]
    echo: WsEchoProcess | None
    pool: Any
    sdk: Any
    root: str


def _variants_for(cfg: MatrixBenchConfig, label: str) -> list[str]:
    vs = list(CORE)
    if cfg.one_factor and label in ONE_FACTOR_SIZES:
        vs += list(ONE_FACTOR)
    return vs + [b for b in cfg.baselines if label in CLIENT_SIZES or not b.startswith("client")]


async def _job_pass(env: _Env, s: aiohttp.ClientSession, variant: str, src: str, label: str, data: _Data,
                    count: int, tag: str) -> Measurement:
    dst = f"{src}-{variant.replace('_', '-')}-{tag}"
    await _create_bucket(s, env.endpoint, dst)
    pids = process_tree(env.cluster_pids)
    try:
        cpu0, ccpu0 = cpu_seconds(pids), time.process_time()
        with RssSampler(env.cluster_pids) as rss:
            out = await run_job(s, env.endpoint, env.etls[variant], src, dst, env.cfg.poll_s, env.cfg.targets)
        cpu1, ccpu1 = cpu_seconds(pids), time.process_time()
        done, written, workers = _job_counts(out.snaps)
        if done != count or written != count:
            raise MatrixBenchError(f"{variant} job {src}->{dst}: done {done}, written {written}, expected {count}")
        _check_outputs(env, dst, "o", data, count)  # type: ignore[arg-type]
    finally:
        await _destroy_bucket(s, env.endpoint, dst)
    pod, comm, dp, dfa = ETL_VARIANTS[variant]
    return Measurement(
        name=f"matrix_{label}", variant=variant, object_size_bytes=data.size, count=count, concurrency=workers,
        seconds=out.seconds, objects_per_s=count / out.seconds, mib_per_s=count * data.size / MiB / out.seconds,
        p50_ms=None, p99_ms=None,  # type: ignore[arg-type] # a job has no per-request latencies
        peak_rss_mib=rss.peak_mib, server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        client_cpu_s=ccpu1 - ccpu0,
        extra={"kind": "job", "pod": pod, "comm": comm, "direct_put": dp, "direct_file_access": dfa,
               "etl": env.etls[variant], "polls": out.polls, "workers_per_target": workers},
    )


def _check_files(pairs: list[tuple[str, str]], data: _Data) -> None:
    n = len(pairs)
    for i in sorted({0, n // 2, n - 1}):
        with open(pairs[i][1], "rb") as f:
            if f.read() != data.body(i):
                raise MatrixBenchError(f"{pairs[i][1]}: differs from {pairs[i][0]}")


async def _base_pass(env: _Env, s: aiohttp.ClientSession, variant: str, src: str, label: str, data: _Data,
                     count: int, tag: str) -> Measurement:
    names = [_obj_name("o", i) for i in range(count)]
    out_dir = os.path.join(env.root, "base-out", f"{variant}-{tag}")
    os.makedirs(out_dir)
    pairs = [(env.place.fqn(src, n), os.path.join(out_dir, f"{i:06d}")) for i, n in enumerate(names)]
    conc = 1
    lat: list[float] | None = None
    pids: list[int] = []
    dst = ""
    try:
        if variant.startswith("client"):
            dst = f"{src}-{variant.replace('_', '-')}-{tag}"
            await _create_bucket(s, env.endpoint, dst)
            pids = process_tree(env.cluster_pids)
        elif variant == "raw" and env.echo is not None:
            pids = [env.echo.pid]
        elif variant == "mp_pool":
            pids = [p.pid for p in env.pool._pool]
        cpu0, ccpu0 = cpu_seconds(pids), time.process_time()
        t0 = time.perf_counter()
        if variant == "inproc":
            lat = inproc_loop(pairs)
        elif variant == "raw":
            assert env.echo is not None
            lat = (await raw_loop(env.echo.url, pairs, "aiohttp")).latencies_s
        elif variant == "mp_pool":
            procs = len(env.pool._pool)
            conc = procs
            env.pool.map(_copy_file, pairs, chunksize=max(1, count // (4 * procs)))
        elif variant == "client_loop":
            lat = []
            pc = time.perf_counter
            for n in names:
                t1 = pc()
                _sdk_copy(env.sdk, src, dst, n)
                lat.append(pc() - t1)
        elif variant == "client_threads":
            conc = CLIENT_THREADS
            with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as ex:
                list(ex.map(lambda n: _sdk_copy(env.sdk, src, dst, n), names))
        else:
            raise ValueError(f"unknown baseline {variant!r}")
        seconds = time.perf_counter() - t0
        cpu1, ccpu1 = cpu_seconds(pids), time.process_time()
        if variant.startswith("client"):
            _check_outputs(env, dst, "o", data, count)  # type: ignore[arg-type]
        else:
            _check_files(pairs, data)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        if dst:
            await _destroy_bucket(s, env.endpoint, dst)
    server_cpu = (cpu1 - cpu0) if pids and cpu0 is not None and cpu1 is not None else None
    extra = {"kind": "baseline"}
    if lat:
        return Measurement.from_latencies(
            name=f"matrix_{label}", variant=variant, object_size_bytes=data.size, concurrency=conc, seconds=seconds,
            latencies_s=lat, server_cpu_s=server_cpu, client_cpu_s=ccpu1 - ccpu0, extra=extra)
    return Measurement(
        name=f"matrix_{label}", variant=variant, object_size_bytes=data.size, count=count, concurrency=conc,
        seconds=seconds, objects_per_s=count / seconds, mib_per_s=count * data.size / MiB / seconds,
        p50_ms=None, p99_ms=None,  # type: ignore[arg-type]
        server_cpu_s=server_cpu, client_cpu_s=ccpu1 - ccpu0, extra=extra)


async def _bench(env: _Env) -> tuple[list[Measurement], dict[str, float], dict[str, Any]]:
    cfg = env.cfg
    info: dict[str, Any] = {"client_loop": loop_name(), "etls": env.etls, "populate_s": {}, "variants": {},
                            "ratio_definition": "A_vs_B = objects/s of A / objects/s of B within one round, "
                                                "median over rounds"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    measurements: list[Measurement] = []
    ratios: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=timeout) as s:
        # warm-up: every ETL once on a few objects (connections, offload policy), untimed
        wdata = _Data(10 * KiB)
        wb = f"warm-{secrets.token_hex(2)}"
        await _create_bucket(s, env.endpoint, wb)
        _populate(env.place, wb, "o", wdata, 32)
        for v in env.etls:
            await _job_pass(env, s, v, wb, "warm", wdata, 32, "w")
        await _destroy_bucket(s, env.endpoint, wb)
        for label, size, count in cfg.workloads:
            data = _Data(size)
            src = f"src-{label.lower()}-{secrets.token_hex(2)}"
            await _create_bucket(s, env.endpoint, src)
            info["populate_s"][label] = round(_populate(env.place, src, "o", data, count), 2)
            variants = _variants_for(cfg, label)
            info["variants"][label] = variants
            rnd = [0]

            def variant_fn(v: str) -> Callable[[], Awaitable[Measurement]]:
                async def one() -> Measurement:
                    rnd[0] += 1
                    if v in BASELINES:
                        return await _base_pass(env, s, v, src, label, data, count, f"r{rnd[0]}")
                    return await _job_pass(env, s, v, src, label, data, count, f"r{rnd[0]}")
                return one

            per = await interleave({v: variant_fn(v) for v in variants}, cfg.rounds)
            measurements += [_summarize(p) for p in per.values()]

            def ops(k: str) -> list[float]:
                return [m.objects_per_s for m in per[k]]

            for v in variants:
                if v in BASELINES:
                    continue
                for b in ("mp_pool", "raw"):
                    if b in per:
                        ratios[f"matrix_{label}_{v}_vs_{b}"] = ratio_median(ops(v), ops(b))
            if "mp_pool" in per and "inproc" in per:
                ratios[f"matrix_{label}_mp_pool_vs_inproc"] = ratio_median(ops("mp_pool"), ops("inproc"))
            if label == "10KiB" and "aiohttp_ws" in per:
                clients = [c for c in ("client_loop", "client_threads") if c in per]
                if clients:
                    best = [max(per[c][r].objects_per_s for c in clients) for r in range(cfg.rounds)]
                    ratios["vs_client_loop"] = ratio_median(ops("aiohttp_ws"), best)
                if "client_loop" in per:
                    ratios["vs_client_loop_sequential"] = ratio_median(ops("aiohttp_ws"), ops("client_loop"))
                if "client_threads" in per:
                    ratios["vs_client_threads"] = ratio_median(ops("aiohttp_ws"), ops("client_threads"))
            await _destroy_bucket(s, env.endpoint, src)
    return measurements, ratios, info


def _init_etls(endpoint: str, names: list[str], workers: int) -> dict[str, str]:
    from aistore.sdk import Client

    from .bench_inline import AiohttpEcho, AisFastApiEcho

    client = Client(endpoint, timeout=(5, 300))
    out: dict[str, str] = {}
    for v in names:
        pod, comm, dp, dfa = ETL_VARIANTS[v]
        name = f"mx-{v.replace('_', '-')}-{secrets.token_hex(3)}"
        cls = AiohttpEcho if pod == "aiohttp" else AisFastApiEcho
        client.etl(name).init_class(comm_type=comm, direct_put=dp, direct_file_access=dfa, init_timeout="2m",
                                    obj_timeout="60s", NUM_WORKERS=str(workers))(cls)
        out[v] = name
    return out


def run(cfg: MatrixBenchConfig) -> BenchResult:
    """Start a cluster, the ETLs, the echo server and the pool; run every size; stop everything.

    Returns:
        one summarized record per size and variant, the ratios of the module
        docstring, and ``info`` (data filesystem, ETL names, variants per size).

    Raises:
        MatrixBenchError: a job or baseline failed or produced wrong bytes.
        aioetl.engine.node.launcher.ClusterError: the cluster did not start.
    """
    os.makedirs(cfg.data_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="aioetl-perf-matrix-", dir=cfg.data_parent)
    info: dict[str, Any] = {"data_root": root, "data_fs": filesystem_of(root), "targets": cfg.targets,
                            "pod_workers": cfg.pod_workers}
    cluster: LocalCluster | None = None
    echo: WsEchoProcess | None = None
    pool: Any = None
    etls: dict[str, str] = {}
    sdk: Any = None
    try:
        if "mp_pool" in cfg.baselines:  # forked first: before this process has threads or cluster pipes
            pool = multiprocessing.get_context("fork").Pool(os.cpu_count() or 1)
        data_dir = os.path.join(root, "cluster")
        cluster = LocalCluster(targets=cfg.targets, data_dir=data_dir, port=0, log_level=cfg.log_level)
        cluster.start()
        if "raw" in cfg.baselines:
            echo = WsEchoProcess("aiohttp").start()
        import requests
        from aistore.sdk import Client

        smap = Smap.from_json(requests.get(f"{cluster.endpoint}/v1/daemon", params={"what": "smap"}, timeout=10).json())
        need = list(CORE) + (list(ONE_FACTOR) if cfg.one_factor and any(w[0] in ONE_FACTOR_SIZES
                                                                        for w in cfg.workloads) else [])
        t0 = time.monotonic()
        etls = _init_etls(cluster.endpoint, need, cfg.pod_workers)
        info["etl_init_s"] = round(time.monotonic() - t0, 2)
        sdk = Client(cluster.endpoint, timeout=(5, 120), max_pool_size=CLIENT_THREADS * 2)
        env = _Env(cfg, cluster.endpoint, _Placement(data_dir, smap), etls, [n.pid for n in cluster.nodes()],
                   echo, pool, sdk, root)
        os.makedirs(os.path.join(root, "base-out"), exist_ok=True)
        measurements, ratios, binfo = run_loop(_bench(env))
        info.update(binfo)
        info["raw_impl"] = "aiohttp/aiohttp"
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if cluster is not None and etls:
            delete_etls(cluster.endpoint, etls)
        if echo is not None:
            echo.stop()
        if cluster is not None:
            cluster.stop()
        if not cfg.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    config = asdict(cfg)
    config["workloads"] = [{"label": lb, "object_size_bytes": sz, "count": c} for lb, sz, c in cfg.workloads]
    return BenchResult(name=NAME, measurements=measurements, ratios=ratios, config=config, info=info)
