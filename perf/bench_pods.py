"""Pod-only benchmark: our aiohttp pod vs ``aistore[etl]``'s ``FastAPIServer`` pod.

The pod is what is compared, so no target sits in between: this benchmark
starts each pod exactly as a target does (:class:`aioetl.engine.target.pods.LocalProcessRuntime`
with the init message ``Etl.init_class`` sends: image
``aistorage/runtime_python:<py>``, the class in ``ETL_CLASS_PAYLOAD``, run by
:mod:`aioetl.communicators.pod.bootstrap`) and drives it the way a target does for hpush:

    PUT <pod>/<bck>/<obj>?etl_fqn=<url.PathEscape(FQN), query-encoded>   (empty body)

at concurrency 32 (``--pods-concurrency``) over 32 keep-alive connections from
:mod:`perf.podload` in a separate process: a minimal HTTP/1.1 client on uvloop
(``--pods-client raw``, the default; ``aiohttp`` = aiohttp's ClientSession,
which costs ~4x more CPU per request and on 2 cores becomes the limit for our
pod). Its CPU time is recorded (``client_cpu_s``), and so is the pods' (the
``pod_cpu_*`` ratios compare CPU seconds per request, which does not depend on
who was the bottleneck). Objects: 10 KiB files (full 1,000, quick 500)
on the data root (tmpfs ``/dev/shm`` by default) laid out as target FQNs.

Pods (same echo transform, ``bench_inline``'s classes, pickled by value):

- ``aiohttp``: :class:`perf.bench_inline.AiohttpEcho` (our ``AiohttpServer``);
- ``fastapi``: :class:`perf.bench_inline.AisFastApiEcho` (aistore[etl]'s
  ``FastAPIServer``, served by uvicorn as the runtime image does).

Both run with the same ``NUM_WORKERS``: by default the bootstrap's default,
``min(cpu_count, 4)`` (2 here), i.e. every core for each pod: the fair choice
on this machine (AIStore's runtime image defaults to 4 workers, which on 2
cores only adds context switches); ``--pods-workers`` sets another value for both.

Variants (``<pod>_<mode>``), interleaved in rounds with the order rotated:
``mode`` = ``fqn`` (the target's default, the pod reads the file) or ``body``
(the bytes in the PUT body, as AIStore's targets send with ``latest-ver`` or
``sync``; the bytes were read by the client beforehand).

Ratios (requests/s within a round, median over rounds):

- ``pod_vs_aistore_fastapi``: ``aiohttp_fqn`` / ``fastapi_fqn`` (issue #5:
  >= 3 at 10 KiB);
- ``pod_vs_aistore_fastapi_body``: ``aiohttp_body`` / ``fastapi_body``;
- ``pod_cpu_fastapi_vs_aiohttp_<mode>``: the FastAPI pod's CPU seconds per
  request / ours (median over rounds): how much less work our pod does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .common import (
    BenchResult,
    CommonOptions,
    Measurement,
    RssSampler,
    cpu_seconds,
    filesystem_of,
    interleave,
    loop_name,
    ratio_median,
    run_loop,
    size_label,
    summarize,
)

__all__ = ["NAME", "PodBenchConfig", "PodBenchError", "PodProcess", "add_arguments", "config_from_args",
           "init_class_msg", "run"]

NAME = "pods"
KiB = 1024
POD_KINDS = ("aiohttp", "fastapi")
MODES = ("fqn", "body")
_REPO_ROOT = Path(__file__).resolve().parent.parent

# mode -> (PUTs per pass, distinct objects, rounds)
_MODE_DEFAULTS = {"full": (20000, 1000, 5), "quick": (4000, 500, 3), "tiny": (8, 8, 1)}


class PodBenchError(RuntimeError):
    """A pod did not start, or a request failed or returned wrong bytes."""


@dataclass(kw_only=True)
class PodBenchConfig:
    """Settings of one pod benchmark run.

    Attributes:
        requests: PUTs per pass.
        objects: distinct files the PUTs cycle through.
        object_size: bytes per object.
        concurrency: requests in flight.
        rounds: interleaved rounds.
        pods: pod kinds (:data:`POD_KINDS`).
        modes: ``fqn`` and/or ``body`` (:data:`MODES`).
        workers: ``NUM_WORKERS`` for every pod; ``None`` = the bootstrap's default.
        client: the load client, ``raw`` or ``aiohttp`` (:mod:`perf.podload`).
        data_parent, keep_data: as the other benchmarks.
    """

    requests: int = 20000
    objects: int = 1000
    object_size: int = 10 * KiB
    concurrency: int = 32
    rounds: int = 5
    pods: tuple[str, ...] = POD_KINDS
    modes: tuple[str, ...] = MODES
    workers: int | None = None
    client: str = "raw"
    data_parent: str = "/dev/shm"
    keep_data: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark for ``python -m perf``."""
    g = parser.add_argument_group("pods benchmark (pod only, no target)")
    g.add_argument("--pods-requests", type=int, default=None, help="PUTs per pass (full 20000, quick 4000)")
    g.add_argument("--pods-concurrency", type=int, default=32, help="requests in flight (default 32)")
    g.add_argument("--pods-workers", type=int, default=None,
                   help="NUM_WORKERS of both pods (default: the bootstrap's, min(cpu_count, 4))")
    g.add_argument("--pods-modes", default=",".join(MODES), help="comma-separated subset of fqn,body")
    g.add_argument("--pods-client", choices=("raw", "aiohttp"), default="raw",
                   help="load client (default raw: minimal HTTP/1.1 on uvloop)")


