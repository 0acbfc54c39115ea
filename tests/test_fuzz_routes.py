"""Property-based fuzzing of every route of a real cluster (issue #11, item 5).

Hypothesis draws object and bucket names (valid, percent-escaped garbage, invalid
UTF-8, overlong), query strings, JSON bodies (random values, random shapes with the
route's own field names, deep nesting, wrong types) and headers, and sends them with
:mod:`http.client` (the request line goes out as drawn) to the gateway's and the
targets' public, internal and pod-facing routes, half the time with the cluster
credential. Properties:

- no answer is a 5xx (a 5xx is only for the server's own failures);
- no request hangs (each has a socket timeout);
- garbage changes nothing: the cluster map, the protected bucket and its objects
  (names, sizes, bytes) are the same afterwards, every node still answers its
  health check, and nothing appears next to the data root.

Writes go only to a scratch bucket: a drawn request that happens to be valid (a PUT
of a well-formed name) may change that one, as it should. Runs on its own two-target
cluster; about a minute in all (``max_examples`` per test below, ``deadline=None``).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from urllib.parse import quote, urlencode, urlsplit

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aioetl.engine.node.auth import HEADER
from aioetl.engine.node.launcher import LocalCluster

REQ_TIMEOUT_S = 20.0
KEEP = "fz"  # protected: only read by the fuzzer
SCRATCH = "fzw"  # writes land here
OBJS = {f"d{i}/o{i}.bin": os.urandom(100 + i) for i in range(6)}

COMMON = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)

# (node, method, template): every route the nodes register; {b} bucket, {o} object
# name, {n} ETL name, {id} job id, {t} target id, {p} prefix, {tail} anything
GW_ROUTES = [
    ("GET", "/v1/daemon"), ("GET", "/v1/health"), ("POST", "/v1/cluster/join"),
    ("GET", "/v1/buckets"), ("GET", "/v1/buckets/"), ("GET", "/v1/buckets/{b}"),
    ("POST", "/v1/buckets/{b}"), ("DELETE", "/v1/buckets/{b}"), ("HEAD", "/v1/buckets/{b}"),
    ("HEAD", "/v1/buckets/{b}/{p}"), ("GET", "/v1/objects/{b}/{o}"), ("PUT", "/v1/objects/{b}/{o}"),
    ("HEAD", "/v1/objects/{b}/{o}"), ("DELETE", "/v1/objects/{b}/{o}"), ("POST", "/v1/objects/{b}/{o}"),
    ("PATCH", "/v1/objects/{b}/{o}"), ("GET", "/v1/reverse/daemon"),
    ("PUT", "/v1/etl"), ("GET", "/v1/etl"), ("GET", "/v1/etl/{n}"), ("DELETE", "/v1/etl/{n}"),
    ("POST", "/v1/etl/{n}/stop"), ("POST", "/v1/etl/{n}/start"), ("POST", "/v1/etl/{n}/_aborted"),
    ("GET", "/v1/etl/{n}/logs"), ("GET", "/v1/etl/{n}/logs/{t}"), ("GET", "/v1/etl/{n}/health"),
    ("GET", "/v1/etl/{n}/metrics"), ("GET", "/v1/cluster"), ("PUT", "/v1/cluster"), ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}/errors"), ("POST", "/v1/jobs/{id}/_abort"),
]
TGT_ROUTES = [
    ("PUT", "/v1/objects/{b}/{o}"), ("GET", "/v1/objects/{b}/{o}"), ("HEAD", "/v1/objects/{b}/{o}"),
    ("DELETE", "/v1/objects/{b}/{o}"), ("PATCH", "/v1/objects/{b}/{o}"), ("GET", "/v1/buckets/{b}"),
    ("PUT", "/v1/metasync"), ("GET", "/v1/health"), ("GET", "/v1/daemon"), ("POST", "/v1/etl/_init"),
    ("GET", "/v1/etl"), ("GET", "/v1/etl/_object/{tail}"), ("PUT", "/v1/etl/_object/{tail}"),
    ("DELETE", "/v1/etl/{n}"), ("GET", "/v1/etl/{n}/details"), ("GET", "/v1/etl/{n}/logs"),
    ("GET", "/v1/etl/{n}/health"), ("GET", "/v1/etl/{n}/metrics"), ("POST", "/v1/xactions/_start"),
    ("POST", "/v1/xactions/_abort"), ("POST", "/v1/xactions/_settle"), ("GET", "/v1/xactions"),
    ("GET", "/v1/xactions/{id}/errors"),
]
ROUTES = [("gw", m, p) for m, p in GW_ROUTES] + [("t", m, p) for m, p in TGT_ROUTES]
SAFE_METHODS = ("GET", "HEAD")

# field names the routes read: random shapes built from them reach past "not an object"
FIELDS = [
    "action", "name", "value", "daemon_id", "url", "smap", "bmd", "version", "buckets", "tmap", "proxy_si",
    "id", "kind", "src", "dst", "msg", "etl", "err", "secret", "xid", "uuid", "prefix", "token", "pagesize",
    "keys", "revoke", "communication", "runtime", "spec", "image", "command", "env", "num-workers",
    "num_workers", "pipeline", "ext", "objnames", "template", "request_timeout", "etl_args", "coer",
    "continuation_token", "props", "flags", "ID", "Kind", "obj_timeout", "init_timeout", "support_direct_put",
]
ACTIONS = ["create-bck", "list", "summary-bck", "etl-bck", "copy-bck", "etl-listrange", "copy-listrange",
           "delete-listrange", "destroy-bck", "stop", "start", "promote", ""]
QUERY_KEYS = ["what", "etl_name", "etl_args", "etl_pipeline", "bck_to", "uuid", "provider", "props", "kind", "id",
              "object_to", "set-new-custom", "show_active", "daemon_id", "fltpresence", "latest", "namespace"]
HEADER_NAMES = ["Range", "Content-Type", "Accept", "Ais-Node-Id", "Ais-Node-Url", "Authorization", "If-None-Match",
                "Ais-Checksum-Type", "Ais-Checksum-Value", "Aioetl-Ws-Ids", "Cookie", "X-Forwarded-For", HEADER]

_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_any_char = st.characters(codec="utf-8") | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_json_scalar = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False) | st.text(max_size=40) | st.sampled_from(ACTIONS))


def _quote_text(s: str) -> str:
    """Percent-encode ``s`` as UTF-8; lone surrogates become their (invalid) 3 bytes."""
    return quote(s.encode("utf-8", "surrogatepass"), safe="/")


name_segments = st.one_of(
    st.text(alphabet=st.sampled_from("abcXYZ019-_."), min_size=1, max_size=12),  # plausible
    st.text(_any_char, max_size=30).map(_quote_text),  # any text, escaped (incl. invalid UTF-8)
    st.text(_ascii, max_size=30).map(lambda s: s.replace("?", "%3F").replace("#", "%23").replace(" ", "%20")),
    st.binary(max_size=20).map(lambda b: quote(b, safe="")),  # arbitrary bytes
    st.sampled_from(["..", ".", "%2E%2E", "%2e", "%", "%zz", "%4", "%C0%AF", "%E0%80%AF", "%ED%A0%80", "%00",
                     "a%2Fb", "..%2F..%2Fetc", "x" * 300, "%FF" * 10, "é" * 600]).map(lambda s: quote(s, safe="%./")),
    st.integers(min_value=250, max_value=1100).map(lambda n: "n" * n),  # around the length limits
)
names = st.lists(name_segments, min_size=1, max_size=4).map("/".join)

json_values = st.recursive(
    _json_scalar,
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), kids, max_size=5),
    max_leaves=20,
)


def _nested(depth: int) -> bytes:
    """JSON nested ``depth`` levels (objects and arrays in turn), built as text: past
    Python's recursion limit ``json.dumps`` could not make it."""
    opens = "".join('[' if i % 2 else '{"value": ' for i in range(depth))
    closes = "".join(']' if i % 2 else '}' for i in reversed(range(depth)))
    return (opens + "1" + closes).encode()


