"""Pod runtimes: where an ETL server runs next to its target.

:class:`PodRuntime` is the interface; :class:`LocalProcessRuntime` (the
embedded default, no Kubernetes) runs each pod as a child process of its
target on 127.0.0.1 and a free port:

- confined where the OS allows (:func:`confinement`, :func:`sandbox_argv`):
  bubblewrap gives it its own user, mount, PID, IPC and UTS namespaces, uid
  65534 with no capabilities, a filesystem that shows read-only only the
  system and Python files it needs, the directories its target lends it
  objects in (FQN reads, :class:`aioetl.engine.target.storage.FqnLender`) and, writable, its
  own working directory; Landlock lets it bind TCP only on its
  own port (so never 0.0.0.0 beside it). AIStore's pods are Kubernetes pods
  with their own container filesystem, which this stands in for. Where
  bubblewrap cannot run, a warning is logged once and the pod gets only its own
  PID namespace (``unshare --pid --fork --kill-child --mount-proc``) when that
  works;
- with the environment AIStore gives pods (``ext/etl/boot.go``):
  ``AIS_TARGET_URL`` = ``<target>/v1/etl/_object/<etl>/<secret>``,
  ``direct_put``, then the user's env;
- images: ``aistorage/runtime_python:*`` runs :mod:`aioetl.communicators.pod.bootstrap`
  (``PACKAGES`` pip-installed into a cached virtual environment per package
  set); ``aistorage/transformer_<name>`` maps to our built-in transformers;
  any other image runs its ``command`` when ``command[0]`` is on PATH, with
  ``8000`` (AIStore's pod port) replaced by the allocated port.

stdout+stderr are kept in a bounded ring (``logs``); CPU and memory of the
whole process tree come from psutil (``metrics``); a watcher reports a pod's
exit; ``stop`` ends the whole process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import aiohttp
import structlog

from aioetl.engine.core.etl import EtlSpec
from aioetl.errors import BadRequest

__all__ = ["BUILTIN_IMAGES", "Confinement", "LocalPod", "LocalProcessRuntime", "PodError", "PodRuntime", "confinement",
           "resolve_builtin",
           "sandbox_argv"]

log = structlog.get_logger("aioetl.pods")

BUILTIN_IMAGES = ("hello_world", "echo", "md5", "hash_with_args")


def _source_dirs() -> list[str]:
    """Where aioetl's packages are on disk (site-packages for a wheel; the source
    folders for an editable install): a confined pod must see them to run our bootstrap."""
    import aioetl
    import aioetl.communicators
    import aioetl.engine
    import aioetl.xactions

    return [os.path.dirname(os.path.abspath(m.__file__ or "")) for m in
            (aioetl, aioetl.engine, aioetl.communicators, aioetl.xactions)]
LOG_RING_BYTES = 1 << 20
EXIT_MISSING_OS_PACKAGES = 3


class PodError(BadRequest):
    """A pod could not be started or became unusable (a 400: the ETL's definition or code is at fault)."""


def resolve_builtin(image: str) -> str | None:
    """``aistorage/transformer_md5:latest`` -> ``md5`` if it is one of ours, else None."""
    m = re.fullmatch(r"(?:docker\.io/)?aistorage/transformer_([a-z0-9_]+)(?::[\w.\-]+)?", image)
    if m and m.group(1) in BUILTIN_IMAGES:
        return m.group(1)
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the target dies (Linux PR_SET_PDEATHSIG),
    so a crashed target leaves no running pod behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _pid_ns_supported() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        import subprocess

        r = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "true"],
                           capture_output=True, timeout=10)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# -- confinement ----------------------------------------------------------------
POD_UID = 65534  # "nobody" inside the pod's user namespace

