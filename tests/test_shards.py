"""Shards (issue #17, the read side): GET with ``archpath``, with ``archregx``/``archmode``,
list-objects with ``ARCH_DIR``, and an inline ETL on one member, through the official SDK
against a real 3-target cluster.

Shards are built locally with ``tarfile``/``zipfile``/``lz4.frame`` (tar, tgz, zip,
tar.lz4), PUT with the SDK, and every byte read back is compared with the local copy;
a regex read is parsed with ``tarfile`` and compared member by member.
"""

from __future__ import annotations

import io
import os
import random
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from typing import Any

import cloudpickle
import lz4.frame  # type: ignore[import-untyped,unused-ignore]
import pytest
from aistore.sdk.archive_config import ArchiveConfig, ArchiveMode
from aistore.sdk.errors import AISError
from aistore.sdk.list_object_flag import ListObjectFlag

from aioetl.communicators import AiohttpServer
from aioetl.engine.node.launcher import LocalCluster
from tests.conftest import fast_data_dir, make_sdk_client

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(600)]

FORMATS = (".tar", ".tgz", ".zip", ".tar.lz4")


def members(seed: int) -> dict[str, bytes]:
    """A WebDataset-style sample set: ``NNN/sample-KKKK.{jpg,json,cls}`` plus one 3 MiB member
    (longer than the target's chunks and small-object path) and one empty member."""
    rnd = random.Random(seed)
    out: dict[str, bytes] = {}
    for k in range(12):
        key = f"{seed:03d}/sample-{k:04d}"
        out[key + ".jpg"] = rnd.randbytes(rnd.randint(1, 40_000))
        out[key + ".json"] = b'{"k": %d}' % k
        out[key + ".cls"] = str(k % 3).encode()
    out["big/blob.bin"] = rnd.randbytes(3 * 1024 * 1024 + 17)
    out["empty.txt"] = b""
    return out


