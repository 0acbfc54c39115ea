"""Cluster-level behaviour through the aistore SDK: readiness, buckets, HRW spread.

Placement is checked three independent ways for the same 1,000 objects: the
files on each target's mountpaths, a HEAD sent to every target without
following redirects (the owner answers 200, the others 307 to the owner, as
AIStore targets do for a client with a stale map), and the SDK's client-side
``Smap.get_target_for_object``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(300)]

N_OBJECTS = 1000


def test_is_ready(sdk: Any) -> None:
    assert sdk.cluster().is_ready() is True


def test_list_buckets_sees_create_and_destroy(sdk: Any, bucket_name: str) -> None:
    b = sdk.bucket(bucket_name)
    assert bucket_name not in {x.name for x in sdk.cluster().list_buckets()}
    b.create()
    try:
        listed = [x for x in sdk.cluster().list_buckets() if x.name == bucket_name]
        assert len(listed) == 1
        assert str(getattr(listed[0].provider, "value", listed[0].provider)) == "ais"
    finally:
        b.delete()
    assert bucket_name not in {x.name for x in sdk.cluster().list_buckets()}


@pytest.fixture(scope="module")
def spread(sdk: Any) -> Iterator[tuple[Any, list[str]]]:  # type: ignore[no-untyped-def]
    b = sdk.bucket(f"spread-{os.getpid()}").create(exist_ok=True)
    names = [f"shard-{i % 10}/item-{i:05d}.bin" for i in range(N_OBJECTS)]
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda n: b.object(n).get_writer().put_content(n.encode() * 3), names))
    yield b, names
    b.delete(missing_ok=True)


def files_per_target(data_dir: str, bck: str) -> dict[str, set[str]]:
    """Object names found under ``<data>/targets/<tid>/mp*/@ais/<bck>/%ob/``, per target id."""
    out: dict[str, set[str]] = {}
    troot = os.path.join(data_dir, "targets")
    for tid in sorted(os.listdir(troot)):
        names: set[str] = set()
        for mp in sorted(os.listdir(os.path.join(troot, tid))):
            top = os.path.join(troot, tid, mp, "@ais", bck, "%ob")
            for root, _dirs, files in os.walk(top):
                names.update(os.path.relpath(os.path.join(root, f), top) for f in files)
        out[tid] = names
    return out


def test_hrw_spread_on_disk(sdk: Any, cluster: Any, spread: tuple[Any, list[str]]) -> None:
    b, names = spread
    smap = sdk.cluster().get_info()
    assert len(smap.tmap) == 3
    per = files_per_target(cluster.data_dir, b.name)
    assert set(per) == set(smap.tmap)
    everywhere = [n for tid in per for n in per[tid]]
    assert sorted(everywhere) == sorted(names), "each object exactly once, on one target"
    for tid, held in per.items():
        share = len(held) / N_OBJECTS
        assert 0.20 <= share <= 0.47, f"target {tid} holds {share:.1%}"
        for n in held:
            assert smap.get_target_for_object(b.object(n).uname).daemon_id == tid


def test_hrw_owner_answers_others_redirect(sdk: Any, spread: tuple[Any, list[str]]) -> None:
    b, names = spread
    smap = sdk.cluster().get_info()
    targets = {tid: node.public_net.direct_url for tid, node in smap.tmap.items()}
    by_netloc = {urlsplit(u).netloc: tid for tid, u in targets.items()}
    sess = requests.Session()

    def owner(name: str) -> tuple[str, str]:
        path = f"/v1/objects/{b.name}/{quote(name)}"
        owners, redirects = [], set()
        for tid, url in targets.items():
            r = sess.head(url + path, allow_redirects=False, timeout=30)
            if r.status_code == 200:
                owners.append(tid)
            elif r.status_code == 307:
                redirects.add(by_netloc[urlsplit(r.headers["Location"]).netloc])
            else:
                return name, f"unexpected {r.status_code} from {tid}"
        if len(owners) != 1 or redirects != set(owners):
            return name, f"owners {owners}, redirected to {redirects}"
        return name, owners[0]

    with sess, ThreadPoolExecutor(16) as ex:
        rows = list(ex.map(owner, names))
    bad = [(n, o) for n, o in rows if o not in targets]
    assert not bad, f"{len(bad)} objects without exactly one owner, e.g. {bad[:3]}"
    counts = Counter(o for _, o in rows)
    assert set(counts) == set(targets)
    for tid, c in counts.items():
        assert 0.20 <= c / N_OBJECTS <= 0.47, f"target {tid} owns {c}"
    mism = [n for n, o in rows if smap.get_target_for_object(b.object(n).uname).daemon_id != o]
    assert not mism, f"SDK HRW disagrees with the targets for {mism[:3]}"


# -- job listings and node performance (SDK cluster().list_jobs_status / list_running_jobs / get_performance)


def _start_copy(sdk: Any, src: Any, dst_name: str) -> str:
    """A plain copy-bck job (no ETL) over the ``spread`` bucket: the SDK's ``bucket.copy``."""
    return src.copy(to_bck=sdk.bucket(dst_name))


