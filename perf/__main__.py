"""``python -m perf [--quick|--tiny] --out DIR [--only NAME] [benchmark flags]``.

Runs the registered benchmarks (:data:`perf.BENCHMARKS`) one after another,
writes ``DIR/results.json``::

    {"machine": machine_info(), "mode": "full", "wall_s": float, "data_on_tmpfs": bool,
     "benchmarks": {name: {"config", "info", "wall_s", "ratio_names"}},
     "measurements": [{"benchmark": name, ...Measurement}], "ratios": {name: float},
     "charts": ["<workload>.png", ...]}

``ratios`` holds every benchmark's ratios, among them issue #5's
``ws_small_vs_raw`` (offline), ``pod_vs_aistore_fastapi`` (pods),
``vs_client_loop`` (matrix) and ``thumbnail_overhead`` (workloads). Next to it:
one PNG chart per workload (:func:`perf.charts.write_charts`; skipped with a
note in ``charts_error`` when matplotlib is missing) and ``DIR/results.md``
(:func:`perf.charts.write_markdown`). The markdown tables also go to stdout.

Exit status 0 on success, 2 on bad flags, 1 when a benchmark failed (results of
the others are still written).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from types import ModuleType
from typing import Any

from . import BENCHMARKS
from .common import CommonOptions, default_data_parent, machine_info, markdown_table, write_results


def _modules(names: list[str]) -> dict[str, ModuleType]:
    return {n: importlib.import_module(BENCHMARKS[n]) for n in names}


def build_parser(mods: dict[str, ModuleType]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perf", description="aioetl benchmarks (loopback)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer objects and rounds")
    mode.add_argument("--tiny", action="store_true", help="a few objects, 1 round (smoke test; numbers meaningless)")
    p.add_argument("--out", required=True, help="output directory (results.json goes there)")
    p.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only this benchmark (repeatable)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default: full 5, quick 3, tiny 1)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data-dir", default=None,
                      help=f"parent directory of the data root (default {default_data_parent()}, tmpfs)")
    data.add_argument("--disk", action="store_true", help="put the data root on the project disk (under --out)")
    p.add_argument("--keep-data", action="store_true", help="do not delete the data root afterwards")
    p.add_argument("--profile", action="store_true",
                   help="run server processes under cProfile; profiles go to OUT/profiles (numbers not comparable)")
    for m in mods.values():
        m.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    mods = _modules(list(BENCHMARKS))
    parser = build_parser(mods)
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    names = args.only or list(BENCHMARKS)
    common = CommonOptions(
        mode="quick" if args.quick else "tiny" if args.tiny else "full",
        rounds=args.rounds,
        out_dir=args.out,
        data_parent=args.data_dir or (args.out if args.disk else default_data_parent()),
        keep_data=args.keep_data,
        profile=args.profile,
    )
    configs: dict[str, Any] = {}
    for n in names:
        try:
            configs[n] = mods[n].config_from_args(args, common)
        except ValueError as e:
            parser.error(f"{n}: {e}")

    results: dict[str, Any] = {
        "machine": machine_info(common.data_parent),
        "mode": common.mode,
        "argv": sys.argv[1:] if argv is None else argv,
        "benchmarks": {},
        "measurements": [],
        "ratios": {},
    }
    status = 0
    tables = []
    t_all = time.monotonic()
    for n in names:
        t0 = time.monotonic()
        print(f"# running {n} ({common.mode})", file=sys.stderr, flush=True)
        try:
            res = mods[n].run(configs[n])
        except Exception as e:
            traceback.print_exc()
            results["benchmarks"][n] = {"error": f"{type(e).__name__}: {e}"}
            status = 1
            continue
        results["benchmarks"][n] = {"config": res.config, "info": res.info, "wall_s": round(time.monotonic() - t0, 2),
                                    "ratio_names": list(res.ratios)}
        results["measurements"] += [{"benchmark": n, **m.to_json()} for m in res.measurements]
        results["ratios"].update(res.ratios)
        tables.append(f"## {n}\n\n{markdown_table(res.measurements, res.ratios)}")
    results["wall_s"] = round(time.monotonic() - t_all, 2)
    fs = results["machine"].get("data_fs", {}).get("fstype", "?")
    results["data_on_tmpfs"] = fs == "tmpfs"
    os.makedirs(common.out_dir, exist_ok=True)
    try:
        from .charts import write_charts

        results["charts"] = write_charts(common.out_dir, results["measurements"])
    except ImportError as e:
        results["charts"] = []
        results["charts_error"] = f"no charts: {e} (pip install matplotlib)"
        print(results["charts_error"], file=sys.stderr)
    except Exception as e:
        traceback.print_exc()
        results["charts"] = []
        results["charts_error"] = f"charts failed: {type(e).__name__}: {e}"
        status = 1
    path = write_results(common.out_dir, results)
    from .charts import write_markdown

    write_markdown(common.out_dir, results)
    m = results["machine"]
    print(f"<!-- {m['cpu_count']} CPUs, {m['cpu_model']}, Python {m['python']}, data on {fs}, mode {common.mode} -->")
    print("\n\n".join(tables))
    print(f"\nresults: {path}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
