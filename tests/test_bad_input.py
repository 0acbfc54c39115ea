"""Bad input against a real local cluster: every client mistake gets a clear 4xx and
changes nothing; nothing is ever written outside the data root.

Requests that a client library would normalize (``..`` segments, ``//``, ``%2E``) are
sent with :mod:`http.client` (the request line goes out as written) or a raw socket.
After each refused request the data root is walked and compared with a snapshot taken
before it, and the path the bad name would have reached is checked not to exist.

The disconnect and crash tests use their own one-target cluster, which they stop and
start again on the same data root.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec
import pytest
import requests
import xxhash

from aioetl.engine.core.names import make_uname
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.launcher import LocalCluster

TIMEOUT_S = 30.0
CREATE = json.dumps({"action": "create-bck", "name": "", "value": None}).encode()


# -- helpers -------------------------------------------------------------------------


class Reply:
    """Status, lower-cased headers and body of one raw HTTP exchange."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        """The error text: the body, or the ``Hdr-Error`` header of a HEAD."""
        return self.body.decode(errors="replace") or self.headers.get("hdr-error", "")

    def message(self) -> str:
        """The ``message`` of an AIStore-shaped JSON error (fails the test if not one)."""
        doc = json.loads(self.text)
        assert isinstance(doc, dict) and doc.get("message"), f"not an AIStore error: {self.text[:300]!r}"
        return str(doc["message"])

    def __repr__(self) -> str:
        return f"<{self.status} {self.text[:200]!r}>"


def raw(base: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """One request with ``path`` sent verbatim on the request line (no normalization)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT_S)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        hdrs = dict(headers or {})
        if body is not None or method in ("PUT", "POST"):
            hdrs.setdefault("Content-Length", str(len(body or b"")))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders(body or None)
        r = conn.getresponse()
        data = r.read()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def raw_follow(base: str, method: str, path: str, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> Reply:
    """Like :func:`raw`, following one 307 from the gateway to the target."""
    r = raw(base, method, path, body, headers)
    if r.status == 307:
        loc = urlsplit(r.headers["location"])
        r = raw(f"{loc.scheme}://{loc.netloc}", method, loc.path + (f"?{loc.query}" if loc.query else ""), body,
                headers)
    return r


def smap(endpoint: str) -> dict[str, Any]:
    r = requests.get(f"{endpoint}/v1/daemon", params={"what": "smap"}, timeout=TIMEOUT_S)
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


def target_urls(endpoint: str) -> dict[str, str]:
    """``{daemon_id: direct_url}`` of every target, from the gateway's smap."""
    return {tid: t["public_net"]["direct_url"] for tid, t in smap(endpoint)["tmap"].items()}


def bucket_names(endpoint: str) -> list[str]:
    r = requests.get(f"{endpoint}/v1/buckets", timeout=TIMEOUT_S)
    assert r.status_code == 200
    return sorted(b["name"] for b in r.json())


# logs and ready files, pod runtime state, job reports: written asynchronously by other tests' work
_VOLATILE_DIRS = ("run", "etl-pods", "etl-venvs", "jobs")


def data_files(data_dir: str) -> set[str]:
    """Every file and directory under the data root (relative), except logs and run state."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(data_dir):
        rel = os.path.relpath(dirpath, data_dir)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in _VOLATILE_DIRS]
        for n in dirnames + filenames:
            out.add(os.path.normpath(os.path.join(rel, n)))
    return out


def mountpaths(data_dir: str) -> list[str]:
    with open(os.path.join(data_dir, "cluster.json")) as f:
        layout = json.load(f)
    return [os.path.join(data_dir, mp) for t in layout["targets"] for mp in t["mountpaths"]]


def work_files(data_dir: str, bck: str) -> list[str]:
    """Files in ``<mountpath>/@ais/<bck>/%wk/`` on every target."""
    out = []
    for mp in mountpaths(data_dir):
        wdir = os.path.join(mp, "@ais", bck, "%wk")
        if os.path.isdir(wdir):
            out += [os.path.join(wdir, f) for f in os.listdir(wdir)]
    return out


def wait_for(cond: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S) -> Any:
    """Poll ``cond`` until it returns a truthy value; fail with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for: {what}")
        time.sleep(0.01)


def xxh(data: bytes) -> str:
    return xxhash.xxh64(data).hexdigest()


def obj_url(endpoint: str, bck: str, obj: str) -> str:
    return f"{endpoint}/v1/objects/{bck}/{quote(obj, safe='/')}"


def put(endpoint: str, bck: str, obj: str, data: bytes) -> requests.Response:
    return requests.put(obj_url(endpoint, bck, obj), data=data, timeout=TIMEOUT_S)


def get(endpoint: str, bck: str, obj: str, **kw: Any) -> requests.Response:
    return requests.get(obj_url(endpoint, bck, obj), timeout=TIMEOUT_S, **kw)


@pytest.fixture
def bucket(endpoint: str, bucket_name: str) -> Iterator[str]:
    """A fresh bucket on the session cluster, destroyed afterwards."""
    r = requests.post(f"{endpoint}/v1/buckets/{bucket_name}", data=CREATE, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text
    yield bucket_name
    requests.delete(f"{endpoint}/v1/buckets/{bucket_name}", timeout=TIMEOUT_S)


# -- bucket names ------------------------------------------------------------------------

BAD_BUCKET_PATHS = {
    "too-long-65": "x" * 65,
    "space": "a%20b",
    "slash-encoded": "a%2Fb",
    "dotdot": "..",
    "dotdot-encoded": "%2E%2E",
    "dot": ".",
    "star": "bck*",
    "star-encoded": "bck%2A",
    "nul": "b%00",
    "non-ascii": quote("bück"),
    "empty": "",
}


@pytest.mark.parametrize("path_part", list(BAD_BUCKET_PATHS.values()), ids=list(BAD_BUCKET_PATHS))
def test_create_bucket_with_bad_name_is_400_and_creates_nothing(cluster: LocalCluster, endpoint: str,
                                                                path_part: str) -> None:
    before_list, before_files = bucket_names(endpoint), data_files(cluster.data_dir)
    r = raw(endpoint, "POST", f"/v1/buckets/{path_part}", CREATE, {"Content-Type": "application/json"})
    assert r.status == 400, r
    assert "bucket name" in r.message()
    assert bucket_names(endpoint) == before_list
    assert data_files(cluster.data_dir) == before_files
    bmd = requests.get(f"{endpoint}/v1/daemon", params={"what": "bmd"}, timeout=TIMEOUT_S).json()
    assert sorted(bmd["buckets"]) == before_list


# -- object names ------------------------------------------------------------------------

_TOK = secrets.token_hex(4)
_LONG = "/".join(["n" * 200] * 5 + ["n" * 30 + _TOK])  # 1,043 bytes: over 1 KiB, every segment short
# (raw object part of the URL path, the decoded name a naive server would join to %ob/)
BAD_OBJECT_NAMES = {
    "dotdot-mid": (f"a/../../etc/x-{_TOK}", f"a/../../etc/x-{_TOK}"),
    "dotdot-lead": (f"../x-{_TOK}", f"../x-{_TOK}"),
    "dotdot-encoded": (f"%2E%2E/x-{_TOK}", f"../x-{_TOK}"),
    "dotdot-lower-encoded": (f"a/%2e%2e/%2e%2e/x-{_TOK}", f"a/../../x-{_TOK}"),
    "dotdot-slash-encoded": (f"..%2F..%2Fx-{_TOK}", f"../../x-{_TOK}"),
    "deep-to-tmp": ("../" * 16 + f"tmp/aioetl-escape-{_TOK}", "../" * 16 + f"tmp/aioetl-escape-{_TOK}"),
    "absolute-etc": (f"/etc/x-{_TOK}", f"/etc/x-{_TOK}"),
    "absolute-tmp": (f"/tmp/aioetl-abs-{_TOK}", f"/tmp/aioetl-abs-{_TOK}"),
    "absolute-encoded": (f"%2Ftmp%2Faioetl-abs2-{_TOK}", f"/tmp/aioetl-abs2-{_TOK}"),
    "dot": (f"./x-{_TOK}", f"./x-{_TOK}"),
    "empty-segment": (f"a//x-{_TOK}", f"a//x-{_TOK}"),
    "nul": (f"a%00x-{_TOK}", "a"),  # what a C-level open() would truncate it to
    "over-1KiB": (_LONG, _LONG),
}


def _would_be_paths(data_dir: str, bck: str, name: str) -> list[str]:
    """Where ``name`` would land if joined naively under each mountpath's %ob and %wk."""
    out = []
    for mp in mountpaths(data_dir):
        for sub in ("%ob", "%wk"):
            out.append(os.path.normpath(os.path.join(mp, "@ais", bck, sub, name)))
    return out


@pytest.mark.parametrize("raw_name,decoded", list(BAD_OBJECT_NAMES.values()), ids=list(BAD_OBJECT_NAMES))
def test_bad_object_name_is_400_at_gateway_and_targets(
    cluster: LocalCluster, endpoint: str, bucket: str, raw_name: str, decoded: str
) -> None:
    body = b"must not be written anywhere " + _TOK.encode()
    would_be = _would_be_paths(cluster.data_dir, bucket, decoded)
    assert not any(os.path.exists(p) for p in would_be), "precondition: the escape paths are free"
    before = data_files(cluster.data_dir)
    assert decoded != _LONG or len(decoded.encode()) > 1024
    nodes = {"gateway": endpoint, **target_urls(endpoint)}
    assert len(nodes) == 4
    path = f"/v1/objects/{bucket}/{raw_name}"
    for node, base in nodes.items():
        for method in ("PUT", "GET", "HEAD", "DELETE"):
            r = raw(base, method, path, body if method == "PUT" else None)
            assert r.status == 400, f"{method} {path[:120]} on {node}: {r}"
            assert "object name" in r.message(), f"{method} on {node}: {r}"
    # nothing created: not at the would-be paths (some outside the data root), not anywhere inside it
    created = [p for p in would_be if os.path.exists(p)]
    assert not created, f"bad name wrote {created}"
    assert data_files(cluster.data_dir) == before
    listing = requests.get(
        f"{endpoint}/v1/buckets/{bucket}", data=json.dumps({"action": "list", "value": {}}), timeout=TIMEOUT_S
    )
    assert listing.status_code == 200
    assert not msgspec.msgpack.decode(listing.content)["Entries"], "the bucket must still be empty"


SDK_BAD_NAMES = [
    f"a/../../etc/x-{_TOK}",
    f"../x-{_TOK}",
    "../" * 16 + f"tmp/aioetl-sdk-{_TOK}",
    f"/tmp/aioetl-sdk-abs-{_TOK}",
    f"./x-{_TOK}",
    f"a//x-{_TOK}",
    f"a/x-{_TOK}/",
    f"a\x00x-{_TOK}",
    "..",
    "/".join(["m" * 250] * 5),
]


def test_bad_object_names_quoted_as_the_sdk_quotes_them_are_400(cluster: LocalCluster, endpoint: str,
                                                                bucket: str) -> None:
    """The names sent as the SDK sends them (``quote(name)``, then the 307) are refused too."""
    before = data_files(cluster.data_dir)
    for name in SDK_BAD_NAMES:
        r = raw_follow(endpoint, "PUT", f"/v1/objects/{bucket}/{quote(name)}", b"x")
        assert r.status == 400, f"{name[:80]!r}: {r}"
        assert not any(os.path.exists(p) for p in _would_be_paths(cluster.data_dir, bucket, name.split("\x00")[0]))
    assert data_files(cluster.data_dir) == before


# -- malformed JSON ----------------------------------------------------------------------

MALFORMED = {
    "open-brace": b"{",
    "array": b"[]",
    "action-int": b'{"action": 5}',
    "non-utf8": b"\xff\xfe\xfd\x80",
    "truncated": b'{"action": "create-bck", "value": ',
    "string": b'"create-bck"',
    "null": b"null",
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_json_on_bucket_create_is_400(cluster: LocalCluster, endpoint: str, bucket_name: str,
                                                body: bytes) -> None:
    before_list, before_files = bucket_names(endpoint), data_files(cluster.data_dir)
    r = raw(endpoint, "POST", f"/v1/buckets/{bucket_name}", body, {"Content-Type": "application/json"})
    assert r.status == 400, r
    assert r.message()
    assert bucket_name not in bucket_names(endpoint) and bucket_names(endpoint) == before_list
    assert data_files(cluster.data_dir) == before_files


@pytest.mark.parametrize(
    "body",
    list(MALFORMED.values())
    + [
        b'{"action": "list", "value": []}',
        b'{"action": "list", "value": "prefix"}',
        b'{"action": "list", "value": {"pagesize": "many"}}',
        b'{"action": "list", "value": {"flags": "x"}}',
        b'{"action": "no-such-action"}',
    ],
    ids=list(MALFORMED) + ["value-array", "value-string", "pagesize-str", "flags-str", "unknown-action"],
)
def test_malformed_json_on_list_objects_is_400(cluster: LocalCluster, endpoint: str, bucket: str, body: bytes) -> None:
    assert put(endpoint, bucket, "keep", b"kept").status_code == 200
    before = data_files(cluster.data_dir)
    r = raw(endpoint, "GET", f"/v1/buckets/{bucket}", body, {"Content-Type": "application/json"})
    if body == b"null":  # no action at all: a plain list, as for an empty body
        assert r.status == 200, r
    else:
        assert r.status == 400, r
        assert r.message()
    assert data_files(cluster.data_dir) == before
    assert get(endpoint, bucket, "keep").content == b"kept"


# -- a client that goes away; a target that dies ----------------------------------------


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[LocalCluster]:
    """A private one-target cluster (these tests stop and restart it)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="aioetl-badinput-", dir=base)
    c = LocalCluster(targets=1, data_dir=d, port=0)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(d, ignore_errors=True)


def _owner(cluster: LocalCluster, bck: str, obj: str) -> tuple[str, int]:
    """``(target url, index in cluster.targets)`` of the target HRW picks for ``bck/obj``."""
    r = raw(cluster.endpoint, "GET", f"/v1/objects/{bck}/{quote(obj)}")
    assert r.status == 307, r
    loc = urlsplit(r.headers["location"])
    url = f"{loc.scheme}://{loc.netloc}"
    idx = [i for i, t in enumerate(cluster.targets) if t.url == url]
    assert len(idx) == 1
    return url, idx[0]


def _start_half_put(url: str, bck: str, obj: str, total: int) -> socket.socket:
    """Open a raw PUT of ``total`` bytes to ``url`` and send only half of the body."""
    u = urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=TIMEOUT_S)
    head = (
        f"PUT /v1/objects/{bck}/{quote(obj)} HTTP/1.1\r\n"
        f"Host: {u.netloc}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    s.sendall(head + os.urandom(total // 2))
    return s


def _create(endpoint: str, bck: str) -> None:
    r = requests.post(f"{endpoint}/v1/buckets/{bck}", data=CREATE, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text


def _restart(c: LocalCluster) -> None:
    c.stop()
    c.start()


def test_client_disconnect_mid_put_leaves_nothing(own_cluster: LocalCluster) -> None:
    c = own_cluster
    bck, obj = f"cut-{secrets.token_hex(3)}", "dir/half.bin"
    _create(c.endpoint, bck)
    before = data_files(c.data_dir)
    url, _ = _owner(c, bck, obj)
    s = _start_half_put(url, bck, obj, 1 << 20)
    try:
        # the target has started writing the body into a work file
        wfs = wait_for(lambda: [p for p in work_files(c.data_dir, bck) if os.path.getsize(p) > 0],
                       "a work file with bytes")
        assert len(wfs) == 1
    finally:
        s.close()
    wait_for(lambda: not work_files(c.data_dir, bck), "the target to drop the work file of the cut upload")
    r = get(c.endpoint, bck, obj)
    assert r.status_code == 404 and f"ais://{bck}/{obj}" in r.text
    _restart(c)
    assert work_files(c.data_dir, bck) == []
    r = get(c.endpoint, bck, obj)
    assert r.status_code == 404 and f"ais://{bck}/{obj}" in r.text
    ob = [os.path.join(mp, "@ais", bck, "%ob") for mp in mountpaths(c.data_dir)]
    assert not any(os.path.exists(os.path.join(d, obj)) for d in ob)
    # the only trace the cut upload may leave is the (now empty) work directory and its parents
    allowed = set()
    for mp in mountpaths(c.data_dir):
        rel = os.path.relpath(mp, c.data_dir)
        allowed |= {os.path.join(rel, "@ais"), os.path.join(rel, "@ais", bck), os.path.join(rel, "@ais", bck, "%wk")}
    new_entries = data_files(c.data_dir) - before
    assert new_entries <= allowed, new_entries


def test_work_file_of_killed_target_is_removed_on_next_start(own_cluster: LocalCluster) -> None:
    c = own_cluster
    bck, obj = f"kill-{secrets.token_hex(3)}", "crash.bin"
    _create(c.endpoint, bck)
    assert put(c.endpoint, bck, "survivor", b"complete object").status_code == 200
    url, i = _owner(c, bck, obj)
    node = c.targets[i]
    s = _start_half_put(url, bck, obj, 1 << 20)
    try:
        wfs = wait_for(lambda: [p for p in work_files(c.data_dir, bck) if os.path.getsize(p) > 0],
                       "a work file with bytes")
        os.kill(node.pid, signal.SIGKILL)  # a process this test's cluster started
        assert node.proc is not None
        assert node.proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    finally:
        s.close()
    assert all(os.path.exists(p) for p in wfs), "precondition: a hard kill leaves the work file behind"
    _restart(c)
    assert not any(os.path.exists(p) for p in wfs)
    assert work_files(c.data_dir, bck) == []
    r = get(c.endpoint, bck, obj)
    assert r.status_code == 404 and f"ais://{bck}/{obj}" in r.text
    assert get(c.endpoint, bck, "survivor").content == b"complete object"


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_puts_of_one_name_leave_exactly_one_body(cluster: LocalCluster, endpoint: str, bucket: str) -> None:
    size = 4 << 20
    for round_ in range(3):
        obj = f"race-{round_}"
        bodies = [os.urandom(size), os.urandom(size)]
        barrier = threading.Barrier(2)
        results: list[Any] = [None, None]

        def send(k: int) -> None:
            barrier.wait()
            try:
                results[k] = put(endpoint, bucket, obj, bodies[k]).status_code
            except requests.RequestException as e:  # a clean failure is allowed, a hang is not
                results[k] = e

        threads = [threading.Thread(target=send, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=TIMEOUT_S * 2)
        assert not any(t.is_alive() for t in threads)
        ok = [st for st in results if st == 200]
        assert ok, f"at least one PUT must succeed: {results}"
        for st in results:
            assert st == 200 or (isinstance(st, int) and 400 <= st < 500), f"unclean failure: {results}"
        r = get(endpoint, bucket, obj)
        assert r.status_code == 200
        assert r.content in bodies, "the object must be exactly one of the two bodies, not a mix"
        assert r.headers["ais-checksum-type"] == "xxhash"
        assert r.headers["ais-checksum-value"] == xxh(r.content)
        h = requests.head(obj_url(endpoint, bucket, obj), timeout=TIMEOUT_S, allow_redirects=True)
        assert int(h.headers["Content-Length"]) == size and h.headers["ais-checksum-value"] == xxh(r.content)
    assert work_files(cluster.data_dir, bucket) == []


# -- not found -----------------------------------------------------------------------------


def test_unknown_bucket_is_404_naming_the_bucket(endpoint: str, bucket_name: str) -> None:
    b = bucket_name  # never created
    for method in ("GET", "PUT", "DELETE", "HEAD"):
        r = raw_follow(endpoint, method, f"/v1/objects/{b}/some/obj", b"x" if method == "PUT" else None)
        assert r.status == 404, f"{method}: {r}"
        assert f"ais://{b}" in r.text and f"ais://{b}/" not in r.text, f"{method}: {r}"
    for method, body in (("GET", b'{"action": "list", "value": {}}'), ("HEAD", None), ("DELETE", None)):
        r = raw(endpoint, method, f"/v1/buckets/{b}", body)
        assert r.status == 404, f"{method} bucket: {r}"
        assert f"ais://{b}" in r.text, f"{method} bucket: {r}"
    assert b not in bucket_names(endpoint)


def test_unknown_object_is_404_naming_the_object(endpoint: str, bucket: str) -> None:
    for obj in ("missing", "dir/missing.txt", "ünï/名前"):
        for method in ("GET", "HEAD", "DELETE"):
            r = raw_follow(endpoint, method, f"/v1/objects/{bucket}/{quote(obj)}")
            assert r.status == 404, f"{method} {obj}: {r}"
            assert f"ais://{bucket}/{obj}" in r.message(), f"{method} {obj}: {r}"


def _client_mistakes(bucket: str) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    j = {"Content-Type": "application/json"}
    return [
        ("POST", f"/v1/buckets/{bucket}", b'{"action": "no-such-action"}', j),
        ("POST", f"/v1/buckets/{bucket}", CREATE, j),  # exists: 409
        ("DELETE", f"/v1/buckets/{bucket}", b'{"action": "no-such-action"}', j),
        ("GET", f"/v1/buckets/{bucket}?provider=gcp", None, {}),
        ("HEAD", f"/v1/buckets/{bucket}?provider=nope", None, {}),
        ("HEAD", f"/v1/buckets/{bucket}?presence=true&uuid=bogus", None, {}),
        ("GET", "/v1/daemon?what=nonsense", None, {}),
        ("GET", f"/v1/objects/{bucket}", None, {}),
        ("GET", f"/v1/objects/{bucket}/", None, {}),
        ("PATCH", f"/v1/objects/{bucket}/obj", b"{", j),
        ("PATCH", f"/v1/objects/{bucket}/obj", b'{"value": 5}', j),
        ("PATCH", f"/v1/objects/{bucket}/missing", b'{"value": {"k": "v"}}', j),
        ("GET", f"/v1/objects/{bucket}/obj?etl_name=no-such-etl", None, {}),
        ("GET", "/v1/etl/no-such-etl", None, {}),
        ("POST", f"/v1/buckets/{bucket}", b'{"action": "etl-bck", "value": {}}', j),
        ("POST", f"/v1/buckets/{bucket}", b'{"action": "etl-bck", "value": "x"}', j),
        ("GET", f"/v1/objects/{bucket}/obj", None, {"Range": "bytes=zz"}),
    ]


def test_client_mistakes_never_get_a_5xx(cluster: LocalCluster, endpoint: str, bucket: str) -> None:
    assert put(endpoint, bucket, "obj", b"0123456789").status_code == 200
    before = data_files(cluster.data_dir)
    bad = []
    for method, path, body, headers in _client_mistakes(bucket):
        r = raw_follow(endpoint, method, path, body, headers)
        if not 400 <= r.status < 500:
            bad.append(f"{method} {path} {body!r}: {r}")
    assert not bad, "\n".join(bad)
    assert data_files(cluster.data_dir) == before
    assert get(endpoint, bucket, "obj").content == b"0123456789"


# -- ranges ----------------------------------------------------------------------------------


def test_range_past_end_is_416_and_malformed_is_400(endpoint: str, bucket: str) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes
    assert put(endpoint, bucket, "r", data).status_code == 200
    ok = get(endpoint, bucket, "r", headers={"Range": "bytes=10-19"})  # control: ranges work
    assert ok.status_code == 206 and ok.content == data[10:20]
    assert get(endpoint, bucket, "r", headers={"Range": "bytes=-4"}).content == data[-4:]
    wrong = []
    for rng in ("bytes=1024-", "bytes=1024-2000", "bytes=5000-6000", "bytes=5000-"):
        r = get(endpoint, bucket, "r", headers={"Range": rng})
        if r.status_code != 416:
            wrong.append(f"{rng}: want 416, got {r.status_code} {r.text[:200]}")
    # not of the form bytes=<digits>-[<digits>] or bytes=-<digits> (Go's ParseInt also refuses "1_0")
    malformed = ("bytes=abc", "bytes=5-2", "items=0-1", "bytes=0-1,3-4", "bytes=", "bytes=1", "bytes=--1",
                 "bytes=1_0-20", "bytes=0x1-2")
    for rng in malformed:
        r = get(endpoint, bucket, "r", headers={"Range": rng})
        if r.status_code != 400 or not r.json().get("message"):
            wrong.append(f"{rng}: want 400, got {r.status_code} {r.text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert get(endpoint, bucket, "r").content == data


# -- name conflicts --------------------------------------------------------------------------


def _names_by_placement(endpoint: str, bucket: str, same: bool, stem: str = "p", tail: str = "/b") -> str:
    """A name ``n`` such that ``n`` and ``n + tail`` have the same (or different) HRW owners."""
    m = Smap.from_json(smap(endpoint))
    for i in range(1000):
        n = f"{stem}{i}"
        t1 = m.hrw_target(make_uname(bucket, n)).daemon_id
        t2 = m.hrw_target(make_uname(bucket, n + tail)).daemon_id
        if (t1 == t2) == same:
            return n
    raise AssertionError("no such name in 1000 tries")


def test_object_name_that_is_a_path_prefix_of_another_is_409(cluster: LocalCluster, endpoint: str, bucket: str) -> None:
    """``a`` exists, then ``a/b`` (and the reverse) on the same target: 409, nothing changes.

    The conflict is a property of one target's filesystem, as in AIStore: when HRW puts
    the two names on different targets both objects can exist (the next test).
    """
    a = _names_by_placement(endpoint, bucket, same=True)
    assert put(endpoint, bucket, a, b"file a").status_code == 200
    h0 = requests.head(obj_url(endpoint, bucket, a), timeout=TIMEOUT_S, allow_redirects=True).headers
    r = put(endpoint, bucket, f"{a}/b", b"under a")
    assert r.status_code == 409, f"{r.status_code} {r.text[:300]}"
    assert f"ais://{bucket}/{a}/b" in r.json()["message"]
    # the reverse: "c/b" exists, then "c"
    c = _names_by_placement(endpoint, bucket, same=True, stem="q")
    assert put(endpoint, bucket, f"{c}/b", b"file c/b").status_code == 200
    r = put(endpoint, bucket, c, b"over the dir")
    assert r.status_code == 409, f"{r.status_code} {r.text[:300]}"
    assert f"ais://{bucket}/{c}" in r.json()["message"]
    # nothing changed
    got = get(endpoint, bucket, a)
    assert got.content == b"file a"
    assert got.headers["ais-version"] == h0["ais-version"]
    assert got.headers["ais-checksum-value"] == h0["ais-checksum-value"] == xxh(b"file a")
    assert get(endpoint, bucket, f"{c}/b").content == b"file c/b"
    for missing in (f"{a}/b", c):
        r = get(endpoint, bucket, missing)
        assert r.status_code == 404 and f"ais://{bucket}/{missing}" in r.text
    assert work_files(cluster.data_dir, bucket) == []


def test_path_prefix_names_on_different_targets_both_exist(endpoint: str, bucket: str) -> None:
    a = _names_by_placement(endpoint, bucket, same=False)
    assert put(endpoint, bucket, a, b"file a").status_code == 200
    assert put(endpoint, bucket, f"{a}/b", b"under a").status_code == 200
    assert get(endpoint, bucket, a).content == b"file a"
    assert get(endpoint, bucket, f"{a}/b").content == b"under a"