json_docs = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
    st.builds(lambda a, v: {"action": a, "name": "", "value": v}, st.sampled_from(ACTIONS), json_values),
)
bodies = st.one_of(
    st.none(),
    json_docs.map(lambda d: json.dumps(d).encode()),
    st.integers(min_value=1, max_value=3000).map(_nested),
    st.binary(max_size=200),
    st.sampled_from([b"{", b"[" * 50_000, b"\xff\xfe", b'{"a": 1e999}', b'{"pagesize": 1e400}', b"null", b"  "]),
)
queries = st.dictionaries(st.sampled_from(QUERY_KEYS) | st.text(_ascii, min_size=1, max_size=8),
                          st.text(max_size=30) | st.sampled_from(["smap", "bmd", "snode", "capacity", "status",
                                                                   "running_all", "ais/@#/fzw/", "true"]),
                          max_size=4)
header_values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=4)


# -- the cluster -----------------------------------------------------------------------


class Fz:
    """The fuzzed cluster: endpoints, credential, and the snapshot of what must not change."""

    def __init__(self, cluster: LocalCluster, outer: str) -> None:
        self.cluster, self.outer, self.gw = cluster, outer, cluster.endpoint
        with open(cluster.secret_path) as f:
            self.secret = f.read().strip()
        self.targets = self.tmap()
        self.statuses: Counter[int] = Counter()

    def tmap(self) -> dict[str, str]:
        r = requests.get(f"{self.gw}/v1/daemon", params={"what": "smap"}, timeout=REQ_TIMEOUT_S)
        return {tid: t["public_net"]["direct_url"] for tid, t in r.json()["tmap"].items()}

    def objects(self) -> dict[str, bytes]:
        r = requests.get(f"{self.gw}/v1/buckets/{KEEP}", data=json.dumps({"action": "list", "value": {}}),
                         timeout=REQ_TIMEOUT_S)
        assert r.status_code == 200, r.text[:300]
        out = {}
        for name in OBJS:
            g = requests.get(f"{self.gw}/v1/objects/{KEEP}/{quote(name)}", timeout=REQ_TIMEOUT_S)
            out[name] = g.content if g.status_code == 200 else b"<%d>" % g.status_code
        return out

    def check_unchanged(self) -> None:
        assert self.tmap() == self.targets
        assert self.objects() == OBJS
        for base in [self.gw, *self.targets.values()]:
            assert requests.get(f"{base}/v1/health", timeout=REQ_TIMEOUT_S).status_code == 200
        assert os.listdir(self.outer) == ["data"], os.listdir(self.outer)

    def send(self, base: str, method: str, path: str, body: bytes | None, hdrs: dict[str, str]) -> tuple[int, bytes]:
        """One request, request line as drawn; fails the test on a hang."""
        u = urlsplit(base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=REQ_TIMEOUT_S)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            if body is not None or method in ("PUT", "POST", "PATCH"):
                conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body or None)
            r = conn.getresponse()
            self.statuses[r.status] += 1
            return r.status, r.read()
        except TimeoutError:
            pytest.fail(f"hang: {method} {base}{path[:300]} (no answer in {REQ_TIMEOUT_S} s)")
        except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError) as e:
            self.statuses[0] += 1
            return 0, repr(e).encode()  # aiohttp drops some malformed requests: not a 5xx
        finally:
            conn.close()


