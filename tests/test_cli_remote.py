"""The ``aioetl`` CLI and ``DataClient`` on remote ``aws://`` (``s3://``) buckets (issue #13).

Pure tests of the URL parsing first; then a real ``rclone serve s3`` on 127.0.0.1
(:mod:`tests.s3server`) and a real 2-target cluster whose nodes reach it, driven
through the CLI (``typer.testing.CliRunner``, in process) and the data client.
What is in S3 is checked with boto3, never through aioetl; every byte read back is
compared with what was put or computed locally.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from aioetl.engine.client.cli.common import parse_url
from aioetl.engine.client.cli.jobs import _uname, listrange
from aioetl.engine.client.cli.main import app
from aioetl.engine.client.data import ClientError, DataClient, bck_path
from aioetl.engine.node.launcher import LocalCluster
from tests.conftest import fast_data_dir
from tests.s3server import S3Server

ETL = "md5-cli-remote"


# -- pure ---------------------------------------------------------------------
@pytest.mark.parametrize(("url", "key", "obj"), [
    ("ais://b", "b", ""),
    ("ais://b/x/y.txt", "b", "x/y.txt"),
    ("aws://b", "aws:b", ""),
    ("aws://b/", "aws:b", ""),
    ("s3://b/dir/o", "aws:b", "dir/o"),
    ("S3://b/o", "aws:b", "o"),
    ("aws://b.c-d_e/with space/and+plus", "aws:b.c-d_e", "with space/and+plus"),
])
def test_parse_url_gives_the_bucket_key(url: str, key: str, obj: str) -> None:
    assert parse_url(url) == (key, obj)


@pytest.mark.parametrize(("url", "want_obj", "says"), [
    ("gs://b/o", False, "expected ais://BUCKET[/OBJECT], aws://BUCKET[/OBJECT] or s3://BUCKET[/OBJECT], got 'gs://b/o'"),
    ("b/o", False, "got 'b/o'"),
    ("s3:/b", False, "got 's3:/b'"),
    ("aws://", False, "no bucket in 'aws://'"),
    ("aws://b", True, "expected aws://b/OBJECT, got 'aws://b': no object name"),
    ("gs://b", True, "expected ais://BUCKET/OBJECT, aws://BUCKET/OBJECT or s3://BUCKET/OBJECT"),
    ("s3://b:c/o", False, 'bucket name "b:c" is invalid'),
])
def test_parse_url_refuses_with_the_accepted_schemes(url: str, want_obj: bool, says: str) -> None:
    with pytest.raises(typer.BadParameter) as ei:
        parse_url(url, want_obj=want_obj)
    assert says in str(ei.value)


def test_bucket_paths_and_unames() -> None:
    assert bck_path("b") == ("/v1/buckets/b", {})
    assert bck_path("aws:b") == ("/v1/buckets/b", {"provider": "aws"})
    assert _uname("b") == "ais/@#/b/"
    assert _uname("aws:b") == "aws/@#/b/"
    assert listrange("o", None, None) == {"objnames": ["o"]}
    assert listrange("", "a,,b", None) == {"objnames": ["a", "b"]}
    assert listrange("", None, "x-{0..3}") == {"template": "x-{0..3}"}
    for bad in (("", None, None), ("o", "a", None), ("", "a", "t")):
        with pytest.raises(typer.BadParameter, match="exactly one"):
            listrange(*bad)


def test_commands_refuse_before_any_request() -> None:
    """Wrong schemes and shapes fail with exit 2 without reaching the (absent) gateway."""
    ep = ["--endpoint", "http://127.0.0.1:9"]
    cases = [
        (["get", "aws://b"], "expected aws://b/OBJECT"),
        (["etl", "object", ETL, "s3://b"], "expected s3://b/OBJECT"),
        (["bucket", "evict", "ais://b"], "only remote buckets are evicted"),
        (["bucket", "evict", "aws://b/o", "--keep-md"], "--keep-md is for a whole bucket"),
        (["prefetch", "ais://b", "--list", "a"], "only remote buckets are prefetched"),
        (["prefetch", "aws://b"], "exactly one of BUCKET/OBJECT, --list and --template"),
        (["etl", "bucket", ETL, "gs://a", "ais://b"], "aws://BUCKET[/OBJECT] or s3://BUCKET[/OBJECT]"),
    ]
    for argv, says in cases:
        r = CliRunner().invoke(app, [*argv, *ep])
        assert r.exit_code == 2, (argv, r.output)
        assert says in " ".join(r.output.split()), (argv, r.output)


# -- against a real S3 server and cluster -------------------------------------
OBJS = {f"img/{i:03d}.bin": os.urandom(100 + 997 * i) for i in range(12)}
OBJS.update({"with space/and+plus.txt": b"spaces and plus\n", "top.txt": b"top\n", "empty": b""})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``{"s3", "ep"}``: an S3 server with bucket ``clisrc`` filled with :data:`OBJS`, a
    2-target cluster that reaches it, and the built-in md5 ETL initialized through the CLI."""
    for root in fast_data_dir(tmp_path_factory, "cli-s3"):
        with S3Server(os.path.join(root, "s3")) as s3:
            s3.make_bucket("clisrc")
            s3.put_many("clisrc", OBJS)
            with LocalCluster(targets=2, data_dir=os.path.join(root, "cluster"), port=0, env=s3.env()) as c:
                r = cli("etl", "init", "image", "aistorage/transformer_md5:latest", "--name", ETL,
                        "--endpoint", c.endpoint)
                assert r.exit_code == 0, r.output
                yield {"s3": s3, "ep": c.endpoint}