# Run inside the sandbox before the pod's command (python -I -S -c ...): Landlock
# (Linux >= 6.7, ABI 4) lets the process tree bind TCP only on the pod's own port,
# and (ABI 6) neither signal processes nor reach abstract unix sockets outside its
# domain. Prints one line to stderr when the kernel lacks it, then execs anyway.
_LANDLOCK_EXEC = r"""
import ctypes, os, struct, sys
port, cmd = int(sys.argv[1]), sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
abi = libc.syscall(444, None, 0, 1)
if abi >= 4:
    attr = struct.pack("QQQ", 0, 1, 3) if abi >= 6 else struct.pack("QQ", 0, 1)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = libc.syscall(444, buf, len(attr), 0)
    rule = ctypes.create_string_buffer(struct.pack("QQ", 1, port), 16)
    ok = fd >= 0 and libc.syscall(445, fd, 2, rule, 0) == 0 and libc.prctl(38, 1, 0, 0, 0) == 0 \
        and libc.syscall(446, fd, 0) == 0
    if not ok:
        sys.exit("aioetl pod sandbox: Landlock refused (errno %d); not starting" % ctypes.get_errno())
else:
    sys.stderr.write("aioetl pod sandbox: no Landlock network rules on this kernel; binds are not limited\n")
os.execv(cmd[0], cmd)
"""

_ETC_FILES = ("ssl", "ca-certificates", "ca-certificates.conf", "pki", "hosts", "resolv.conf", "nsswitch.conf",
              "passwd", "group", "localtime", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives",
              "mime.types", "protocols", "services", "os-release", "debian_version", "gai.conf", "host.conf")
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class Confinement:
    """Whether pods can be confined here, and why not (see :func:`confinement`).

    Attributes:
        ok: bubblewrap ran a test sandbox (user, mount and PID namespaces).
        reason: empty when ``ok``; else what failed, for the warning.
        bwrap: path of ``bwrap`` when found.
        landlock_abi: the kernel's Landlock ABI (0: none); binds are limited from 4.
    """

    def __init__(self, ok: bool, reason: str, bwrap: str | None, landlock_abi: int) -> None:
        self.ok, self.reason, self.bwrap, self.landlock_abi = ok, reason, bwrap, landlock_abi

    def warning(self) -> str:
        """The one-line warning shown when pods run unconfined or their binds are not
        limited ('' when fully confined)."""
        if self.ok and self.landlock_abi < 4:
            return ("pods are confined, but this kernel has no Landlock network rules (Linux >= 6.7): "
                    "a pod can listen on any port and on 0.0.0.0")
        if self.ok:
            return ""
        return ("pods are NOT confined (" + self.reason + "): ETL code runs with the target's uid, "
                "capabilities and view of the filesystem, including the data root's metadata and secrets. "
                "Install bubblewrap (apt-get install bubblewrap) on a kernel that allows user namespaces.")


def _landlock_abi() -> int:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        return max(0, int(libc.syscall(444, None, 0, 1)))
    except (OSError, AttributeError):
        return 0


_CONFINEMENT: Confinement | None = None
_WARNED = False


def confinement() -> Confinement:
    """Check once per process whether pods can be confined here.

    Runs ``bwrap`` with the namespaces :func:`sandbox_argv` uses around ``true``;
    the result is cached. Never raises: a machine without bubblewrap, or whose
    kernel refuses user namespaces (``kernel.unprivileged_userns_clone=0``, a
    container without ``CAP_SYS_ADMIN``), gets ``ok=False`` and the reason.
    """
    global _CONFINEMENT
    if _CONFINEMENT is not None:
        return _CONFINEMENT
    import subprocess

    abi = _landlock_abi()
    bwrap = shutil.which("bwrap")
    if not sys.platform.startswith("linux"):
        _CONFINEMENT = Confinement(False, f"not Linux ({sys.platform})", bwrap, 0)
    elif not bwrap:
        _CONFINEMENT = Confinement(False, "bwrap (Debian package bubblewrap) is not installed", None, abi)
    else:
        argv = [bwrap, "--unshare-user", "--uid", str(POD_UID), "--gid", str(POD_UID), "--unshare-pid",
                "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--cap-drop", "ALL",
                "--ro-bind", "/", "/", "--proc", "/proc", "--", "true"]
        try:
            r = subprocess.run(argv, capture_output=True, timeout=20)
            err = r.stderr.decode(errors="replace").strip()
            _CONFINEMENT = Confinement(r.returncode == 0, f"bwrap failed: {err or r.returncode}", bwrap, abi)
        except (OSError, subprocess.SubprocessError) as e:
            _CONFINEMENT = Confinement(False, f"bwrap failed: {e}", bwrap, abi)
        if _CONFINEMENT.ok:
            _CONFINEMENT.reason = ""
    return _CONFINEMENT


