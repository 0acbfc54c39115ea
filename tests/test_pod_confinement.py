"""A hostile transform tries to escape its pod (#11 items 2 and 5).

A real 3-target cluster (data on /dev/shm), two ETLs sent with the SDK's
``init_class`` (hpush and ws, both with ``direct_file_access`` so the pod opens
each object by FQN, both with direct put). The transform returns each object
reversed, except for ``probe.txt``: for it, from inside its pod, it tries every
attack of the issue and returns a JSON of attempt -> outcome ("ok" or the
error). The test then asserts that every attack failed, that its own FQN reads
and the direct puts of an offline job produced every output correctly, and that
nothing was written on the host. The pod also calls the cluster's internal routes
(metasync with an empty BMD, an impostor's join, xaction start; without a
credential and with its own ETL secret as one) on its own target
(from ``AIS_TARGET_URL``) and on the gateway (whose URL the test puts in the pod's
env, as a hostile pod could learn it): each must be refused (401/403; 404/405 on
the node that has no such route) or fail to connect, and afterwards every source
object is still listed and intact and the cluster map has no impostor.
``AIOETL_CONFINEMENT_REPORT=FILE`` saves the outcomes as JSON.

Skips only where this OS refuses the sandbox (:func:`aioetl.engine.target.pods.confinement`
says why); a missing ``bwrap`` is a failure (``.ci/run`` installs bubblewrap).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
import requests
from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer as AisFastAPIServer
from conftest import fast_data_dir, make_sdk_client

from aioetl.engine.node.launcher import LocalCluster
from aioetl.engine.target import pods

pytestmark = pytest.mark.timeout(600)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_OBJS = 30
SRC, SECRET_BCK = "conf-src", "conf-secret"


def _outcome(fn: Any) -> str:
    try:
        r = fn()
        return "ok" if r is None else f"ok: {str(r)[:80]}"
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:200]


def _bind(host: str, port: int) -> None:
    import socket

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, port))
        s.listen(1)


def _attacks(plan: dict[str, Any]) -> dict[str, str]:
    """Run inside the pod: every attempt of the plan, each to an outcome string."""
    import re
    import socket
    from urllib.parse import urlparse

    out: dict[str, str] = {}

    def read(path: str) -> str:
        with open(path, "rb") as f:
            return f"{len(f.read())} bytes"

    def write(path: str) -> None:
        with open(path, "wb") as f:
            f.write(b"escaped")

    for label, path in plan["read"].items():
        out[f"read {label}"] = _outcome(lambda p=path: read(p))
    for label, path in plan["write"].items():
        out[f"write {label}"] = _outcome(lambda p=path: write(p))
    out["write own working directory"] = _outcome(lambda: write(os.path.join(os.getcwd(), "mine.txt")))
    out["write /dev/shm (the pod's own tmpfs)"] = _outcome(lambda: write("/dev/shm/evil.txt"))
    out["list data root"] = _outcome(lambda: sorted(os.listdir(plan["data_dir"])))
    for host, port in (("0.0.0.0", 0), ("0.0.0.0", plan["free_port"]), ("::", 0), ("127.0.0.1", 0)):
        out[f"bind {host}:{port or 'any'}"] = _outcome(lambda h=host, p=port: _bind(h, p))
    # other pods' secrets: their environment is what holds AIS_TARGET_URL with the secret
    mine = os.environ.get("AIS_TARGET_URL", "")
    seen = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                m = re.search(rb"AIS_TARGET_URL=([^\0]*)", f.read())
            if m and m.group(1).decode() != mine:
                seen.append(pid)
        except OSError:
            pass
    out["read other pods' secrets via /proc"] = f"ok: {seen}" if seen else "none visible"
    out["processes visible"] = str(len([p for p in os.listdir("/proc") if p.isdigit()]))
    with open("/proc/self/status") as f:
        caps = re.search(r"CapEff:\s*(\w+)", f.read())
    out["identity"] = f"uid={os.getuid()} gid={os.getgid()} CapEff={caps.group(1) if caps else '?'}"
    u = urlparse(mine)
    out["connect own target"] = _outcome(lambda: socket.create_connection((u.hostname, u.port), 5).close())
    # the cluster's internal routes, without the cluster secret (the pod never gets it):
    # its own target from AIS_TARGET_URL, the gateway from the plan (its env)
    nodes = {"own target": f"{u.scheme}://{u.netloc}", "gateway": plan["gateway"]}
    etl_secret = u.path.rstrip("/").rsplit("/", 1)[-1]  # the one secret it has: its own ETL's
    for node, base in nodes.items():
        for label, (method, route, body) in INTERNAL_CALLS.items():
            out[f"internal {label} on {node}"] = _http(method, base + route, body)
            out[f"internal {label} on {node}, ETL secret as credential"] = _http(
                method, base + route, body, {"Aioetl-Cluster-Auth": etl_secret})
    return out


#: label -> (method, route, JSON body) of the intra-cluster calls a hostile pod tries
INTERNAL_CALLS: dict[str, tuple[str, str, Any]] = {
    "metasync empty BMD": ("PUT", "/v1/metasync", {"bmd": {"version": 999999, "buckets": {}}}),
    "join impostor": ("POST", "/v1/cluster/join",
                      {"daemon_id": "evil", "daemon_type": "target", "url": "http://127.0.0.1:1"}),
    "xaction start": ("POST", "/v1/xactions/_start",
                      {"id": "../evil", "kind": "etl-bck", "src": SRC, "dst": "evil-dst", "msg": {}}),
}
#: on which node each internal route exists (elsewhere it is simply not found)
INTERNAL_ON = {"metasync empty BMD": "own target", "join impostor": "gateway", "xaction start": "own target"}


def _http(method: str, url: str, body: Any, headers: dict[str, str] | None = None) -> str:
    """``"HTTP <status>"`` of one request (no redirects followed), or the connection error."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        try:
            conn.request(method, u.path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            return f"HTTP {r.status}: {r.read()[:100]!r}"
        finally:
            conn.close()
    except Exception as e:
        return f"no connection: {type(e).__name__}: {e}"[:200]


class Hostile(AisFastAPIServer):
    """Reverses each object read by FQN; for probe.txt returns the attacks' outcomes."""

    def transform(self, data: Any, path: str, etl_args: str) -> bytes:
        if isinstance(data, str):  # direct_file_access: an FQN, opened here, inside the pod
            fqn = data
            with open(fqn, "rb") as f:
                body = f.read()
        else:
            fqn, body = "", data
        if not path.endswith("probe.txt"):
            return body[::-1]
        res = _attacks(json.loads(os.environ["PROBE_PLAN"]))
        res["own FQN read"] = f"ok: {len(body)} bytes from {fqn}" if fqn else "no FQN given"
        return json.dumps(res, sort_keys=True).encode()


@pytest.fixture(scope="module")
def conf_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = pods.confinement()
    if not c.ok:
        if not c.bwrap and sys.platform.startswith("linux"):
            pytest.fail(f"pods cannot be confined: {c.reason} (.ci/run installs bubblewrap)")
        pytest.skip(f"this OS refuses the pod sandbox: {c.reason}")
    for data in fast_data_dir(tmp_path_factory, "confine"):
        with LocalCluster(targets=3, data_dir=data, port=0) as cl:
            yield cl


def _fqns(cluster: LocalCluster, bck: str, name: str) -> dict[str, str]:
    """``{target id: path}`` of the object file ``bck/name`` on each target that has it."""
    out = {}
    for tid, mps in cluster.target_mountpaths().items():
        for mp in mps:
            for p in glob.glob(os.path.join(mp, "@ais", bck, "*", name)):
                out[tid] = p
    return out


def _plan(cluster: LocalCluster, outside: str, free_port: int, other_etl: str, probe_target: str) -> dict[str, Any]:
    d = cluster.data_dir
    mps = cluster.target_mountpaths()
    reads = {
        "etlMD (every ETL's secret)": os.path.join(d, "gateway", "etlmd.json"),
        "cluster secret file": os.path.join(d, "cluster.secret"),
        "gateway BMD": os.path.join(d, "gateway", "bmd.json"),
        "cluster layout": os.path.join(d, "cluster.json"),
        "pod pid records": os.path.join(d, "etl-pods", f"{probe_target}.json"),
        "/etc/shadow": "/etc/shadow",
        "/etc/hostname (outside)": "/etc/hostname",
        "a file outside the mountpaths": os.path.join(outside, "outside.txt"),
        "host root via /proc/1/root": "/proc/1/root/etc/shadow",
    }
    for log in sorted(glob.glob(os.path.join(d, "run", "logs", "*.log")))[:2]:
        reads[f"node log {os.path.basename(log)}"] = log
    for i in range(N_OBJS):  # another bucket's object file, on every target
        for tid, p in _fqns(cluster, SECRET_BCK, f"s-{i:03d}").items():
            reads.setdefault(f"other bucket's object on {tid}", p)
    for i in range(N_OBJS):  # its own bucket's object, by its real FQN (only lent links are visible)
        p = _fqns(cluster, SRC, f"o-{i:03d}.bin").get(probe_target)
        if p:
            reads.setdefault("own bucket's object file, not lent", p)
    for tid in mps:
        reads[f"other ETL's pod dir on {tid}"] = os.path.join(d, "etl-pods", other_etl, tid, "planted.txt")
    writes = {
        "data root": os.path.join(d, "evil.txt"),
        "gateway metadata dir": os.path.join(d, "gateway", "evil.txt"),
        "/etc": "/etc/evil.txt",
        "/": "/evil.txt",
        "/usr": "/usr/evil.txt",
        "/tmp": "/tmp/evil.txt",
        "aioetl source tree": os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(pods.__file__))),
                                           "evil.txt"),
        "a directory outside": os.path.join(outside, "evil.txt"),
    }
    for tid, tmps in mps.items():
        writes[f"mountpath of {tid}"] = os.path.join(tmps[0], "evil.txt")
    return {"read": reads, "write": writes, "data_dir": d, "free_port": free_port, "gateway": cluster.endpoint}


