"""Faults around jobs and nodes: abort at the first bad object without cont_on_err,
nothing lands after an abort, a target SIGKILLed mid-job (then the cluster, or
that target alone, restarted), a client that disconnects mid-PUT of 64 MiB, and a
full disk (a 20 MiB tmpfs mounted as the target's mountpath) under a PUT and a job.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from aistore.sdk.errors import AISError

from aioetl.engine.node.launcher import LocalCluster

from .faultlib import OurFaultServer, expected
from .harness import (
    Tally,
    classify_offline,
    delete_bucket,
    delete_etl,
    dst_contents,
    init_class_etl,
    init_raw_etl,
    job_errors,
    make_objects,
    make_sdk_client,
    uid,
    upload,
    wait_job,
)

pytestmark = [pytest.mark.timeout(300)]

SETTLE_S = 4.0  # how long after a job's end we watch for late writes
MIB = 1 << 20


def _progress(client: Any, job_id: str) -> int:
    return sum(s.stats.objects + s.stats.out_objects for s in client.job(job_id).get_details().list_snapshots())


def _wait_progress(client: Any, job_id: str, n: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while _progress(client, job_id) < n:
        assert time.monotonic() < deadline, f"job {job_id} made no progress"
        time.sleep(0.05)


def _work_files(data_dir: str, bck: str) -> list[str]:
    return glob.glob(os.path.join(data_dir, "targets", "*", "*", "@ais", bck, "%wk", "*"))


def _check_present_correct(t: Tally, objs: dict[str, bytes], dst: dict[str, bytes]) -> list[str]:
    bad = []
    for n, content in dst.items():
        if n not in objs:
            bad.append(f"{n}: not a source object")
        elif content != expected(objs[n]):
            bad.append(f"{n}: {len(content)} bytes, not its output (partial or wrong)")
    return bad


# -- without cont_on_err -------------------------------------------------------------------


@pytest.mark.parametrize("pod,comm,mode,targets", [
    ("ours", "hpush", "raise", 3),
    ("ais", "ws", "raise", 3),
    ("raw", "hpush", "short", 1),
    ("raw", "ws", "text", 3),
])
def test_without_cont_on_err_the_first_bad_object_aborts_and_nothing_partial_remains(
        clusters: Any, pod: str, comm: str, mode: str, targets: int) -> None:
    from .faultlib import AisFaultServer

    cluster, client = clusters.get(targets)
    objs = make_objects([mode], n=40, bad_every=40)  # one bad object, third in name order
    src_name, dst_name, etl = f"fsrc-{uid()}", f"fdst-{uid()}", f"fa-{uid()}"
    src = upload(client, src_name, objs)
    try:
        if pod == "raw":
            init_raw_etl(client, etl, comm, True)
        else:
            init_class_etl(client, etl, OurFaultServer if pod == "ours" else AisFaultServer, comm, True)
        job = src.transform(etl_name=etl, to_bck=client.bucket(dst_name))
        success, aborted, err = wait_job(client, job)
        at_end = dst_contents(client, dst_name)
        time.sleep(SETTLE_S)
        later = dst_contents(client, dst_name)
        errs = job_errors(cluster.endpoint, client, etl, job, src_name)
        t = Tally(f"no-coer {pod}-{comm}-{mode}-t{targets}")
        classify_offline(t, objs, later, errs, err if aborted else "")
        problems = t.violations(strict=False, abort_ok=True)
        if success:
            problems.append("job succeeded although an object failed without cont_on_err")
        if not aborted or not err:
            problems.append(f"job not aborted with a reason (aborted={aborted}, err={err!r})")
        problems += _check_present_correct(t, objs, later)
        if set(later) - set(at_end):
            problems.append(f"objects appeared after the abort: {sorted(set(later) - set(at_end))[:5]}")
        bad = next(n for n in objs if n.startswith("bad-"))
        if bad in later:
            problems.append(f"the failing object {bad} is in the destination")
        t.job = {"id": job, "success": success, "aborted": aborted, "err": err[:300], "n_errors": len(errs)}
        t.record(problems)
        assert not problems, problems
    finally:
        delete_etl(client, etl)
        delete_bucket(client, src_name)
        delete_bucket(client, dst_name)


def test_nothing_lands_after_an_abort(clusters: Any) -> None:
    _cluster, client = clusters.get(3)
    objs = make_objects([], n=40)
    src_name, dst_name, etl = f"fsrc-{uid()}", f"fdst-{uid()}", f"fab-{uid()}"
    src = upload(client, src_name, objs)
    try:
        init_class_etl(client, etl, OurFaultServer, "ws", True, FAULT_SLOW_S="0.4")
        job = src.transform(etl_name=etl, to_bck=client.bucket(dst_name), num_workers=2)
        _wait_progress(client, job, 3)
        client.job(job).abort()
        success, aborted, _err = wait_job(client, job)
        at_end = dst_contents(client, dst_name)
        time.sleep(SETTLE_S)
        later = dst_contents(client, dst_name)
        t = Tally("abort ours-ws-slow-t3")
        classify_offline(t, objs, later, {}, "aborted")
        problems = _check_present_correct(t, objs, later)
        if success or not aborted:
            problems.append(f"aborted job reads success={success} aborted={aborted}")
        if set(later) - set(at_end):
            problems.append(f"{len(set(later) - set(at_end))} objects appeared after the abort, "
                            f"e.g. {sorted(set(later) - set(at_end))[:5]}")
        t.record(problems)
        assert not problems, problems
    finally:
        delete_etl(client, etl)
        delete_bucket(client, src_name)
        delete_bucket(client, dst_name)


# -- a target SIGKILLed mid-job ----------------------------------------------------------------


def _wait_etl_running(client: Any, etl: str, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    stage = ""
    while time.monotonic() < deadline:
        try:
            found = [e for e in client.cluster().list_etls(stages=["Initializing", "Running", "Aborted"])
                     if e.id == etl]
            stage = str(found[0].stage) if found else "<not listed>"
        except (AISError, requests.RequestException) as e:
            stage = f"<{type(e).__name__}: {e}>"
        if stage == "Running":
            return stage
        time.sleep(0.5)
    return stage


def _job_after_restart(client: Any, job: str) -> list[str]:
    """``wait()`` after a restart must answer, and answer failure (not 404, not success)."""
    try:
        res = client.job(job).wait(timeout=60)
    except AISError as e:
        if getattr(e, "status_code", 0) == 404 or "not found" in str(e).lower():
            return [f"after the restart the job answers 404: {e}"]
        return []  # raised a failure: acceptable
    except Exception as e:
        return [f"after the restart wait() failed with {type(e).__name__}: {e}"]
    return ["after the restart the job reads success"] if res.success else []


def _inline_everywhere(endpoint: str, bck: str, etl: str, objs: dict[str, bytes]) -> list[str]:
    bad = []
    for n in list(objs)[:45]:
        try:
            r = requests.get(f"{endpoint}/v1/objects/{bck}/{quote(n)}", params={"provider": "ais", "etl_name": etl},
                             timeout=(5, 30))
            if r.status_code != 200 or r.content != expected(objs[n]):
                bad.append(f"{n}: {r.status_code} {r.content[:80]!r}")
        except requests.RequestException as e:
            bad.append(f"{n}: {type(e).__name__}")
    return [f"inline GETs after the restart fail on {len(bad)} objects, e.g. {bad[:3]}"] if bad else []


@pytest.mark.parametrize("restart", ["cluster", "target-alone"])
def test_target_sigkilled_mid_job(own_data_dir: str, restart: str) -> None:
    comm = "hpush" if restart == "cluster" else "ws"
    objs = {f"o-{i:04d}.bin": os.urandom(2048 + i) for i in range(300)}
    c = LocalCluster(targets=3, data_dir=own_data_dir, port=0).start()
    problems: list[str] = []
    try:
        client = make_sdk_client(c.endpoint)
        src = upload(client, "kill-src", objs)
        init_class_etl(client, "kill-etl", OurFaultServer, comm, True, FAULT_SLOW_S="0.02")
        job = src.transform(etl_name="kill-etl", to_bck=client.bucket("kill-dst"), num_workers=2)
        _wait_progress(client, job, 5)
        victim = c.targets[0]
        if restart == "target-alone":
            c.restart_target(victim.node_id)  # SIGKILL (a target this test started), then start it alone
        else:
            os.kill(victim.pid, signal.SIGKILL)  # a target this test started
        try:
            success, aborted, err = wait_job(client, job, 90)
        except Exception as e:
            success, aborted, err = False, False, f"<wait raised {type(e).__name__}: {e}>"
            if "404" in str(e) or "not found" in str(e).lower():
                problems.append(f"the job answers 404 after the kill: {e}")
        if restart == "cluster":
            c.stop()
            c.start()
            client = make_sdk_client(c.endpoint)
        # read the destination once every target is back (a listing needs all of them)
        dst = dst_contents(client, "kill-dst")
        t = Tally(f"sigkill-target restart={restart} {comm}")
        t.attempted = len(objs)
        t.correct = sum(1 for n, d in dst.items() if n in objs and d == expected(objs[n]))
        t.corrupt = sum(1 for n, d in dst.items() if n in objs and d != expected(objs[n]))
        t.extra = sum(1 for n in dst if n not in objs)
        t.missing_job_aborted = len(objs) - t.correct - t.corrupt
        t.job = {"id": job, "success": success, "aborted": aborted, "err": err[:300]}
        problems += _check_present_correct(t, objs, dst)
        if success and t.correct != len(objs):
            problems.append(f"job succeeded with {len(objs) - t.correct} outputs missing")
        if not success and not err:
            problems.append("job failed without a reason")
        problems += _job_after_restart(client, job)
        stage = _wait_etl_running(client, "kill-etl")
        if stage != "Running":
            problems.append(f"ETL stage after the restart: {stage!r}")
        else:
            problems += _inline_everywhere(c.endpoint, "kill-src", "kill-etl", objs)
        # the source survived
        got = {n: client.bucket("kill-src").object(n).get_reader().read_all() for n in list(objs)[:30]}
        if any(got[n] != objs[n] for n in got):
            problems.append("source objects changed")
        t.record(problems)
    finally:
        c.stop()
    assert not problems, problems


# -- a client that disconnects mid-PUT --------------------------------------------------------


def test_client_disconnects_mid_put_of_64mib(clusters: Any) -> None:
    cluster, client = clusters.get(1)
    bck = f"fput-{uid()}"
    client.bucket(bck).create()
    try:
        url = f"{cluster.endpoint}/v1/objects/{bck}/big.bin?provider=ais"
        r = requests.put(url, data=b"", allow_redirects=False, timeout=10)
        loc = urlsplit(r.headers["Location"]) if r.status_code in (301, 302, 307, 308) else urlsplit(url)
        s = socket.create_connection((loc.hostname, loc.port), timeout=10)
        path = loc.path + ("?" + loc.query if loc.query else "")
        s.sendall(f"PUT {path} HTTP/1.1\r\nHost: {loc.netloc}\r\nContent-Length: {64 * MIB}\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        chunk = os.urandom(MIB)
        for _ in range(24):
            s.sendall(chunk)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        s.close()
        deadline = time.monotonic() + 20
        left: list[str] = []
        while time.monotonic() < deadline:
            left = _work_files(cluster.data_dir, bck)
            if not left:
                break
            time.sleep(0.2)
        t = Tally("put-disconnect-64MiB t1")
        t.attempted = 1
        head = requests.head(url, timeout=10, allow_redirects=True)
        listed = [e.name for e in client.bucket(bck).list_all_objects()]
        problems = []
        if head.status_code != 404 or listed:
            problems.append(f"the cut PUT left an object (HEAD {head.status_code}, listed {listed})")
            t.corrupt = 1
        else:
            t.missing_with_error = 1
        if left:
            problems.append(f"work files left 20 s after the disconnect: {left}")
        client.bucket(bck).object("big.bin").get_writer().put_content(b"after")
        if client.bucket(bck).object("big.bin").get_reader().read_all() != b"after":
            problems.append("a PUT after the cut one does not read back")
        t.record(problems)
        assert not problems, problems
    finally:
        delete_bucket(client, bck)


# -- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk_cluster(own_data_dir: str) -> Iterator[tuple[LocalCluster, str]]:
    """A 1-target cluster whose only mountpath is a 20 MiB tmpfs (mounted here; skipped
    when this machine does not let the test mount)."""
    c = LocalCluster(targets=1, data_dir=own_data_dir, port=0)
    mp = next(iter(c.target_mountpaths().values()))[0]
    os.makedirs(mp, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mp], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 20 MiB tmpfs here (mount: {r.stderr.strip() or r.returncode}); needs root")
    try:
        c.start()
        yield c, mp
    finally:
        c.stop()
        subprocess.run(["umount", "-l", mp], capture_output=True)


def test_full_disk_during_a_put_and_a_job(small_disk_cluster: tuple[LocalCluster, str]) -> None:
    c, _mp = small_disk_cluster
    client = make_sdk_client(c.endpoint)
    problems: list[str] = []
    b = client.bucket("disk").create()
    filler = os.urandom(12 * MIB)
    b.object("filler.bin").get_writer().put_content(filler)
    # a PUT that cannot fit
    t = Tally("full-disk PUT 12MiB on 20MiB t1")
    t.attempted = 1
    try:
        b.object("nofit.bin").get_writer().put_content(os.urandom(12 * MIB))
        put_failed = False
    except (AISError, requests.RequestException):
        put_failed = True
    if not put_failed:
        problems.append("a 12 MiB PUT into ~8 MiB of free space answered success")
    names = [e.name for e in b.list_all_objects()]
    if "nofit.bin" in names:
        try:
            got = b.object("nofit.bin").get_reader().read_all()
            problems.append(f"nofit.bin exists after a failed PUT ({len(got)} bytes)")
        except AISError:
            problems.append("nofit.bin is listed but unreadable")
        t.corrupt = 1
    else:
        t.missing_with_error = 1 if put_failed else 0
        t.silently_missing = 0 if put_failed else 1
    if b.object("filler.bin").get_reader().read_all() != filler:
        problems.append("the object already stored changed")
    if _work_files(c.data_dir, "disk"):
        problems.append(f"work files left: {_work_files(c.data_dir, 'disk')}")
    t.record(list(problems))

    # a job whose outputs do not all fit: ~4.8 MiB of sources, ~3 MiB free after them
    objs = {f"o-{i:03d}.bin": os.urandom(200 * 1024 + i) for i in range(24)}
    src = upload(client, "jsrc", objs)
    init_class_etl(client, "disk-etl", OurFaultServer, "hpush", False)
    job = src.transform(etl_name="disk-etl", to_bck=client.bucket("jdst"), cont_on_err=True)
    success, aborted, err = wait_job(client, job)
    errs = job_errors(c.endpoint, client, "disk-etl", job, "jsrc")
    dst = dst_contents(client, "jdst")
    tj = Tally("full-disk job hpush t1")
    classify_offline(tj, objs, dst, errs, err if aborted else "")
    tj.job = {"id": job, "success": success, "aborted": aborted, "err": err[:300], "n_errors": len(errs)}
    v = tj.violations(strict=False, abort_ok=True)
    if tj.correct == len(objs):
        v.append("every output fit: the disk was not full (test set-up)")
    if success:
        v.append("job succeeded on a full disk")
    left = _work_files(c.data_dir, "jdst")
    if left:
        v.append(f"{len(left)} work files left after the job")
    tj.record(v)
    problems += v
    delete_etl(client, "disk-etl")
    assert not problems, problems