def _warn_unconfined_once(c: Confinement) -> None:
    global _WARNED
    if c.warning() and not _WARNED:
        _WARNED = True
        log.warning("pods are not confined" if not c.ok else "pod binds are not limited",
                    reason=c.reason, detail=c.warning())


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _python_paths(pythons: list[str]) -> list[str]:
    """Read-only paths a Python pod needs: prefixes of this interpreter and of each
    pod interpreter, and every directory on ``sys.path`` (venv site-packages, .pth
    additions, PYTHONPATH, the aioetl source tree)."""
    out = [sys.prefix, sys.base_prefix, sys.exec_prefix, *_source_dirs()]
    for py in pythons:
        real = os.path.realpath(py)
        out.append(os.path.dirname(os.path.dirname(real)))
    out += [p for p in sys.path if p and os.path.isabs(p)]
    return out


def sandbox_argv(*, bwrap: str, python: str, data_dir: str, read_dirs: list[str], pod_dir: str,
                 ro_paths: list[str], bind_port: int, landlock: bool = True) -> list[str]:
    """The command prefix that confines a pod (a pure function of its inputs).

    What the pod gets:

    - its own user namespace as uid/gid 65534 with no capabilities (``--cap-drop
      ALL``), and its own PID (``/proc`` shows only the pod), IPC and UTS
      namespaces; it dies with its target (``--die-with-parent``);
    - a filesystem built from nothing (a read-only root) that shows, read-only:
      ``/usr`` and the ``/bin``, ``/lib*``, ``/sbin`` links, a few ``/etc`` files
      (``ssl``, ``hosts``, ``resolv.conf``, ``passwd``, ``group``, ``ld.so.*``,
      ``alternatives``...; never ``shadow``), each of ``ro_paths`` (the Python
      interpreter, its site-packages, the aioetl source tree, the pod's venv,
      files its command names), and ``read_dirs`` (where its target lends it the
      objects to read by FQN; never a whole mountpath);
      writable: ``pod_dir`` only (``HOME`` is it and ``TMPDIR`` its ``tmp``;
      ``/`` is read-only, so ``/tmp`` is not writable). The rest of ``data_dir`` (metadata with every ETL's secret,
      the cluster secret, job records, other targets' mountpaths, other pods'
      directories) is an empty read-only tmpfs holding only the mount points of
      what is shown; of ``ro_paths`` inside it only ``<data>/etl-venvs/<key>``
      (a pod venv) is mounted, after it, the others are dropped; ``/dev``
      is the sandbox's own small tmpfs (``/dev/shm`` there is private to the pod);
    - the host's network namespace (it binds 127.0.0.1 and reaches targets on
      127.0.0.x) with Landlock allowing TCP binds on ``bind_port`` only, so it
      cannot listen on 0.0.0.0 or any other port (``landlock=False`` leaves it out).

    AIStore's pods are Kubernetes pods: their own container filesystem, user and
    network, with the target's mountpaths mounted in for FQN reads. This is the
    local stand-in, tighter on data (only lent objects, not every bucket) and,
    unlike Kubernetes, sharing the host's loopback.

    Args:
        bwrap: path of the ``bwrap`` binary.
        python: interpreter inside the sandbox that applies Landlock and execs.
        data_dir: the cluster's data root.
        read_dirs: directories the pod may read (absolute), mounted at the path
            given even when that is a symlink (a data root may link its mountpaths
            to tmpfs) and, when visible, also where they really are.
        pod_dir: the pod's working directory (created by the caller).
        ro_paths: extra read-only paths (absolute; missing ones are skipped).
        bind_port: the only TCP port the pod may bind.

    Returns:
        argv to put before the pod's command.
    """
    given_data_dir, data_dir = data_dir, os.path.realpath(data_dir)
    a = [bwrap, "--unshare-user", "--uid", str(POD_UID), "--gid", str(POD_UID), "--unshare-pid",
         "--as-pid-1", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
         "--cap-drop", "ALL",
         "--proc", "/proc", "--dev", "/dev", "--ro-bind", "/usr", "/usr"]
    for name in _ROOT_LINKS:
        path = "/" + name
        if os.path.islink(path):
            a += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            a += ["--ro-bind", path, path]
    for name in _ETC_FILES:
        a += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # (source, where the pod sees it): a lend directory at the path its target names in FQNs
    # (the target does not resolve symlinks: a data root may link its mountpaths to tmpfs)
    allowed = [(os.path.realpath(p), os.path.abspath(p)) for p in read_dirs]
    roots: list[str] = []
    for p in sorted({os.path.realpath(p) for p in ro_paths if p and os.path.isabs(p)}, key=len):
        if not os.path.exists(p):
            continue
        if _under(p, data_dir):  # only a pod venv (<data>/etl-venvs/<key>), mounted after the mask
            if _under(p, os.path.join(data_dir, "etl-venvs")) and p != os.path.join(data_dir, "etl-venvs"):
                allowed.insert(0, (p, p))
            continue
        if any(_under(p, r) for r in roots) or _under(p, "/usr"):
            continue
        roots.append(p)
        a += ["--ro-bind", p, p]
    a += ["--tmpfs", data_dir]  # the data root: empty (hides it where a read-only path contains it)
    if os.path.abspath(given_data_dir) != data_dir:  # the data root as named (a symlink): empty too
        a += ["--tmpfs", os.path.abspath(given_data_dir)]
    for src, dst in allowed:
        if os.path.exists(src):
            a += ["--ro-bind", src, dst]
            if dst != src and not _under(src, "/dev"):  # and where it really is, when that is visible
                a += ["--ro-bind", src, src]
    pod_dir = os.path.realpath(pod_dir)
    a += ["--bind", pod_dir, pod_dir, "--remount-ro", data_dir, "--remount-ro", "/", "--chdir", pod_dir,
          "--setenv", "HOME", pod_dir, "--setenv", "TMPDIR", os.path.join(pod_dir, "tmp"), "--"]
    if landlock:
        a += [python, "-I", "-S", "-c", _LANDLOCK_EXEC, str(bind_port)]
    return a


