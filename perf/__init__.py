"""aioetl's benchmark harness: ``python -m perf [--quick] --out DIR [--only NAME]``.

Every benchmark runs on loopback, warms up, uses a fixed concurrency, measures
a baseline in the same run, interleaves its variants in rounds (this machine's
speed drifts), and returns a :class:`~perf.common.BenchResult`; ``python -m
perf`` writes them all to ``DIR/results.json``.

A benchmark is a module listed in :data:`BENCHMARKS` that defines:

- ``NAME``: its registry name;
- ``add_arguments(parser)``: its own flags (names must not clash with others');
- ``config_from_args(args, common) -> config``: build its config object;
- ``run(config) -> BenchResult``: synchronous; starts and stops what it needs.
"""

from __future__ import annotations

from .common import BenchResult, CommonOptions, Measurement, interleave, machine_info, write_results

__all__ = ["BENCHMARKS", "BenchResult", "CommonOptions", "Measurement", "interleave", "machine_info", "write_results"]

#: registry name -> module (imported only when that benchmark runs)
BENCHMARKS: dict[str, str] = {
    "cluster": "perf.bench_cluster",
    "offline": "perf.bench_offline",
    "inline": "perf.bench_inline",
    "pods": "perf.bench_pods",
    "matrix": "perf.bench_matrix",
    "workloads": "perf.bench_workloads",
    "remote": "perf.bench_remote",
}
