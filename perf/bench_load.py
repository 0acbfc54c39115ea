"""Load figure of issue #11: many clients for a while plus an ETL job, 0 errors, no growth.

``python -m perf.bench_load --out DIR [--clients 48] [--seconds 60] [--targets 3]``

Starts a LocalCluster (data root under ``/dev/shm`` unless ``--data-dir`` says
otherwise), then for ``--seconds``:

- ``--clients`` threads, each with its own aistore SDK client (no retries: every
  failure counts), loop over PUT of one of its own small objects, GET of it
  (checked byte for byte), HEAD of it, GET of a shared pre-filled object, and
  every 10th round a list of its own prefix. Each client overwrites a fixed set
  of names, so the bucket does not grow with the run.
- one more thread runs offline ETL jobs (the echo image over ws, direct put)
  back to back, from a pre-filled source bucket to one destination, and checks
  every output of each job is there.

An error is any exception or non-2xx answer (the SDK raises on those), a wrong
GET body, or a job that failed or left an output missing. For every node
process (gateway and targets, not their pods) it records RSS (``statm``) and the
number of open descriptors (``/proc/<pid>/fd``) at start (after set-up, before
load), middle and end (right after the load stops, and again after a short
settle). Standalone (not in :data:`perf.BENCHMARKS`): it measures robustness,
not a ratio. Writes ``DIR/results.json``::

    {"machine": machine_info(data_root), "config": {...}, "wall_s": float,
     "errors": int, "error_samples": [...], "ops": {op: count}, "requests": int,
     "requests_per_s": float, "jobs": {"completed", "failed", "objects_each"},
     "nodes": {node_id: {"pid", "samples": {"start"|"middle"|"end"|"settled":
               {"rss_mib", "fds", "t_s"}}, "rss_growth_mib", "fd_growth"}}}

``*_growth`` are end minus start and settled minus middle. Exit status 0 when
there were no errors, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from aioetl.engine.node.launcher import LocalCluster

from .common import MiB, _statm_rss, default_data_parent, delete_etls, filesystem_of, machine_info, write_results

ECHO_IMAGE = "aistorage/transformer_echo:latest"
LOAD_BCK, JOB_SRC, JOB_DST = "load", "load-job-src", "load-job-dst"


@dataclass(kw_only=True)
class LoadConfig:
    clients: int = 48
    seconds: float = 60.0
    targets: int = 3
    object_size: int = 4096
    names_per_client: int = 20
    shared_objects: int = 200
    job_objects: int = 500
    comm: str = "ws"
    settle_s: float = 5.0
    out_dir: str = "perf-out"
    data_parent: str = ""
    keep_data: bool = False


def _client(endpoint: str) -> Any:
    """An aistore SDK client that never retries: a failure is an error, not hidden."""
    from aistore.sdk import Client
    from aistore.sdk.retry_config import RetryConfig
    from tenacity import Retrying, stop_after_attempt
    from urllib3.util.retry import Retry

    rc = RetryConfig(http_retry=Retry(total=0, connect=0, read=0, status=0),
                     network_retry=Retrying(stop=stop_after_attempt(1), reraise=True))
    return Client(endpoint, retry_config=rc, timeout=(10, 120))


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _sample(pids: dict[str, int], t0: float) -> dict[str, dict[str, Any]]:
    out = {}
    for node, pid in pids.items():
        rss = _statm_rss(pid)
        out[node] = {"rss_mib": None if rss is None else round(rss / MiB, 1), "fds": _fds(pid),
                     "t_s": round(time.monotonic() - t0, 1)}
    return out


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.errors = 0
        self.samples: list[str] = []

    def ok(self, op: str) -> None:
        with self.lock:
            self.ops[op] += 1

    def error(self, op: str, what: str) -> None:
        with self.lock:
            self.ops[op] += 1
            self.errors += 1
            if len(self.samples) < 20:
                self.samples.append(f"{op}: {what}"[:300])


def _run_op(stats: _Stats, op: str, fn: Any) -> Any:
    try:
        r = fn()
    except Exception as e:
        stats.error(op, f"{type(e).__name__}: {e}")
        return None
    stats.ok(op)
    return r


def _client_loop(idx: int, cfg: LoadConfig, endpoint: str, stats: _Stats, stop: threading.Event) -> None:
    client = _client(endpoint)
    bck = client.bucket(LOAD_BCK)
    rnd = 0
    while not stop.is_set():
        name = f"c{idx:03d}/k{rnd % cfg.names_per_client:03d}"
        body = secrets.token_bytes(cfg.object_size)
        _run_op(stats, "put", lambda: bck.object(name).get_writer().put_content(body))
        got = _run_op(stats, "get", lambda: bck.object(name).get_reader().read_all())
        if got is not None and got != body:
            stats.error("get-check", f"{name}: {len(got)} bytes, not what was put")
        _run_op(stats, "head", lambda: bck.object(name).head())
        shared = f"shared/{(idx * 7 + rnd) % cfg.shared_objects:04d}"
        _run_op(stats, "get", lambda: bck.object(shared).get_reader().read_all())
        if rnd % 10 == 9:
            listed = _run_op(stats, "list", lambda: [e.name for e in bck.list_all_objects(prefix=f"c{idx:03d}/")])
            if listed is not None and len(listed) != min(rnd + 1, cfg.names_per_client):
                stats.error("list-check", f"c{idx:03d}/: {len(listed)} objects listed")
        rnd += 1


def _job_loop(cfg: LoadConfig, endpoint: str, etl: str, stats: _Stats, stop: threading.Event,
              jobs: dict[str, int]) -> None:
    client = _client(endpoint)
    src, dst = client.bucket(JOB_SRC), client.bucket(JOB_DST)
    while not stop.is_set():
        try:
            job = src.transform(etl_name=etl, to_bck=dst, cont_on_err=False)
            client.job(job).wait(timeout=600)
            n = len(dst.list_all_objects())
            if n != cfg.job_objects:
                raise RuntimeError(f"{n} of {cfg.job_objects} outputs in {JOB_DST}")
            jobs["completed"] += 1
            stats.ok("job")
        except Exception as e:
            jobs["failed"] += 1
            stats.error("job", f"{type(e).__name__}: {e}")


def _fill(endpoint: str, bck_name: str, names: list[str], size: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = _client(endpoint)
    bck = client.bucket(bck_name).create(exist_ok=True)
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda n: bck.object(n).get_writer().put_content(secrets.token_bytes(size)), names))


def run(cfg: LoadConfig) -> dict[str, Any]:
    os.makedirs(cfg.data_parent, exist_ok=True)
    root = tempfile.mkdtemp(prefix="aioetl-load-", dir=cfg.data_parent)
    t_wall = time.monotonic()
    res: dict[str, Any] = {"machine": machine_info(root), "config": asdict(cfg), "data_root": root,
                           "data_fs": filesystem_of(root)}
    cluster = LocalCluster(targets=cfg.targets, data_dir=os.path.join(root, "cluster"), port=0, log_level="warning")
    etls: dict[str, str] = {}
    try:
        cluster.start()
        ep = cluster.endpoint
        pids = {n.node_id: n.pid for n in cluster.nodes()}
        _fill(ep, LOAD_BCK, [f"shared/{i:04d}" for i in range(cfg.shared_objects)], cfg.object_size)
        _fill(ep, JOB_SRC, [f"j/{i:05d}" for i in range(cfg.job_objects)], cfg.object_size)
        _client(ep).bucket(JOB_DST).create(exist_ok=True)
        etls["echo"] = f"load-echo-{secrets.token_hex(3)}"
        _client(ep).etl(etls["echo"]).init(image=ECHO_IMAGE, comm_type=cfg.comm, direct_put=True,
                                           init_timeout="2m", obj_timeout="60s")
        stats, stop = _Stats(), threading.Event()
        jobs = {"completed": 0, "failed": 0, "objects_each": cfg.job_objects}
        t0 = time.monotonic()
        samples = {"start": _sample(pids, t0)}
        threads = [threading.Thread(target=_client_loop, args=(i, cfg, ep, stats, stop), daemon=True)
                   for i in range(cfg.clients)]
        threads.append(threading.Thread(target=_job_loop, args=(cfg, ep, etls["echo"], stats, stop, jobs),
                                        daemon=True))
        for t in threads:
            t.start()
        stop.wait(cfg.seconds / 2)
        samples["middle"] = _sample(pids, t0)
        stop.wait(max(0.0, t0 + cfg.seconds - time.monotonic()))
        stop.set()
        load_s = time.monotonic() - t0
        for t in threads:
            t.join(timeout=660)
        drained_s = time.monotonic() - t0
        samples["end"] = _sample(pids, t0)
        time.sleep(cfg.settle_s)
        samples["settled"] = _sample(pids, t0)
        ops = dict(stats.ops)
        requests = sum(v for k, v in ops.items() if k in ("put", "get", "head", "list"))
        res.update({
            "errors": stats.errors, "error_samples": stats.samples, "ops": ops, "requests": requests,
            "load_s": round(load_s, 2), "drained_s": round(drained_s, 2),
            "requests_per_s": round(requests / drained_s, 1), "jobs": jobs,
            "threads_still_running": sum(t.is_alive() for t in threads),
            "nodes": {},
        })
        for node, pid in pids.items():
            s = {k: v[node] for k, v in samples.items()}

            def d(a: str, b: str, key: str) -> float | None:
                x, y = s[a][key], s[b][key]
                return None if x is None or y is None else round(y - x, 1)

            res["nodes"][node] = {"pid": pid, "samples": s,
                                  "rss_growth_mib": {"start_to_end": d("start", "end", "rss_mib"),
                                                     "middle_to_settled": d("middle", "settled", "rss_mib")},
                                  "fd_growth": {"start_to_end": d("start", "end", "fds"),
                                                "middle_to_settled": d("middle", "settled", "fds")}}
        res["dead_nodes"] = [n.node_id for n in cluster.dead_nodes()]
    finally:
        try:
            if etls and cluster.gateway is not None:
                delete_etls(cluster.endpoint, etls)
        finally:
            cluster.stop()
            if not cfg.keep_data:
                shutil.rmtree(root, ignore_errors=True)
    res["wall_s"] = round(time.monotonic() - t_wall, 2)
    return res


def _table(res: dict[str, Any]) -> str:
    lines = ["| node | when | RSS MiB | fds | t s |", "|---|---|---:|---:|---:|"]
    for node, n in res["nodes"].items():
        for when, v in n["samples"].items():
            lines.append(f"| {node} | {when} | {v['rss_mib']} | {v['fds']} | {v['t_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_load", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (results.json goes there)")
    p.add_argument("--clients", type=int, default=48)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--targets", type=int, default=3)
    p.add_argument("--object-size", type=int, default=4096, help="bytes per object")
    p.add_argument("--job-objects", type=int, default=500, help="objects each ETL job transforms")
    p.add_argument("--comm", default="ws", choices=["ws", "hpush", "hpull"], help="the ETL's comm type")
    p.add_argument("--data-dir", default=None, help=f"parent of the data root (default {default_data_parent()})")
    p.add_argument("--keep-data", action="store_true")
    a = p.parse_args(argv)
    if a.clients < 1 or a.seconds <= 0 or a.targets < 1:
        p.error("--clients, --seconds and --targets must be positive")
    cfg = LoadConfig(clients=a.clients, seconds=a.seconds, targets=a.targets, object_size=a.object_size,
                     job_objects=a.job_objects, comm=a.comm, out_dir=a.out,
                     data_parent=a.data_dir or default_data_parent(), keep_data=a.keep_data)
    try:
        res = run(cfg)
    except Exception as e:
        traceback.print_exc()
        write_results(cfg.out_dir, {"config": asdict(cfg), "error": f"{type(e).__name__}: {e}"})
        return 1
    path = write_results(cfg.out_dir, res)
    print(f"<!-- {res['machine']['cpu_count']} CPUs, data on {res['data_fs'].get('fstype', '?')} -->")
    print(f"errors {res['errors']}, requests {res['requests']} ({res['requests_per_s']}/s), ops {res['ops']}, "
          f"jobs {res['jobs']}")
    print(_table(res))
    for s in res["error_samples"]:
        print("  error:", s)
    print(f"\nresults: {path}", file=sys.stderr)
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
