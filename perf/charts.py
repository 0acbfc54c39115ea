"""PNG charts and the markdown report of a ``python -m perf`` run.

:func:`write_charts` draws one horizontal bar chart per workload (the
``name`` of the measurements: ``matrix_10KiB``, ``thumbnail``, ``pod_10KiB``,
...): objects/s of every variant, aioetl variants in blue and baselines (in-process
loop, pool, raw pipeline, client loop, plain servers) in grey, the median
over rounds with the per-round range as a line. Needs matplotlib (the ``perf``
extra); it draws with the non-interactive Agg backend.

:func:`write_markdown` writes ``results.md``: the machine, then per benchmark a
table of its measurements and one of its ratios.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BASELINE_VARIANTS", "HEADLINE_RATIOS", "is_baseline", "write_charts", "write_markdown"]

#: variants that are not aioetl (drawn grey)
BASELINE_VARIANTS = frozenset({"inproc", "mp_pool", "raw", "client_loop", "client_threads", "plain", "echo", "fastapi",
                               "fastapi_fqn", "fastapi_body"})
#: the issue's acceptance ratios, listed first in the report
HEADLINE_RATIOS = ("ws_small_vs_raw", "pod_vs_aistore_fastapi", "vs_client_loop", "thumbnail_overhead")


def is_baseline(m: Mapping[str, Any]) -> bool:
    """Whether a measurement (``Measurement.to_json()``) is a baseline rather than aioetl."""
    v = str(m.get("variant", ""))
    return v in BASELINE_VARIANTS or (m.get("extra") or {}).get("kind") == "baseline" or v.startswith("fastapi")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "workload"


def write_charts(out_dir: str | Path, measurements: Iterable[Mapping[str, Any]]) -> list[str]:
    """One PNG per workload name in ``out_dir`` (``<name>.png``).

    Args:
        out_dir: where to write (must exist).
        measurements: ``Measurement.to_json()`` dicts, each with ``benchmark``.

    Returns:
        the file names written, in order.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for m in measurements:
        groups.setdefault(str(m["name"]), []).append(m)
    written = []
    for name, ms in groups.items():
        labels = [str(m["variant"]) for m in ms]
        vals = [float(m["objects_per_s"]) for m in ms]
        lo = [min(m.get("per_round_objects_per_s") or [v]) for m, v in zip(ms, vals, strict=True)]
        hi = [max(m.get("per_round_objects_per_s") or [v]) for m, v in zip(ms, vals, strict=True)]
        colors = ["#9e9e9e" if is_baseline(m) else "#1f77b4" for m in ms]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(ms) + 1.6), dpi=100)
        y = list(range(len(ms)))[::-1]
        ax.barh(y, vals, color=colors)
        ax.errorbar(vals, y, xerr=[[max(0.0, v - a) for v, a in zip(vals, lo, strict=True)],
                                   [max(0.0, b - v) for v, b in zip(vals, hi, strict=True)]],
                    fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.set_xscale("log" if max(vals) / max(min(vals), 1e-9) > 50 else "linear")
        for yy, v in zip(y, vals, strict=True):
            ax.text(v, yy, f" {v:,.0f}" if v >= 10 else f" {v:.2g}", va="center", fontsize=8)
        first = ms[0]
        size = int(first.get("object_size_bytes") or 0)
        ax.set_xlabel("objects/s (median over rounds; line: range)")
        ax.set_title(f"{name}: {first.get('count')} objects, {size:,} B each (mean), {first.get('benchmark', '')}",
                     fontsize=10)
        ax.margins(x=0.15)
        fig.tight_layout()
        fname = f"{_safe(name)}.png"
        fig.savefig(Path(out_dir) / fname)
        plt.close(fig)
        written.append(fname)
    return written


def _fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{float(v):,.{digits}f}"


def write_markdown(out_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write ``<out_dir>/results.md`` from a results document (see :mod:`perf.__main__`).

    Returns:
        the path written.
    """
    m = results.get("machine", {})
    fs = (m.get("data_fs") or {}).get("fstype", "?")
    lines = [f"# aioetl perf ({results.get('mode')})", "",
             f"{m.get('cpu_count')} CPUs ({m.get('cpu_model')}), {_fmt(m.get('mem_total_mib'), 0)} MiB, "
             f"Python {m.get('python')}, data root on {fs} ({(m.get('data_fs') or {}).get('mount_point', '?')}), "
             f"git {str(m.get('git_head') or '?')[:10]}, {m.get('time_utc')}, wall {results.get('wall_s', '?')} s.", ""]
    ratios: Mapping[str, float] = results.get("ratios", {})
    head = [k for k in HEADLINE_RATIOS if k in ratios]
    if head:
        lines += ["## Headline ratios", "", "| ratio | value |", "|---|---:|"]
        lines += [f"| {k} | {ratios[k]:.3f} |" for k in head]
        lines.append("")
    by_bench: dict[str, list[Mapping[str, Any]]] = {}
    for x in results.get("measurements", []):
        by_bench.setdefault(str(x.get("benchmark")), []).append(x)
    for name, b in results.get("benchmarks", {}).items():
        lines += [f"## {name}", ""]
        if "error" in b:
            lines += [f"failed: {b['error']}", ""]
            continue
        lines += ["| workload | variant | objects | conc | obj/s | MiB/s | p50 ms | p99 ms | server CPU s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for x in by_bench.get(name, []):
            lines.append(f"| {x['name']} | {x['variant']} | {x['count']} | {x['concurrency']} | "
                         f"{_fmt(x['objects_per_s'])} | {_fmt(x['mib_per_s'])} | {_fmt(x['p50_ms'], 2)} | "
                         f"{_fmt(x['p99_ms'], 2)} | {_fmt(x['server_cpu_s'], 2)} |")
        own: Sequence[str] = b.get("ratio_names", [])
        if own:
            lines += ["", "| ratio | value |", "|---|---:|"]
            lines += [f"| {k} | {ratios[k]:.3f} |" for k in own if k in ratios]
        lines.append("")
    charts = results.get("charts") or []
    if charts:
        lines += ["## Charts", ""] + [f"![{c}]({c})" for c in charts] + [""]
    path = Path(out_dir) / "results.md"
    path.write_text("\n".join(lines))
    return path