def test_hostile_transform_is_confined(conf_cluster: LocalCluster, tmp_path: Any) -> None:
    client = make_sdk_client(conf_cluster.endpoint)
    outside = str(tmp_path)
    with open(os.path.join(outside, "outside.txt"), "w") as f:
        f.write("outside the data root")
    src = client.bucket(SRC).create(exist_ok=True)
    sec = client.bucket(SECRET_BCK).create(exist_ok=True)
    objs = {f"o-{i:03d}.bin": os.urandom(1000 + i) for i in range(N_OBJS)}
    objs["probe.txt"] = b"probe me"
    for k, v in objs.items():
        src.object(k).get_writer().put_content(v)
    for i in range(N_OBJS):
        sec.object(f"s-{i:03d}").get_writer().put_content(b"secret %d" % i)
    probe_target = next(iter(_fqns(conf_cluster, SRC, "probe.txt")))

    names = {"hpush": "hostile-hpush", "ws": "hostile-ws"}
    report: dict[str, Any] = {"probe target": probe_target}
    failures: list[str] = []
    try:
        for comm, name in names.items():
            other = names["ws" if comm == "hpush" else "hpush"]
            plan = _plan(conf_cluster, outside, pods.free_port(), other, probe_target)
            client.etl(name).init_class(comm_type=comm, direct_put=True, direct_file_access=True,
                                        init_timeout="120s", PROBE_PLAN=json.dumps(plan))(Hostile)
        for tid in conf_cluster.target_mountpaths():  # files in each ETL's pod dir, for the other to try
            for name in names.values():
                pdir = os.path.join(conf_cluster.data_dir, "etl-pods", name, tid)
                if os.path.isdir(pdir):
                    with open(os.path.join(pdir, "planted.txt"), "w") as f:
                        f.write("another ETL's file")
        for comm, name in names.items():
            dst = f"conf-dst-{comm}"
            job = src.transform(etl_name=name, to_bck=client.bucket(dst), cont_on_err=True)
            client.job(job).wait(timeout=300)
            got = {e.name: client.bucket(dst).object(e.name).get_reader().read_all()
                   for e in client.bucket(dst).list_all_objects()}
            wrong = [k for k, v in objs.items() if k != "probe.txt" and got.get(k) != v[::-1]]
            if wrong:
                failures.append(f"{comm}: {len(wrong)} of {N_OBJS} outputs missing or wrong (direct put): {wrong[:5]}")
            res = json.loads(got.get("probe.txt", b"{}") or b"{}")
            report[comm] = res
            if not res:
                failures.append(f"{comm}: no probe output")
                continue
            for attempt, outcome in res.items():
                binds_limited = pods.confinement().landlock_abi >= 4  # Linux >= 6.7; else warned
                must_fail = attempt.startswith(("read ", "write ", "bind " if binds_limited else "read ")) \
                    and attempt != "write own working directory" \
                    and not attempt.startswith(("read other pods' secrets", "write /dev/shm"))
                if must_fail and outcome.startswith("ok"):
                    failures.append(f"{comm}: {attempt!r} succeeded from inside the pod: {outcome}")
            for ok_attempt in ("write own working directory", "own FQN read", "connect own target"):
                if not res.get(ok_attempt, "").startswith("ok"):
                    failures.append(f"{comm}: {ok_attempt!r} failed: {res.get(ok_attempt)}")
            for label in INTERNAL_CALLS:
                for node, cred in [(n, c) for n in ("own target", "gateway")
                                   for c in ("", ", ETL secret as credential")]:
                    attempt = f"internal {label} on {node}{cred}"
                    outcome = res.get(attempt, "missing")
                    # where the route exists: refused for want of the secret; elsewhere: not found
                    allowed = ("HTTP 401", "HTTP 403") if INTERNAL_ON[label] == node else \
                        ("HTTP 401", "HTTP 403", "HTTP 404", "HTTP 405")
                    if not outcome.startswith(allowed + ("no connection",)):
                        failures.append(f"{comm}: {attempt!r} was not refused: {outcome}")
            envs = res.get("read other pods' secrets via /proc")
            if envs != "none visible":
                failures.append(f"{comm}: other pods' environments are visible: {envs}")
            listed = res.get("list data root", "")
            if listed.startswith("ok") and any(n in listed for n in ("gateway", "secret", "run", "cluster.json")):
                failures.append(f"{comm}: the data root shows metadata: {listed}")
            if not res.get("identity", "").startswith("uid=65534 gid=65534 CapEff=0000000000000000"):
                failures.append(f"{comm}: pod identity {res.get('identity')}")
    finally:
        for name in names.values():
            try:
                client.etl(name).delete()
            except Exception:
                pass
    # the internal calls changed nothing: every source object listed and intact, no impostor
    listed = {e.name for e in src.list_all_objects()}
    if listed != set(objs):
        failures.append(f"source bucket changed: missing {sorted(set(objs) - listed)[:5]}, "
                        f"extra {sorted(listed - set(objs))[:5]}")
    bad = [k for k, v in objs.items() if src.object(k).get_reader().read_all() != v]
    if bad:
        failures.append(f"source objects unreadable or changed: {bad[:5]}")
    if len({e.name for e in sec.list_all_objects()}) != N_OBJS:
        failures.append("the other bucket lost objects")
    smap = requests.get(f"{conf_cluster.endpoint}/v1/daemon", params={"what": "smap"}, timeout=30).text
    if "evil" in smap or "127.0.0.1:1\"" in smap:
        failures.append(f"the cluster map has the impostor: {smap[:300]}")
    for path in _plan(conf_cluster, outside, 0, "x", probe_target)["write"].values():
        if os.path.exists(path):
            failures.append(f"{path} exists on the host after the pods ran")
    if os.environ.get("AIOETL_CONFINEMENT_REPORT"):
        with open(os.environ["AIOETL_CONFINEMENT_REPORT"], "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    for comm in names:
        print(f"\n== {comm} (pod on {probe_target})")
        for k, v in sorted(report.get(comm, {}).items()):
            print(f"  {k:55s} {v}")
    assert not failures, "\n".join(failures)
