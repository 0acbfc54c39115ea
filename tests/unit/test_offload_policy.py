"""Where a pod runs ``transform()``: the pure decision state of
:class:`aioetl.communicators.pod.offload.OffloadPolicy` (rules in the module docstring of
communicators/pod/offload.py). The end-to-end check with a real pod process is
``tests/test_pod_servers.py::test_cpu_bound_transforms_move_to_the_loop``."""

from __future__ import annotations

import pytest

from aioetl.communicators.pod.offload import (
    CPU_BOUND_SHARE,
    INLINE_CPU_MAX_BYTES,
    INLINE_CPU_MAX_S,
    INLINE_MAX_BYTES,
    PROBE_EVERY,
    OffloadPolicy,
)

KiB = 1024


def _warm(p: OffloadPolicy, seconds: float) -> None:
    for _ in range(p.warmup):
        assert p.in_thread(10 * KiB), "warm-up calls run in a thread"
        p.record(seconds)


def test_forced_wins() -> None:
    for forced in (True, False):
        p = OffloadPolicy(forced)
        p.cores_covered = True
        for _ in range(10):  # warm-up or not, fast or slow
            assert p.in_thread(1) is forced
            p.record(5.0)


def test_fast_small_calls_run_on_the_loop_whatever_the_cores() -> None:
    p = OffloadPolicy(None)
    _warm(p, 0.0005)
    assert not p.in_thread(10 * KiB)
    assert p.in_thread(INLINE_MAX_BYTES + 1), "a fast transform of a large input still goes to a thread"


def test_slow_cpu_bound_moves_to_the_loop_only_when_processes_cover_the_cores() -> None:
    p = OffloadPolicy(None)
    _warm(p, 0.004)
    assert p.in_thread(10 * KiB), "one process for several CPUs: threads keep the cores busy"
    p.cores_covered = True
    assert not p.in_thread(10 * KiB), "first slow call after the warm-up is probed on the loop"
    p.record(0.004, inline=True, share=0.97)
    for _ in range(3 * PROBE_EVERY):
        assert not p.in_thread(10 * KiB)
        p.record(0.004, inline=True, share=0.95)
    assert p.in_thread(INLINE_CPU_MAX_BYTES + 1), "huge inputs go to a thread"


def test_slow_io_bound_stays_in_threads_and_is_reprobed() -> None:
    p = OffloadPolicy(None)
    p.cores_covered = True
    _warm(p, 0.004)
    assert not p.in_thread(10 * KiB)  # the probe
    p.record(0.004, inline=True, share=0.02)
    for _ in range(PROBE_EVERY):
        assert p.in_thread(10 * KiB)
        p.record(0.004)
    assert not p.in_thread(10 * KiB), "re-probed after PROBE_EVERY calls in threads"
    p.record(0.004, inline=True, share=0.03)
    assert p.in_thread(10 * KiB)


def test_long_calls_go_to_threads_even_when_cpu_bound() -> None:
    p = OffloadPolicy(None)
    p.cores_covered = True
    _warm(p, 0.004)
    assert not p.in_thread(10 * KiB)
    p.record(0.004, inline=True, share=1.0)
    while p.ewma_s <= INLINE_CPU_MAX_S:  # the transform got slow (e.g. larger images)
        p.record(INLINE_CPU_MAX_S * 3, inline=True, share=1.0)
    assert p.in_thread(10 * KiB)


@pytest.mark.parametrize("share,inline", [(CPU_BOUND_SHARE + 0.05, True), (CPU_BOUND_SHARE - 0.05, False)])
def test_share_threshold(share: float, inline: bool) -> None:
    p = OffloadPolicy(None)
    p.cores_covered = True
    _warm(p, 0.01)
    p.in_thread(1)
    for _ in range(20):
        p.record(0.01, inline=True, share=share)
    assert p.in_thread(1) is not inline


def test_a_low_plain_share_is_verified_before_it_counts() -> None:
    """CPU time / wall time only bounds the share from below (waiting for a CPU
    lowers it): a low value asks for an exact measurement next instead of counting."""
    p = OffloadPolicy(None)
    p.cores_covered = True
    _warm(p, 0.004)
    assert p.measure_share  # the probe is exact
    p.record(0.004, inline=True, share=0.9, exact=True)
    assert not p.measure_share
    p.record(0.004, inline=True, share=0.9, exact=False)
    assert not p.measure_share and p.inline_share == pytest.approx(0.9)
    p.record(0.004, inline=True, share=0.3, exact=False)  # CPU-starved or I/O?
    assert p.measure_share and p.inline_share == pytest.approx(0.9)
    assert not p.in_thread(10 * KiB)
    p.record(0.004, inline=True, share=0.95, exact=True)  # it was CPU starvation
    assert not p.measure_share and not p.in_thread(10 * KiB)
