"""Object I/O end to end with the official aistore SDK (1.26 and 2.x).

One 3-target cluster (the session ``cluster``), one bucket of 1,000 objects of
0 B to 8 MiB with nested, unicode and space-bearing names; every object is read
back, headed and checksummed (xxhash64, seed 0, as AIStore's default ``xxhash``),
the bucket is listed in pages and by prefix, some objects are deleted and the
bucket is destroyed. The SDK's client-side HRW is compared with the gateway's
307 redirects.

SDK differences handled here (read from each installed SDK's source):

- ``Object.head()``: 1.26 returns the raw response headers (a
  ``CaseInsensitiveDict``); 2.x takes ``props=`` and returns ``ObjectProps``
  (``size``, ``checksum_type``, ``checksum_value``).
- ``get_reader(byte_range="bytes=a-b")``, ``list_objects(page_size=,
  continuation_token=, uuid=)``, ``list_all_objects``, ``list_objects_iter``,
  the error classes and ``Smap.get_target_for_object`` are the same in both.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
import xxhash
from aistore.sdk.errors import AISError, ErrBckAlreadyExists, ErrBckNotFound, ErrObjNotFound

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(300)]

SDK_MAJOR = int(version("aistore").split(".")[0])
N_OBJECTS = 1000
MiB = 1 << 20
POOL = 16

# names that exercise path handling end to end (URL quoting, FQN mapping, listing order)
SPECIAL_NAMES = [
    "a/b/c/x.bin",
    "données/ü-日本.txt",
    "with space/file name.txt",
    "a b",
    "deep/1/2/3/4/5/6/7/8/leaf",
    "日本/語/ファイル.dat",
    "plus+and=equals&amp;.txt",
    "percent%20literal.bin",
]


def cksum(data: bytes) -> str:
    """The checksum AIStore stores by default: xxhash64, seed 0, 16 lowercase hex digits."""
    return xxhash.xxh64(data, seed=0).hexdigest()


def make_objects(n: int = N_OBJECTS, seed: int = 20240601) -> dict[str, bytes]:
    """``n`` objects: name -> deterministic random content.

    Sizes: a few empty ones, the multi-MiB ones (up to exactly 8 MiB), the sizes
    around the target's 256 KiB whole-read/stream threshold, and otherwise small
    (mostly under 16 KiB).
    """
    rng = random.Random(seed)
    fixed_sizes = [0, 0, 1, 8 * MiB, 5 * MiB - 3, 3 * MiB + 1, 2 * MiB, MiB, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1]
    groups = ["a/b/c", "données", "with space", "flat", "日本/語"]
    names = list(SPECIAL_NAMES)
    i = 0
    while len(names) < n:
        g = groups[i % len(groups)]
        if g == "flat":
            names.append(f"obj-{i:04d}")
        elif g == "with space":
            names.append(f"with space/obj {i:04d} .dat")
        elif g == "données":
            names.append(f"données/ü-{i:04d}-日本.txt")
        else:
            names.append(f"{g}/{i:04d}.bin")
        i += 1
    out: dict[str, bytes] = {}
    for k, name in enumerate(names):
        j = k - len(SPECIAL_NAMES)
        if j < 0:
            size = rng.randint(200, 5000)  # the named ones: big enough for small range reads
        elif j < len(fixed_sizes):
            size = fixed_sizes[j]
        else:
            size = min(int(rng.expovariate(1 / 4096)), 200 * 1024)
        out[name] = rng.randbytes(size)
    return out


def pmap(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``fn`` over ``items`` on a pool of POOL threads; results in order."""
    with ThreadPoolExecutor(POOL) as ex:
        return list(ex.map(fn, items))


def head_attrs(obj: Any) -> tuple[int, str, str]:
    """``(size, checksum type, checksum value)`` of an object via the SDK's HEAD."""
    if SDK_MAJOR < 2:
        h = obj.head()  # 1.26: CaseInsensitiveDict of the response headers
        return int(h["Content-Length"]), h["ais-checksum-type"], h["ais-checksum-value"]
    p = obj.head(props="size,checksum")  # 2.x: ObjectProps
    return p.size, p.checksum_type, p.checksum_value


class Loaded:
    """The shared bucket and what it should hold (tests that delete update ``objs``)."""

    def __init__(self, bucket: Any, objs: dict[str, bytes]) -> None:
        self.bucket = bucket
        self.objs = objs
        self.destroyed = False


