"""Where ``transform()`` runs: on the event loop or in a worker thread.

Decided per call (:class:`OffloadPolicy`) from an EWMA of past calls' wall time,
after 4 warm-up calls in a thread:

- on the event loop when calls have been fast (under 2 ms) and the input is
  small (<= 256 KiB): a thread hop would cost more than the call;
- also on the event loop when calls are CPU-bound, not long (under 100 ms), the
  input is at most 16 MiB, and the server runs at least as many processes as
  this process has usable CPUs (``NUM_WORKERS``; ``ETLServer.set_processes``):
  the processes already use every core, and handing each call to a thread costs
  a GIL hand-off between the loop and the worker per C call the transform makes
  (Pillow's decoder releases and re-takes the GIL per chunk). CPU-bound means
  that on-loop calls spent over 0.75 of their running time on the CPU (thread
  CPU time / (wall time - time runnable but waiting for a CPU)); a slow
  transform is probed on the loop once after the warm-up and once per 256 calls
  in threads after that. Measured with ``perf.bench_workloads`` (1,000 PNG
  thumbnails, 2 cores, NUM_WORKERS=2, ws): engine overhead 0.07-0.10 on the loop
  vs 0.17 in threads, same rounds;
- else in a worker thread (I/O-bound or long transforms, fewer processes than
  CPUs, large inputs), so one slow call does not hold up the others.

``transform_in_thread = True/False`` on the server class forces one.

The policy is pure state; :func:`call_inline` and :func:`call_timed` run a call
and feed it what they measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "CPU_BOUND_SHARE",
    "INLINE_CPU_MAX_BYTES",
    "INLINE_CPU_MAX_S",
    "INLINE_MAX_BYTES",
    "INLINE_MAX_S",
    "PROBE_EVERY",
    "OffloadPolicy",
    "call_inline",
    "call_timed",
    "runqueue_wait_ns",
    "usable_cpus",
]

INLINE_MAX_BYTES = 256 * 1024
INLINE_MAX_S = 0.002
CPU_BOUND_SHARE = 0.75
INLINE_CPU_MAX_S = 0.1
INLINE_CPU_MAX_BYTES = 16 << 20
PROBE_EVERY = 256

T = TypeVar("T")


class OffloadPolicy:
    """Decides per call whether ``transform()`` runs on the loop or in a thread
    (pure state, fed by :meth:`record`; the rules are in the module docstring).

    ``inline_share`` is the CPU share of the last on-loop calls: thread CPU time /
    (wall time - time spent runnable but waiting for a CPU). It is measured only
    on the loop, because in worker threads contention for the GIL and the CPUs
    hides it (2 processes x 8 threads of Pillow thumbnails on 2 cores showed 0.13).

    Args:
        forced: True/False always answer that; None decides per call.
        max_inline_bytes: largest input a fast call runs on the loop with.
        max_inline_s: EWMA wall time under which calls count as fast.
        warmup: calls that run in a thread before any decision.
    """

    def __init__(self, forced: bool | None, *, max_inline_bytes: int = INLINE_MAX_BYTES,
                 max_inline_s: float = INLINE_MAX_S, warmup: int = 4) -> None:
        self.forced = forced
        self.max_inline_bytes = max_inline_bytes
        self.max_inline_s = max_inline_s
        self.warmup = warmup
        self.samples = 0
        self.ewma_s = 0.0
        self.inline_share: float | None = None  # None: not probed yet
        self.since_probe = 0  # calls in threads since the last on-loop call
        self.verify_next = False
        self.cores_covered = False  # the server runs >= usable-CPU processes

    def in_thread(self, nbytes: int) -> bool:
        """Whether the next call, with an input of ``nbytes``, goes to a worker thread."""
        if self.forced is not None:
            return self.forced
        if self.samples < self.warmup:
            return True
        if nbytes <= self.max_inline_bytes and self.ewma_s <= self.max_inline_s:
            return False  # fast: a thread hop would cost more than the call
        if not self.cores_covered or nbytes > INLINE_CPU_MAX_BYTES or self.ewma_s > INLINE_CPU_MAX_S:
            return True
        if self.inline_share is None or self.since_probe >= PROBE_EVERY:
            return False  # probe: measure the CPU share on the loop
        return self.inline_share < CPU_BOUND_SHARE

    @property
    def measure_share(self) -> bool:
        """Whether the next on-loop call should also read the scheduler's wait time
        (two ``/proc`` reads): on a probe, and after a call whose plain CPU share
        (a lower bound of the real one) was under the threshold."""
        return (self.forced is None and self.samples >= self.warmup and self.ewma_s > self.max_inline_s
                and (self.inline_share is None or self.since_probe > 0 or self.verify_next))

    def record(self, seconds: float, *, inline: bool = False, share: float | None = None,
               exact: bool = True) -> None:
        """Feed one call: wall ``seconds``; for on-loop calls the CPU ``share``,
        ``exact`` (wait time subtracted) or a lower bound (CPU time / wall time)."""
        self.ewma_s = seconds if self.samples == 0 else 0.8 * self.ewma_s + 0.2 * seconds
        self.samples += 1
        if not inline:
            self.since_probe += 1
            return
        self.since_probe = 0
        if share is None:
            return
        if not exact and share < CPU_BOUND_SHARE:
            self.verify_next = True  # I/O, or only waiting for a CPU: measure the next one
            return
        self.verify_next = False
        self.inline_share = share if self.inline_share is None else 0.7 * self.inline_share + 0.3 * share


def call_inline(policy: OffloadPolicy, call: Callable[[], T]) -> T:
    """Run ``call`` here (on the loop), timing it and its thread CPU time for ``policy``."""
    exact = policy.measure_share
    w0 = runqueue_wait_ns() if exact else -1
    t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    try:
        return call()
    finally:
        c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
        wall = t1 - t0
        ran = wall
        if exact:
            w1 = runqueue_wait_ns()
            ran -= w1 - w0 if w0 >= 0 and w1 >= 0 else 0
        share = min(1.0, (c1 - c0) / ran) if ran > 0 else None
        policy.record(wall / 1e9, inline=True, share=share, exact=exact)


def call_timed(policy: OffloadPolicy, call: Callable[[], T]) -> T:
    """Run ``call`` (in a worker thread), feeding its wall time to ``policy``."""
    t0 = time.perf_counter()
    try:
        return call()
    finally:
        policy.record(time.perf_counter() - t0)


def runqueue_wait_ns() -> int:
    """Nanoseconds this thread has spent runnable but waiting for a CPU
    (``/proc/thread-self/schedstat``, second field); -1 where unavailable."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
