"""Real workloads: thumbnails and zstd, aioetl offline jobs vs a ``multiprocessing`` pool.

Data (:mod:`perf.datasets`, Debian packages cached per machine):

- ``thumbnail``: openclipart PNGs (full 1,000, quick 200), the first ones in
  name order whose pixel count is within Pillow's ``MAX_IMAGE_PIXELS`` (the
  others are decompression bombs that every variant would refuse);
  transform :func:`perf.workloads.thumbnail_jpeg` (256x256 JPEG, q85);
- ``zstd``: fortune quotations (full 5,000, quick 1,000; ~100 bytes each, as
  the demo uses them), transform :func:`perf.workloads.zstd_compress` (level 3).

The objects are written into a one-target cluster's mountpath (tmpfs
``/dev/shm`` unless ``--disk``/``--data-dir``), and every variant works on
those same files. Every variant first runs one untimed pass over all the items
(warm code paths, offload policy, heaps at peak size), then the variants are
interleaved in rounds (order rotated):

- ``aioetl_ws``, ``aioetl_hpush``: an ``etl-bck`` job into a fresh bucket, the
  transform in our pod (an :class:`communicators.AiohttpServer` subclass sent
  with the official SDK's ``init_class(dependencies=["Pillow"] or
  ["zstandard"], NUM_WORKERS=<cpu count>)``, so the pod can use every core);
  timed from the job's start to every target idle;
- ``mp_pool``: ``multiprocessing.Pool(os.cpu_count())`` (started before timing)
  mapping the same local function over the files: read the file, transform,
  write a new file;
- ``inproc``: the same function in a plain loop in the benchmark process.

Outputs are checked: every object done without error, a few compared byte for
byte with the local function's output.

Ratios (objects/s within a round, median over rounds):

- ``<workload>_overhead`` = 1 - ``aioetl_ws`` / ``mp_pool`` (engine overhead;
  issue #5: ``thumbnail_overhead`` < 0.15);
- ``<workload>_overhead_hpush`` = 1 - ``aioetl_hpush`` / ``mp_pool``;
- ``<workload>_pool_vs_inproc``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import cloudpickle

from aioetl.communicators import AiohttpServer
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.launcher import LocalCluster

from . import workloads as wl
from .bench_offline import _create_bucket, _destroy_bucket, _job_counts, _Placement, _summarize, run_job
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
    process_tree,
    ratio_median,
    run_loop,
)

__all__ = ["NAME", "AiohttpThumbnail", "AiohttpZstd", "WorkloadBenchConfig", "WorkloadBenchError",
           "add_arguments", "config_from_args", "run"]

NAME = "workloads"
WORKLOADS = ("thumbnail", "zstd")
COMMS = ("ws", "hpush")
VARIANTS = ("aioetl_ws", "aioetl_hpush", "mp_pool", "inproc")

# mode -> ({workload: objects}, rounds)
_MODE_DEFAULTS: dict[str, tuple[dict[str, int], int]] = {
    "full": ({"thumbnail": 1000, "zstd": 5000}, 7),  # 7: single rounds swing +-20% on a drifting machine
    "quick": ({"thumbnail": 200, "zstd": 1000}, 3),
    "tiny": ({"thumbnail": 4, "zstd": 4}, 1),
}

cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(wl)


def _read(data: bytes | str) -> bytes:
    if isinstance(data, str):
        with open(data, "rb") as f:
            return f.read()
    return data


class AiohttpThumbnail(AiohttpServer):
    """Our pod: image -> JPEG thumbnail (:func:`perf.workloads.thumbnail_jpeg`)."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return wl.thumbnail_jpeg(_read(data))

    def get_mime_type(self) -> str:
        return "image/jpeg"


