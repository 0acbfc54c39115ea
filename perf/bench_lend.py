"""What lending an object to a confined pod costs per object (aioetl.engine.target.storage.FqnLender).

``python -m perf.bench_lend --out DIR [--objects N] [--size BYTES] [--rounds R] [--data-dir PATH]``

A confined pod sees no mountpath, only the links its target lends it for the
duration of a request: one ``link`` before the request and one ``unlink`` after
it. This measures, in one process and interleaved round by round:

- ``read``: what the pod does anyway per object: open the FQN and read it whole;
- ``lend+read``: ``FqnLender.lend`` + the same read through the link + ``give_back``.

and reports the per-object microseconds of each and the added cost. The added
microseconds are to be set against the per-object cost of a whole offline job
(about 125 us per 10 KiB object over ws on this machine: 8,000 obj/s). Writes
``DIR/results.json`` with the machine, the filesystem the data was on, each
round and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from aioetl.engine.target.storage import FqnLender, Store, fs_type

from .common import default_data_parent, machine_info


def _read(path: str) -> int:
    with open(path, "rb") as f:
        return len(f.read())


def run(objects: int, size: int, rounds: int, parent: str) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="aioetl-bench-lend-", dir=parent)
    try:
        store = Store([os.path.join(root, "mp0")])
        payload = os.urandom(size)
        fqns = []
        for i in range(objects):
            store.put_bytes("b", f"obj-{i:06d}.bin", payload)
            fqns.append(store.fqn("b", f"obj-{i:06d}.bin"))
        lender = FqnLender([mp.path for mp in store.mountpaths], "bench")
        per_round = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for fqn in fqns:
                _read(fqn)
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            for fqn in fqns:
                link = lender.lend(fqn)
                _read(link)
                lender.give_back(link)
            t_lend = time.perf_counter() - t0
            per_round.append({"read_us": t_read / objects * 1e6, "lend_read_us": t_lend / objects * 1e6})
        lender.close()
        med_read = statistics.median(r["read_us"] for r in per_round)
        med_lend = statistics.median(r["lend_read_us"] for r in per_round)
        return {"machine": machine_info(), "filesystem": fs_type(root), "data_dir": root,
                "config": {"objects": objects, "size": size, "rounds": rounds},
                "rounds": per_round,
                "median": {"read_us": round(med_read, 2), "lend_read_us": round(med_lend, 2),
                           "added_us": round(med_lend - med_read, 2),
                           "ratio_lend_read_vs_read": round(med_lend / med_read, 3)}}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.bench_lend", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (results.json goes there)")
    p.add_argument("--objects", type=int, default=5000)
    p.add_argument("--size", type=int, default=10 * 1024, help="object size in bytes (default 10 KiB)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data-dir", default=None, help=f"parent of the data (default {default_data_parent()})")
    a = p.parse_args(argv)
    res = run(a.objects, a.size, a.rounds, a.data_dir or default_data_parent())
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({"filesystem": res["filesystem"], **res["median"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
