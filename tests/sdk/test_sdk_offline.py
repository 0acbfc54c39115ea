"""Offline transforms end to end: ``bucket.transform``, ``objects().transform``, jobs.

A real 3-target cluster (the session ``cluster``), real pods, the official SDK.
Every output is compared byte for byte with the transform applied locally.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle
import pytest
import requests
from aistore.sdk.errors import AISError
from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer as AisFastAPIServer

from aioetl.communicators import AiohttpServer
from aioetl.engine.node.launcher import LocalCluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(600)]

N_OBJECTS = 2000


def local_transform(data: bytes) -> bytes:
    return hashlib.sha256(data).digest() + data[:64][::-1]


class Sha(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return hashlib.sha256(data).digest() + data[:64][::-1]


class ShaFromPath(AisFastAPIServer):
    def transform(self, data: Any, path: str, etl_args: str) -> bytes:
        if isinstance(data, str):  # direct_file_access: a path
            with open(data, "rb") as f:
                data = f.read()
        return hashlib.sha256(data).digest() + data[:64][::-1]


class ShaStream(AisFastAPIServer):
    def transform_stream(self, reader: Any, path: str, etl_args: str) -> Iterator[bytes]:
        h = hashlib.sha256()
        head = b""
        while True:
            chunk = reader.read(65536)
            if not chunk:
                break
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
            h.update(chunk)
        yield h.digest() + head[::-1]


class Rev(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return data[::-1]


class FailSome(AisFastAPIServer):
    """Raises for objects whose name ends with 0 (10% of o-NNNN)."""

    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        if path.rsplit(".", 1)[0].endswith("0"):
            raise ValueError(f"refusing {path}")
        return hashlib.sha256(data).digest() + data[:64][::-1]


class Slow(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        time.sleep(0.05)
        return data


class Hang(AiohttpServer):
    """Our aiohttp pod: a slow transform runs in a thread, so only the hung object waits."""

    transform_in_thread = True

    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        if path.endswith("o-0005.bin"):
            time.sleep(30)
        return data


@pytest.fixture(scope="module")
def client(endpoint):  # type: ignore[no-untyped-def]
    from conftest import make_sdk_client

    return make_sdk_client(endpoint)


@pytest.fixture(scope="module")
def src(client) -> tuple[Any, dict[str, bytes]]:  # type: ignore[no-untyped-def]
    """2,000 objects, 1 KiB to 4 MiB (mostly small), in nested names."""
    rng = random.Random(7)
    objs: dict[str, bytes] = {}
    for i in range(N_OBJECTS):
        size = rng.choice([4 << 20, 1 << 20, 300 << 10]) if i % 250 == 0 else rng.randint(1024, 16 << 10)
        objs[f"d{i % 7}/o-{i:04d}.bin"] = rng.randbytes(size)
    b = client.bucket("offline-src").create(exist_ok=True)
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda kv: b.object(kv[0]).get_writer().put_content(kv[1]), objs.items()))
    return b, objs


_n = iter(range(10**6))


@pytest.fixture
def names(client) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """ETL names to use; deleted afterwards."""
    k = next(_n)
    out = [f"off-{k}-{i}" for i in range(3)]
    yield out
    for n in out:
        try:
            client.etl(n).delete()
        except AISError:
            pass


def check_all(dst: Any, objs: dict[str, bytes], fn: Any = local_transform, rename: Any = lambda n: n) -> None:
    listed = {e.name for e in dst.list_all_objects()}
    want = {rename(n) for n in objs}
    assert listed == want, f"missing {len(want - listed)}, extra {len(listed - want)}"

    def one(kv: tuple[str, bytes]) -> bool:
        return dst.object(rename(kv[0])).get_reader().read_all() == fn(kv[1])

    with ThreadPoolExecutor(16) as ex:
        bad = [n for n, ok in zip(objs, ex.map(one, objs.items()), strict=True) if not ok]
    assert not bad, f"{len(bad)} outputs differ, e.g. {bad[:3]}"


@pytest.mark.parametrize(
    "cls,comm,direct_put,fqn",
    [
        (Sha, "hpush", False, False),
        (Sha, "hpush", True, False),
        (ShaFromPath, "hpush", True, True),
        (Sha, "hpull", True, False),
        (Sha, "hpull", False, False),
        (Sha, "ws", True, False),
        (ShaFromPath, "ws", True, True),
        (ShaStream, "hpush", True, False),
        (ShaStream, "hpull", False, False),
    ],
)
def test_bucket_transform_every_comm_type(client, src, names, cls, comm, direct_put, fqn) -> None:  # type: ignore[no-untyped-def]
    b, objs = src
    client.etl(names[0]).init_class(comm_type=comm, direct_put=direct_put, direct_file_access=fqn)(cls)
    dst = client.bucket(f"dst-{names[0]}")  # does not exist yet: the job creates it
    job = b.transform(etl_name=names[0], to_bck=dst)
    res = client.job(job).wait(timeout=300)
    assert res.success, res
    check_all(dst, objs)
    snaps = client.job(job).get_details().list_snapshots()
    assert sum(s.stats.objects + s.stats.out_objects for s in snaps) == N_OBJECTS
    dst.delete()


def test_ext_prepend_and_listrange(client, src, names) -> None:  # type: ignore[no-untyped-def]
    b, objs = src
    client.etl(names[0]).init_class()(Sha)
    dst = client.bucket(f"dst-{names[0]}")
    job = b.transform(etl_name=names[0], to_bck=dst, ext={"bin": "out"}, prepend="pre/", prefix_filter="d3/")
    assert client.job(job).wait(timeout=300).success
    sub = {k: v for k, v in objs.items() if k.startswith("d3/")}
    check_all(dst, sub, rename=lambda n: "pre/" + n[:-3] + "out")
    dst.delete()

    dst2 = client.bucket(f"dst2-{names[0]}").create()
    picked = sorted(objs)[:25]
    job = b.objects(obj_names=picked).transform(to_bck=dst2, etl_name=names[0])
    client.job(job).wait_for_idle(timeout=120)
    check_all(dst2, {k: objs[k] for k in picked})
    dst2.delete()

    dst3 = client.bucket(f"dst3-{names[0]}").create()
    job = b.objects(obj_template="d1/o-{0001..0099}.bin").transform(to_bck=dst3, etl_name=names[0])
    client.job(job).wait_for_idle(timeout=120)
    check_all(dst3, {k: v for k, v in objs.items() if k.startswith("d1/") and int(k[-8:-4]) < 100})
    dst3.delete()


def test_pipeline_of_two_etls(client, src, names) -> None:  # type: ignore[no-untyped-def]
    b, objs = src
    client.etl(names[0]).init_class(comm_type="ws")(Sha)
    client.etl(names[1]).init_class(comm_type="hpush")(Rev)
    dst = client.bucket(f"dst-{names[0]}")
    job = b.transform(etl_name=names[0], to_bck=dst, etl_pipeline=[names[1]], prefix_filter="d2/")
    assert client.job(job).wait(timeout=300).success
    check_all(dst, {k: v for k, v in objs.items() if k.startswith("d2/")}, fn=lambda d: local_transform(d)[::-1])
    dst.delete()


def test_errors_with_coer_capped_at_128_and_full_report(client, src, names, endpoint) -> None:  # type: ignore[no-untyped-def]
    b, objs = src
    client.etl(names[0]).init_class()(FailSome)
    dst = client.bucket(f"dst-{names[0]}")
    job = b.transform(etl_name=names[0], to_bck=dst, cont_on_err=True)
    res = client.job(job).wait(timeout=300)
    assert not res.success, "errors under coer make job.wait() report failure"
    failing = {k for k in objs if k.rsplit(".", 1)[0].endswith("0")}
    assert len(failing) == N_OBJECTS // 10
    check_all(dst, {k: v for k, v in objs.items() if k not in failing})
    errs = client.etl(names[0]).view(job_id=job).obj_errors
    assert len(errs) == 128
    assert all(e.obj_name.startswith("ais://offline-src/") for e in errs)
    report = requests.get(f"{endpoint}/v1/jobs/{job}/errors", timeout=30).text.splitlines()
    assert {json.loads(line)["obj_name"].removeprefix("ais://offline-src/") for line in report} == failing
    dst.delete()


def test_without_coer_first_error_aborts(client, src, names) -> None:  # type: ignore[no-untyped-def]
    b, _ = src
    client.etl(names[0]).init_class()(FailSome)
    dst = client.bucket(f"dst-{names[0]}")
    job = b.transform(etl_name=names[0], to_bck=dst)
    res = client.job(job).wait(timeout=120)
    assert not res.success
    st = client.job(job).status()
    assert st.aborted and "refusing" in st.err


def test_inspect_reports_errors_and_writes_nothing(client, src, names) -> None:  # type: ignore[no-untyped-def]
    b, objs = src
    client.etl(names[0]).init_class()(FailSome)
    before = len(b.list_all_objects())
    job = b.objects(obj_names=["d0/o-0010.bin", "d1/o-0001.bin", "d0/o-0070.bin"]).inspect(etl_name=names[0])
    assert client.job(job).wait_for_idle(timeout=120).success
    errs = client.etl(names[0]).view(job_id=job).obj_errors
    assert sorted(e.obj_name for e in errs) == ["ais://offline-src/d0/o-0010.bin", "ais://offline-src/d0/o-0070.bin"]
    assert len(b.list_all_objects()) == before
    assert b.object("d1/o-0001.bin").get_reader().read_all() == objs["d1/o-0001.bin"]


def test_abort_mid_job_stops_every_target_within_5s(client, src, names) -> None:  # type: ignore[no-untyped-def]
    b, _ = src
    client.etl(names[0]).init_class()(Slow)
    dst = client.bucket(f"dst-{names[0]}")
    job = b.transform(etl_name=names[0], to_bck=dst, num_workers=2)
    j = client.job(job)
    deadline = time.monotonic() + 30
    while sum(s.stats.objects + s.stats.out_objects for s in j.get_details().list_snapshots()) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    j.abort()
    while not all(s.aborted for s in j.get_details().list_snapshots()):
        assert time.monotonic() - t0 < 5, "every target must stop within 5 s"
        time.sleep(0.05)
    assert client.job(job).status().aborted
    dst.delete(missing_ok=True)


def test_pod_hang_hits_obj_timeout(client, src, names) -> None:  # type: ignore[no-untyped-def]
    b, _objs = src
    client.etl(names[0]).init_class(obj_timeout="2s")(Hang)
    dst = client.bucket(f"dst-{names[0]}")
    picked = [f"d{i % 7}/o-{i:04d}.bin" for i in range(1, 17)]  # o-0005 hangs
    job = b.objects(obj_names=picked).transform(to_bck=dst, etl_name=names[0], continue_on_error=True)
    client.job(job).wait_for_idle(timeout=120)
    errs = client.etl(names[0]).view(job_id=job).obj_errors
    assert [e.obj_name for e in errs] == ["ais://offline-src/d5/o-0005.bin"]
    assert "timeout" in errs[0].msg.lower()
    assert len(dst.list_all_objects()) == len(picked) - 1


def _pod_pids(data_dir: str, name: str) -> list[int]:
    with open(os.path.join(data_dir, "gateway", "etlmd.json")) as f:
        return [int(p["pid"]) for p in json.load(f)[name]["pods"].values()]


def test_pod_killed_mid_job_aborts_with_clear_error(client, src, names, cluster) -> None:  # type: ignore[no-untyped-def]
    b, objs = src
    client.etl(names[0]).init_class()(Slow)
    dst = client.bucket(f"dst-{names[0]}")
    job = b.transform(etl_name=names[0], to_bck=dst, num_workers=2)
    j = client.job(job)
    while sum(s.stats.objects + s.stats.out_objects for s in j.get_details().list_snapshots()) < 5:
        time.sleep(0.05)
    os.killpg(_pod_pids(cluster.data_dir, names[0])[0], signal.SIGKILL)  # a pod this test's cluster started
    res = j.wait(timeout=60)
    assert not res.success
    st = j.status()
    assert st.aborted and ("pod" in st.err or "etl" in st.err.lower())
    for e in dst.list_all_objects():  # whatever landed is complete
        src_name = e.name
        assert dst.object(e.name).get_reader().read_all() == objs[src_name]


def test_target_killed_mid_job(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import make_sdk_client

    with LocalCluster(targets=3, data_dir=str(tmp_path / "c"), port=0) as c:
        cl = make_sdk_client(c.endpoint)
        b = cl.bucket("tk-src").create()
        for i in range(150):
            b.object(f"o{i}").get_writer().put_content(os.urandom(2048))
        cl.etl("tk-slow").init_class()(Slow)
        job = b.transform(etl_name="tk-slow", to_bck=cl.bucket("tk-dst"), num_workers=1)
        j = cl.job(job)
        while sum(s.stats.objects + s.stats.out_objects for s in j.get_details().list_snapshots()) < 3:
            time.sleep(0.05)
        victim = c.targets[0]
        os.kill(victim.pid, signal.SIGKILL)  # a target process this test started
        t0 = time.monotonic()
        res = j.wait(timeout=60)
        assert not res.success and time.monotonic() - t0 < 30
        st = j.status()
        assert st.aborted and victim.node_id in st.err