_VENV_LAYOUT = 2  # bump when the layout of cached pod venvs changes (old ones are then rebuilt)


def _link_parent_site(vdir: str) -> None:
    """Let a pod venv see this interpreter's packages (aiohttp, aistore, ...) *after* its own.

    ``venv --system-site-packages`` is not enough when the target itself runs in a
    venv: the new venv would see the base interpreter, not the target's packages.
    A ``.pth`` line that calls ``site.addsitedir`` appends the parent's
    site-packages (and runs their own .pth files), so pip-installed PACKAGES win.
    """
    import site

    parents = [p for p in site.getsitepackages() if os.path.isdir(p)]
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    sp = os.path.join(vdir, "lib", pyver, "site-packages")
    with open(os.path.join(sp, "_aioetl_parent.pth"), "w") as f:
        f.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n")


def _is_runtime_image(image: str) -> bool:
    return image.split("/")[-1].startswith("runtime_python")


# What a python:<ver>-alpine runtime image has on its PATH besides Python itself.
BASE_POD_TOOLS = ("sh", "ash", "bash", "env", "cat", "ls", "cp", "mv", "rm", "mkdir", "echo", "true", "false",
                  "sleep", "head", "tail", "grep", "sed", "tr", "wc", "sort", "uname", "id", "ps", "kill")