@pytest.fixture(autouse=True)
def wide_output() -> Iterator[None]:
    """Tables as on a wide terminal (under the runner rich assumes 80 columns), so rows parse."""
    from aioetl.engine.client.cli.common import out

    width = out.width
    out.width = 250
    yield
    out.width = width


def cli(*argv: str) -> Result:
    return CliRunner().invoke(app, list(argv))


def ok(env: dict[str, Any], *argv: str) -> Result:
    r = cli(*argv, "--endpoint", env["ep"])
    assert r.exit_code == 0, (argv, r.output, r.exception)
    return r


#: a row of ``aioetl ls`` of a remote bucket: NAME SIZE [VERSION] CACHED
ROW = re.compile(r"(.+?)\s+\d+(?:\.\d)?(?:B|KiB|MiB|GiB|TiB)\s+(?:\S+\s+)?(yes|no)")


def listing(env: dict[str, Any], url: str, *flags: str) -> dict[str, str]:
    """``{name: cached}`` from ``aioetl ls`` of a remote bucket ("yes"/"no")."""
    r = ok(env, "ls", url, *flags)
    rows = [ROW.fullmatch(line.strip()) for line in r.stdout.splitlines()[1:] if line.strip()]
    assert all(rows), r.stdout
    return {m.group(1): m.group(2) for m in rows if m}


def remote_keys(s3: S3Server, bucket: str) -> dict[str, bytes]:
    b3 = s3.boto3()
    out = {}
    for page in b3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = b3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_ls_get_put_and_the_cached_column(env: dict[str, Any], tmp_path: Path) -> None:
    # the first use of the remote bucket adds it; nothing is cached yet
    assert listing(env, "s3://clisrc") == dict.fromkeys(OBJS, "no")
    assert "aws://clisrc" in ok(env, "bucket", "ls").stdout.split()
    # cold GET through the CLI, to a file and to stdout, by both schemes
    out = tmp_path / "o.bin"
    ok(env, "get", "aws://clisrc/img/005.bin", str(out))
    assert out.read_bytes() == OBJS["img/005.bin"]
    assert ok(env, "get", "s3://clisrc/with space/and+plus.txt").stdout_bytes == OBJS["with space/and+plus.txt"]
    got = listing(env, "aws://clisrc")
    assert {k for k, v in got.items() if v == "yes"} == {"img/005.bin", "with space/and+plus.txt"}
    assert set(listing(env, "aws://clisrc", "--cached")) == {"img/005.bin", "with space/and+plus.txt"}
    assert set(listing(env, "aws://clisrc/img/")) == {k for k in OBJS if k.startswith("img/")}
    # PUT of a directory: written through to S3 (checked with boto3), and cached
    up = tmp_path / "up"
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(70_000)}
    for name, body in files.items():
        (up / name).parent.mkdir(parents=True, exist_ok=True)
        (up / name).write_bytes(body)
    r = ok(env, "put", str(up), "s3://clisrc/up/")
    assert "put 2 objects" in r.stderr
    remote = remote_keys(env["s3"], "clisrc")
    assert {k: remote[k] for k in remote if k.startswith("up/")} == {f"up/{k}": v for k, v in files.items()}
    assert listing(env, "aws://clisrc/up/") == {"up/a.txt": "yes", "up/sub/b.bin": "yes"}
    # a missing remote object is the remote's 404, not a crash
    r = cli("get", "aws://clisrc/no/such", "--endpoint", env["ep"])
    assert r.exit_code == 1 and "error: 404" in r.stderr, r.output


def test_bucket_create_and_rm_of_a_remote_bucket_are_the_gateways_400(env: dict[str, Any]) -> None:
    r = cli("bucket", "create", "aws://clisrc", "--endpoint", env["ep"])
    assert r.exit_code == 1, r.output
    assert "error: 400" in r.stderr and 'cannot create remote bucket "aws://clisrc"' in r.stderr, r.stderr
    r = cli("bucket", "rm", "s3://clisrc", "--endpoint", env["ep"])
    assert r.exit_code == 1, r.output
    assert "error: 400" in r.stderr and "evict it instead" in r.stderr, r.stderr
    assert set(remote_keys(env["s3"], "clisrc")) >= set(OBJS), "S3 keeps every object"
    r = cli("ls", "aws://no-such-bucket", "--endpoint", env["ep"])
    assert r.exit_code == 1 and "error: 404" in r.stderr, r.output