def test_list_jobs_status_lists_finished_jobs_as_aistore(sdk: Any, spread: tuple[Any, list[str]]) -> None:
    b, _ = spread
    job = _start_copy(sdk, b, f"cp-{os.getpid()}")
    try:
        assert sdk.job(job).wait(timeout=120).success
        all_ = sdk.cluster().list_jobs_status()
        mine = [s for s in all_ if s.uuid == job]
        assert len(mine) == 1, [s.uuid for s in all_]
        assert mine[0].end_time > 0 and not mine[0].aborted and mine[0].err == ""
        assert [s.uuid for s in sdk.cluster().list_jobs_status(job_kind="copy-bck") if s.uuid == job] == [job]
        assert not [s for s in sdk.cluster().list_jobs_status(job_kind="etl-bck") if s.uuid == job]
        tid = next(iter(sdk.cluster().get_info().tmap))
        assert [s.uuid for s in sdk.cluster().list_jobs_status(target_id=tid) if s.uuid == job] == [job]
        assert all(s.uuid != job for s in sdk.cluster().list_running_jobs())
    finally:
        sdk.bucket(f"cp-{os.getpid()}").delete(missing_ok=True)


def _slow_class() -> Any:
    """An ``aistore[etl]`` ETL server class taking 50 ms per object (sent by value)."""
    import sys
    import time

    import cloudpickle
    from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    class SlowCopy(FastAPIServer):
        def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
            time.sleep(0.05)
            return data

    return SlowCopy


def test_list_running_jobs_names_kind_and_id(sdk: Any, endpoint: str) -> None:
    name = f"run-list-{os.getpid() % 100000}"
    b = sdk.bucket(f"rl-src-{os.getpid()}").create(exist_ok=True)
    dst = sdk.bucket(f"rl-dst-{os.getpid()}")
    try:
        for i in range(60):
            b.object(f"o{i}").get_writer().put_content(b"x" * 100)
        sdk.etl(name).init_class()(_slow_class())
        job = b.transform(etl_name=name, to_bck=dst, num_workers=1)
        running = sdk.cluster().list_running_jobs()
        assert f"etl-bck[{job}]" in running, running
        assert f"etl-bck[{job}]" in sdk.cluster().list_running_jobs(job_kind="etl-bck")
        assert not [r for r in sdk.cluster().list_running_jobs(job_kind="copy-bck") if job in r]
        assert [s.uuid for s in sdk.cluster().list_jobs_status() if s.uuid == job] == [job]
        sdk.job(job).abort()
        sdk.job(job).wait(timeout=60)
        st = [s for s in sdk.cluster().list_jobs_status() if s.uuid == job]
        assert st and st[0].aborted
    finally:
        try:
            sdk.etl(name).delete()
        except Exception:
            pass
        dst.delete(missing_ok=True)
        b.delete(missing_ok=True)


def test_get_performance_answers_per_target(sdk: Any, cluster: Any) -> None:
    perf = sdk.cluster().get_performance()
    tmap = sdk.cluster().get_info().tmap
    assert set(perf) == set(tmap)
    for tid, doc in perf.items():
        assert doc["snode"]["daemon_id"] == tid
        assert doc["snode"]["public_net"]["direct_url"] == tmap[tid].public_net.direct_url
        mps = doc["capacity"]["mountpaths"]
        assert mps and all(m["cdf"]["avail"] > 0 for m in mps.values())
        assert all(os.path.commonpath([p, cluster.data_dir]) == cluster.data_dir for p in mps)
        assert int(doc["smap_version"]) >= 1 and "sys_info" in doc and "tracker" in doc
