"""Local launcher: a gateway and N targets as child processes on 127.0.0.1.

``with LocalCluster(targets=3, data_dir=d) as cluster:`` gives
``cluster.endpoint`` (the gateway URL); leaving the block stops every node.
The CLI's ``aioetl cluster up|down|status`` use the same class.

Data root layout::

    <data>/cluster.json             node ids and mountpaths (stable across restarts:
                                    HRW hashes the ids, so they must not change)
    <data>/cluster.secret           the cluster secret (mode 0600; made once, reused):
                                    nodes read it with --secret-file (aioetl.engine.node.auth)
    <data>/gateway/bmd.json         buckets
    <data>/targets/<tid>/mp<i>/     mountpaths
    <data>/run/<node>.json          {"pid", "url"} of a running node
    <data>/run/logs/<node>.log      each node's stdout+stderr
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from aioetl.engine.node.auth import ENV_SECRET, SECRET_FILE, load_or_create_secret

__all__ = ["ClusterError", "ClusterLayout", "LocalCluster", "NodeProc", "ReadyFile", "running_nodes", "stop_running"]


class ReadyFile(msgspec.Struct):
    """``<data>/run/<node>.json``, which a node writes (atomically) once it serves:
    ``{"pid": 1234, "url": "http://127.0.0.1:51234", "node_id": "t-ab12cd"}``."""

    pid: int
    url: str
    node_id: str = ""


_READY_DECODER = msgspec.json.Decoder(ReadyFile)


class GatewayLayout(msgspec.Struct):
    id: str


class TargetLayout(msgspec.Struct):
    id: str
    mountpaths: list[str]
    """Relative to the data root."""


class ClusterLayout(msgspec.Struct):
    """``<data>/cluster.json``: the node ids and mountpaths, fixed when the data root is made::

        {"gateway": {"id": "p-ab12cd"}, "targets": [{"id": "t-12ab34", "mountpaths": ["targets/t-12ab34/mp0"]}]}
    """

    gateway: GatewayLayout
    targets: list[TargetLayout]


def _read_ready(path: str) -> ReadyFile | None:
    """The ready file at ``path``, or None if it is missing, torn or not a ready file."""
    try:
        with open(path, "rb") as f:
            return _READY_DECODER.decode(f.read())
    except (OSError, msgspec.DecodeError):
        return None


class ClusterError(RuntimeError):
    """The local cluster could not be started, found or stopped."""


@dataclass
class NodeProc:
    node_id: str
    role: str
    proc: subprocess.Popen[bytes] | None
    pid: int
    url: str = ""
    log_path: str = ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _is_our_node(pid: int, data_dir: str) -> bool:
    """True if ``pid`` is an ``aioetl.engine.node.main`` process of ``data_dir`` (never signal others)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"aioetl.engine.node.main" in argv and os.fsencode(os.path.abspath(data_dir)) in argv


def running_nodes(data_dir: str) -> list[dict[str, Any]]:
    """Ready files of nodes of ``data_dir`` whose process is alive and ours.

    Returns:
        ``[{"pid", "url", "node_id"}]`` (:class:`ReadyFile` as a dict; ``node_id`` from
        the file name when the file has none); unreadable files are skipped.
    """
    run = os.path.join(data_dir, "run")
    out: list[dict[str, Any]] = []
    if not os.path.isdir(run):
        return out
    for f in sorted(os.listdir(run)):
        if not f.endswith(".json") or f.startswith("."):
            continue
        rf = _read_ready(os.path.join(run, f))
        if rf is None or rf.pid <= 0:
            continue
        if _pid_alive(rf.pid) and _is_our_node(rf.pid, data_dir):
            out.append({"pid": rf.pid, "url": rf.url, "node_id": rf.node_id or f.removesuffix(".json")})
    return out


