"""Node-to-node authentication (issue #11, item 1) on a real 2-target cluster.

- Every intra-cluster route, without the cluster credential or with a wrong one
  (including an ETL's own per-ETL secret, which is what a pod holds), answers
  401/403 and changes nothing: metasync with an empty BMD deletes no object, a job
  id with ``../`` writes no file, an impostor's join is refused and no client GET
  ever reaches it.
- The classification is complete: every route of the gateway and target apps is
  either internal (:data:`aioetl.engine.node.auth.GATEWAY_INTERNAL`/``TARGET_INTERNAL``) or in
  this file's list of public routes, so a new route must be classified.
- The secret file is 0600 and reused on restart; etlMD (per-ETL secrets) is 0600;
  no pod process has the secret in its environment or command line.
- With the right credential the cluster works: the rest of the suite is the proof.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from aioetl.engine.node.auth import GATEWAY_INTERNAL, HEADER, SECRET_FILE, TARGET_INTERNAL, check_credential
from aioetl.engine.node.launcher import LocalCluster
from tests.conftest import fast_data_dir, make_sdk_client

pytestmark = pytest.mark.timeout(600)

# Routes the SDK, the CLI, clients and pods use: open, as in AIStore.
GATEWAY_PUBLIC = {
    ("GET", "/v1/daemon"), ("GET", "/v1/health"), ("GET", "/v1/buckets"), ("GET", "/v1/buckets/"),
    ("GET", "/v1/buckets/{bck}"), ("POST", "/v1/buckets/{bck}"), ("DELETE", "/v1/buckets/{bck}"),
    ("PATCH", "/v1/buckets/{bck}"),
    ("HEAD", "/v1/buckets/{bck}"), ("HEAD", "/v1/buckets/{bck}/{prefix}"), ("*", "/v1/objects/{tail}"),
    ("GET", "/v1/reverse/daemon"), ("PUT", "/v1/etl"), ("GET", "/v1/etl"), ("GET", "/v1/etl/{name}"),
    ("DELETE", "/v1/etl/{name}"), ("POST", "/v1/etl/{name}/stop"), ("POST", "/v1/etl/{name}/start"),
    ("GET", "/v1/etl/{name}/logs"), ("GET", "/v1/etl/{name}/logs/{tid}"), ("GET", "/v1/etl/{name}/health"),
    ("GET", "/v1/etl/{name}/metrics"), ("GET", "/v1/cluster"), ("PUT", "/v1/cluster"), ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}/errors"),
}
TARGET_PUBLIC = {
    # object I/O (clients after the 307, and peers' PUTs), node info, the pods' per-ETL-secret route
    ("PUT", "/v1/objects/{tail}"), ("GET", "/v1/objects/{tail}"), ("HEAD", "/v1/objects/{tail}"),
    ("DELETE", "/v1/objects/{tail}"), ("PATCH", "/v1/objects/{tail}"), ("GET", "/v1/health"),
    ("GET", "/v1/daemon"), ("*", "/v1/etl/_object/{tail}"), ("GET", "/v1/etl"),
}


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for data in fast_data_dir(tmp_path_factory, "auth"):
        with LocalCluster(targets=2, data_dir=data, port=0) as c:
            yield c


@pytest.fixture(scope="module")
def secret(cl: LocalCluster) -> str:
    with open(cl.secret_path) as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def sdk(cl: LocalCluster):  # type: ignore[no-untyped-def]
    return make_sdk_client(cl.endpoint)


@pytest.fixture(scope="module")
def filled(sdk) -> tuple[str, list[str]]:  # type: ignore[no-untyped-def]
    """A bucket with 24 objects spread over both targets."""
    name = f"auth-{secrets.token_hex(3)}"
    b = sdk.bucket(name).create(exist_ok=True)
    objs = [f"o{i:02d}" for i in range(24)]
    for o in objs:
        b.object(o).get_writer().put_content(o.encode() * 10)
    return name, objs


def _canonical(template: str) -> str:
    """``/v1/objects/{tail:.+}`` -> ``/v1/objects/{tail}``: the form the lists above use."""
    import re

    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", template)


def _read_back(sdk, bck: str, objs: list[str]) -> None:  # type: ignore[no-untyped-def]
    for o in objs:
        assert sdk.bucket(bck).object(o).get_reader().read_all() == o.encode() * 10
    assert sorted(e.name for e in sdk.bucket(bck).list_all_objects()) == objs


def _internal_calls(cl: LocalCluster, bck: str) -> list[tuple[str, str, Any]]:
    """One concrete request per internal route: ``(method, url, json body)``."""
    gw = cl.endpoint
    t = cl.targets[0].url
    tid = cl.targets[0].node_id
    bad_job = {"id": "../../escape", "kind": "etl-bck", "msg": {}, "etl": "", "src": bck, "dst": bck}
    calls = [
        ("POST", f"{gw}/v1/cluster/join", {"daemon_id": "t-impost", "daemon_type": "target", "url": "http://127.0.0.1:9"}),
        ("POST", f"{gw}/v1/jobs/x-1/_abort", {"err": "forged"}),
        ("POST", f"{gw}/v1/etl/none/_aborted", {"target": tid, "reason": "forged"}),
        ("PUT", f"{t}/v1/metasync", {"smap": None, "bmd": {"version": 1 << 30, "buckets": {}}}),
        ("GET", f"{t}/v1/buckets/{bck}?what=lsopage", {}),
        ("POST", f"{t}/v1/etl/_init", {"msg": {}, "secret": "s", "xid": "x"}),
        ("DELETE", f"{t}/v1/etl/none", None),
        ("GET", f"{t}/v1/etl/none/details", None),
        ("GET", f"{t}/v1/etl/none/logs", None),
        ("GET", f"{t}/v1/etl/none/health", None),
        ("GET", f"{t}/v1/etl/none/metrics", None),
        ("POST", f"{t}/v1/xactions/_start", bad_job),
        ("POST", f"{t}/v1/xactions/_abort", {"id": "x", "err": "forged"}),
        ("POST", f"{t}/v1/xactions/_settle", {"id": "x", "keys": [], "revoke": True}),
        ("GET", f"{t}/v1/xactions", None),
        ("GET", f"{t}/v1/xactions/x/errors", None),
    ]
    covered = {(m, u.split("?")[0].replace(gw, "").replace(t, "")) for m, u, _ in calls}
    assert len(covered) == len(GATEWAY_INTERNAL) + len(TARGET_INTERNAL)
    return calls


def test_check_credential_is_exact() -> None:
    s = "a" * 64
    assert check_credential(s, s) == 0
    assert check_credential(None, s) == 401 and check_credential("", s) == 401
    assert check_credential(s[:-1], s) == 403 and check_credential(s + "a", s) == 403
    assert check_credential("\udcff" * 8, s) == 403  # undecodable header bytes: refused, not a crash


def test_every_route_is_classified(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A route added later must be put in one of the two lists (internal or public)."""
    from aioetl.engine.gateway.gateway import Gateway, GatewayConfig
    from aioetl.engine.target.target import Target, TargetConfig

    gw = Gateway(GatewayConfig(node_id="p-x", data_dir=str(tmp_path / "g"), cluster_secret="s" * 32))
    tg = Target(TargetConfig(node_id="t-x", mountpaths=[str(tmp_path / "mp")], gateway_url="http://127.0.0.1:9",
                             data_dir=str(tmp_path / "t"), cluster_secret="s" * 32))
    for app, internal, public in ((gw.make_app(), GATEWAY_INTERNAL, GATEWAY_PUBLIC),
                                  (tg.make_app(), TARGET_INTERNAL, TARGET_PUBLIC)):
        seen = {(r.method, _canonical(r.resource.canonical)) for r in app.router.routes() if r.resource is not None}
        assert not (internal & public)
        assert seen == set(internal) | public, (seen ^ (set(internal) | public))