def _pod_path(pod_dir: str, python: str, os_packages: str) -> str:
    """A PATH for a ``runtime_python`` pod that shows what its container would have.

    AIStore pods run in a minimal image where tools outside the base exist only
    when listed in ``OS_PACKAGES``. The local runtime keeps that contract: the
    pod's PATH is one directory of links to Python, a base set of tools and
    each declared OS package found on this machine. A transform that shells out
    to an undeclared tool fails here as it would in its container.
    """
    bindir = os.path.join(pod_dir, "bin")
    shutil.rmtree(bindir, ignore_errors=True)
    os.makedirs(bindir)
    links = {"python": python, "python3": python}
    for tool in (*BASE_POD_TOOLS, *[p.strip() for p in os_packages.split(",") if p.strip()]):
        found = shutil.which(tool)
        if found:
            links.setdefault(tool, found)
    for name, target in links.items():
        with contextlib.suppress(OSError):
            os.symlink(target, os.path.join(bindir, name))
    return bindir


class PodRuntime(Protocol):
    """Starts pods next to a target. Implementations: :class:`LocalProcessRuntime`
    (Kubernetes: not here). A target is given one at construction; tests pass their own.

    Attributes:
        confined: pods run sandboxed (then they read objects only as lent,
            :class:`aioetl.engine.target.storage.FqnLender`).
    """

    confined: bool

    async def start(self, spec: EtlSpec, *, target_id: str, target_url: str, secret: str,
                    on_exit: Callable[[LocalPod], Awaitable[None]], read_dirs: Sequence[str] = ()) -> LocalPod:
        """Start the pod of ``spec``; return once it is ready. Raises PodError."""
        ...

    def forget(self, target_id: str, name: str) -> None:
        """Drop the record of a stopped pod."""
        ...

    def cleanup_leftovers(self, target_id: str) -> int:
        """Kill pods a crashed earlier run of ``target_id`` left; returns how many."""
        ...


class LocalPod:
    """One running pod process (tree).

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        pid: pid of the top process (``unshare`` when namespaced).
        pid_namespace: whether the pod runs in its own PID namespace.
    """

    def __init__(self, name: str, proc: asyncio.subprocess.Process, url: str, pid_namespace: bool) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.url = url
        self.pid_namespace = pid_namespace
        self._ring: deque[bytes] = deque()
        self._ring_bytes = 0
        self._readers: list[asyncio.Task[None]] = []
        self.stopping = False
        self._watcher: asyncio.Future[None] | None = None
        self._last_cpu: tuple[float, float] | None = None

    # -- logs --------------------------------------------------------------
    def _append(self, data: bytes) -> None:
        self._ring.append(data)
        self._ring_bytes += len(data)
        while self._ring_bytes > LOG_RING_BYTES and len(self._ring) > 1:
            self._ring_bytes -= len(self._ring.popleft())

    async def _pump(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            self._append(chunk)

    def logs(self) -> bytes:
        """The last ~1 MiB of the pod's stdout and stderr."""
        return b"".join(self._ring)

    # -- state -------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def phase(self) -> str:
        """Kubernetes-like pod phase: Running, Succeeded or Failed."""
        if self.alive:
            return "Running"
        return "Succeeded" if self.proc.returncode == 0 else "Failed"

    def metrics(self) -> dict[str, float]:
        """``{"cpu": cores used since the last call, "mem": RSS bytes}`` of the process tree."""
        try:
            import psutil
        except ImportError:  # pragma: no cover
            return {"cpu": 0.0, "mem": 0}
        try:
            top = psutil.Process(self.pid)
            procs = [top, *top.children(recursive=True)]
        except psutil.Error:
            return {"cpu": 0.0, "mem": 0}
        cpu_s, mem = 0.0, 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                cpu_s += t.user + t.system
                mem += p.memory_info().rss
        now = time.monotonic()
        cores = 0.0
        if self._last_cpu is not None and now > self._last_cpu[0]:
            cores = max(0.0, (cpu_s - self._last_cpu[1]) / (now - self._last_cpu[0]))
        self._last_cpu = (now, cpu_s)
        return {"cpu": round(cores, 3), "mem": mem}

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll ``GET /health`` until 200.

        Raises:
            PodError: the pod exited (with the tail of its log) or did not get
                ready within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            while True:
                if not self.alive:
                    await asyncio.gather(*self._readers, return_exceptions=True)
                    raise PodError(self._exit_reason())
                try:
                    async with s.get(self.url + "/health") as r:
                        if r.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError):
                    pass
                if time.monotonic() > deadline:
                    await self.stop()
                    raise PodError(f'etl job "{self.name}": pod not ready within init_timeout '
                                   f"({timeout_s:.0f}s); last log lines:\n{self._tail()}")
                await asyncio.sleep(0.05)

    def _tail(self, n: int = 15) -> str:
        return "\n".join(self.logs().decode(errors="replace").splitlines()[-n:])

    def _exit_reason(self) -> str:
        rc = self.proc.returncode
        tail = self._tail()
        if rc == EXIT_MISSING_OS_PACKAGES or "missing OS packages" in tail:
            lines = [ln for ln in tail.splitlines() if "missing OS packages" in ln]
            return f'etl job "{self.name}": {lines[-1].strip() if lines else tail}'
        return f'etl job "{self.name}": pod exited with code {rc} before becoming ready; last log lines:\n{tail}'

    async def stop(self, grace_s: float = 5.0) -> None:
        """End the pod's whole process tree: SIGTERM, then SIGKILL after ``grace_s``."""
        self.stopping = True
        tree = self._tree_pids()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            await self.proc.wait()
        for pid in tree:  # stragglers that left the process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.gather(*self._readers, return_exceptions=True)

    def _tree_pids(self) -> list[int]:
        try:
            import psutil

            return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        except Exception:
            return []


