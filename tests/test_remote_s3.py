"""Remote ``aws://`` buckets against a real S3 server (issue #13).

A real ``rclone serve s3`` on 127.0.0.1 (:mod:`s3server`), a counting proxy in
front of it (so a test can prove what reached the remote), a real 3-target
cluster whose nodes get the ``AWS_*`` environment, real pods and the official
SDK. Every byte read back is compared with what was put or computed locally;
what is in the remote is checked with boto3, not through aioetl.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
from aistore.sdk.errors import AISError
from aistore.sdk.list_object_flag import ListObjectFlag

from aioetl.communicators import AiohttpServer
from aioetl.engine.node.launcher import LocalCluster
from tests.conftest import fast_data_dir, make_sdk_client
from tests.s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, S3Server

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(900)]


def sha_rev(data: bytes) -> bytes:
    return hashlib.sha256(data).digest() + data[::-1]


class ShaRev(AiohttpServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return hashlib.sha256(data).digest() + data[::-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``{"s3", "proxy", "cluster", "client", "root"}``: the S3 server, the proxy the nodes
    talk to, a 3-target cluster and an SDK client on it."""
    for root in fast_data_dir(tmp_path_factory, "s3"):
        with S3Server(os.path.join(root, "s3")) as s3:
            proxy = FaultProxy(s3.endpoint).start()
            creds = os.path.join(root, "aws-credentials")
            with open(creds, "w") as f:  # profiles for per-bucket credentials (extra.aws.profile)
                f.write(f"[good]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
                        f"[wrongkeys]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = wrong-{SECRET_KEY}\n")
            try:
                with LocalCluster(targets=3, data_dir=os.path.join(root, "cluster"),
                                  env={**s3.env(proxy.endpoint), "AWS_SHARED_CREDENTIALS_FILE": creds,
                                       "AWS_CONFIG_FILE": os.path.join(root, "aws-config-none")}) as c:
                    yield {"s3": s3, "proxy": proxy, "cluster": c, "client": make_sdk_client(c.endpoint),
                           "root": root}
            finally:
                proxy.stop()


def fill(s3: S3Server, bucket: str, objs: dict[str, bytes]) -> None:
    """Create ``bucket`` in the S3 server and put ``objs`` there (boto3, not through aioetl)."""
    s3.make_bucket(bucket)
    s3.put_many(bucket, objs)


def remote_keys(s3: S3Server, bucket: str) -> set[str]:
    out: set[str] = set()
    for page in s3.boto3().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update(o["Key"] for o in page.get("Contents", []))
    return out