def _terminate(pids: list[int], timeout_s: float = 15.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_running(data_dir: str) -> int:
    """Stop the detached cluster of ``data_dir`` (targets first). Returns nodes stopped."""
    nodes = running_nodes(data_dir)
    targets = [int(n["pid"]) for n in nodes if str(n["node_id"]).startswith("t-")]
    gws = [int(n["pid"]) for n in nodes if not str(n["node_id"]).startswith("t-")]
    _terminate(targets)
    _terminate(gws)
    for n in nodes:
        try:
            os.unlink(os.path.join(data_dir, "run", f"{n['node_id']}.json"))
        except FileNotFoundError:
            pass
    return len(nodes)


class LocalCluster:
    """A gateway and ``targets`` target processes on one machine.

    Args:
        targets: number of targets; ``None`` reuses the count in an existing
            data root (3 for a new one).
        data_dir: the data root (created if missing).
        port: gateway port; 0 = ephemeral.
        mountpaths_per_target: object directories per target.
        start_timeout_s: how long to wait for every node to be ready.
        detach: start nodes in their own sessions and do not stop them when
            this object is dropped (``aioetl cluster up --detach``).
        env: environment variables to add for the nodes (e.g. ``AWS_ENDPOINT_URL`` and
            credentials of a remote backend); the nodes inherit this process's
            environment otherwise.

    Raises:
        ClusterError: on start, if a cluster already runs on ``data_dir``, the
            data root was made with a different target count, or a node fails
            to come up (the message carries the tail of its log).
    """

    def __init__(
        self,
        *,
        targets: int | None = None,
        data_dir: str,
        port: int = 0,
        mountpaths_per_target: int = 1,
        host: str = "127.0.0.1",
        start_timeout_s: float = 60.0,
        detach: bool = False,
        log_level: str = "info",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.env = dict(env or {})
        self.want_targets = targets
        self.port = port
        self.mpaths = mountpaths_per_target
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.detach = detach
        self.log_level = log_level
        self.gateway: NodeProc | None = None
        self.targets: list[NodeProc] = []

    # -- layout ------------------------------------------------------------
    def _layout(self) -> ClusterLayout:
        path = os.path.join(self.data_dir, "cluster.json")
        if os.path.exists(path):
            with open(path, "rb") as f:
                raw = f.read()
            try:
                layout = msgspec.json.decode(raw, type=ClusterLayout)
            except msgspec.DecodeError as e:
                raise ClusterError(f"{path} is not a cluster layout ({e}); move it away or use another --data"
                                   ) from None
            have = len(layout.targets)
            if self.want_targets is not None and self.want_targets != have:
                raise ClusterError(
                    f"{self.data_dir} holds a cluster of {have} targets; asked for {self.want_targets}. "
                    "Use the same --targets (or omit it), or another --data directory"
                )
            return layout
        n = 3 if self.want_targets is None else self.want_targets
        if n < 1:
            raise ClusterError("a cluster needs at least one target")
        layout = ClusterLayout(gateway=GatewayLayout(id=f"p-{secrets.token_hex(3)}"), targets=[])
        for _ in range(n):
            tid = f"t-{secrets.token_hex(3)}"
            mps = [os.path.join("targets", tid, f"mp{i}") for i in range(self.mpaths)]
            layout.targets.append(TargetLayout(id=tid, mountpaths=mps))
        os.makedirs(self.data_dir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(msgspec.to_builtins(layout), f, indent=1)
        os.replace(tmp, path)
        return layout

    @property
    def secret_path(self) -> str:
        """``<data>/cluster.secret``: the cluster secret every node is started with."""
        return os.path.join(self.data_dir, SECRET_FILE)

    @property
    def endpoint(self) -> str:
        """The gateway URL, e.g. ``http://127.0.0.1:51234``."""
        if self.gateway is None or not self.gateway.url:
            raise ClusterError("cluster is not running")
        return self.gateway.url

    # -- start/stop --------------------------------------------------------
    def _spawn(self, node_id: str, role: str, args: list[str]) -> NodeProc:
        logs = os.path.join(self.data_dir, "run", "logs")
        os.makedirs(logs, exist_ok=True)
        log_path = os.path.join(logs, f"{node_id}.log")
        env = {**os.environ, **self.env}
        env.pop(ENV_SECRET, None)  # nodes read the file, never a variable a child could inherit
        load_or_create_secret(self.data_dir)
        cmd = [sys.executable, "-m", "aioetl.engine.node.main", role, "--id", node_id, "--data", self.data_dir,
               "--log-level", self.log_level, "--secret-file", self.secret_path, *args]
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, close_fds=True,
            )
        return NodeProc(node_id, role, proc, proc.pid, log_path=log_path)

    def _wait_ready(self, node: NodeProc, deadline: float) -> None:
        ready = os.path.join(self.data_dir, "run", f"{node.node_id}.json")
        while True:
            rf = _read_ready(ready)
            if rf is not None and rf.pid == node.pid:
                node.url = rf.url
                return
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise ClusterError(
                    f"{node.role} {node.node_id} exited with {node.proc.returncode}:\n{_tail(node.log_path)}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{node.role} {node.node_id} not ready in {self.start_timeout_s}s:\n{_tail(node.log_path)}"
                )
            time.sleep(0.02)

    def start(self) -> LocalCluster:
        """Start the gateway, then the targets; return once all have joined."""
        live = running_nodes(self.data_dir)
        if live:
            raise ClusterError(f"a cluster is already running on {self.data_dir} (pids {[n['pid'] for n in live]}); "
                               f"stop it with: aioetl cluster down --data {self.data_dir}")
        run = os.path.join(self.data_dir, "run")
        if os.path.isdir(run):
            for f in os.listdir(run):
                if f.endswith(".json"):
                    os.unlink(os.path.join(run, f))
        layout = self._layout()
        deadline = time.monotonic() + self.start_timeout_s
        try:
            self.gateway = self._spawn(layout.gateway.id, "gateway",
                                       ["--host", self.host, "--port", str(self.port)])
            self._wait_ready(self.gateway, deadline)
            for t in layout.targets:
                args = ["--gateway", self.gateway.url, "--host", self.host]
                for mp in t.mountpaths:
                    args += ["--mountpath", os.path.join(self.data_dir, mp)]
                self.targets.append(self._spawn(t.id, "target", args))
            for node in self.targets:
                self._wait_ready(node, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def target_mountpaths(self) -> dict[str, list[str]]:
        """``{target id: [absolute mountpath, ...]}`` of this cluster's layout (known before
        :meth:`start`, so a test can mount a small filesystem there first)."""
        return {t.id: [os.path.join(self.data_dir, mp) for mp in t.mountpaths] for t in self._layout().targets}

    def restart_target(self, node_id: str, *, kill: bool = True) -> NodeProc:
        """Stop target ``node_id`` (SIGKILL when ``kill``, else SIGTERM) and start it again
        alone, with the same id and mountpaths; return once it has rejoined.

        For fault tests: the target comes back with no pods and no running xactions,
        as after a crash; the gateway sees a re-join under the same id.

        Raises:
            ClusterError: ``node_id`` is not a target of this cluster, or it does not come back.
        """
        layout = self._layout()
        spec = next((t for t in layout.targets if t.id == node_id), None)
        old = next((t for t in self.targets if t.node_id == node_id), None)
        if spec is None or old is None or self.gateway is None:
            raise ClusterError(f"{node_id} is not a running target of this cluster")
        if old.proc is not None and old.proc.poll() is None:
            if kill:
                old.proc.kill()
            else:
                old.proc.terminate()
            old.proc.wait(timeout=30)
        args = ["--gateway", self.gateway.url, "--host", self.host]
        for mp in spec.mountpaths:
            args += ["--mountpath", os.path.join(self.data_dir, mp)]
        node = self._spawn(node_id, "target", args)
        self.targets[self.targets.index(old)] = node
        self._wait_ready(node, time.monotonic() + self.start_timeout_s)
        return node

    def nodes(self) -> list[NodeProc]:
        return ([self.gateway] if self.gateway else []) + self.targets

    def stop(self) -> None:
        """SIGTERM every node (targets first), SIGKILL after 15 s; remove ready files."""
        _terminate([t.pid for t in self.targets])
        if self.gateway is not None:
            _terminate([self.gateway.pid])
        for n in self.nodes():
            if n.proc is not None:
                try:
                    n.proc.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.unlink(os.path.join(self.data_dir, "run", f"{n.node_id}.json"))
            except FileNotFoundError:
                pass
        self.targets = []
        self.gateway = None

    def dead_nodes(self) -> list[NodeProc]:
        """Nodes whose process has exited (for the foreground watcher)."""
        return [n for n in self.nodes() if n.proc is not None and n.proc.poll() is not None]

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self.detach:
            self.stop()


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no log)"
