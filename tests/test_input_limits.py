"""Bounded input (issue #11): stalled uploads are cut, a YAML alias bomb is refused
cheaply, ``num_workers`` is capped, and the malformed bodies that used to be 500s are
400s naming the field.

The stalled-upload tests run their own one-target cluster started with
``AIOETL_BODY_IDLE_TIMEOUT_S=2``, so they take seconds, not the default 60.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from aioetl.engine.core.names import make_uname
from aioetl.engine.core.smap import Smap
from aioetl.engine.node.auth import HEADER
from aioetl.engine.node.launcher import LocalCluster
from aioetl.xactions.tcb import MAX_NUM_WORKERS
from tests.conftest import fast_data_dir
from tests.test_bad_input import CREATE, raw, target_urls, wait_for, work_files

IDLE_S = 2.0

# 9 levels of 9 references: 9**10 leaves once expanded, ~400 bytes of YAML
YAML_BOMB = (
    "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9))
    + "kind: Pod\nmetadata: {name: bomb}\nspec: {containers: [{name: s, image: x, command: *j}]}\n"
)


@pytest.fixture(scope="module")
def idle_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One target whose uploads are cut after ``IDLE_S`` of silence."""
    old = os.environ.get("AIOETL_BODY_IDLE_TIMEOUT_S")
    os.environ["AIOETL_BODY_IDLE_TIMEOUT_S"] = str(IDLE_S)
    try:
        for data in fast_data_dir(tmp_path_factory, "idle"):
            with LocalCluster(targets=1, data_dir=data, port=0) as c:
                os.environ.pop("AIOETL_BODY_IDLE_TIMEOUT_S", None)
                if old is not None:
                    os.environ["AIOETL_BODY_IDLE_TIMEOUT_S"] = old
                yield c
    finally:
        os.environ.pop("AIOETL_BODY_IDLE_TIMEOUT_S", None)
        if old is not None:
            os.environ["AIOETL_BODY_IDLE_TIMEOUT_S"] = old


def _stalled_put(url: str, path: str, sent: bytes, length: int) -> socket.socket:
    u = urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    head = f"PUT {path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Length: {length}\r\n\r\n".encode()
    s.sendall(head + sent)
    return s


def _read_until_closed(s: socket.socket, timeout_s: float) -> bytes:
    s.settimeout(timeout_s)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_stalled_upload_is_closed_after_the_idle_time_and_its_work_file_removed(idle_cluster: LocalCluster) -> None:
    ep = idle_cluster.endpoint
    assert raw(ep, "POST", "/v1/buckets/stall", CREATE).status == 200
    (turl,) = target_urls(ep).values()
    socks = [_stalled_put(turl, f"/v1/objects/stall/o{i}", b"x" * 1000, 1 << 20) for i in range(20)]
    try:
        wait_for(lambda: len(work_files(idle_cluster.data_dir, "stall")) == 20, "20 work files while the uploads stall")
        t0 = time.monotonic()
        replies = [_read_until_closed(s, 30) for s in socks]
        waited = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
    assert waited < IDLE_S + 10, f"stalled uploads were closed after {waited:.1f} s (idle time {IDLE_S} s)"
    for r in replies:
        assert r.startswith(b"HTTP/1.1 408"), r[:200]
    wait_for(lambda: not work_files(idle_cluster.data_dir, "stall"), "work files of stalled uploads removed", 10)
    r = requests.get(f"{ep}/v1/buckets/stall", timeout=30)
    assert r.status_code == 200