@pytest.fixture(scope="module")
def fz() -> Iterator[Fz]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    outer = tempfile.mkdtemp(prefix="aioetl-fuzz-", dir=base)
    try:
        with LocalCluster(targets=2, data_dir=os.path.join(outer, "data"), port=0) as c:
            for b in (KEEP, SCRATCH):
                r = requests.post(f"{c.endpoint}/v1/buckets/{b}", json={"action": "create-bck"}, timeout=REQ_TIMEOUT_S)
                assert r.status_code == 200
            for name, data in OBJS.items():
                r = requests.put(f"{c.endpoint}/v1/objects/{KEEP}/{quote(name)}", data=data, timeout=REQ_TIMEOUT_S)
                assert r.status_code == 200, r.text
            f = Fz(c, outer)
            yield f
            f.check_unchanged()
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _fill(template: str, method: str, data: st.DataObject, fz: Fz) -> str:
    """The path of ``template`` with every placeholder drawn (the kept bucket only for reads)."""
    safe = method in SAFE_METHODS
    out = template
    if "{b}" in out:
        pool = [KEEP, SCRATCH] if safe else [SCRATCH]
        b = data.draw(st.sampled_from(pool) | name_segments, label="bucket")
        if not safe and b.strip("/") == KEEP:
            b = SCRATCH
        out = out.replace("{b}", b)
    if "{o}" in out:
        out = out.replace("{o}", data.draw(st.sampled_from(sorted(OBJS)).map(quote) | names, label="object"))
    if "{p}" in out:
        out = out.replace("{p}", data.draw(names, label="prefix"))
    if "{n}" in out:
        out = out.replace("{n}", data.draw(st.sampled_from(["no-such-etl", "abcdef"]) | name_segments, label="etl"))
    if "{id}" in out:
        out = out.replace("{id}", data.draw(st.sampled_from(["AbCdEfGh1", "tco-AbCdEfGh1"]) | name_segments,
                                            label="id"))
    if "{t}" in out:
        out = out.replace("{t}", data.draw(st.sampled_from(sorted(fz.targets)) | name_segments, label="tid"))
    if "{tail}" in out:
        out = out.replace("{tail}", data.draw(names, label="tail"))
    return out