def test_internal_routes_refuse_missing_or_wrong_credential(cl: LocalCluster, sdk, filled, secret: str) -> None:  # type: ignore[no-untyped-def]
    bck, objs = filled
    smap_before = httpx.get(f"{cl.endpoint}/v1/daemon", params={"what": "smap"}).json()
    wrong = [None, "", "x", secret[:-1], secret + "0", secret.upper() if secret != secret.upper() else secret.lower(),
             f"Bearer {secret}", secrets.token_hex(32)]
    with httpx.Client(timeout=30) as c:
        for method, url, body in _internal_calls(cl, bck):
            for cred in wrong:
                headers = {} if cred is None else {HEADER: cred}
                r = c.request(method, url, headers=headers, content=None if body is None else json.dumps(body))
                want = 401 if not cred else 403
                assert r.status_code == want, (method, url, cred, r.status_code, r.text[:200])
                assert "cluster credential" in r.text
            # a differently spelled path reaches the same route, and the same check
            if url.endswith("/v1/metasync"):
                r = c.put(url.replace("/v1/metasync", "/v1/%6detasync"), content=json.dumps(body))
                assert r.status_code in (401, 404), r.status_code
    # nothing changed: same map, every object still there and listed, no file escaped the data root
    assert httpx.get(f"{cl.endpoint}/v1/daemon", params={"what": "smap"}).json() == smap_before
    _read_back(sdk, bck, objs)
    data_parent = os.path.dirname(cl.data_dir)
    assert not [f for f in os.listdir(data_parent) if "escape" in f]
    for root, _dirs, files in os.walk(cl.data_dir):
        assert not [f for f in files if "escape" in f], root


