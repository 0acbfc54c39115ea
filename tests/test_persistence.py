"""Buckets and objects survive a cluster restart; driven through the ``aioetl`` CLI.

As a user would: ``aioetl cluster up --detach``, ``aioetl bucket create``,
``aioetl put`` a directory, ``aioetl cluster down``, ``cluster up`` again on the
same data root (another port), then every object is read back over plain HTTP
(the gateway's 307 followed) and compared byte for byte and by checksum.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import requests
import xxhash

pytestmark = [pytest.mark.timeout(240)]

AIOETL = str(Path(sys.executable).parent / "aioetl")
N_OBJECTS = 50


def cli_env() -> dict[str, str]:
    """The environment for CLI runs: no inherited endpoint, wide output (rich wraps at $COLUMNS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("AIS_ENDPOINT", "AIOETL_DATA")}
    env["COLUMNS"] = "250"
    env["NO_COLOR"] = "1"
    return env


def aioetl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``aioetl`` console script; never raises on a non-zero exit."""
    return subprocess.run([AIOETL, *args], capture_output=True, text=True, timeout=timeout, env=cli_env())


def up(data: Path, port: int = 0) -> str:
    """``aioetl cluster up --detach``; returns the gateway URL (stdout's last line)."""
    r = aioetl("cluster", "up", "--detach", "--data", str(data), "--targets", "3", "--port", str(port))
    assert r.returncode == 0, f"cluster up failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    url = r.stdout.strip().splitlines()[-1].strip()
    assert url.startswith("http://127.0.0.1:"), r.stdout
    return url


def ready_files(data: Path) -> dict[str, dict[str, object]]:
    """``<data>/run/<node>.json`` ready files by node id."""
    run = data / "run"
    if not run.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in run.glob("*.json")}


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def free_port(avoid: int) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != avoid:
            return port


def make_files(root: Path) -> dict[str, bytes]:
    """50 files (0 B .. 300 KiB, deterministic) in nested, unicode and spaced names."""
    rng = random.Random(5150)
    objs: dict[str, bytes] = {}
    for i in range(N_OBJECTS):
        name = ["top-{i:02d}.bin", "a/b/c/{i:02d}.bin", "données/ü-{i:02d}-日本.txt", "with space/f {i:02d}.dat"][i % 4]
        size = 0 if i == 0 else 300 * 1024 + 7 if i == 1 else rng.randint(1, 20_000)
        objs[name.format(i=i)] = rng.randbytes(size)
    for name, data in objs.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return objs


def read_back(endpoint: str, bck: str, name: str) -> requests.Response:
    return requests.get(f"{endpoint}/v1/objects/{bck}/{quote(name)}", timeout=30)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh data root; whatever cluster a test left on it is brought down."""
    d = tmp_path / "data"
    try:
        yield d
    finally:
        aioetl("cluster", "down", "--data", str(d))


def test_restart_keeps_buckets_and_objects(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    objs = make_files(src)
    bck = "persist"

    ep1 = up(data_dir)
    nodes1 = ready_files(data_dir)
    assert len(nodes1) == 4 and sum(1 for n in nodes1 if n.startswith("t-")) == 3
    pids1 = [int(str(n["pid"])) for n in nodes1.values()]
    assert all(alive(p) for p in pids1)

    r = aioetl("bucket", "create", f"ais://{bck}", "--endpoint", ep1)
    assert r.returncode == 0, r.stderr
    r = aioetl("put", str(src), f"ais://{bck}/", "--endpoint", ep1)
    assert r.returncode == 0, r.stderr
    for name, data in objs.items():
        got = read_back(ep1, bck, name)
        assert got.status_code == 200 and got.content == data, name
    cks1 = {name: read_back(ep1, bck, name).headers["ais-checksum-value"] for name in list(objs)[:5]}

    # status on the running cluster: exit 0, every target listed
    layout = json.loads((data_dir / "cluster.json").read_text())
    r = aioetl("cluster", "status", "--data", str(data_dir))
    assert r.returncode == 0, r.stderr
    tids = [t["id"] for t in layout["targets"]]
    assert len(tids) == 3 and all(tid in r.stdout for tid in tids), r.stdout
    assert "unreachable" not in r.stdout

    # a second `up` on the same data root refuses, saying why
    r = aioetl("cluster", "up", "--detach", "--data", str(data_dir), "--targets", "3", "--port", "0")
    assert r.returncode != 0
    msg = " ".join(r.stderr.split())
    assert "already running" in msg and "cluster down" in msg, r.stderr
    assert ready_files(data_dir).keys() == nodes1.keys(), "the failed up must not touch the running cluster"
    assert all(alive(p) for p in pids1)

    # down: every node process gone, ready files removed
    r = aioetl("cluster", "down", "--data", str(data_dir))
    assert r.returncode == 0, r.stderr
    assert not any(alive(p) for p in pids1), [p for p in pids1 if alive(p)]
    assert ready_files(data_dir) == {}
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{ep1}/v1/health", timeout=5)

    # up again on the same data root, on another port
    port2 = free_port(avoid=urlsplit(ep1).port or 0)
    ep2 = up(data_dir, port=port2)
    assert urlsplit(ep2).port == port2 and ep2 != ep1
    nodes2 = ready_files(data_dir)
    assert nodes2.keys() == nodes1.keys(), "node ids are stable across restarts (HRW hashes them)"

    buckets = requests.get(f"{ep2}/v1/buckets", timeout=10).json()
    assert bck in {b["name"] for b in buckets}
    r = aioetl("bucket", "ls", "--endpoint", ep2)
    assert r.returncode == 0 and f"ais://{bck}" in r.stdout, r.stdout + r.stderr
    for name, data in objs.items():
        got = read_back(ep2, bck, name)
        assert got.status_code == 200, (name, got.status_code, got.text[:300])
        assert got.content == data, name
        assert got.headers["ais-checksum-value"] == xxhash.xxh64(data).hexdigest(), name
    for name, ck in cks1.items():
        assert read_back(ep2, bck, name).headers["ais-checksum-value"] == ck
    r = aioetl("ls", f"ais://{bck}", "--endpoint", ep2)
    assert r.returncode == 0, r.stderr
    assert f"{N_OBJECTS} objects" in r.stderr
    assert all(name in r.stdout for name in objs), r.stdout

    r = aioetl("cluster", "down", "--data", str(data_dir))
    assert r.returncode == 0
    assert ready_files(data_dir) == {}
    assert not any(alive(int(str(n["pid"]))) for n in nodes2.values())


def test_down_without_cluster_and_status_without_gateway(data_dir: Path) -> None:
    r = aioetl("cluster", "down", "--data", str(data_dir))
    assert r.returncode == 0
    assert "no cluster running" in " ".join(r.stderr.split())
    r = aioetl("cluster", "status", "--endpoint", f"http://127.0.0.1:{free_port(avoid=0)}")
    assert r.returncode != 0
    assert "no gateway at" in " ".join(r.stderr.split())