@pytest.fixture(scope="module")
def loaded(sdk: Any) -> Iterator[Loaded]:  # type: ignore[no-untyped-def]
    objs = make_objects()
    b = sdk.bucket(f"objs-{os.getpid()}-{random.randrange(1 << 30):x}").create()
    pmap(lambda kv: b.object(kv[0]).get_writer().put_content(kv[1]), list(objs.items()))
    state = Loaded(b, objs)
    yield state
    if not state.destroyed:
        b.delete(missing_ok=True)


def test_dataset_shape() -> None:
    objs = make_objects()
    assert len(objs) == N_OBJECTS
    sizes = sorted(len(v) for v in objs.values())
    assert sizes[0] == 0 and sizes[-1] == 8 * MiB
    assert sum(1 for s in sizes if s >= MiB) >= 5
    assert sum(1 for s in sizes if s < 16 * 1024) > 800
    assert make_objects() == objs  # deterministic


def test_cluster_info_has_three_targets(sdk: Any) -> None:
    smap = sdk.cluster().get_info()
    assert len(smap.tmap) == 3
    for tid, node in smap.tmap.items():
        assert node.daemon_id == tid
        assert urlsplit(node.public_net.direct_url).hostname == "127.0.0.1"
    assert sdk.cluster().is_ready()


def test_list_buckets_and_head(sdk: Any, loaded: Loaded) -> None:
    names = {b.name for b in sdk.cluster().list_buckets()}
    assert loaded.bucket.name in names
    props = json.loads(loaded.bucket.head()["ais-bucket-props"])  # both SDKs: the raw headers
    assert props["provider"] == "ais"
    assert props["checksum"]["type"] == "xxhash"
    with pytest.raises(AISError) as ei:
        sdk.bucket(f"{loaded.bucket.name}-missing").head()
    assert ei.value.status_code == 404
    with pytest.raises(ErrBckNotFound):
        sdk.bucket(f"{loaded.bucket.name}-missing").object("x").get_reader().read_all()