def test_metasync_with_empty_bmd_is_refused_and_deletes_nothing(cl: LocalCluster, sdk, filled) -> None:  # type: ignore[no-untyped-def]
    """The attack of issue #11: a transform PUT an empty BMD and a target deleted 42 objects."""
    bck, objs = filled
    for t in cl.targets:
        for headers in ({}, {HEADER: "not-the-secret"}):
            r = httpx.put(f"{t.url}/v1/metasync", headers=headers,
                          json={"smap": None, "bmd": {"version": 1 << 40, "buckets": {}}})
            assert r.status_code in (401, 403)
    _read_back(sdk, bck, objs)


class _Impostor(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def _any(self) -> None:
        type(self).hits.append(f"{self.command} {self.path}")
        body = b"forged"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

    def log_message(self, *args: Any) -> None:
        pass


def test_impostor_join_is_refused_and_serves_no_client(cl: LocalCluster, sdk, filled) -> None:  # type: ignore[no-untyped-def]
    bck, objs = filled
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        for headers in ({}, {HEADER: "guess"}):
            r = httpx.post(f"{cl.endpoint}/v1/cluster/join", headers=headers,
                           json={"daemon_id": "t-impost", "daemon_type": "target", "url": url})
            assert r.status_code in (401, 403)
        smap = httpx.get(f"{cl.endpoint}/v1/daemon", params={"what": "smap"}).json()
        assert "t-impost" not in json.dumps(smap)
        _read_back(sdk, bck, objs)
        assert _Impostor.hits == []
    finally:
        srv.shutdown()
        srv.server_close()


def _pod_procs(target_ids: set[str]) -> list[int]:
    """Pids of every process started as a pod of one of ``target_ids`` (wrappers, servers, workers)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        owner = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"AIOETL_POD_OWNER=")), None)
        if owner in target_ids:
            out.append(int(pid))
    return out


def test_pods_do_not_hold_the_secret_and_their_etl_secret_opens_nothing(cl: LocalCluster, sdk, filled,  # type: ignore[no-untyped-def]
                                                                        secret: str) -> None:
    bck, objs = filled
    name = f"auth-echo-{secrets.token_hex(2)}"
    sdk.etl(name).init(image="aistorage/transformer_echo:latest")
    try:
        from aistore.sdk.etl import ETLConfig

        assert sdk.bucket(bck).object(objs[0]).get_reader(etl=ETLConfig(name)).read_all() == objs[0].encode() * 10
        pids = _pod_procs({t.node_id for t in cl.targets})
        assert len(pids) >= len(cl.targets)
        etl_secrets = set()
        for pid in pids:
            for what in ("environ", "cmdline"):
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    raw = f.read()
                assert secret.encode() not in raw, (pid, what)
                assert b"AIOETL_CLUSTER_SECRET" not in raw and SECRET_FILE.encode() not in raw, (pid, what)
                for e in raw.split(b"\0"):
                    if e.startswith(b"AIS_TARGET_URL="):
                        etl_secrets.add(e.decode().rstrip("/").rsplit("/", 1)[1])
        assert etl_secrets
        # what a pod holds (its ETL's secret) is not the cluster credential
        for s in etl_secrets:
            for t in cl.targets:
                r = httpx.put(f"{t.url}/v1/metasync", headers={HEADER: s}, json={"smap": None, "bmd": {"buckets": {}}})
                assert r.status_code == 403
                r = httpx.post(f"{t.url}/v1/xactions/_start", headers={HEADER: s}, json={"id": "x"})
                assert r.status_code == 403
            r = httpx.post(f"{cl.endpoint}/v1/cluster/join", headers={HEADER: s},
                           json={"daemon_id": "t-pod", "daemon_type": "target", "url": "http://127.0.0.1:9"})
            assert r.status_code == 403
        md = os.path.join(cl.data_dir, "gateway", "etlmd.json")
        assert stat.S_IMODE(os.stat(md).st_mode) == 0o600
    finally:
        sdk.etl(name).delete()
    _read_back(sdk, bck, objs)


def test_secret_file_is_private_and_reused_on_restart(cl: LocalCluster, sdk, filled, secret: str) -> None:  # type: ignore[no-untyped-def]
    bck, objs = filled
    st = os.stat(cl.secret_path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and len(secret) >= 32
    for n in cl.nodes():  # handed over as a path, never as a value on the command line
        with open(f"/proc/{n.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert cl.secret_path.encode() in argv and secret.encode() not in b"".join(argv)
    cl.stop()
    cl.start()
    with open(cl.secret_path) as f:
        assert f.read().strip() == secret
    _read_back(make_sdk_client(cl.endpoint), bck, objs)


def test_node_without_a_secret_does_not_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != "AIOETL_CLUSTER_SECRET"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "aioetl.engine.node.main", "gateway", "--id", "p-x",
                        "--data", str(tmp_path), "--port", str(port)], env=env, capture_output=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode != 0
    assert b"cluster secret" in p.stderr
