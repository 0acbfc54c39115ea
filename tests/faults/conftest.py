"""Fixtures of the fault suite: shared clusters (1 and 3 targets, data on /dev/shm,
started on first use and kept for the whole run) and the per-case summary.

Every case records one row (see :class:`tests.faults.harness.Tally`): objects
attempted, correct, missing with an error that names them, misattributed,
corrupt, silently missing, and more. At the end of the run the rows are printed
and written as JSON to ``$AIOETL_FAULT_SUMMARY`` when set, and always to
``<pytest basetemp>/fault-summary.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from aioetl.engine.node.launcher import LocalCluster

from .harness import RESULTS, make_sdk_client


def new_data_dir(name: str) -> str:
    """A fresh data root on tmpfs (/dev/shm) when there is one, else under /tmp."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix=f"aioetl-faults-{name}-", dir=base)


class Clusters:
    """Clusters by target count, started on first use, stopped at the end of the run."""

    def __init__(self) -> None:
        self._up: dict[int, tuple[LocalCluster, Any, str]] = {}

    def get(self, targets: int) -> tuple[LocalCluster, Any]:
        if targets not in self._up:
            d = new_data_dir(f"t{targets}")
            c = LocalCluster(targets=targets, data_dir=d, port=0).start()
            self._up[targets] = (c, make_sdk_client(c.endpoint), d)
        c, client, _ = self._up[targets]
        return c, client

    def close(self) -> None:
        for c, _, d in self._up.values():
            c.stop()
            shutil.rmtree(d, ignore_errors=True)
        self._up.clear()


@pytest.fixture(scope="session")
def clusters() -> Iterator[Clusters]:
    cs = Clusters()
    try:
        yield cs
    finally:
        cs.close()


@pytest.fixture
def own_data_dir() -> Iterator[str]:
    """A data root for a test that starts (and breaks) its own cluster."""
    d = new_data_dir("own")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


_COLS = ["attempted", "correct", "missing_with_error", "misattributed", "corrupt", "silently_missing",
         "errored_but_present", "collateral", "extra", "missing_job_aborted"]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not RESULTS:
        return
    rows = sorted(RESULTS, key=lambda r: r["case"])
    tr = terminalreporter
    tr.write_sep("=", f"fault cases: {len(rows)}")
    short = ["att", "ok", "err", "misattr", "corrupt", "silent", "err+present", "collat", "extra", "aborted"]
    tr.write_line(f"{'case':<58} " + " ".join(f"{h:>7}" for h in short) + "  verdict")
    for r in rows:
        tr.write_line(f"{r['case'][:58]:<58} " + " ".join(f"{r.get(c, 0):>7}" for c in _COLS)
                      + f"  {r.get('verdict', '')}")
    tot = {c: sum(int(r.get(c, 0)) for r in rows) for c in _COLS}
    tr.write_line(f"{'TOTAL':<58} " + " ".join(f"{tot[c]:>7}" for c in _COLS))
    doc = json.dumps({"cases": rows, "total": tot}, indent=1)
    paths = [os.path.join(str(config._tmp_path_factory.getbasetemp()), "fault-summary.json")]  # type: ignore[attr-defined]
    if os.environ.get("AIOETL_FAULT_SUMMARY"):
        paths.append(os.environ["AIOETL_FAULT_SUMMARY"])
    for p in paths:
        try:
            with open(p, "w") as f:
                f.write(doc)
            tr.write_line(f"fault summary written to {p}")
        except OSError as e:
            tr.write_line(f"fault summary not written to {p}: {e}")
