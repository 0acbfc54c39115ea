"""Helpers every benchmark shares: machine info, records, sampling, JSON, interleaving.

This machine's speed drifts 1.5-2x minute to minute, so a benchmark never compares
two numbers taken minutes apart. :func:`interleave` runs the variants of one
workload in rounds (``A, B, C`` then ``B, C, A`` ...), every variant once per
round, and :func:`ratio_median` divides variant by baseline *within* each round
before taking the median over rounds.

Results are plain dicts written as ``<out>/results.json`` by :func:`write_results`::

    {"machine": {...}, "benchmarks": {"<name>": {"config": {...}, "info": {...}}},
     "measurements": [Measurement.to_json(), ...], "ratios": {"<name>": float}}
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

try:  # optional: richer RSS (includes child processes such as ETL pods)
    import psutil
except ImportError:  # pragma: no cover - exercised only where psutil is missing
    psutil = None

__all__ = [
    "MODES",
    "BenchResult",
    "CommonOptions",
    "Measurement",
    "RssSampler",
    "cpu_seconds",
    "default_data_parent",
    "filesystem_of",
    "interleave",
    "loop_name",
    "machine_info",
    "markdown_table",
    "median",
    "percentile",
    "ratio_median",
    "run_loop",
    "size_label",
    "summarize",
    "write_results",
]

MiB = 1024 * 1024
T = TypeVar("T")
_REPO_ROOT = Path(__file__).resolve().parent.parent


# -- statistics ------------------------------------------------------------------


def parse_rfc3339(value: Any) -> float | None:
    """``"2026-11-23T11:18:46.311031223Z"`` (an xaction snapshot's time, UTC, up to ns)
    -> Unix seconds as float; None for a missing, zero (Go's ``0001-01-01...``) or
    malformed value."""
    import calendar

    if not isinstance(value, str) or not value.endswith("Z") or len(value) < 20 or value.startswith("0001-"):
        return None
    try:
        whole = calendar.timegm(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S"))
        frac = value[19:-1]
        if frac and (frac[0] != "." or not frac[1:].isdigit()):
            return None
        return whole + (int(frac[1:]) / 10 ** (len(frac) - 1) if frac else 0.0)
    except ValueError:
        return None


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (mean of the two middle values when even).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("median of an empty sequence")
    s = sorted(values)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside [0, 100]")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ratio_median(numer: Sequence[float], denom: Sequence[float]) -> float:
    """Median over rounds of ``numer[i] / denom[i]`` (same-round pairs only).

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    if len(numer) != len(denom) or not numer:
        raise ValueError(f"need equally long, non-empty sequences (got {len(numer)} and {len(denom)})")
    return median([a / b for a, b in zip(numer, denom, strict=True)])


def size_label(nbytes: int) -> str:
    """``10240 -> "10KiB"``, ``16777216 -> "16MiB"``, ``1000 -> "1000B"``."""
    for unit, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= mult and nbytes % mult == 0:
            return f"{nbytes // mult}{unit}"
    return f"{nbytes}B"


# -- records ---------------------------------------------------------------------


@dataclass(kw_only=True)
class Measurement:
    """One timed pass of a workload (or the median of several rounds of it).

    Attributes:
        name: the workload, e.g. ``put_10KiB``.
        variant: what served it, e.g. ``cluster``, ``direct``, ``echo``.
        object_size_bytes: bytes per object.
        count: objects in the pass.
        concurrency: requests in flight.
        seconds: wall time of the pass.
        objects_per_s: ``count / seconds``.
        mib_per_s: ``count * object_size_bytes / MiB / seconds``.
        p50_ms, p99_ms: per-request latency percentiles, milliseconds.
        peak_rss_mib: peak summed RSS of the server processes during the pass
            (``None`` when it could not be measured).
        server_cpu_s: CPU seconds the server processes used during the pass.
        client_cpu_s: CPU seconds the benchmark (client) process used.
        rounds: how many passes this record summarizes (1 for a raw pass).
        per_round_objects_per_s: throughput of each round (summaries only).
        extra: benchmark-specific numbers.
    """

    name: str
    variant: str
    object_size_bytes: int
    count: int
    concurrency: int
    seconds: float
    objects_per_s: float
    mib_per_s: float
    p50_ms: float
    p99_ms: float
    peak_rss_mib: float | None = None
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    rounds: int = 1
    per_round_objects_per_s: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_latencies(
        cls,
        *,
        name: str,
        variant: str,
        object_size_bytes: int,
        concurrency: int,
        seconds: float,
        latencies_s: Sequence[float],
        **kw: Any,
    ) -> Measurement:
        """Build a raw-pass record from the wall time and per-request latencies (seconds).

        Raises:
            ValueError: no latencies or a non-positive wall time.
        """
        if not latencies_s or seconds <= 0:
            raise ValueError("a measurement needs at least one request and a positive wall time")
        n = len(latencies_s)
        return cls(
            name=name,
            variant=variant,
            object_size_bytes=object_size_bytes,
            count=n,
            concurrency=concurrency,
            seconds=seconds,
            objects_per_s=n / seconds,
            mib_per_s=n * object_size_bytes / MiB / seconds,
            p50_ms=percentile(latencies_s, 50) * 1e3,
            p99_ms=percentile(latencies_s, 99) * 1e3,
            **kw,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _median_opt(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return median(vals) if vals else None


def summarize(passes: Sequence[Measurement]) -> Measurement:
    """The per-field median of several rounds of one (name, variant); peak RSS is the max.

    Raises:
        ValueError: ``passes`` is empty or mixes workloads.
    """
    if not passes:
        raise ValueError("nothing to summarize")
    first = passes[0]
    if any((p.name, p.variant) != (first.name, first.variant) for p in passes):
        raise ValueError("summarize() got passes of different workloads")
    rss = [p.peak_rss_mib for p in passes if p.peak_rss_mib is not None]
    return Measurement(
        name=first.name,
        variant=first.variant,
        object_size_bytes=first.object_size_bytes,
        count=first.count,
        concurrency=first.concurrency,
        seconds=median([p.seconds for p in passes]),
        objects_per_s=median([p.objects_per_s for p in passes]),
        mib_per_s=median([p.mib_per_s for p in passes]),
        p50_ms=median([p.p50_ms for p in passes]),
        p99_ms=median([p.p99_ms for p in passes]),
        peak_rss_mib=max(rss) if rss else None,
        server_cpu_s=_median_opt(p.server_cpu_s for p in passes),
        client_cpu_s=_median_opt(p.client_cpu_s for p in passes),
        rounds=len(passes),
        per_round_objects_per_s=[round(p.objects_per_s, 3) for p in passes],
        extra=dict(first.extra),
    )


@dataclass(kw_only=True)
class BenchResult:
    """What one benchmark hands back to ``python -m perf``.

    Attributes:
        name: registry name of the benchmark (``cluster``).
        measurements: summarized records (one per workload and variant).
        ratios: named, dimensionless comparisons (see each benchmark's docs).
        config: the settings it ran with.
        info: anything else worth keeping (filesystem, checks, profiles).
    """

    name: str
    measurements: list[Measurement]
    ratios: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


# -- interleaving ----------------------------------------------------------------


async def interleave(
    variants: Mapping[str, Callable[[], T | Awaitable[T]]],
    rounds: int,
    *,
    rotate: bool = True,
) -> dict[str, list[T]]:
    """Run every variant once per round, alternating them, ``rounds`` times.

    Round ``r`` runs the variants in their given order rotated left by ``r // 2``,
    reversed in odd rounds (``A,B,C`` / ``C,B,A`` / ``B,C,A`` / ``A,C,B`` / ...),
    unless ``rotate`` is false (always ``A,B,C``): no variant always runs first
    after a pause, and none always runs right after the same other one (a plain
    rotation keeps the cyclic order, so each variant kept one predecessor, with
    whatever that one leaves behind: a bucket being removed, a warm cache).
    Callables may be plain or return an awaitable; they run one at a time, never
    concurrently.

    Returns:
        ``{variant: [result of round 0, round 1, ...]}``.

    Raises:
        ValueError: ``rounds < 1`` or no variants. Whatever a variant raises
            propagates (the remaining rounds do not run).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 (got {rounds})")
    names = list(variants)
    if not names:
        raise ValueError("no variants to run")
    out: dict[str, list[T]] = {n: [] for n in names}
    for r in range(rounds):
        k = (r // 2) % len(names) if rotate else 0
        order = names[k:] + names[:k]
        if rotate and r % 2:
            order.reverse()
        for name in order:
            res = variants[name]()
            if inspect.isawaitable(res):
                res = await res
            out[name].append(res)  # type: ignore[arg-type]
    return out


# -- processes: RSS and CPU ------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _statm_rss(pid: int) -> int | None:
    """Resident bytes of one process from ``/proc/<pid>/statm`` (one small read); None if gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pids: Iterable[int]) -> float | None:
    """Summed user+system CPU seconds of ``pids`` so far (None if any is unreadable)."""
    total = 0.0
    for pid in pids:
        if psutil is not None:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
                continue
            except psutil.Error:
                return None
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            return None
    return total


class RssSampler:
    """Samples the summed RSS of some processes and their descendants in a thread; keeps the peak.

    The sampler must not tax what it watches: the process tree is resolved
    (:func:`process_tree`, a scan of ``/proc``: ~3 ms with psutil) once on
    enter and then every :attr:`TREE_EVERY_S`, and each sample only reads
    ``/proc/<pid>/statm`` of the known pids (~20 us each). Sampling with a
    recursive psutil children scan every 50 ms cost the watched cluster ~6% of
    a core, charged to aioetl only (the baselines were not sampled).

    Args:
        pids: processes to watch (their descendants too: a cluster's pods).
        interval_s: sampling period in seconds.

    Usage: ``with RssSampler(pids) as s: ...; s.peak_mib`` (None where ``/proc`` is unreadable).
    """

    TREE_EVERY_S = 2.0

    def __init__(self, pids: Sequence[int], interval_s: float = 0.1) -> None:
        self.pids = list(pids)
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self._tree: list[int] = []
        self._tree_at = -1e9
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample now (re-resolving the tree when it is older than :attr:`TREE_EVERY_S`)."""
        now = time.monotonic()
        if now - self._tree_at >= self.TREE_EVERY_S:
            self._tree, self._tree_at = process_tree(self.pids), now
        vals = [_statm_rss(p) for p in self._tree]
        if not vals or any(vals[i] is None for i in range(len(self.pids))):  # a watched root is gone
            return
        total = sum(v for v in vals if v is not None)  # a descendant may have exited meanwhile
        if self.peak_bytes is None or total > self.peak_bytes:
            self.peak_bytes = total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @property
    def peak_mib(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / MiB


# -- machine ---------------------------------------------------------------------


def _unescape_mount(s: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo octal
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def filesystem_of(path: str, mounts_file: str = "/proc/mounts") -> dict[str, str]:
    """The mount that holds ``path`` (or its nearest existing parent).

    Returns:
        ``{"path", "mount_point", "fstype", "device"}``; ``fstype`` is
        ``"unknown"`` when ``mounts_file`` cannot be read (non-Linux).
    """
    p = os.path.realpath(path)
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    best = {"path": path, "mount_point": "", "fstype": "unknown", "device": ""}
    try:
        with open(mounts_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return best
    best_len = -1
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        dev, mnt, fstype = _unescape_mount(parts[0]), _unescape_mount(parts[1]), parts[2]
        inside = p == mnt or p.startswith(mnt.rstrip("/") + "/")
        # a later line for the same mount point wins (it is mounted on top)
        if inside and len(mnt) >= best_len:
            best_len = len(mnt)
            best = {"path": path, "mount_point": mnt, "fstype": fstype, "device": dev}
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> float | None:
    if psutil is not None:
        return float(psutil.virtual_memory().total) / MiB
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git_head() -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def machine_info(data_dir: str | None = None) -> dict[str, Any]:
    """Where the numbers came from: CPUs, memory, Python, library versions, filesystem.

    Args:
        data_dir: the benchmark's data directory; its filesystem goes in
            ``data_fs`` (e.g. ``{"fstype": "tmpfs", ...}``).
    """
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_mib": _mem_total_mib(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("aiohttp", "uvloop", "psutil", "aistore")},
        "psutil": psutil is not None,
        "git_head": _git_head(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    if data_dir is not None:
        info["data_fs"] = filesystem_of(data_dir)
    return info


# -- output ----------------------------------------------------------------------


def write_results(out_dir: str | os.PathLike[str], results: dict[str, Any]) -> Path:
    """Write ``results`` as ``<out_dir>/results.json`` (created; written atomically).

    Returns:
        the path written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = out / f".results.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def markdown_table(measurements: Sequence[Measurement], ratios: Mapping[str, float]) -> str:
    """A short markdown summary: one row per measurement, then the ratios."""
    rows = [
        "| workload | variant | objects | conc | obj/s | MiB/s | p50 ms | p99 ms | server CPU s | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        rows.append(
            f"| {m.name} | {m.variant} | {m.count} | {m.concurrency} | {_fmt(m.objects_per_s)} | "
            f"{_fmt(m.mib_per_s)} | {_fmt(m.p50_ms, 2)} | {_fmt(m.p99_ms, 2)} | {_fmt(m.server_cpu_s, 2)} | "
            f"{_fmt(m.peak_rss_mib)} |"
        )
    if ratios:
        rows += ["", "| ratio | value |", "|---|---:|"]
        rows += [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    return "\n".join(rows)


# -- options and the event loop --------------------------------------------------

MODES = ("full", "quick", "tiny")


def default_data_parent() -> str:
    """Where benchmark data roots go by default: tmpfs ``/dev/shm`` when present."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "/tmp"


@dataclass(kw_only=True)
class CommonOptions:
    """Flags of ``python -m perf`` that every benchmark honours.

    Attributes:
        mode: ``full``, ``quick`` (fewer objects and rounds) or ``tiny`` (smoke test).
        rounds: interleaved rounds; ``None`` = the mode's default.
        out_dir: where ``results.json`` (and profiles) go.
        data_parent: directory in which a fresh data root is made (and removed).
        keep_data: leave the data root in place afterwards.
        profile: run server processes under cProfile (numbers then not comparable).
    """

    mode: str = "full"
    rounds: int | None = None
    out_dir: str = "perf-out"
    data_parent: str = field(default_factory=default_data_parent)
    keep_data: bool = False
    profile: bool = False


def run_loop(coro: Awaitable[T]) -> T:
    """Run ``coro`` to completion on a fresh uvloop loop (asyncio's when uvloop is missing).

    Does not change the global event loop policy.
    """
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: which loop :func:`run_loop` uses."""
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return "asyncio"
    return "uvloop"


class ServerProcess:
    """A helper server in a child process (own session) that prints its URL as the first
    line of stdout, e.g. the echo baselines. Subclasses give :meth:`argv`, a ``name`` for
    messages and the ``error`` class to raise.

    Args:
        start_timeout_s: how long to wait for the URL line.
    """

    name = "server"
    error: type[Exception] = RuntimeError

    def __init__(self, start_timeout_s: float = 30.0) -> None:
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Any:
        """Start it and read its URL; raises ``self.error`` if it exits or stays silent."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=str(_REPO_ROOT), env=env, start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise self.error(f"{self.name} printed no URL in {self.start_timeout_s} s")
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    self.stop()
                    raise self.error(f"{self.name} exited before it was ready:\n{err[-2000:]}")
                line += chunk
        self.url = line.decode().strip()
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_tree(pids: Iterable[int]) -> list[int]:
    """``pids`` and all their descendants (psutil; just ``pids`` when it is missing).
    Cluster nodes' pods are their children, so CPU/RSS of a cluster is of this tree."""
    out = list(pids)
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return out
    for p in list(out):
        try:
            out += [c.pid for c in psutil.Process(p).children(recursive=True)]
        except psutil.Error:
            continue
    return out


def delete_etls(endpoint: str, names: Mapping[Any, str]) -> None:
    """Delete the benchmark's ETLs (best effort: a failed delete must not hide the results)."""
    from aistore.sdk import Client

    client = Client(endpoint, timeout=(5, 60))
    for name in names.values():
        try:
            client.etl(name).delete()
        except Exception:
            continue