def mixed_objects(n: int, seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    names = ["plain", "dir/sub/deep", "ünïcødé/名前", "with space/and+plus", "dots.in.name.bin"]
    out = {}
    for i in range(n):
        size = rnd.choice([0, 1, 100, 4096, 70_000, 300_000]) if i % 97 else 3_000_000
        out[f"{names[i % len(names)]}/{i:05d}"] = rnd.randbytes(size)
    return out


def gets_of(proxy: FaultProxy, bucket: str, key: str) -> int:
    return sum(1 for m, k in proxy.requests if m == "GET" and k == f"{bucket}/{key}")


def test_sdk_remote_bucket_list_get_head_put_delete_evict(env: dict[str, Any]) -> None:
    s3, proxy, client = env["s3"], env["proxy"], env["client"]
    s3.make_bucket("rb1")
    b = client.bucket("rb1", provider="aws")
    objs = mixed_objects(1000, 1)
    for k, v in objs.items():  # PUT: written through to the remote, then cached
        b.object(k).get_writer().put_content(v)
    assert remote_keys(s3, "rb1") == set(objs), "every PUT is in the remote"
    b3 = s3.boto3()
    for k in random.Random(2).sample(sorted(objs), 20):
        assert b3.get_object(Bucket="rb1", Key=k)["Body"].read() == objs[k]
    # listing: the remote's names, all cached (they were put through aioetl)
    ents = b.list_all_objects()
    assert {e.name: e.size for e in ents} == {k: len(v) for k, v in objs.items()}
    assert all(e.is_cached() for e in ents)
    # evict everything: the remote keeps them, the cache is empty
    b.evict(keep_md=True)
    assert remote_keys(s3, "rb1") == set(objs)
    deadline = time.monotonic() + 20
    while any(e.is_cached() for e in b.list_all_objects()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(e.is_cached() for e in b.list_all_objects()), "evict-remote-bck drops every cached copy"
    # cold GET fetches once, warm GET does not touch the remote
    sample = sorted(objs)[::25]
    for k in sample:
        before = gets_of(proxy, "rb1", k)
        assert b.object(k).get_reader().read_all() == objs[k]
        assert gets_of(proxy, "rb1", k) == before + 1, f"cold GET of {k} reads the remote once"
        assert b.object(k).get_reader().read_all() == objs[k]
        assert gets_of(proxy, "rb1", k) == before + 1, f"warm GET of {k} must not reach the remote"
    cached = {e.name for e in b.list_all_objects() if e.is_cached()}
    assert cached == set(sample)
    # HEAD: a cached object and a cold one (answered from the remote)
    k_cold = next(k for k in sorted(objs) if k not in cached)
    hot, cold = b.object(sample[1]).head(), b.object(k_cold).head()
    if isinstance(hot, dict) or hasattr(hot, "get"):  # SDK 1.26: the response headers
        assert int(hot["Content-Length"]) == len(objs[sample[1]]) and hot["ais-present"] == "true"
        assert int(cold["Content-Length"]) == len(objs[k_cold]) and cold["ais-present"] == "false"
    else:  # SDK 2.x: ObjectProps
        assert hot.size == len(objs[sample[1]]) and hot.present
        assert cold.size == len(objs[k_cold]) and not cold.present
    # latest sees a change made behind aioetl's back
    k = sample[2]
    b3.put_object(Bucket="rb1", Key=k, Body=b"changed behind aioetl's back")
    assert b.object(k).get_reader().read_all() == objs[k], "without latest the cached copy is served"
    assert b.object(k).get_reader(latest=True).read_all() == b"changed behind aioetl's back"
    assert b.object(k).get_reader().read_all() == b"changed behind aioetl's back"
    # evict of an object group; delete removes remote and cache
    b.objects(obj_names=sample[3:6]).evict()
    deadline = time.monotonic() + 20
    while set(sample[3:6]) & {e.name for e in b.list_all_objects() if e.is_cached()}:
        assert time.monotonic() < deadline, "evict-listrange did not finish"
        time.sleep(0.2)
    assert remote_keys(s3, "rb1") >= set(sample[3:6])
    doomed = sorted(objs)[:100]
    for k in doomed:
        b.object(k).delete()
    assert not remote_keys(s3, "rb1") & set(doomed), "DELETE removes the remote object"
    with pytest.raises(AISError) as ei:
        b.object(doomed[0]).get_reader().read_all()
    assert ei.value.status_code == 404


def test_paged_listing_and_cached_only(env: dict[str, Any]) -> None:
    s3, client = env["s3"], env["client"]
    objs = {f"p/{i:04d}": str(i).encode() for i in range(2500)}
    fill(s3, "rb2", objs)
    b = client.bucket("rb2", provider="aws")
    pages, token, names = 0, "", []
    while True:
        res = b.list_objects(page_size=700, continuation_token=token)
        names += [e.name for e in res.entries]
        pages += 1
        token = res.continuation_token
        if not token:
            break
    assert names == sorted(objs) and pages == 4
    b.object("p/0007").get_reader().read_all()
    cached = b.list_all_objects(flags=[ListObjectFlag.CACHED])
    assert [e.name for e in cached] == ["p/0007"]
    not_cached = b.list_all_objects(flags=[ListObjectFlag.NOT_CACHED], prefix="p/000")
    assert [e.name for e in not_cached] == [f"p/000{i}" for i in range(10) if i != 7]


def test_missing_bucket_and_wrong_credentials_are_4xx_at_head(env: dict[str, Any]) -> None:
    """A missing remote bucket is a 404 and wrong credentials (a bucket's own profile,
    extra.aws.profile, with a wrong secret) a 403 naming the remote's reason, at once:
    never a 5xx that the SDK would retry for 90 s. A good profile works per bucket."""
    import requests

    client, s3, cluster = env["client"], env["s3"], env["cluster"]
    t0 = time.monotonic()
    with pytest.raises(AISError) as ei:
        client.bucket("no-such-bucket", provider="aws").head()
    assert ei.value.status_code == 404
    assert "no-such-bucket" not in {x.name for x in client.cluster().list_buckets(provider="aws")}
    s3.make_bucket("rb-creds")
    s3.make_bucket("rb-creds2")
    client.bucket("rb-creds", provider="aws").head()
    url = f"{cluster.endpoint}/v1/buckets/rb-creds?provider=aws"
    r = requests.patch(url, json={"action": "set-bprops", "value": {"extra": {"aws": {"profile": "wrongkeys"}}}},
                       timeout=30)
    assert r.status_code == 403 and "SignatureDoesNotMatch" in r.text, r.text
    r = requests.patch(url, json={"action": "set-bprops", "value": {"extra": {"aws": {"profile": "nosuch"}}}},
                       timeout=30)
    assert r.status_code == 403 and "nosuch" in r.text, r.text
    r = requests.patch(url, json={"action": "set-bprops", "value": {"versioning": {"enabled": True}}}, timeout=30)
    assert r.status_code == 400 and "versioning" in r.text, r.text
    r = requests.patch(url, json={"action": "set-bprops", "value": {"extra": {"aws": {"profile": "good"}}}},
                       timeout=30)
    assert r.status_code == 200, r.text
    props = client.bucket("rb-creds", provider="aws").head()
    assert '"profile": "good"' in props["Ais-Bucket-Props"]
    client.bucket("rb-creds", provider="aws").object("k").get_writer().put_content(b"via profile")
    assert s3.boto3().get_object(Bucket="rb-creds", Key="k")["Body"].read() == b"via profile"
    assert time.monotonic() - t0 < 30, "4xx at once, not a 5xx the SDK retries for 90 s"


def test_inline_etl_over_remote_objects_cached_or_not(env: dict[str, Any]) -> None:
    s3, client = env["s3"], env["client"]
    objs = {f"in/{i:03d}.bin": os.urandom(100 + i * 37) for i in range(100)}
    fill(s3, "rb3", objs)
    b = client.bucket("rb3", provider="aws")
    etl = f"s3-inline-{os.getpid() % 10000}"
    client.etl(etl).init_class(comm_type="hpush")(ShaRev)
    try:
        from aistore.sdk.etl import ETLConfig

        for i, (k, v) in enumerate(sorted(objs.items())):
            if i % 2:
                b.object(k).get_reader().read_all()  # half are cached first
            got = b.object(k).get_reader(etl=ETLConfig(etl)).read_all()
            assert got == sha_rev(v), k
    finally:
        client.etl(etl).delete()


def _wait(client: Any, job: str, timeout: float = 600) -> None:
    client.job(job).wait(timeout=timeout)


def test_offline_aws_to_ais_ws_direct_put_10k(env: dict[str, Any]) -> None:
    s3, client, proxy = env["s3"], env["client"], env["proxy"]
    objs = {f"x/{i:05d}": os.urandom(64 + i % 512) for i in range(10_000)}
    fill(s3, "rb4", objs)
    src = client.bucket("rb4", provider="aws")
    dst = client.bucket(f"dst4-{os.getpid()}").create(exist_ok=True)
    etl = f"s3-ws-{os.getpid() % 10000}"
    client.etl(etl).init_class(comm_type="ws", direct_put=True)(ShaRev)
    try:
        n_get = sum(1 for m, _ in proxy.requests if m == "GET")
        job = src.transform(etl_name=etl, to_bck=dst, num_workers=0)
        _wait(client, job)
        st = client.job(job).get_details() if hasattr(client.job(job), "get_details") else None
        ents = {e.name: e.size for e in dst.list_all_objects()}
        assert set(ents) == set(objs)
        for k in random.Random(4).sample(sorted(objs), 300):
            assert dst.object(k).get_reader().read_all() == sha_rev(objs[k]), k
        fetched = sum(1 for m, k in proxy.requests if m == "GET" and k.startswith("rb4/x/"))
        assert fetched == 10_000, "every source object fetched once, by its owner"
        assert sum(1 for m, _ in proxy.requests if m == "GET") - n_get >= 10_000
        del st
    finally:
        client.etl(etl).delete()
        dst.delete(missing_ok=True)


def test_offline_ais_to_aws_and_aws_to_aws(env: dict[str, Any]) -> None:
    s3, client = env["s3"], env["client"]
    src = client.bucket(f"src5-{os.getpid()}").create(exist_ok=True)
    objs = {f"y/{i:04d}.bin": os.urandom(10 + i) for i in range(300)}
    for k, v in objs.items():
        src.object(k).get_writer().put_content(v)
    s3.make_bucket("rb5")
    s3.make_bucket("rb5b")
    dst = client.bucket("rb5", provider="aws")
    etl = f"s3-out-{os.getpid() % 10000}"
    client.etl(etl).init_class(comm_type="hpush")(ShaRev)
    try:
        _wait(client, src.transform(etl_name=etl, to_bck=dst))
        assert remote_keys(s3, "rb5") == set(objs)
        b3 = s3.boto3()
        for k in sorted(objs)[::10]:
            assert b3.get_object(Bucket="rb5", Key=k)["Body"].read() == sha_rev(objs[k])
        # aws:// -> aws:// (a copy job between remote buckets)
        dst2 = client.bucket("rb5b", provider="aws")
        _wait(client, dst.copy(to_bck=dst2))
        assert remote_keys(s3, "rb5b") == set(objs)
        for k in sorted(objs)[::30]:
            assert b3.get_object(Bucket="rb5b", Key=k)["Body"].read() == sha_rev(objs[k])
    finally:
        client.etl(etl).delete()
        src.delete(missing_ok=True)


def test_sync_job_removes_what_disappeared_at_the_source(env: dict[str, Any]) -> None:
    s3, client = env["s3"], env["client"]
    objs = {f"s/{i:03d}": f"v{i}".encode() for i in range(200)}
    fill(s3, "rb6", objs)
    src = client.bucket("rb6", provider="aws")
    dst = client.bucket(f"dst6-{os.getpid()}").create(exist_ok=True)
    try:
        _wait(client, src.copy(to_bck=dst))
        assert {e.name for e in dst.list_all_objects()} == set(objs)
        gone = sorted(objs)[:40]
        b3 = s3.boto3()
        for k in gone:
            b3.delete_object(Bucket="rb6", Key=k)
        changed = sorted(objs)[50]
        b3.put_object(Bucket="rb6", Key=changed, Body=b"new version")
        _wait(client, src.copy(to_bck=dst, sync=True))
        assert {e.name for e in dst.list_all_objects()} == set(objs) - set(gone)
        assert dst.object(changed).get_reader().read_all() == b"new version", "sync implies latest"
    finally:
        dst.delete(missing_ok=True)


def test_remote_503_and_stopped_remote_are_per_object_errors(env: dict[str, Any],
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    s3, client, proxy, cluster = env["s3"], env["client"], env["proxy"], env["cluster"]
    objs = {f"f/{i:03d}": os.urandom(1000 + i) for i in range(150)}
    fill(s3, "rb7", objs)
    bad = set(sorted(objs)[::15])
    proxy.fail = {f"rb7/{k}" for k in bad}
    src = client.bucket("rb7", provider="aws")
    dst = client.bucket(f"dst7-{os.getpid()}").create(exist_ok=True)
    try:
        jobs = src.objects(obj_names=sorted(objs)).copy(dst, continue_on_error=True)
        job = jobs[0] if isinstance(jobs, list) else jobs
        _wait_quiet(client, job)
        got = {e.name for e in dst.list_all_objects()}
        assert got == set(objs) - bad, "nothing is written for an object the remote failed"
        cached = {e.name for e in src.list_all_objects() if e.is_cached()}
        assert not cached & bad, "nothing partial is cached"
        import requests

        errs = requests.get(f"{cluster.endpoint}/v1/jobs/{job}/errors", timeout=30).text
        lines = [ln for ln in errs.splitlines() if ln.strip()]
        assert len(lines) == len(bad), errs[:2000]
        assert all("503" in ln and "SlowDown" in ln for ln in lines), lines[:3]
        # a GET of a failing object: 503 (transient) with the remote's reason
        r = requests.get(f"{cluster.endpoint}/v1/objects/rb7/{sorted(bad)[0]}?provider=aws", timeout=60)
        assert r.status_code == 503 and "SlowDown" in r.text, r.text
    finally:
        proxy.fail = set()
        dst.delete(missing_ok=True)


def _wait_quiet(client: Any, job: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if client.job(job).status().end_time:
                return
        except AISError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not end")


def test_remote_stopped_mid_job_leaves_nothing_partial(env: dict[str, Any]) -> None:
    """The remote goes away while a job reads it: the objects it could not read are
    per-object errors naming the remote, every object that did arrive is whole and
    byte-correct, in the destination and in the cache."""
    import requests

    s3, client, proxy, cluster = env["s3"], env["client"], env["proxy"], env["cluster"]
    objs = {f"m/{i:04d}": os.urandom(20_000 + i) for i in range(2000)}
    fill(s3, "rb8", objs)
    src = client.bucket("rb8", provider="aws")
    dst = client.bucket(f"dst8-{os.getpid()}").create(exist_ok=True)
    try:
        jobs = src.objects(obj_names=sorted(objs)).copy(dst, continue_on_error=True)
        job = jobs[0] if isinstance(jobs, list) else jobs
        deadline = time.monotonic() + 60
        while sum(1 for m, k in proxy.requests if m == "GET" and k.startswith("rb8/")) < 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proxy.stop()
        _wait_quiet(client, job)
        errs = [ln for ln in requests.get(f"{cluster.endpoint}/v1/jobs/{job}/errors", timeout=30).text.splitlines()
                if ln.strip()]
        assert errs, "a remote that went away mid-job must show as errors"
        assert all("remote" in ln for ln in errs), errs[:3]
        proxy.start()
        got = {e.name for e in dst.list_all_objects()}
        assert 0 < len(got) < len(objs)
        assert len(got) + len(errs) == len(objs), "every object ends in exactly one outcome"
        for k in random.Random(8).sample(sorted(got), min(100, len(got))):
            assert dst.object(k).get_reader().read_all() == objs[k]
        for e in src.list_all_objects(flags=[ListObjectFlag.CACHED]):
            assert src.object(e.name).get_reader().read_all() == objs[e.name], "a cached copy is whole"
    finally:
        if proxy._thread is None or not proxy._thread.is_alive():
            proxy.start()
        dst.delete(missing_ok=True)


def test_object_copy_latest_and_sync_and_prefetch_job(env: dict[str, Any]) -> None:
    """``object.copy`` from a remote object: cached first; ``latest`` sees a change behind
    aioetl's back; ``sync`` removes the destination when the source is gone. Prefetch is
    a job that caches exactly the named objects."""
    s3, client = env["s3"], env["client"]
    objs = {f"c/{i:02d}": f"value {i}".encode() for i in range(30)}
    fill(s3, "rb9", objs)
    src = client.bucket("rb9", provider="aws")
    dst = client.bucket(f"dst9-{os.getpid()}").create(exist_ok=True)
    b3 = s3.boto3()
    try:
        src.object("c/00").copy(dst.object("o/00"))
        assert dst.object("o/00").get_reader().read_all() == objs["c/00"]
        b3.put_object(Bucket="rb9", Key="c/00", Body=b"v2")
        src.object("c/00").copy(dst.object("o/00"))  # cached copy: the old bytes
        assert dst.object("o/00").get_reader().read_all() == objs["c/00"]
        src.object("c/00").copy(dst.object("o/00"), latest=True)
        assert dst.object("o/00").get_reader().read_all() == b"v2"
        b3.delete_object(Bucket="rb9", Key="c/00")
        with pytest.raises(AISError) as ei:
            src.object("c/00").copy(dst.object("o/00"), sync=True)
        assert ei.value.status_code == 404
        assert "o/00" not in {e.name for e in dst.list_all_objects()}, "sync removed the destination"
        assert not any(e.is_cached() and e.name == "c/00" for e in src.list_all_objects())
        # prefetch: a job on every target, exactly the named objects end up cached
        want = [f"c/{i:02d}" for i in range(10, 20)]
        job = src.objects(obj_names=want).prefetch()
        _wait_quiet(client, job)
        assert {e.name for e in src.list_all_objects(flags=[ListObjectFlag.CACHED])} == set(want)
    finally:
        dst.delete(missing_ok=True)