def test_list_pages_with_continuation_token(loaded: Loaded) -> None:
    b, want = loaded.bucket, {k: len(v) for k, v in loaded.objs.items()}
    got: dict[str, int] = {}
    order: list[str] = []
    token, uuid, pages = "", "", 0
    while True:
        page = b.list_objects(page_size=100, continuation_token=token, uuid=uuid)
        pages += 1
        assert len(page.entries) <= 100
        for e in page.entries:
            assert e.name not in got, f"{e.name!r} listed twice"
            got[e.name] = e.size
            order.append(e.name)
        if not page.continuation_token:
            break
        assert len(page.entries) == 100, "a non-final page must be full"
        token, uuid = page.continuation_token, page.uuid
        assert pages < 50, "listing does not terminate"
    assert pages == -(-len(want) // 100)
    assert got == want
    assert order == sorted(order), "entries must come in name order"


def test_list_all_objects_and_iter(loaded: Loaded) -> None:
    b, want = loaded.bucket, {k: len(v) for k, v in loaded.objs.items()}
    entries = b.list_all_objects(page_size=100)
    assert len(entries) == len(want)
    assert {e.name: e.size for e in entries} == want
    assert {e.name: e.size for e in b.list_objects_iter(page_size=100)} == want


@pytest.mark.parametrize("prefix", ["a/b/c/", "données/", "with space/", "日本/", "a", "no-such-prefix/"])
def test_list_with_prefix(loaded: Loaded, prefix: str) -> None:
    b = loaded.bucket
    want = {k: len(v) for k, v in loaded.objs.items() if k.startswith(prefix)}
    assert {e.name: e.size for e in b.list_all_objects(prefix=prefix, page_size=100)} == want
    got: dict[str, int] = {}
    token, uuid = "", ""
    while True:
        page = b.list_objects(prefix=prefix, page_size=37, continuation_token=token, uuid=uuid)
        got.update((e.name, e.size) for e in page.entries)
        if not page.continuation_token:
            break
        token, uuid = page.continuation_token, page.uuid
    assert got == want


def test_get_and_head_every_object(loaded: Loaded) -> None:
    """GET (content + ``ais-checksum-*`` response headers) and HEAD of all 1,000 objects."""
    b, objs = loaded.bucket, loaded.objs

    def check(kv: tuple[str, bytes]) -> str:
        name, data = kv
        obj = b.object(name)
        reader = obj.get_reader()
        got = reader.raw().read()  # raw(): one GET whose headers become reader.attributes
        if got != data:
            return f"{name!r}: content differs ({len(got)} vs {len(data)} bytes)"
        attrs = reader.attributes
        if (attrs.checksum_type, attrs.checksum_value) != ("xxhash", cksum(data)):
            return f"{name!r}: GET checksum {attrs.checksum_type}:{attrs.checksum_value} != {cksum(data)}"
        size, ctype, cval = head_attrs(obj)
        if (size, ctype, cval) != (len(data), "xxhash", cksum(data)):
            return f"{name!r}: HEAD says {size} {ctype}:{cval}, want {len(data)} xxhash:{cksum(data)}"
        return ""

    errors = [e for e in pmap(check, list(objs.items())) if e]
    assert not errors, f"{len(errors)} bad objects, e.g. {errors[:5]}"

    # the plain read_all() path as well, on the big ones and a sample of the rest
    sample = [k for k, v in objs.items() if len(v) >= MiB] + list(objs)[::25]
    same = pmap(lambda k: b.object(k).get_reader().read_all() == objs[k], sample)
    bad = [k for k, ok in zip(sample, same, strict=True) if not ok]
    assert not bad, f"read_all differs for {bad[:5]}"


def test_raw_headers_on_the_wire(endpoint: str, loaded: Loaded) -> None:
    """The literal header names, as a non-SDK client sees them (follows the 307)."""
    name = "données/ü-日本.txt"
    data = loaded.objs[name]
    url = f"{endpoint}/v1/objects/{loaded.bucket.name}/{quote(name)}"
    r = requests.get(url, timeout=30)
    assert r.status_code == 200 and r.content == data
    assert r.headers["ais-checksum-type"] == "xxhash"
    assert r.headers["ais-checksum-value"] == cksum(data)
    h = requests.head(url, timeout=30, allow_redirects=True)
    assert h.status_code == 200
    assert h.headers["ais-checksum-value"] == cksum(data)
    assert int(h.headers["Content-Length"]) == len(data)


@pytest.mark.parametrize(
    "rng,slicer",
    [
        ("bytes=10-99", lambda d: d[10:100]),
        ("bytes=0-0", lambda d: d[:1]),
        ("bytes=100-", lambda d: d[100:]),
        ("bytes=-50", lambda d: d[-50:]),
        ("bytes=1000-2000999", lambda d: d[1000:2001000]),  # > 256 KiB: the streamed path
        ("bytes=8388000-99999999", lambda d: d[8388000:]),  # end past the size: clipped
    ],
)
def test_range_reads(loaded: Loaded, rng: str, slicer: Callable[[bytes], bytes]) -> None:
    name = next(k for k, v in loaded.objs.items() if len(v) == 8 * MiB)
    data = loaded.objs[name]
    got = loaded.bucket.object(name).get_reader(byte_range=rng).read_all()
    want = slicer(data)
    assert len(got) == len(want) and got == want


def test_range_read_small_object_and_unsatisfiable(loaded: Loaded) -> None:
    name = "a/b/c/x.bin"
    data = loaded.objs[name]
    assert len(data) > 100
    assert loaded.bucket.object(name).get_reader(byte_range="bytes=10-99").read_all() == data[10:100]
    # a range that starts past the end: 416 Range Not Satisfiable (RFC 7233 §4.4; AIStore's
    # ParseMultiRange answers the same), not 400
    for rng in (f"bytes={len(data)}-{len(data) + 5}", f"bytes={len(data) + 10}-"):
        with pytest.raises(AISError) as ei:
            loaded.bucket.object(name).get_reader(byte_range=rng).read_all()
        assert ei.value.status_code == 416, (rng, str(ei.value)[:300])


def test_sdk_hrw_agrees_with_gateway_redirect(sdk: Any, endpoint: str, loaded: Loaded) -> None:
    """The SDK's client-side HRW picks the target the gateway redirects to."""
    smap = sdk.cluster().get_info()
    b = loaded.bucket
    names = list(SPECIAL_NAMES) + list(loaded.objs)[:: 4]
    sess = requests.Session()  # its urllib3 pool is thread safe; no cookies are involved

    def check(name: str) -> tuple[str, str, str]:
        sdk_owner = smap.get_target_for_object(b.object(name).uname)
        r = sess.get(f"{endpoint}/v1/objects/{b.name}/{quote(name)}", allow_redirects=False, timeout=30)
        assert r.status_code == 307, (name, r.status_code, r.text[:200])
        return name, urlsplit(r.headers["Location"]).netloc, urlsplit(sdk_owner.public_net.direct_url).netloc

    with sess:
        rows = pmap(check, names)
    disagree = [(n, loc, mine) for n, loc, mine in rows if loc != mine]
    assert not disagree, f"{len(disagree)} disagree, e.g. {disagree[:3]}"
    assert len({loc for _, loc, _ in rows}) == 3, "all three targets should own some of these"

    # and a direct read (SDK goes straight to its HRW target) returns the right bytes
    for name in SPECIAL_NAMES:
        assert b.object(name).get_reader(direct=True).read_all() == loaded.objs[name]


def test_missing_object_errors(loaded: Loaded) -> None:
    b = loaded.bucket
    with pytest.raises(ErrObjNotFound):
        b.object("no/such/object").get_reader().read_all()
    with pytest.raises(ErrObjNotFound):
        b.object("données/absent-ü").get_reader().read_all()


def test_bucket_create_and_delete_semantics(sdk: Any, bucket_name: str) -> None:
    b = sdk.bucket(bucket_name)
    with pytest.raises(ErrBckNotFound):
        b.delete()
    b.delete(missing_ok=True)  # missing: fine
    b.create()
    try:
        b.create(exist_ok=True)  # exists: fine
        with pytest.raises(ErrBckAlreadyExists):
            b.create()
        assert bucket_name in {x.name for x in sdk.cluster().list_buckets()}
        b.object("k").get_writer().put_content(b"v")
        assert b.object("k").get_reader().read_all() == b"v"
    finally:
        b.delete()
    assert bucket_name not in {x.name for x in sdk.cluster().list_buckets()}
    with pytest.raises(ErrBckNotFound):
        b.object("k").get_reader().read_all()
    with pytest.raises(ErrBckNotFound):
        b.delete()
    b.delete(missing_ok=True)


def test_delete_some_objects(loaded: Loaded) -> None:
    b, objs = loaded.bucket, loaded.objs
    victims = ["a/b/c/x.bin", "données/ü-日本.txt", "with space/file name.txt"] + [
        k for k in list(objs)[len(SPECIAL_NAMES) :: 20]
    ]
    victims = list(dict.fromkeys(victims))
    pmap(lambda k: b.object(k).delete(), victims)
    for k in victims:
        del objs[k]

    def gone(k: str) -> bool:
        try:
            b.object(k).get_reader().read_all()
        except ErrObjNotFound:
            return True
        return False

    assert all(pmap(gone, victims))
    with pytest.raises(ErrObjNotFound):
        b.object(victims[0]).delete()
    assert {e.name: e.size for e in b.list_all_objects(page_size=100)} == {k: len(v) for k, v in objs.items()}
    # the survivors are intact (a sample; the full read is test_get_and_head_every_object)
    sample = list(objs)[::10]
    assert all(pmap(lambda k: b.object(k).get_reader().read_all() == objs[k], sample))


def test_destroy_bucket(sdk: Any, cluster: Any, loaded: Loaded) -> None:
    """Last in the file: destroying the loaded bucket removes it and its files on every target."""
    b = loaded.bucket
    some = next(iter(loaded.objs))
    b.delete()
    loaded.destroyed = True
    assert b.name not in {x.name for x in sdk.cluster().list_buckets()}
    with pytest.raises(ErrBckNotFound):
        b.object(some).get_reader().read_all()
    with pytest.raises(ErrBckNotFound):
        b.list_all_objects()
    left = []
    troot = os.path.join(cluster.data_dir, "targets")
    for tid in os.listdir(troot):
        for mp in os.listdir(os.path.join(troot, tid)):
            d = os.path.join(troot, tid, mp, "@ais", b.name, "%ob")
            for _root, _dirs, files in os.walk(d):
                left.extend(files)
    assert not left, f"{len(left)} object files left after destroy"