def config_from_args(args: argparse.Namespace, common: CommonOptions) -> PodBenchConfig:
    """Build the config from parsed flags and the mode's defaults.

    Raises:
        ValueError: bad counts or modes.
    """
    reqs, objs, rounds = _MODE_DEFAULTS[common.mode]
    reqs = args.pods_requests if args.pods_requests is not None else reqs
    modes = tuple(m.strip() for m in args.pods_modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"unknown modes {modes}; choose from {MODES}")
    if reqs < 1 or args.pods_concurrency < 1 or (args.pods_workers is not None and args.pods_workers < 1):
        raise ValueError("requests, concurrency and workers must be >= 1")
    return PodBenchConfig(requests=reqs, objects=objs, concurrency=args.pods_concurrency,
                          rounds=common.rounds or rounds, modes=modes, workers=args.pods_workers,
                          client=args.pods_client,
                          data_parent=common.data_parent, keep_data=common.keep_data)


# -- pods --------------------------------------------------------------------------


def init_class_msg(name: str, cls: type, *, comm: str = "hpush", direct_put: bool = True,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``PUT /v1/etl`` body the official SDK's ``Etl.init_class`` sends for ``cls``."""
    from aistore.sdk.etl.etl import _get_runtime
    from aistore.sdk.etl.webserver import serialize_class

    envs = [{"name": "ETL_CLASS_PAYLOAD", "value": serialize_class(cls)}]
    envs += [{"name": k, "value": str(v)} for k, v in (env or {}).items()]
    return {"name": name, "communication": f"{comm}://", "init_timeout": "2m", "obj_timeout": "45s",
            "support_direct_put": direct_put,
            "runtime": {"image": f"aistorage/runtime_python:{_get_runtime()}", "env": envs}}


class PodProcess:
    """One pod started through the real runtime and bootstrap (as a target starts it).

    Args:
        root: data directory of the runtime (venv cache, pod dirs).
        msg: the ETL init message (:func:`init_class_msg`).
        mountpaths: where the objects the pod reads by FQN live.

    Use inside a running event loop: ``pod = await PodProcess(root, msg).start()``.
    """

    def __init__(self, root: str, msg: dict[str, Any], mountpaths: list[str] | None = None) -> None:
        from aioetl.engine.core.etl import parse_init_msg
        from aioetl.engine.target.pods import LocalProcessRuntime

        self.spec = parse_init_msg(msg)
        # the pod reads objects by FQN: their directory must be visible in its sandbox (a
        # target lends objects one by one instead, see aioetl.engine.target.storage.FqnLender; perf/bench_lend.py)
        self.read_dirs = mountpaths or []
        self.runtime = LocalProcessRuntime(root)
        self.pod: Any = None

    async def start(self) -> PodProcess:
        async def on_exit(pod: Any) -> None:
            pass

        self.pod = await self.runtime.start(self.spec, target_id="perf", target_url="http://127.0.0.1:9",
                                            secret=secrets.token_hex(4), on_exit=on_exit,
                                            read_dirs=self.read_dirs)
        return self

    @property
    def url(self) -> str:
        return str(self.pod.url)

    def pids(self) -> list[int]:
        """The pod's whole process tree (top process first)."""
        pids = [self.pod.pid]
        try:
            import psutil

            pids += [c.pid for c in psutil.Process(self.pod.pid).children(recursive=True)]
        except Exception:
            pass
        return pids

    async def stop(self) -> None:
        if self.pod is not None:
            await self.pod.stop()
            self.pod = None


# -- the client process --------------------------------------------------------------


class LoadClient:
    """The :mod:`perf.podload` process, driven over its stdin/stdout (JSON lines)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> LoadClient:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "perf.podload", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=str(_REPO_ROOT), env=env, limit=1 << 30)
        return self

    async def call(self, cmd: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
        """Send one command, return its reply.

        Raises:
            PodBenchError: the client exited, timed out or reported an error.
        """
        p = self.proc
        assert p is not None and p.stdin is not None and p.stdout is not None
        p.stdin.write((json.dumps(cmd) + "\n").encode())
        await p.stdin.drain()
        try:
            line = await asyncio.wait_for(p.stdout.readline(), timeout_s)
        except TimeoutError:
            raise PodBenchError(f"load client: no reply to {cmd.get('op')} in {timeout_s} s") from None
        if not line:
            raise PodBenchError(f"load client exited (code {await p.wait()})")
        rep: dict[str, Any] = json.loads(line)
        if not rep.get("ok"):
            raise PodBenchError(f"load client: {rep.get('error')}")
        return rep

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        with contextlib.suppress(Exception):
            assert p.stdin is not None
            p.stdin.write(b'{"op": "quit"}\n')
            await p.stdin.drain()
            p.stdin.close()
        try:
            await asyncio.wait_for(p.wait(), 10)
        except TimeoutError:
            p.kill()
            await p.wait()


# -- the benchmark -----------------------------------------------------------------------


def _make_objects(root: str, count: int, size: int) -> list[dict[str, str]]:
    """``count`` files laid out as target FQNs (``<mp>/@ais/<bck>/%ob/<obj>``)."""
    from .bench_offline import _Data

    data = _Data(size)
    bck = "pods"
    out = []
    base = os.path.join(root, "mp0", "@ais", bck, "%ob", "obj")
    os.makedirs(base, exist_ok=True)
    for i in range(count):
        fqn = os.path.join(base, f"{i:06d}")
        with open(fqn, "wb") as f:
            f.write(data.body(i))
        out.append({"path": f"{bck}/obj/{i:06d}", "fqn": fqn})
    return out


async def _bench(cfg: PodBenchConfig, root: str) -> tuple[list[Measurement], dict[str, float], dict[str, Any]]:
    from .bench_inline import AiohttpEcho, AisFastApiEcho

    classes = {"aiohttp": AiohttpEcho, "fastapi": AisFastApiEcho}
    objects = _make_objects(os.path.join(root, "data"), cfg.objects, cfg.object_size)
    env = {"NUM_WORKERS": str(cfg.workers)} if cfg.workers else {}
    pods: dict[str, PodProcess] = {}
    client = LoadClient()
    info: dict[str, Any] = {"client_loop": loop_name(), "client": f"perf.podload {cfg.client} (own process)",
                            "request": "PUT <pod>/<bck>/<obj>?etl_fqn=<PathEscape(fqn)> (fqn) or the bytes as body",
                            "ratio_definition": "A_vs_B = requests/s of A / requests/s of B within one round, "
                                                "median over rounds"}
    try:
        t0 = time.monotonic()
        for kind in cfg.pods:
            msg = init_class_msg(f"pod-{kind}-{secrets.token_hex(3)}", classes[kind], env=env)
            pods[kind] = await PodProcess(os.path.join(root, "runtime"), msg,
                                          mountpaths=[os.path.join(root, "data", "mp0")]).start()
        info["pod_start_s"] = round(time.monotonic() - t0, 2)
        from aioetl.communicators.pod.bootstrap import num_workers

        info["num_workers"] = cfg.workers or num_workers(None)
        info["pods"] = {k: {"url": p.url, "pids": p.pids(),
                            "class": f"{classes[k].__module__}.{classes[k].__qualname__}"}
                        for k, p in pods.items()}
        await client.start()
        await client.call({"op": "setup", "objects": objects})

        async def one(kind: str, mode: str, n: int) -> Measurement:
            pod = pods[kind]
            pids = pod.pids()
            cpu0 = cpu_seconds(pids)
            with RssSampler(pids) as rss:
                rep = await client.call({"op": "pass", "url": pod.url, "mode": mode, "count": n,
                                         "concurrency": cfg.concurrency, "check_every": 97, "client": cfg.client})
            cpu1 = cpu_seconds(pids)
            return Measurement.from_latencies(
                name=f"pod_{size_label(cfg.object_size)}", variant=f"{kind}_{mode}",
                object_size_bytes=cfg.object_size, concurrency=cfg.concurrency, seconds=rep["seconds"],
                latencies_s=rep["latencies_s"], peak_rss_mib=rss.peak_mib,
                server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0, client_cpu_s=rep["cpu_s"],
                extra={"pod_processes": len(pids)})

        for kind in cfg.pods:  # warm-up: connections, offload policy, uvicorn/aiohttp code paths
            for mode in cfg.modes:
                await one(kind, mode, min(cfg.requests, 8 * cfg.concurrency))

        def fn(kind: str, mode: str) -> Callable[[], Awaitable[Measurement]]:
            return lambda: one(kind, mode, cfg.requests)

        per = await interleave({f"{k}_{m}": fn(k, m) for k in cfg.pods for m in cfg.modes}, cfg.rounds)
    finally:
        await client.stop()
        for p in pods.values():
            await p.stop()
    measurements = [summarize(p) for p in per.values()]
    ratios: dict[str, float] = {}

    def ops(k: str) -> list[float]:
        return [m.objects_per_s for m in per[k]]

    for mode in cfg.modes:
        if f"aiohttp_{mode}" in per and f"fastapi_{mode}" in per:
            key = "pod_vs_aistore_fastapi" if mode == "fqn" else f"pod_vs_aistore_fastapi_{mode}"
            ratios[key] = ratio_median(ops(f"aiohttp_{mode}"), ops(f"fastapi_{mode}"))
            cpu_a = [m.server_cpu_s / m.count for m in per[f"aiohttp_{mode}"] if m.server_cpu_s]
            cpu_f = [m.server_cpu_s / m.count for m in per[f"fastapi_{mode}"] if m.server_cpu_s]
            if len(cpu_a) == len(cpu_f) == cfg.rounds:
                ratios[f"pod_cpu_fastapi_vs_aiohttp_{mode}"] = ratio_median(cpu_f, cpu_a)
    return measurements, ratios, info


def run(cfg: PodBenchConfig) -> BenchResult:
    """Write the objects, start the pods and the load client, run the passes, stop everything.

    Returns:
        one summarized record per variant, the ratios of the module docstring, and
        ``info`` (data filesystem, pod URLs and pids, NUM_WORKERS, start time).

    Raises:
        PodBenchError: a pod or the client failed, or bytes came back wrong.
        aioetl.engine.target.pods.PodError: a pod did not start.
    """
    os.makedirs(cfg.data_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="aioetl-perf-pods-", dir=cfg.data_parent)
    info: dict[str, Any] = {"data_root": root, "data_fs": filesystem_of(root)}
    try:
        measurements, ratios, binfo = run_loop(_bench(cfg, root))
        info.update(binfo)
    finally:
        if not cfg.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    return BenchResult(name=NAME, measurements=measurements, ratios=ratios, config=asdict(cfg), info=info)
