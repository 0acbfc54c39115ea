"""Jobs and ETLs across restarts, driven through the aistore SDK on clusters of their own.

- A whole cluster stopped and started again on the same data root: a finished job
  answers ``status``/``get_details``/``wait`` as before; a job that was running reads
  aborted with the reason; the ETL is ``Running`` again on every target.
- One target SIGKILLed mid-job and restarted alone within a second: the job fails
  with a reason naming the target (never a success with the target's share missing),
  and the ETL gets its pod back on the restarted target.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle
import pytest
import requests
from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer as AisFastAPIServer

from aioetl.engine.node.launcher import LocalCluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.timeout(300)]


class Upper(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return data.upper()


class SlowUpper(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        time.sleep(0.03)
        return data.upper()


@pytest.fixture
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A data root on tmpfs when there is one (as tests/conftest.py does)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = tempfile.mkdtemp(prefix="aioetl-restart-", dir="/dev/shm")
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        yield str(tmp_path_factory.mktemp("restart"))


def sdk(endpoint: str) -> Any:
    from conftest import make_sdk_client

    return make_sdk_client(endpoint)


def put_objects(b: Any, n: int, prefix: str) -> dict[str, bytes]:
    objs = {f"{prefix}{i:04d}.txt": f"object {i} of {prefix} ".encode() * 20 for i in range(n)}
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda kv: b.object(kv[0]).get_writer().put_content(kv[1]), objs.items()))
    return objs


def done_objects(job: Any) -> int:
    return sum(s.stats.objects + s.stats.out_objects for s in job.get_details().list_snapshots())


def etl_stage_per_target(c: LocalCluster, name: str) -> dict[str, str]:
    """What each target itself says of ETL ``name`` (``""`` if it has none)."""
    out = {}
    for t in c.targets:
        got = {i["id"]: i["stage"] for i in requests.get(f"{t.url}/v1/etl", timeout=10).json()}
        out[t.node_id] = got.get(name, "")
    return out


def wait_etl_running(client: Any, c: LocalCluster, name: str, timeout_s: float = 120) -> list[str]:
    """Poll until the gateway and every target say Running; returns the gateway stages seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        stage = next(i.stage for i in client.cluster().list_etls(stages=["Running", "Initializing", "Aborted"])
                     if i.id == name)
        if not seen or seen[-1] != stage:
            seen.append(stage)
        per = etl_stage_per_target(c, name)
        if stage == "Running":
            assert set(per.values()) == {"Running"}, f"gateway says Running while targets say {per}"
            return seen
        assert stage != "Aborted" or time.monotonic() < deadline, f"ETL aborted: {client.etl(name).view()}"
        assert time.monotonic() < deadline, f"ETL not Running after {timeout_s}s: stages {seen}, targets {per}"
        time.sleep(0.2)


def check_inline_everywhere(client: Any, b: Any, objs: dict[str, bytes], etl: str) -> None:
    from aistore.sdk.etl import ETLConfig

    for name in list(objs)[:20]:  # 20 names spread over every target
        assert b.object(name).get_reader(etl=ETLConfig(etl)).read_all() == objs[name].upper(), name


def test_cluster_restart_keeps_finished_jobs_and_aborts_running_ones(data_dir: str) -> None:
    c = LocalCluster(targets=2, data_dir=data_dir, port=0)
    c.start()
    try:
        client = sdk(c.endpoint)
        b = client.bucket("rs-src").create()
        objs = put_objects(b, 400, "o-")
        client.etl("rs-upper").init_class()(Upper)
        client.etl("rs-slow").init_class()(SlowUpper)
        done = b.transform(etl_name="rs-upper", to_bck=client.bucket("rs-dst1"))
        assert client.job(done).wait(timeout=120).success
        st1 = client.job(done).status()
        det1 = client.job(done).get_details()
        snaps1 = sorted((s.end_time, s.stats.objects, s.stats.out_objects, s.stats.in_objects)
                        for s in det1.list_snapshots())
        assert sum(s[1] + s[2] for s in snaps1) == 400

        running = b.transform(etl_name="rs-slow", to_bck=client.bucket("rs-dst2"), num_workers=1)
        rj = client.job(running)
        deadline = time.monotonic() + 60
        while done_objects(rj) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim = c.targets[0].node_id
        os.kill(c.targets[0].pid, signal.SIGKILL)  # the scenario: a target dies first
        c.stop()

        c2 = LocalCluster(data_dir=data_dir, port=0)
        c2.start()
        c = c2
        client = sdk(c.endpoint)
        b = client.bucket("rs-src")
        # the finished job answers as before
        st2 = client.job(done).status()
        assert (st2.uuid, st2.err, st2.aborted, st2.end_time) == (st1.uuid, st1.err, st1.aborted, st1.end_time)
        assert client.job(done).wait(timeout=10).success
        det2 = client.job(done).get_details()
        assert sorted((s.end_time, s.stats.objects, s.stats.out_objects, s.stats.in_objects)
                      for s in det2.list_snapshots()) == snaps1
        # the running one reads aborted, with the reason; wait() ends with a failure, not 404
        res = client.job(running).wait(timeout=10)
        assert not res.success
        st = client.job(running).status()
        # the gateway recorded the lost target if it saw it before going down, else the restart
        assert st.aborted and ("restarted while the job was running" in st.err or victim in st.err), st.err
        snaps = client.job(running).get_details().list_snapshots()
        assert len(snaps) == 2 and all(s.aborted for s in snaps)
        # both ETLs are Running again on every target, never stuck Initializing
        for name in ("rs-upper", "rs-slow"):
            wait_etl_running(client, c, name)
        check_inline_everywhere(client, b, objs, "rs-upper")
        # and a new job runs to success
        again = b.transform(etl_name="rs-upper", to_bck=client.bucket("rs-dst3"))
        assert client.job(again).wait(timeout=120).success
        got = {e.name for e in client.bucket("rs-dst3").list_all_objects()}
        assert got == set(objs)
    finally:
        c.stop()


def test_target_restarted_alone_mid_job_fails_the_job_and_gets_its_pod_back(data_dir: str) -> None:
    with LocalCluster(targets=2, data_dir=data_dir, port=0) as c:
        client = sdk(c.endpoint)
        b = client.bucket("ra-src").create()
        objs = put_objects(b, 300, "r-")
        client.etl("ra-slow").init_class(comm_type="ws")(SlowUpper)
        dst = client.bucket("ra-dst")
        job = b.transform(etl_name="ra-slow", to_bck=dst, num_workers=1)
        j = client.job(job)
        deadline = time.monotonic() + 60
        while done_objects(j) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim = c.targets[0].node_id
        c.restart_target(victim)  # SIGKILL, then start it again at once
        res = j.wait(timeout=90)
        assert not res.success, "a job whose target lost its share must not succeed"
        st = j.status()
        assert st.aborted and victim in st.err, st.err
        # whatever landed is complete
        for e in dst.list_all_objects():
            assert dst.object(e.name).get_reader().read_all() == objs[e.name].upper(), e.name
        # the ETL is Running again, on the restarted target too
        seen = wait_etl_running(client, c, "ra-slow")
        assert seen[-1] == "Running"
        check_inline_everywhere(client, b, objs, "ra-slow")
        job2 = b.transform(etl_name="ra-slow", to_bck=client.bucket("ra-dst2"))
        assert client.job(job2).wait(timeout=120).success
        assert {e.name for e in client.bucket("ra-dst2").list_all_objects()} == set(objs)
