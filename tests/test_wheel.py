"""The wheel, installed alone, is the product (#12 acceptance).

From the committed source (``git archive HEAD`` into a temporary directory, so a
module someone forgot to ``git add`` fails here; set ``AIOETL_WHEEL_FROM=worktree``
to build from the tracked files as they are on disk, before committing), build a
wheel, install it with no extras into a fresh venv, and, from a directory outside
the repository, use that venv's ``aioetl`` as a user would:

- the wheel's one top-level import name is ``aioetl``; FastAPI is not installed;
- ``aioetl --help``; ``aioetl cluster up --detach`` (2 targets, a free port);
- ``aioetl etl init image aistorage/transformer_md5:latest``;
- an inline GET through the ETL (plain HTTP to the gateway, its 307 followed to a
  target; and ``aioetl etl object``) returns the md5 hex of each object;
- ``aioetl etl bucket`` transforms the bucket offline; every output is the md5;
- ``aioetl cluster down`` leaves no process of that venv running.

Needs pip to reach a package index or mirror (for the build backend and the
dependencies); it takes a minute or two, most of it ``pip install``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote
from urllib.request import urlopen

import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
ETL = "md5-etl"
# names a user may well have: a space, brackets (the CLI printed names as rich
# markup once: "[/v2]" is a closing tag), a nested prefix, one body over 1 MiB (the
# data client streams those from the file instead of reading them)
OBJECTS = {
    "a.txt": b"hello\n",
    "docs/read me.md": b"# title\n" * 100,
    "notes[/v2].txt": b"bracketed",
    "big/blob.bin": os.urandom(3 << 19),
    "empty.dat": b"",
}


@dataclass
class Installed:
    src: Path  # the sources the wheel was built from
    wheel: Path
    venv: Path
    work: Path  # a cwd outside the repository

    @property
    def aioetl(self) -> str:
        return str(self.venv / "bin" / "aioetl")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self) -> dict[str, str]:
        """No inherited paths, endpoint or data root; wide, colourless output."""
        drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "AIS_ENDPOINT", "AIOETL_DATA", "PYTHONSTARTUP")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["COLUMNS"] = "250"
        env["NO_COLOR"] = "1"
        return env

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """The venv's ``aioetl`` with ``args``, from ``work``; never raises on a non-zero exit."""
        return subprocess.run([self.aioetl, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.work, env=self.env())

    def ok(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        r = self.run(*args, timeout=timeout)
        assert r.returncode == 0, f"aioetl {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        return r


def _source_copy(dest: Path) -> str:
    """Copy the sources to build into ``dest``; returns what was copied, for messages."""
    if not (REPO / ".git").exists():
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__"))
        return f"a copy of {REPO} (not a git checkout)"
    if os.environ.get("AIOETL_WHEEL_FROM") == "worktree":
        names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
        for name in filter(None, names.decode().split("\0")):
            src = REPO / name
            if src.is_file():  # a tracked file deleted on disk is not in the build
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        return "the tracked files of the work tree"
    tar = dest.parent / "src.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(tar), "HEAD"], check=True)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    tar.unlink()
    return "git archive HEAD"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv, work = root / "src", root / "dist", root / "venv", root / "work"
    src.mkdir()
    work.mkdir()
    what = _source_copy(src)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, f"pip wheel of {what} failed:\n{r.stdout}\n{r.stderr}"
    wheels = list(dist.glob("aioetl-*.whl"))
    assert len(wheels) == 1, list(dist.iterdir())
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(wheels[0])], capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, f"pip install {wheels[0].name} (no extras) failed:\n{r.stdout}\n{r.stderr}"
    return Installed(src=src, wheel=wheels[0], venv=venv, work=work)


def test_the_wheel_holds_one_import_name(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        assert z.read(f"{info}/top_level.txt").decode().split() == ["aioetl"]
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"aioetl", info}
    assert "aioetl = aioetl.engine.client.cli.main:main" in entry_points
    # every module of the sources is in the wheel where the package-dir map puts it
    # (pyproject lists the packages one by one: a new folder must be added there)
    expected = {"aioetl/py.typed"}
    for folder, pkg in (("aioetl", "aioetl"), ("engine", "aioetl/engine"), ("communicators", "aioetl/communicators"),
                        ("xactions", "aioetl/xactions")):
        expected |= {f"{pkg}/{p.relative_to(installed.src / folder).as_posix()}"
                     for p in (installed.src / folder).rglob("*.py")}
    assert len(expected) > 40
    assert sorted(expected - set(names)) == []


def test_installed_alone_without_fastapi(installed: Installed) -> None:
    code = ("import importlib.util, aioetl, aioetl.engine, aioetl.communicators, aioetl.xactions\n"
            "print(aioetl.__file__); print(aioetl.engine.__file__)\n"
            "print(importlib.util.find_spec('fastapi'))\n")
    r = subprocess.run([installed.python, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=installed.work, env=installed.env())
    assert r.returncode == 0, r.stderr
    pkg_file, engine_file, fastapi_spec = r.stdout.split()
    assert Path(pkg_file).is_relative_to(installed.venv) and Path(engine_file).is_relative_to(installed.venv)
    assert fastapi_spec == "None"


def _our_processes(*marks: Path) -> list[psutil.Process]:
    """Processes whose command line names the test's venv or data root (nodes, bwrap, pods)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.pid != os.getpid() and any(str(m) in cmd for m in marks):
            found.append(p)
    return found


@pytest.fixture
def cluster(installed: Installed, tmp_path: Path) -> Iterator[str]:
    """``aioetl cluster up --detach`` of 2 targets on a free port; down (and nothing left) afterwards."""
    data = tmp_path / "data"
    r = installed.ok("cluster", "up", "--detach", "--data", str(data), "--targets", "2", "--port", "0")
    endpoint = r.stdout.strip().splitlines()[-1].strip()
    assert endpoint.startswith("http://127.0.0.1:"), r.stdout
    procs: list[psutil.Process] = []
    try:
        yield endpoint
        procs = _our_processes(installed.venv, data)
        assert len(procs) >= 3, "expected a gateway and 2 targets"
    finally:
        down = installed.run("cluster", "down", "--data", str(data))
        _, alive = psutil.wait_procs(procs, timeout=20)
        left = _our_processes(installed.venv, data)
        for p in left:  # only processes of this test's own venv: do not leak them into the next test
            p.kill()
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stderr, down.stderr
    assert not alive and not left, f"left running after cluster down: {[p.info for p in left] or alive}"


def test_cluster_etl_inline_and_offline(installed: Installed, cluster: str, tmp_path: Path) -> None:
    ep = cluster
    r = installed.ok("--help")
    assert "Usage: aioetl" in r.stdout and "cluster" in r.stdout

    src = tmp_path / "src"
    for name, body in OBJECTS.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(body)
    installed.ok("bucket", "create", "ais://src", "-e", ep)
    r = installed.ok("put", str(src), "ais://src/", "-e", ep)
    assert f"put {len(OBJECTS)} objects" in r.stderr, r.stderr
    r = installed.ok("ls", "ais://src", "-e", ep)
    assert set(OBJECTS) <= {line.rsplit(None, 2)[0].strip() for line in r.stdout.splitlines()[1:] if line.strip()}

    r = installed.ok("etl", "init", "image", "aistorage/transformer_md5:latest", "--name", ETL, "-e", ep, timeout=300)
    assert f"etl {ETL} running" in r.stderr, r.stderr

    md5 = {name: hashlib.md5(body).hexdigest() for name, body in OBJECTS.items()}
    for name in OBJECTS:
        url = f"{ep}/v1/objects/src/{quote(name)}?etl_name={ETL}"
        with urlopen(url, timeout=60) as resp:
            assert resp.status == 200
            assert not resp.geturl().startswith(ep + "/"), "the gateway redirects object reads to the owning target"
            assert resp.read().decode() == md5[name], name
    r = installed.ok("etl", "object", ETL, "ais://src/big/blob.bin", "-e", ep)
    assert r.stdout == md5["big/blob.bin"]

    r = installed.ok("etl", "bucket", ETL, "ais://src", "ais://dst", "-e", ep, timeout=300)
    assert "finished" in r.stdout and f"{len(OBJECTS)} of {len(OBJECTS)} processed" in r.stdout, r.stdout
    for name in OBJECTS:
        assert installed.ok("get", f"ais://dst/{name}", "-", "-e", ep).stdout == md5[name], name