def build_shard(fmt: str, files: dict[str, bytes]) -> bytes:
    """The shard's bytes, members in insertion order."""
    buf = io.BytesIO()
    if fmt == ".zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return buf.getvalue()
    with tarfile.open(fileobj=buf, mode="w:gz" if fmt == ".tgz" else "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return lz4.frame.compress(raw) if fmt == ".tar.lz4" else raw


def untar(data: bytes) -> dict[str, bytes]:
    """``name -> bytes`` of a TAR stream, in stream order (regular files only)."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for ti in tf:
            f = tf.extractfile(ti)
            out[ti.name] = f.read() if f is not None else b""
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 3-target cluster, and bucket ``shards`` with one shard per format (plus a plain object)."""
    for root in fast_data_dir(tmp_path_factory, "shards"):
        with LocalCluster(targets=3, data_dir=root, port=0) as c:
            client = make_sdk_client(c.endpoint)
            b = client.bucket("shards").create(exist_ok=True)
            contents: dict[str, dict[str, bytes]] = {}
            for i, fmt in enumerate(FORMATS):
                name = f"train-{i:04d}{fmt}"
                contents[name] = members(i)
                b.object(name).get_writer().put_content(build_shard(fmt, contents[name]))
            b.object("plain.bin").get_writer().put_content(b"not a shard")
            yield {"client": client, "bucket": b, "contents": contents, "cluster": c}


def status_of(e: BaseException) -> int:
    return int(getattr(e, "status_code", 0) or 0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_member_by_archpath_byte_equal(env: dict[str, Any], fmt: str) -> None:
    b, contents = env["bucket"], env["contents"]
    shard = next(n for n in contents if n.endswith(fmt))
    for name, data in contents[shard].items():
        got = b.object(shard).get_reader(archive_config=ArchiveConfig(archpath=name)).read_all()
        assert got == data, f"{shard}/{name}"
    # a leading "/" and the "<shard>/" prefix are both accepted, as AIStore does
    assert b.object(shard).get_reader(archive_config=ArchiveConfig(archpath="/empty.txt")).read_all() == b""
    assert (b.object(shard).get_reader(archive_config=ArchiveConfig(archpath=f"{shard}/big/blob.bin")).read_all()
            == contents[shard]["big/blob.bin"])


def test_archpath_answer_headers(env: dict[str, Any]) -> None:
    import requests

    c, contents = env["cluster"], env["contents"]
    for shard, files in contents.items():
        r = requests.get(f"{c.endpoint}/v1/objects/shards/{shard}", params={"archpath": "big/blob.bin"},
                         timeout=30)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert int(r.headers["Content-Length"]) == len(files["big/blob.bin"])
        assert r.content == files["big/blob.bin"]


def expected_matches(files: dict[str, bytes], pick: Any) -> dict[str, bytes]:
    return {n: d for n, d in files.items() if pick(n)}


CASES = [
    (ArchiveMode.REGEXP, r"sample-000[2-4]\.(jpg|cls)$", lambda n: n.split("/")[-1] in
     {f"sample-000{k}.{e}" for k in (2, 3, 4) for e in ("jpg", "cls")}),
    (ArchiveMode.PREFIX, "{s:03d}/sample-001", lambda n: "/sample-001" in n),
    (ArchiveMode.SUFFIX, ".json", lambda n: n.endswith(".json")),
    (ArchiveMode.SUBSTR, "blob", lambda n: "blob" in n),
    (ArchiveMode.WDSKEY, "{s:03d}/sample-0005", lambda n: n.rsplit(".", 1)[0].endswith("/sample-0005")),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode,pattern,pick", CASES, ids=[c[0].value for c in CASES])
def test_regex_modes_return_exactly_the_matches(env: dict[str, Any], fmt: str, mode: Any, pattern: str,
                                                pick: Any) -> None:
    b, contents = env["bucket"], env["contents"]
    shard = next(n for n in contents if n.endswith(fmt))
    seed = list(contents).index(shard)
    files = contents[shard]
    cfg = ArchiveConfig(regex=pattern.format(s=seed), mode=mode)
    got = untar(b.object(shard).get_reader(archive_config=cfg).read_all())
    want = expected_matches(files, pick)
    assert want, "the case selects something"
    assert list(got) == list(want), "exactly the matches, in shard order"
    assert got == want


def test_regex_answer_is_a_tar(env: dict[str, Any]) -> None:
    import requests

    c = env["cluster"]
    r = requests.get(f"{c.endpoint}/v1/objects/shards/train-0000.tar",
                     params={"archpath": "", "archregx": "", "archmode": "*"}, timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-tar"
    assert untar(r.content) == env["contents"]["train-0000.tar"]


def test_errors_404_400_501(env: dict[str, Any]) -> None:
    import requests

    b, c = env["bucket"], env["cluster"]
    url = f"{c.endpoint}/v1/objects/shards/train-0001.tgz"
    with pytest.raises(AISError) as ei:
        b.object("train-0001.tgz").get_reader(archive_config=ArchiveConfig(archpath="nope.jpg")).read_all()
    assert status_of(ei.value) == 404
    assert "nope.jpg in ais://shards/train-0001.tgz does not exist" in str(ei.value)
    r = requests.get(url, params={"archregx": "zzz", "archmode": "suffix"}, timeout=30)
    assert r.status_code == 404
    assert "(archregx=zzz, archmode=suffix) in ais://shards/train-0001.tgz does not exist" in r.text
    with pytest.raises(AISError) as ei:
        b.object("train-0001.tgz").get_reader(
            archive_config=ArchiveConfig(regex="zzz", mode=ArchiveMode.SUFFIX)).read_all()
    assert status_of(ei.value) == 404
    with pytest.raises(AISError) as ei:
        b.object("missing.tar").get_reader(archive_config=ArchiveConfig(archpath="a")).read_all()
    assert status_of(ei.value) == 404
    # archpath together with a match mode; a bad mode; a bad archpath; a bad regex; not an archive
    for params in ({"archpath": "a.jpg", "archregx": "a", "archmode": "prefix"},
                   {"archregx": "a", "archmode": "glob"},
                   {"archpath": "../etc/passwd"},
                   {"archregx": "(", "archmode": "regexp"}):
        r = requests.get(url, params=params, timeout=30)
        assert r.status_code == 400, (params, r.status_code, r.text)
    r = requests.get(f"{c.endpoint}/v1/objects/shards/plain.bin", params={"archpath": "a"}, timeout=30)
    assert r.status_code == 400, r.text
    # Range with archive parameters: 501
    with pytest.raises(AISError) as ei:
        b.object("train-0001.tgz").get_reader(archive_config=ArchiveConfig(archpath="empty.txt"),
                                              byte_range="bytes=0-9").read_all()
    assert status_of(ei.value) == 501
    r = requests.get(url, params={"archregx": "", "archmode": "prefix"}, headers={"Range": "bytes=0-1"}, timeout=30)
    assert r.status_code == 501
    # the object itself is untouched by empty archive parameters
    r = requests.get(url, params={"archpath": "", "archregx": ""}, timeout=30)
    assert r.status_code == 200 and r.content[:2] == b"\x1f\x8b"


def test_list_with_arch_dir_shows_members(env: dict[str, Any]) -> None:
    b, contents = env["bucket"], env["contents"]
    ents = b.list_all_objects(flags=[ListObjectFlag.ARCH_DIR], props="name,size")
    got = {e.name: (e.size, int(e.flags)) for e in ents}
    want: dict[str, tuple[int, int]] = {"plain.bin": (len(b"not a shard"), 64)}
    for shard, files in contents.items():
        want[shard] = (got[shard][0], 64 | 512)
        for n, d in files.items():
            want[f"{shard}/{n}"] = (len(d), 64 | 128)
    assert got == want
    names = [e.name for e in ents]
    assert names == sorted(names)
    # without the flag: the objects only, no archive bits
    plain = b.list_all_objects()
    assert sorted(e.name for e in plain) == sorted([*contents, "plain.bin"])
    assert all(int(e.flags) & (512 | 128) == 0 for e in plain)
    # a prefix inside the listing: one shard and its members
    pre = b.list_all_objects(prefix="train-0002", flags=[ListObjectFlag.ARCH_DIR])
    want_pre = ["train-0002.zip", *(f"train-0002.zip/{n}" for n in contents["train-0002.zip"])]
    assert [e.name for e in pre] == sorted(want_pre)


def test_list_paging_over_shards_returns_every_entry_once(env: dict[str, Any]) -> None:
    client = env["client"]
    b = client.bucket("paged-shards").create(exist_ok=True)
    try:
        expect = []
        # names chosen so that other objects sort between a shard and its members ("a.tar" < "a.tar-x" < "a.tar/m")
        for i in range(3):
            shard = f"s{i}.tar"
            files = {f"m{k:03d}.bin": bytes([k]) * (k + 1) for k in range(50)}
            b.object(shard).get_writer().put_content(build_shard(".tar", files))
            b.object(f"s{i}.tar-side").get_writer().put_content(b"x")
            expect += [shard, f"s{i}.tar-side", *(f"{shard}/{n}" for n in files)]
        expect.sort()
        for page_size in (40, 7, 1000):
            seen: list[str] = []
            token, uuid, pages = "", "", 0
            while True:
                res = b.list_objects(page_size=page_size, flags=[ListObjectFlag.ARCH_DIR], uuid=uuid,
                                     continuation_token=token)
                seen += [e.name for e in res.entries]
                uuid, token = res.uuid, res.continuation_token
                pages += 1
                assert len(res.entries) <= page_size
                if not token:
                    break
            assert seen == expect, page_size
            assert pages >= len(expect) // page_size
            it = [e.name for e in b.list_objects_iter(page_size=page_size, flags=[ListObjectFlag.ARCH_DIR])]
            assert it == expect
    finally:
        b.delete(missing_ok=True)


class Rev(AiohttpServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return data[::-1] + etl_args.encode()


@pytest.mark.parametrize("comm", ["hpush", "ws"])
def test_inline_etl_on_one_member(env: dict[str, Any], comm: str) -> None:
    from aistore.sdk.etl import ETLConfig

    client, b, contents = env["client"], env["bucket"], env["contents"]
    etl = f"shard-rev-{comm}-{os.getpid() % 10000}"
    client.etl(etl).init_class(comm_type=comm)(Rev)
    try:
        for seed, (shard, files) in enumerate(contents.items()):
            for name in (f"{seed:03d}/sample-0001.json", "big/blob.bin", "empty.txt"):
                got = b.object(shard).get_reader(archive_config=ArchiveConfig(archpath=name),
                                                 etl=ETLConfig(etl, args="!")).read_all()
                assert got == files[name][::-1] + b"!", f"{shard}/{name}"
        with pytest.raises(AISError) as ei:
            b.object("train-0000.tar").get_reader(archive_config=ArchiveConfig(archpath="nope"),
                                                  etl=ETLConfig(etl)).read_all()
        assert status_of(ei.value) == 404
    finally:
        client.etl(etl).delete()