class AiohttpZstd(AiohttpServer):
    """Our pod: bytes -> zstd frame (:func:`perf.workloads.zstd_compress`)."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return wl.zstd_compress(_read(data))


_CLASSES = {"thumbnail": (AiohttpThumbnail, ["Pillow"]), "zstd": (AiohttpZstd, ["zstandard"])}
_FUNCS: dict[str, Callable[[bytes], bytes]] = {"thumbnail": wl.thumbnail_jpeg, "zstd": wl.zstd_compress}


class WorkloadBenchError(RuntimeError):
    """A job or the pool failed, or produced wrong bytes."""


@dataclass(kw_only=True)
class WorkloadBenchConfig:
    """Settings of one workloads run.

    Attributes:
        counts: objects per workload (``{"thumbnail": 1000, "zstd": 5000}``).
        rounds: interleaved rounds per workload.
        variants: subset of :data:`VARIANTS`.
        pod_workers: ``NUM_WORKERS`` of the pods (default: the CPU count).
        data_parent, keep_data, log_level: as the other benchmarks.
    """

    counts: dict[str, int]
    rounds: int = 5
    variants: tuple[str, ...] = VARIANTS
    pod_workers: int = 0
    poll_s: float = 0.1
    data_parent: str = "/dev/shm"
    keep_data: bool = False
    log_level: str = "warning"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark for ``python -m perf``."""
    g = parser.add_argument_group("workloads benchmark (thumbnails, zstd)")
    g.add_argument("--thumbnail-count", type=int, default=None, help="images (full 1000, quick 200; 0 = skip)")
    g.add_argument("--zstd-count", type=int, default=None, help="texts (full 5000, quick 1000; 0 = skip)")


def config_from_args(args: argparse.Namespace, common: CommonOptions) -> WorkloadBenchConfig:
    """Build the config from parsed flags and the mode's defaults.

    Raises:
        ValueError: negative counts, or both zero.
    """
    counts, rounds = _MODE_DEFAULTS[common.mode]
    counts = dict(counts)
    if args.thumbnail_count is not None:
        counts["thumbnail"] = args.thumbnail_count
    if args.zstd_count is not None:
        counts["zstd"] = args.zstd_count
    if any(v < 0 for v in counts.values()) or not any(counts.values()):
        raise ValueError("workload counts must be >= 0 and not all 0")
    return WorkloadBenchConfig(counts={k: v for k, v in counts.items() if v > 0}, rounds=common.rounds or rounds,
                               pod_workers=os.cpu_count() or 1, data_parent=common.data_parent,
                               keep_data=common.keep_data)


# -- data and the local function ------------------------------------------------------


def _items(workload: str, n: int) -> list[tuple[str, bytes]]:
    """``(object name, bytes)`` of the first ``n`` usable items."""
    from PIL import Image

    from .datasets import Dataset

    ds = Dataset()
    if workload == "zstd":
        return ds.texts(n)
    out: list[tuple[str, bytes]] = []
    limit = Image.MAX_IMAGE_PIXELS or 0
    from .datasets import png_size

    for p in ds.all_images():
        w, h = png_size(p)
        if limit and w * h > limit:
            continue
        out.append((ds.image_name(p), p.read_bytes()))
        if len(out) == n:
            return out
    raise WorkloadBenchError(f"only {len(out)} usable images, {n} asked for")


def _apply(job: tuple[str, str, str]) -> int:
    """Pool task: read ``src``, apply the workload's function, write ``dst``. Returns output bytes."""
    workload, src, dst = job
    with open(src, "rb") as f:
        data = f.read()
    out = _FUNCS[workload](data)
    with open(dst, "wb") as f:
        f.write(out)
    return len(out)


# -- passes --------------------------------------------------------------------------


@dataclass
class _Env:
    cfg: WorkloadBenchConfig
    endpoint: str
    place: _Placement
    etls: dict[tuple[str, str], str]  # (workload, comm) -> ETL name
    cluster_pids: list[int]
    pool: Any
    root: str