def _check(fz: Fz, node: str, method: str, path: str, body: bytes | None, hdrs: dict[str, str]) -> None:
    base = fz.gw if node == "gw" else fz.targets[sorted(fz.targets)[len(path) % len(fz.targets)]]
    status, reply = fz.send(base, method, path, body, hdrs)
    assert status < 500, (f"{status} for {method} {base}{path[:300]} body={body[:200] if body else body!r}: "
                          f"{reply[:300]!r}")


def _auth(data: st.DataObject, fz: Fz) -> dict[str, str]:
    return {HEADER: fz.secret} if data.draw(st.booleans(), label="credential") else {}


# -- the properties --------------------------------------------------------------------


@settings(COMMON, max_examples=1000)
@given(data=st.data())
def test_fuzz_names_on_object_and_bucket_routes(fz: Fz, data: st.DataObject) -> None:
    node, method, tpl = data.draw(st.sampled_from([r for r in ROUTES if "{" in r[2]]), label="route")
    path = _fill(tpl, method, data, fz)
    body = b"fuzz" if method in ("PUT", "POST", "PATCH") else None
    _check(fz, node, method, path, body, _auth(data, fz))


@settings(COMMON, max_examples=800)
@given(data=st.data())
def test_fuzz_query_strings(fz: Fz, data: st.DataObject) -> None:
    node, method, tpl = data.draw(st.sampled_from(ROUTES), label="route")
    q = data.draw(queries, label="query")
    path = _fill(tpl, method, data, fz) + "?" + urlencode(q, safe="@#/", encoding="utf-8", errors="surrogatepass")
    if data.draw(st.booleans(), label="raw query"):
        path += "&" + data.draw(st.text(_ascii, max_size=20).map(lambda s: s.replace(" ", "+").replace("#", "")))
    _check(fz, node, method, path, None, _auth(data, fz))


@settings(COMMON, max_examples=2000)
@given(data=st.data())
def test_fuzz_json_bodies(fz: Fz, data: st.DataObject) -> None:
    node, method, tpl = data.draw(st.sampled_from([r for r in ROUTES if r[1] != "HEAD"]), label="route")
    path = _fill(tpl, method, data, fz)
    body = data.draw(bodies, label="body")
    hdrs = _auth(data, fz)
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    _check(fz, node, method, path, body, hdrs)


@settings(COMMON, max_examples=800)
@given(data=st.data())
def test_fuzz_headers(fz: Fz, data: st.DataObject) -> None:
    node, method, tpl = data.draw(st.sampled_from(ROUTES), label="route")
    path = _fill(tpl, method, data, fz)
    hdrs = {**data.draw(headers, label="headers"), **_auth(data, fz)}
    if data.draw(st.integers(0, 9), label="huge header") == 0:
        hdrs["X-Huge"] = "h" * data.draw(st.integers(8000, 70000))
    _check(fz, node, method, path, b"" if method in ("PUT", "POST", "PATCH") else None, hdrs)


yaml_texts = st.one_of(
    st.text(max_size=300),
    json_values.map(lambda v: yaml.safe_dump(v)),
    st.dictionaries(st.sampled_from(["kind", "metadata", "spec", "containers", "image", "command", "apiVersion"]),
                    json_values, max_size=5).map(lambda d: yaml.safe_dump(d)),
    st.integers(1, 12).map(lambda n: "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"b{i}: &b{i} [{','.join(['*' + ('a' if i == 0 else f'b{i - 1}')] * 9)}]\n" for i in range(n))),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(["!!python/object/apply:os.system ['true']", "a: &a [*a]", "--- {a: 1}\n--- {b: 2}\n",
                     "%YAML 9.9\n"]),
)


@settings(COMMON, max_examples=300)
@given(text=yaml_texts, comm=st.sampled_from(["", "hpush://", "ws://", "bogus"]))
def test_fuzz_etl_spec_yaml(fz: Fz, text: str, comm: str) -> None:
    spec = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()
    body = json.dumps({"name": "fuzz-spec-etl", "communication": comm, "spec": spec}).encode()
    _check(fz, "gw", "PUT", "/v1/etl", body, {"Content-Type": "application/json"})
    assert requests.get(f"{fz.gw}/v1/etl/fuzz-spec-etl", timeout=REQ_TIMEOUT_S).status_code == 404


def test_fuzzed_cluster_is_unchanged(fz: Fz) -> None:
    """Garbage changed nothing (also checked again when the module's cluster stops)."""
    print(f"fuzzed requests by status: {dict(sorted(fz.statuses.items()))}")
    assert sum(fz.statuses.values()) > 0
    assert all(s < 500 for s in fz.statuses)
    fz.check_unchanged()