class LocalProcessRuntime:
    """Runs pods as local processes (see the module docstring).

    Args:
        data_dir: cluster data root; virtual environments are cached in
            ``<data_dir>/etl-venvs`` and pod pid files kept in ``<data_dir>/etl-pods``.
        python: interpreter for Python pods (default: this one).
        pid_namespace: ``None`` = use one when ``unshare`` works here (only
            used when pods are not confined).
        confine: ``None`` = confine pods (:func:`sandbox_argv`) when
            :func:`confinement` says this machine can; ``False`` = never (a
            warning is logged once when ``None`` finds it cannot).
    """

    def __init__(self, data_dir: str, *, python: str = sys.executable, pid_namespace: bool | None = None,
                 confine: bool | None = None) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.python = python
        c = confinement() if confine is not False else None
        self.confined = bool(c and c.ok)
        self.landlock = bool(c and c.landlock_abi >= 4)
        self._bwrap = c.bwrap if c else None
        if c is not None:
            _warn_unconfined_once(c)
        if self.confined:
            self.pid_namespace = True
        else:
            self.pid_namespace = _pid_ns_supported() if pid_namespace is None else pid_namespace

    # -- leftovers -----------------------------------------------------------
    def _pidfile(self, target_id: str) -> str:
        return os.path.join(self.data_dir, "etl-pods", f"{target_id}.json")

    def _record(self, target_id: str, name: str, pid: int | None) -> None:
        path = self._pidfile(target_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError):
            doc = {}
        if pid is None:
            doc.pop(name, None)
        else:
            doc[name] = pid
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)

    def cleanup_leftovers(self, target_id: str) -> int:
        """Kill pods a crashed previous run of ``target_id`` left behind. Returns count."""
        try:
            with open(self._pidfile(target_id)) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError):
            return 0
        killed = 0
        for _name, pid in doc.items():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if f"AIOETL_POD_OWNER={target_id}".encode() not in env:
                continue  # pid reused by someone else: never signal it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
        os.unlink(self._pidfile(target_id))
        return killed

    # -- commands ------------------------------------------------------------
    async def _python_for(self, spec: EtlSpec) -> str:
        pkgs = [p.strip() for p in (spec.env_value("PACKAGES") or "").split(",") if p.strip()]
        if not pkgs:
            return self.python
        ident = json.dumps([_VENV_LAYOUT, sys.version, self.python, sorted(pkgs)])
        key = hashlib.sha256(ident.encode()).hexdigest()[:16]
        vdir = os.path.join(self.data_dir, "etl-venvs", key)
        py = os.path.join(vdir, "bin", "python")
        ok = os.path.join(vdir, ".ok")
        if os.path.exists(ok):
            return py
        os.makedirs(os.path.dirname(vdir), exist_ok=True)
        lock = open(vdir + ".lock", "w")  # noqa: SIM115 - held across awaits
        try:
            await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, lock, fcntl.LOCK_EX)
            if os.path.exists(ok):
                return py
            shutil.rmtree(vdir, ignore_errors=True)
            for i, cmd in enumerate(([self.python, "-m", "venv", vdir],
                                     [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *pkgs])):
                if i == 1:
                    _link_parent_site(vdir)
                p = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.STDOUT)
                try:
                    out, _ = await asyncio.wait_for(p.communicate(), spec.init_timeout_s)
                except TimeoutError:
                    p.kill()
                    raise PodError(f'etl job "{spec.name}": installing PACKAGES {pkgs} took longer than '
                                   "init_timeout") from None
                if p.returncode != 0:
                    raise PodError(f'etl job "{spec.name}": pip install {" ".join(pkgs)} failed:\n'
                                   f"{out.decode(errors='replace')[-2000:]}")
            open(ok, "w").close()
            return py
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    async def command_for(self, spec: EtlSpec, port: int) -> list[str]:
        """The local command line that plays ``spec.image`` on ``port``.

        Raises:
            PodError: an image with no local equivalent.
        """
        boot = ["-m", "aioetl.communicators.pod.bootstrap", "--host", "127.0.0.1", "--port", str(port)]
        image = spec.image
        if _is_runtime_image(image):
            if not spec.env_value("ETL_CLASS_PAYLOAD"):
                raise PodError(f'etl job "{spec.name}": image {image} needs ETL_CLASS_PAYLOAD in env')
            return [await self._python_for(spec), *boot]
        builtin = resolve_builtin(image)
        if builtin:
            return [self.python, *boot, "--builtin", builtin]
        if spec.command and shutil.which(spec.command[0]):
            cmd = list(spec.command)
            cmd[0] = shutil.which(cmd[0]) or cmd[0]
            for i, a in enumerate(cmd):
                if a == "8000" and i > 0 and cmd[i - 1] in ("--port", "-p"):
                    cmd[i] = str(port)
                elif a.startswith("--port=") and a.endswith("8000"):
                    cmd[i] = f"--port={port}"
                elif a.endswith(":8000"):
                    cmd[i] = a[: -len("8000")] + str(port)
            return cmd
        what = f"command {spec.command[0]!r} is not on PATH" if spec.command else "no command was given"
        raise PodError(
            f'etl job "{spec.name}": image "{image}" cannot run on the local pod runtime ({what}); '
            "container images run on the Kubernetes pod runtime, which this cluster does not use. "
            "Locally available: aistorage/runtime_python:* (init_class), "
            + ", ".join(f"aistorage/transformer_{b}" for b in BUILTIN_IMAGES)
            + ", or a command on PATH"
        )

    async def start(self, spec: EtlSpec, *, target_id: str, target_url: str, secret: str,
                    on_exit: Callable[[LocalPod], Awaitable[None]], read_dirs: Sequence[str] = ()) -> LocalPod:
        """Start the pod of ``spec`` for ``target_id``; return once it answers ``/health``.

        ``read_dirs``: what a confined pod may read besides its own files (its
        target's lend directories, :class:`aioetl.engine.target.storage.FqnLender`); an
        unconfined pod reads what its uid can.

        Raises:
            PodError: no local command, pip failure, missing OS packages, exit
                before ready, or not ready within ``init_timeout``.
        """
        port = free_port()
        cmd = await self.command_for(spec, port)
        env = dict(os.environ)
        for k in [k for k in env if k.startswith(("AIS_", "ETL_", "AIOETL_"))]:
            env.pop(k)
        env.pop("PYTHONPATH", None)  # a pod venv's own packages come first (see _link_parent_site)
        env["AIS_TARGET_URL"] = f"{target_url}/v1/etl/_object/{spec.name}/{secret}"
        env["direct_put"] = "true" if spec.direct_put else "false"
        env["AIOETL_POD_OWNER"] = target_id
        env["AIOETL_POD_PORT"] = env["PORT"] = str(port)
        for k, v in spec.env:
            env[k] = v
        pod_dir = os.path.join(self.data_dir, "etl-pods", spec.name, target_id)
        os.makedirs(pod_dir, exist_ok=True)
        if _is_runtime_image(spec.image):
            env["PATH"] = _pod_path(pod_dir, cmd[0], spec.env_value("OS_PACKAGES") or "")
        # absolute: the pod's PATH may be its own small one (see _pod_path)
        if self.confined and self._bwrap:
            prefix = self._sandbox_prefix(cmd, pod_dir, port, list(read_dirs))
        elif self.pid_namespace:
            prefix = [shutil.which("unshare") or "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
        else:
            prefix = []
        proc = await asyncio.create_subprocess_exec(
            *prefix, *cmd, env=env, cwd=pod_dir, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        pod = LocalPod(spec.name, proc, f"http://127.0.0.1:{port}", self.pid_namespace)
        pod._readers.append(asyncio.get_running_loop().create_task(pod._pump(proc.stdout)))
        self._record(target_id, spec.name, proc.pid)
        log.info("pod starting", etl=spec.name, target=target_id, pid=proc.pid, port=port, cmd=cmd[:6])
        try:
            await pod.wait_ready(spec.init_timeout_s)
        except BaseException:
            if pod.alive:
                await pod.stop()
            self._record(target_id, spec.name, None)
            raise

        async def watch() -> None:
            await proc.wait()
            self._record(target_id, spec.name, None)
            if not pod.stopping:
                log.warning("pod exited", etl=spec.name, target=target_id, code=proc.returncode)
                await on_exit(pod)

        pod._watcher = asyncio.get_running_loop().create_task(watch())  # not awaited by stop(): on_exit may call stop()
        return pod

    def _sandbox_prefix(self, cmd: list[str], pod_dir: str, port: int, read_dirs: list[str]) -> list[str]:
        """:func:`sandbox_argv` for one pod: what it may read, its working
        directory and the Python it runs (a raw command's other files must be under
        those paths, as a container's files are in its image)."""
        assert self._bwrap
        os.makedirs(os.path.join(pod_dir, "tmp"), exist_ok=True)
        pythons = [self.python, cmd[0]] if "python" in os.path.basename(cmd[0]) else [self.python]
        ro = _python_paths(pythons)
        venvs = os.path.join(self.data_dir, "etl-venvs")
        if _under(os.path.abspath(cmd[0]), venvs):
            ro.append(os.path.dirname(os.path.dirname(os.path.abspath(cmd[0]))))  # the pod's PACKAGES venv
        return sandbox_argv(bwrap=self._bwrap, python=self.python, data_dir=self.data_dir, read_dirs=read_dirs,
                            pod_dir=pod_dir, ro_paths=ro, bind_port=port, landlock=self.landlock)

    def forget(self, target_id: str, name: str) -> None:
        self._record(target_id, name, None)


def pod_info(pod: LocalPod) -> dict[str, Any]:
    """What a target reports about one pod (url, pid, namespaces, phase)."""
    return {"url": pod.url, "pid": pod.pid, "pid_namespace": pod.pid_namespace, "phase": pod.phase()}