def test_prefetch_and_evict(env: dict[str, Any]) -> None:
    ok(env, "bucket", "evict", "aws://clisrc", "--keep-md")
    assert "aws://clisrc" in ok(env, "bucket", "ls").stdout.split(), "--keep-md keeps it in the cluster"
    assert set(listing(env, "aws://clisrc").values()) == {"no"}
    r = ok(env, "prefetch", "s3://clisrc", "--template", "img/{000..003}.bin")
    shown = " ".join(r.stdout.split())
    assert "finished" in shown and "4 of ? processed" in shown and "fetched from remote 4 objects" in shown, shown
    ok(env, "prefetch", "aws://clisrc", "--list", "top.txt,empty")
    ok(env, "prefetch", "aws://clisrc/img/010.bin")
    want = {"img/000.bin", "img/001.bin", "img/002.bin", "img/003.bin", "top.txt", "empty", "img/010.bin"}
    assert set(listing(env, "aws://clisrc", "--cached")) == want
    ok(env, "bucket", "evict", "aws://clisrc", "--list", "top.txt,img/000.bin")
    ok(env, "bucket", "evict", "s3://clisrc/empty")
    assert set(listing(env, "aws://clisrc", "--cached")) == want - {"top.txt", "img/000.bin", "empty"}
    # a prefetch of a missing object is a per-object error, and the job says so
    r = cli("prefetch", "aws://clisrc", "--list", "no/such", "--endpoint", env["ep"])
    assert r.exit_code == 1, r.output
    # the whole bucket, without --keep-md: it leaves the cluster and comes back on use
    ok(env, "bucket", "evict", "aws://clisrc")
    assert "aws://clisrc" not in ok(env, "bucket", "ls").stdout.split()
    assert listing(env, "aws://clisrc", "--cached") == {}
    assert set(remote_keys(env["s3"], "clisrc")) >= set(OBJS)


def test_etl_object_bucket_and_objects_from_and_to_s3(env: dict[str, Any], tmp_path: Path) -> None:
    s3, ep = env["s3"], env["ep"]
    # inline, cold and then cached, by both schemes
    assert ok(env, "etl", "object", ETL, "aws://clisrc/img/007.bin").stdout == md5(OBJS["img/007.bin"])
    assert ok(env, "etl", "object", ETL, "s3://clisrc/img/007.bin").stdout == md5(OBJS["img/007.bin"])
    out = tmp_path / "t"
    ok(env, "etl", "object", ETL, "s3://clisrc/with space/and+plus.txt", str(out))
    assert out.read_text() == md5(OBJS["with space/and+plus.txt"])
    # aws:// -> ais://, cached or not (a fresh eviction first)
    ok(env, "bucket", "evict", "aws://clisrc", "--keep-md")
    r = ok(env, "etl", "bucket", ETL, "s3://clisrc", "ais://clidst", "--prefix", "img/")
    n = sum(k.startswith("img/") for k in OBJS)
    assert "finished" in r.stdout and f"{n} of {n} processed" in r.stdout, r.stdout
    for k in ("img/000.bin", "img/011.bin"):
        assert ok(env, "get", f"ais://clidst/{k}").stdout == md5(OBJS[k])
    # ais:// -> aws:// (the destination exists in S3), and aws:// -> s3://
    s3.make_bucket("clidst2")
    ok(env, "etl", "bucket", ETL, "ais://clidst", "aws://clidst2")
    assert remote_keys(s3, "clidst2") == {k: md5(md5(OBJS[k]).encode()).encode() for k in OBJS
                                          if k.startswith("img/")}
    s3.make_bucket("clidst3")
    ok(env, "etl", "objects", ETL, "aws://clisrc", "s3://clidst3", "--list", "top.txt,empty", "--prepend", "m/")
    assert remote_keys(s3, "clidst3") == {"m/top.txt": md5(b"top\n").encode(), "m/empty": md5(b"").encode()}
    # a remote destination that S3 does not have is refused before the job starts
    r = cli("etl", "bucket", ETL, "aws://clisrc", "aws://not-there", "--endpoint", ep)
    assert r.exit_code == 1 and "error: 404" in r.stderr, r.output
    # the job list shows buckets as they are written
    jobs = ok(env, "job", "ls").stdout
    assert "aws://clisrc" in jobs and "ais://clidst" in jobs and "aws://clidst2" in jobs, jobs


def test_data_client_takes_bucket_keys(env: dict[str, Any]) -> None:
    async def go() -> None:
        dc = DataClient(env["ep"])
        assert await dc.get_bytes("aws:clisrc", "img/001.bin") == OBJS["img/001.bin"]
        assert "aws:clisrc" in await dc.list_buckets()
        ents = {e["n"]: e for e in await dc.list_objects("aws:clisrc", prefix="img/00")}
        assert set(ents) == {f"img/00{i}.bin" for i in range(10)}
        assert ents["img/001.bin"]["f"] & (1 << 6)
        with pytest.raises(ClientError) as ei:
            await dc.head_bucket("aws:no-such-bucket")
        assert ei.value.status == 404 and "no-such-bucket" in str(ei.value)
        with pytest.raises(ClientError) as ei:
            await dc.get_bytes("aws:no-such-bucket", "o")
        assert ei.value.status == 404

    asyncio.run(go())