def test_stalled_control_bodies_are_cut_too(idle_cluster: LocalCluster) -> None:
    """A JSON body that stalls (a join on the gateway, metasync on a target) gets the same 408."""
    (turl,) = target_urls(idle_cluster.endpoint).values()
    with open(idle_cluster.secret_path) as f:
        auth = f"{HEADER}: {f.read().strip()}\r\n"
    for base, path in ((idle_cluster.endpoint, "/v1/cluster/join"), (turl, "/v1/metasync")):
        u = urlsplit(base)
        method = "POST" if "join" in path else "PUT"
        s = socket.create_connection((u.hostname, u.port), timeout=30)
        try:
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {u.netloc}\r\n{auth}Content-Length: 100\r\n\r\n{{".encode())
            t0 = time.monotonic()
            reply = _read_until_closed(s, 30)
            took = time.monotonic() - t0
        finally:
            s.close()
        assert reply.startswith(b"HTTP/1.1 408"), (path, reply[:200])
        assert took < IDLE_S + 10, (path, took)


def test_slow_but_steady_upload_is_not_cut(idle_cluster: LocalCluster) -> None:
    """The timeout is on silence, not on the whole body: 4 pieces 1 s apart (> IDLE_S total) pass."""
    ep = idle_cluster.endpoint
    raw(ep, "POST", "/v1/buckets/steady", CREATE)
    (turl,) = target_urls(ep).values()
    s = _stalled_put(turl, "/v1/objects/steady/o", b"a" * 10, 40)
    try:
        for piece in (b"b" * 10, b"c" * 10, b"d" * 10):
            time.sleep(1.0)
            s.sendall(piece)
        s.settimeout(30)
        reply = s.recv(65536)
    finally:
        s.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    r = requests.get(f"{turl}/v1/objects/steady/o", timeout=30)
    assert r.content == b"a" * 10 + b"b" * 10 + b"c" * 10 + b"d" * 10


def _etl_names(ep: str) -> list[str]:
    r = requests.get(f"{ep}/v1/etl", timeout=30)
    assert r.status_code == 200
    return [e["id"] for e in r.json()]


def test_yaml_alias_bomb_is_refused_fast_small_and_leaves_nothing(cluster: LocalCluster, endpoint: str) -> None:
    assert len(YAML_BOMB) < 1024
    msg = {"name": "bomb-etl", "communication": "hpush://", "spec": base64.b64encode(YAML_BOMB.encode()).decode()}
    assert cluster.gateway is not None
    gw = psutil.Process(cluster.gateway.proc.pid)
    rss0 = gw.memory_info().rss
    t0 = time.monotonic()
    r = requests.put(f"{endpoint}/v1/etl", json=msg, timeout=30)
    took = time.monotonic() - t0
    grew = gw.memory_info().rss - rss0
    assert r.status_code == 400, r.text[:300]
    assert "expand" in r.json()["message"]
    assert took < 1.0, f"refusing the bomb took {took:.2f} s"
    assert grew < 50 << 20, f"gateway RSS grew by {grew >> 20} MiB"
    assert "bomb-etl" not in _etl_names(endpoint)
    assert requests.get(f"{endpoint}/v1/etl/bomb-etl", timeout=30).status_code == 404


def test_num_workers_above_the_cap_is_400_and_starts_nothing(endpoint: str, bucket_name: str) -> None:
    assert raw(endpoint, "POST", f"/v1/buckets/{bucket_name}", CREATE).status == 200
    dst = f"{bucket_name}-dst"
    body = json.dumps({"action": "copy-bck", "name": "", "value": {"num-workers": MAX_NUM_WORKERS + 1}}).encode()
    r = raw(endpoint, "POST", f"/v1/buckets/{bucket_name}?bck_to=ais%2F%40%23%2F{dst}%2F", body)
    assert r.status == 400, r
    assert "num-workers" in r.message() and str(MAX_NUM_WORKERS) in r.message()
    assert requests.head(f"{endpoint}/v1/buckets/{dst}", timeout=30).status_code == 404
    body = json.dumps({"action": "copy-bck", "name": "", "value": {"num-workers": 100000}}).encode()
    assert raw(endpoint, "POST", f"/v1/buckets/{bucket_name}?bck_to=ais%2F%40%23%2F{dst}%2F", body).status == 400


def _auth(cluster: LocalCluster) -> dict[str, str]:
    with open(cluster.secret_path) as f:
        return {HEADER: f.read().strip()}


# the 14 malformed-input cases of issue #11 (each was a 500), plus the bad escapes
# (were 307/200) and the traversal-shaped job ids (wrote outside the data root)
DEEP = b"[" * 100_000 + b"]" * 100_000
MALFORMED: list[tuple[str, str, str, str, bytes | None, str]] = [
    # (case, node, method, path, body, words the message must hold)
    ("invalid utf-8 name, gateway", "gw", "GET", "/v1/objects/{b}/%ff%fe", None, "UTF-8"),
    ("overlong utf-8 name, gateway", "gw", "GET", "/v1/objects/{b}/%c0%af", None, "UTF-8"),
    ("invalid utf-8 name, target", "t", "PUT", "/v1/objects/{b}/%ff%fe", b"x", "UTF-8"),
    ("overlong utf-8 name, target", "t", "GET", "/v1/objects/{b}/a%e0%80%afb", None, "UTF-8"),
    ("deeply nested JSON, gateway", "gw", "POST", "/v1/buckets/{b}", DEEP, "nested too deeply"),
    ("deeply nested JSON, target", "t", "PUT", "/v1/metasync", DEEP, "nested too deeply"),
    ("join with bad JSON", "gw", "POST", "/v1/cluster/join", b"{", "malformed JSON"),
    ("join without daemon_id", "gw", "POST", "/v1/cluster/join", b'{"url": "http://127.0.0.1:1"}', "daemon_id"),
    ("metasync not an object", "t", "PUT", "/v1/metasync", b"[1]", "object"),
    ("metasync BMD without version", "t", "PUT", "/v1/metasync", b'{"bmd": {"buckets": {}}}', "version"),
    ("xaction start of the wrong shape", "t", "POST", "/v1/xactions/_start", b'{"kind": "copy-bck"}', "id"),
    ("xaction abort not an object", "t", "POST", "/v1/xactions/_abort", b"[1]", "object"),
    ("ETL init not an object (target)", "t", "POST", "/v1/etl/_init", b"[1]", "object"),
    ("non-integer page size", "t", "GET", "/v1/buckets/{b}", b'{"pagesize": "abc"}', "pagesize"),
    ("bad percent-escape, gateway", "gw", "GET", "/v1/objects/{b}/a%zz", None, "percent-escape"),
    ("bad percent-escape, target", "t", "PUT", "/v1/objects/{b}/a%4", b"x", "percent-escape"),
    ("traversal job id on xaction start", "t", "POST", "/v1/xactions/_start",
     b'{"id": "../../x", "kind": "copy-bck", "src": "{b}", "dst": "{b}", "msg": {}}', "job id"),
    ("traversal job id on job errors", "gw", "GET", "/v1/jobs/..%2F..%2Fx/errors", None, "job id"),
    ("traversal job id on target job errors", "t", "GET", "/v1/xactions/..%2F..%2Fx/errors", None, "job id"),
]


@pytest.mark.parametrize("case,node,method,path,body,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_400_naming_the_problem(
    cluster: LocalCluster, endpoint: str, case: str, node: str, method: str, path: str, body: bytes | None, words: str
) -> None:
    bck = "malformed-cases"
    raw(endpoint, "POST", f"/v1/buckets/{bck}", CREATE)
    turls = target_urls(endpoint)
    before = sorted(turls), requests.get(f"{endpoint}/v1/buckets", timeout=30).json()
    path = path.replace("{b}", bck)
    if node == "t":  # the object cases go to the owner, so no 307 hides the answer
        smap = Smap.from_json(requests.get(f"{endpoint}/v1/daemon", params={"what": "smap"}, timeout=30).json())
        tid = smap.hrw_target(make_uname(bck, "a")).daemon_id
        base = turls[tid]
    else:
        base = endpoint
    if body is not None:
        body = body.replace(b"{b}", bck.encode())
    r = raw(base, method, path, body, _auth(cluster))
    assert r.status == 400, f"{case}: {r}"
    assert words in r.message(), f"{case}: {r.message()}"
    after = sorted(target_urls(endpoint)), requests.get(f"{endpoint}/v1/buckets", timeout=30).json()
    assert after == before
    assert not os.path.exists(os.path.join(os.path.dirname(cluster.data_dir), "x"))