def _check_sample(env: _Env, workload: str, bck: str, items: list[tuple[str, bytes]],
                  where: Callable[[int], bytes]) -> None:
    n = len(items)
    fn = _FUNCS[workload]
    for i in sorted({0, n // 2, n - 1}):
        got = where(i)
        if got != fn(items[i][1]):
            raise WorkloadBenchError(f"{workload}: output of {items[i][0]} ({len(got)} bytes) differs from the "
                                     "local function's")


async def _job_pass(env: _Env, s: aiohttp.ClientSession, workload: str, comm: str, src: str,
                    items: list[tuple[str, bytes]], total_bytes: int, tag: str) -> Measurement:
    count = len(items)
    dst = f"{src}-{comm}-{tag}"
    await _create_bucket(s, env.endpoint, dst)
    pids = process_tree(env.cluster_pids)
    try:
        cpu0 = cpu_seconds(pids)
        with RssSampler(env.cluster_pids) as rss:
            out = await run_job(s, env.endpoint, env.etls[(workload, comm)], src, dst, env.cfg.poll_s, 1)
        cpu1 = cpu_seconds(pids)
        done, written, workers = _job_counts(out.snaps)
        if done != count or written != count:
            raise WorkloadBenchError(f"{workload} {comm} job: done {done}, written {written}, expected {count}")
        _check_sample(env, workload, dst, items,
                      lambda i: env.place.store_of(dst, items[i][0]).read_bytes(dst, items[i][0]))
    finally:
        await _destroy_bucket(s, env.endpoint, dst)
    return Measurement(
        name=workload, variant=f"aioetl_{comm}", object_size_bytes=total_bytes // count, count=count,
        concurrency=workers, seconds=out.seconds, objects_per_s=count / out.seconds,
        mib_per_s=total_bytes / MiB / out.seconds, p50_ms=None, p99_ms=None,  # type: ignore[arg-type]
        peak_rss_mib=rss.peak_mib, server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        extra={"etl": env.etls[(workload, comm)], "polls": out.polls, "workers_per_target": workers,
               "object_size": "mean input bytes"},
    )


def _local_pass(env: _Env, variant: str, workload: str, src: str, items: list[tuple[str, bytes]],
                total_bytes: int, tag: str) -> Measurement:
    count = len(items)
    out_dir = os.path.join(env.root, "local-out", f"{workload}-{variant}-{tag}")
    os.makedirs(out_dir)
    jobs = [(workload, env.place.fqn(src, name), os.path.join(out_dir, f"{i:06d}"))
            for i, (name, _) in enumerate(items)]
    procs = len(env.pool._pool) if env.pool is not None else 1
    pids = [p.pid for p in env.pool._pool] if variant == "mp_pool" else []
    try:
        cpu0, ccpu0 = cpu_seconds(pids), time.process_time()
        t0 = time.perf_counter()
        if variant == "mp_pool":
            env.pool.map(_apply, jobs, chunksize=max(1, count // (8 * procs)))
        else:
            for j in jobs:
                _apply(j)
        seconds = time.perf_counter() - t0
        cpu1, ccpu1 = cpu_seconds(pids), time.process_time()

        def where(i: int) -> bytes:
            with open(jobs[i][2], "rb") as f:
                return f.read()

        _check_sample(env, workload, "", items, where)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return Measurement(
        name=workload, variant=variant, object_size_bytes=total_bytes // count, count=count,
        concurrency=procs if variant == "mp_pool" else 1, seconds=seconds, objects_per_s=count / seconds,
        mib_per_s=total_bytes / MiB / seconds, p50_ms=None, p99_ms=None,  # type: ignore[arg-type]
        server_cpu_s=(cpu1 - cpu0) if pids and cpu0 is not None and cpu1 is not None else None,
        client_cpu_s=ccpu1 - ccpu0, extra={"object_size": "mean input bytes"},
    )


async def _bench(
    env: _Env, data: dict[str, list[tuple[str, bytes]]]
) -> tuple[list[Measurement], dict[str, float], dict[str, Any]]:
    cfg = env.cfg
    info: dict[str, Any] = {"client_loop": loop_name(), "etls": {f"{w}/{c}": n for (w, c), n in env.etls.items()},
                            "items": {}, "ratio_definition": "overhead = 1 - (aioetl objects/s / mp_pool objects/s) "
                            "within one round, median over rounds"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    measurements: list[Measurement] = []
    ratios: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=timeout) as s:
        for workload, items in data.items():
            src = f"{workload}-{secrets.token_hex(2)}"
            await _create_bucket(s, env.endpoint, src)
            for name, body in items:
                env.place.store_of(src, name).put_bytes(src, name, body)
            total = sum(len(b) for _, b in items)
            sizes = sorted(len(b) for _, b in items)
            info["items"][workload] = {"count": len(items), "total_bytes": total, "median_bytes": median(sizes),
                                       "max_bytes": sizes[-1]}
            comms = [c for c in COMMS if f"aioetl_{c}" in cfg.variants]
            rnd = [0]

            def fn(v: str, workload: str = workload, items: list[tuple[str, bytes]] = items, src: str = src,
                   total: int = total) -> Callable[[], Awaitable[Measurement] | Measurement]:
                def one() -> Awaitable[Measurement] | Measurement:
                    rnd[0] += 1
                    if v.startswith("aioetl_"):
                        return _job_pass(env, s, workload, v.split("_", 1)[1], src, items, total, f"r{rnd[0]}")
                    return _local_pass(env, v, workload, src, items, total, f"r{rnd[0]}")
                return one

            # one untimed pass of every variant over all the items first: the pods' code
            # paths and offload policy, and every process's heap at its peak size (the
            # first pass over the images was the slowest of five, for the pool too)
            for v in cfg.variants:
                one = fn(v)()
                if not isinstance(one, Measurement):
                    await one
            per = await interleave({v: fn(v) for v in cfg.variants}, cfg.rounds)
            measurements += [_summarize(p) for p in per.values()]

            def ops(k: str) -> list[float]:
                return [m.objects_per_s for m in per[k]]

            if "mp_pool" in per:
                for c in comms:
                    key = f"{workload}_overhead" + ("" if c == "ws" else f"_{c}")
                    ratios[key] = 1.0 - ratio_median(ops(f"aioetl_{c}"), ops("mp_pool"))
                if "inproc" in per:
                    ratios[f"{workload}_pool_vs_inproc"] = ratio_median(ops("mp_pool"), ops("inproc"))
            await _destroy_bucket(s, env.endpoint, src)
    return measurements, ratios, info


def _init_etls(endpoint: str, workloads: list[str], comms: list[str], workers: int) -> dict[tuple[str, str], str]:
    from aistore.sdk import Client

    client = Client(endpoint, timeout=(5, 600))
    out: dict[tuple[str, str], str] = {}
    for w in workloads:
        cls, deps = _CLASSES[w]
        for c in comms:
            name = f"{w}-{c}-{secrets.token_hex(3)}"
            client.etl(name).init_class(dependencies=deps, comm_type=c, direct_put=True, init_timeout="5m",
                                        obj_timeout="120s", NUM_WORKERS=str(workers))(cls)
            out[(w, c)] = name
    return out


def run(cfg: WorkloadBenchConfig) -> BenchResult:
    """Load the data, start the pool, a one-target cluster and the ETLs; run; stop everything.

    Returns:
        one summarized record per workload and variant, the ratios of the module
        docstring, and ``info`` (data filesystem, item sizes, ETL names, init time).

    Raises:
        WorkloadBenchError: a job or the pool failed or produced wrong bytes.
        perf.datasets.DatasetError: the dataset could not be built.
    """
    data = {w: _items(w, n) for w, n in cfg.counts.items()}
    os.makedirs(cfg.data_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="aioetl-perf-workloads-", dir=cfg.data_parent)
    info: dict[str, Any] = {"data_root": root, "data_fs": filesystem_of(root), "pod_workers": cfg.pod_workers,
                            "pool_processes": os.cpu_count()}
    cluster: LocalCluster | None = None
    pool: Any = None
    etls: dict[tuple[str, str], str] = {}
    try:
        if "mp_pool" in cfg.variants:  # forked first: before this process has threads or cluster pipes
            pool = multiprocessing.get_context("fork").Pool(os.cpu_count() or 1)
            pool.map(_apply, [], chunksize=1)
        data_dir = os.path.join(root, "cluster")
        cluster = LocalCluster(targets=1, data_dir=data_dir, port=0, log_level=cfg.log_level)
        cluster.start()
        import requests

        smap = Smap.from_json(requests.get(f"{cluster.endpoint}/v1/daemon", params={"what": "smap"}, timeout=10).json())
        comms = [c for c in COMMS if f"aioetl_{c}" in cfg.variants]
        t0 = time.monotonic()
        etls = _init_etls(cluster.endpoint, list(data), comms, cfg.pod_workers)
        info["etl_init_s"] = round(time.monotonic() - t0, 2)
        env = _Env(cfg, cluster.endpoint, _Placement(data_dir, smap), etls, [n.pid for n in cluster.nodes()],
                   pool, root)
        measurements, ratios, binfo = run_loop(_bench(env, data))
        info.update(binfo)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if cluster is not None and etls:
            delete_etls(cluster.endpoint, etls)
        if cluster is not None:
            cluster.stop()
        if not cfg.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    return BenchResult(name=NAME, measurements=measurements, ratios=ratios, config=asdict(cfg), info=info)
