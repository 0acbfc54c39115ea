"""A full peer is an error (#11 item 4).

Offline jobs on 3 targets with direct put (ws and hpush, our pod server and
``aistore[etl]``'s) whose outputs partly belong to a target whose only mountpath
is a 20 MiB tmpfs, filled (by a plain file next to the objects) until ~2 MiB are
free. Every output that did not land must be a per-object error of the job that
names the destination target and the cause; nothing partial: every output
present is correct, no work files are left, and the job does not report success.
Skipped where the machine does not let the test mount a tmpfs.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from aioetl.engine.node.launcher import LocalCluster

from .faultlib import AisFaultServer, OurFaultServer
from .harness import (
    Tally,
    classify_offline,
    delete_bucket,
    delete_etl,
    dst_contents,
    init_class_etl,
    job_errors,
    make_sdk_client,
    upload,
    wait_job,
)

MIB = 1 << 20
N_OBJS = 90
OBJ_SIZE = 256 * 1024
FREE_LEFT = 2 * MIB
CAUSE = re.compile(r"507|space|full|ENOSPC|insufficient", re.I)


@pytest.fixture(scope="module")
def full_peer() -> Iterator[tuple[LocalCluster, str, str, Any, dict[str, bytes]]]:
    """(cluster, full target id, its mountpath, SDK client, source objects): 3 targets,
    one on a 20 MiB tmpfs filled until ~2 MiB are free after the sources landed."""
    import shutil

    from .conftest import new_data_dir

    d = new_data_dir("fullpeer")
    c = LocalCluster(targets=3, data_dir=d, port=0)
    tid, mps = next(iter(c.target_mountpaths().items()))
    mp = mps[0]
    os.makedirs(mp, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mp], capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        pytest.skip(f"cannot mount a 20 MiB tmpfs here (mount: {r.stderr.strip() or r.returncode}); needs root")
    try:
        c.start()
        client = make_sdk_client(c.endpoint)
        objs = {f"o-{i:03d}.bin": os.urandom(OBJ_SIZE + i) for i in range(N_OBJS)}
        upload(client, "fp-src", objs)
        st = os.statvfs(mp)
        free = st.f_bavail * st.f_frsize
        with open(os.path.join(mp, "filler.bin"), "wb") as f:
            f.write(b"\0" * max(0, free - FREE_LEFT))
        yield c, tid, mp, client, objs
    finally:
        c.stop()
        subprocess.run(["umount", "-l", mp], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


_RUNS: dict[tuple[str, str], dict[str, Any]] = {}


def _run(full_peer: Any, comm: str, server: str) -> dict[str, Any]:
    """Run the case's job once (both tests of a case read its outcome)."""
    if (comm, server) in _RUNS:
        return _RUNS[(comm, server)]
    c, full_tid, mp, client, objs = full_peer
    name, dst = f"fp-{comm}-{server}", f"fp-dst-{comm}-{server}"
    cls = OurFaultServer if server == "ours" else AisFaultServer
    init_class_etl(client, name, cls, comm, True)
    try:
        job = client.bucket("fp-src").transform(etl_name=name, to_bck=client.bucket(dst), cont_on_err=True)
        success, aborted, err = wait_job(client, job, timeout_s=240)
        errs = job_errors(c.endpoint, client, name, job, "fp-src")
        out = dst_contents(client, dst)
        on_full = {os.path.basename(p) for p in glob.glob(os.path.join(mp, "@ais", dst, "%ob", "*"))}
        left = glob.glob(os.path.join(c.data_dir, "targets", "*", "*", "@ais", dst, "%wk", "*"))
    finally:
        delete_etl(client, name)
        delete_bucket(client, dst)
    run = {"success": success, "aborted": aborted, "err": err, "errs": errs, "out": out, "left": left,
           "full_tid": full_tid, "objs": objs, "missing": [n for n in objs if n not in out]}
    print(f"\n{comm}/{server}: {len(objs)} objects, {len(out)} outputs ({len(on_full)} on the full "
          f"target {full_tid}), {len(run['missing'])} missing, {len(errs)} per-object errors, "
          f"job success={success} aborted={aborted} err={err[:160]!r}; "
          f"e.g. {next(iter(errs.values()), '')[:200]!r}")
    _RUNS[(comm, server)] = run
    return run


CASES = [pytest.param(comm, server, id=f"{comm}-{server}")
         for comm in ("ws", "hpush") for server in ("ours", "aistore")]


@pytest.mark.parametrize(("comm", "server"), CASES)
def test_full_peer_loses_nothing_silently(full_peer: Any, comm: str, server: str) -> None:
    """Nothing partial, nothing silent: every output present is correct, every missing
    one is explained (a per-object error, or the job's abort error naming the cause),
    the job does not succeed, no work files are left."""
    r = _run(full_peer, comm, server)
    t = Tally(f"full peer {comm} {server}")
    classify_offline(t, r["objs"], r["out"], r["errs"], r["err"] if r["aborted"] else "")
    v = t.violations(strict=False, abort_ok=True)
    if not r["missing"]:
        v.append("every output fit: the peer was not full (test set-up)")
    if r["aborted"] and not CAUSE.search(r["err"]):
        v.append(f"the job aborted without naming the cause: {r['err']!r}")
    if r["success"]:
        v.append("the job reported success")
    if r["left"]:
        v.append(f"{len(r['left'])} work files left: {r['left'][:3]}")
    t.record(v)
    assert not v, v


@pytest.mark.parametrize(("comm", "server"), CASES)
def test_every_output_a_full_peer_refuses_is_a_per_object_error(full_peer: Any, comm: str, server: str) -> None:
    """#11 item 4 as written: each missing output has its own error naming the destination and the cause."""
    r = _run(full_peer, comm, server)
    errs, tid = r["errs"], r["full_tid"]
    unexplained = [n for n in r["missing"] if n not in errs]
    vague = [f"{n}: {errs[n]}" for n in r["missing"] if n in errs and not (tid in errs[n] and CAUSE.search(errs[n]))]
    assert r["missing"], "the peer was not full (test set-up)"
    assert not unexplained and not vague, (
        f"{len(unexplained)} of {len(r['missing'])} missing outputs have no per-object error "
        f"(job aborted={r['aborted']}: {r['err'][:200]!r}); {len(vague)} errors do not name {tid} and the cause: "
        f"{vague[:2]}")
