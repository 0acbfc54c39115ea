"""The fault suite's machinery: objects, ETLs, jobs, and the object-by-object verdict.

A case puts a few objects in a fresh bucket (``ok-NNN.bin`` and
``bad-<mode>-NNN.bin``, random content), inits an ETL whose pod misbehaves on the
``bad-`` ones, transforms them inline and/or offline, and classifies every object
against the local computation :func:`tests.faults.faultlib.expected`:

- correct: the destination (or the inline body with 200) holds exactly its output;
- missing_with_error: absent, and a per-object error names it (inline: an error
  status, an exception, or an aborted connection);
- misattributed: it holds another object's output;
- corrupt: anything else (partial, padded, empty, garbage);
- silently_missing: absent with no error (inline: 204, or 200 with no body counted as corrupt);
- errored_but_present: named by an error, yet present in the destination
  (a late write after a timeout or an abort);
- collateral: a good object that did not come out correct (allowed only for pods
  that speak AIStore's order-based ws protocol or break the HTTP framing: the
  target may fail everything in flight on a broken connection);
- extra: destination objects that are no source object's name;
- missing_job_aborted: absent without a per-object error, the job aborted with an error.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import requests
from aistore.sdk.errors import AISError

from .faultlib import expected, mode_of, str_output

__all__ = ["RESULTS", "Tally", "make_sdk_client"]

RESULTS: list[dict[str, Any]] = []
FAULTPOD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faultpod.py")
OBJ_TIMEOUT = "2s"
HANG_S = 4.0  # > obj_timeout: the pod answers (and direct-puts) late


def make_sdk_client(endpoint: str):  # type: ignore[no-untyped-def]
    """An aistore SDK client that gives up quickly on 5xx (tests/conftest.py's)."""
    from conftest import make_sdk_client as make

    return make(endpoint)


def uid() -> str:
    return secrets.token_hex(3)


# -- objects -------------------------------------------------------------------------------


def make_objects(bad_modes: list[str], n: int = 20, bad_every: int = 5) -> dict[str, bytes]:
    """``n`` objects; every ``bad_every``-th one (from index 2) is ``bad-<mode>-NNN.bin``,
    modes taken in turn from ``bad_modes``. Sizes 200 B..12 KiB, random content."""
    objs: dict[str, bytes] = {}
    k = 0
    for i in range(n):
        data = os.urandom(200 + (i * 2311) % 12000)
        if bad_modes and i % bad_every == 2:
            objs[f"bad-{bad_modes[k % len(bad_modes)]}-{i:03d}.bin"] = data
            k += 1
        else:
            objs[f"ok-{i:03d}.bin"] = data
    return objs


def upload(client: Any, bck_name: str, objs: dict[str, bytes]) -> Any:
    b = client.bucket(bck_name).create(exist_ok=True)
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda kv: b.object(kv[0]).get_writer().put_content(kv[1]), objs.items()))
    return b


def acceptable_outputs(name: str, data: bytes) -> set[bytes]:
    """What counts as this object's correct output (``str`` mode: the text, encoded, too)."""
    out = {expected(data)}
    if mode_of(name) == "str":
        out.add(str_output(data).encode())
    return out


# -- ETLs ----------------------------------------------------------------------------------


def init_raw_etl(client: Any, name: str, comm: str, direct_put: bool) -> None:
    """An ETL whose pods are :mod:`tests.faults.faultpod` processes."""
    client.etl(name).init(
        image="aioetl/faultpod:test", command=[sys.executable, FAULTPOD, "--port", "8000"],
        comm_type=comm, obj_timeout=OBJ_TIMEOUT, init_timeout="60s", direct_put=direct_put,
        FAULT_HANG_S=str(HANG_S),
    )


def init_class_etl(client: Any, name: str, cls: type, comm: str, direct_put: bool, **env: str) -> None:
    client.etl(name).init_class(comm_type=comm, direct_put=direct_put, obj_timeout=OBJ_TIMEOUT,
                                init_timeout="120s", FAULT_SLEEP_S=str(HANG_S), **env)(cls)


def delete_etl(client: Any, name: str) -> None:
    try:
        client.etl(name).delete()
    except (AISError, requests.RequestException):
        pass


def delete_bucket(client: Any, name: str) -> None:
    try:
        client.bucket(name).delete(missing_ok=True)
    except (AISError, requests.RequestException):
        pass


# -- the verdict -----------------------------------------------------------------------------


@dataclass
class Tally:
    case: str
    attempted: int = 0
    correct: int = 0
    missing_with_error: int = 0
    misattributed: int = 0
    corrupt: int = 0
    silently_missing: int = 0
    errored_but_present: int = 0
    collateral: int = 0
    extra: int = 0
    missing_job_aborted: int = 0
    verdict: str = ""
    job: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.examples) < 8:
            self.examples.append(what)

    def violations(self, *, strict: bool, abort_ok: bool) -> list[str]:
        """What this case must never show; empty when it passes."""
        v = [f"{k}={getattr(self, k)}" for k in
             ("misattributed", "corrupt", "silently_missing", "errored_but_present", "extra")
             if getattr(self, k)]
        if self.missing_job_aborted and not abort_ok:
            v.append(f"missing_job_aborted={self.missing_job_aborted} (cont_on_err job aborted)")
        if strict and self.collateral:
            v.append(f"collateral={self.collateral} (good objects failed)")
        return v

    def record(self, violations: list[str]) -> None:
        self.verdict = "PASS" if not violations else "FAIL: " + "; ".join(violations)
        RESULTS.append(asdict(self))


def _owner_of_output(content: bytes, objs: dict[str, bytes], me: str) -> str | None:
    for n, d in objs.items():
        if n != me and content in acceptable_outputs(n, d):
            return n
    return None


def job_errors(endpoint: str, client: Any, etl_name: str, job_id: str, bck: str) -> dict[str, str]:
    """Object name -> message, from the full report ``GET /v1/jobs/<id>/errors`` (JSON lines)
    and the capped list of the ETL details (both, in case one of them is incomplete)."""
    errs: dict[str, str] = {}
    prefix = f"ais://{bck}/"
    try:
        r = requests.get(f"{endpoint}/v1/jobs/{job_id}/errors", timeout=30)
        if r.status_code == 200:
            for line in r.text.splitlines():
                if line.strip():
                    doc = json.loads(line)
                    errs[str(doc.get("obj_name", "")).removeprefix(prefix)] = str(doc.get("msg", doc))
    except requests.RequestException:
        pass
    try:
        for e in client.etl(etl_name).view(job_id=job_id).obj_errors or []:
            errs.setdefault(e.obj_name.removeprefix(prefix), e.msg)
    except (AISError, requests.RequestException):
        pass
    return errs


def dst_contents(client: Any, bck: str) -> dict[str, bytes]:
    b = client.bucket(bck)
    try:
        names = [e.name for e in b.list_all_objects()]
    except (AISError, requests.RequestException):
        return {}
    out: dict[str, bytes] = {}
    for n in names:
        try:
            out[n] = b.object(n).get_reader().read_all()
        except (AISError, requests.RequestException) as e:
            out[n] = f"<unreadable: {e}>".encode()
    return out


def classify_offline(t: Tally, objs: dict[str, bytes], dst: dict[str, bytes], errs: dict[str, str],
                     aborted_err: str) -> None:
    t.attempted = len(objs)
    for n, data in objs.items():
        bad = bool(mode_of(n))
        if n in dst:
            content = dst[n]
            if n in errs:
                t.errored_but_present += 1
                t.note(f"{n}: present although the job reported {errs[n]!r}")
            if content in acceptable_outputs(n, data):
                t.correct += 1
                continue
            owner = _owner_of_output(content, objs, n)
            if owner:
                t.misattributed += 1
                t.note(f"{n}: holds the output of {owner}")
            else:
                t.corrupt += 1
                t.note(f"{n}: {len(content)} bytes, expected {len(expected(data))}: {content[:40]!r}")
        elif n in errs:
            t.missing_with_error += 1
        elif aborted_err:
            t.missing_job_aborted += 1
        else:
            t.silently_missing += 1
            t.note(f"{n}: missing, no error")
        if not bad:
            t.collateral += 1
    for n in dst:
        if n not in objs:
            t.extra += 1
            t.note(f"{n}: in the destination, no such source object")


def wait_job(client: Any, job_id: str, timeout_s: float = 90) -> tuple[bool, bool, str]:
    """``(success, aborted, err)`` once the job ends (raises the SDK's Timeout if it does not)."""
    res = client.job(job_id).wait(timeout=timeout_s)
    st = client.job(job_id).status()
    return bool(res.success), bool(getattr(st, "aborted", False)), str(getattr(st, "err", "") or "")


def run_offline(t: Tally, client: Any, endpoint: str, etl_name: str, src: Any, objs: dict[str, bytes], *,
                cont_on_err: bool = True, settle_s: float = 0.0, num_workers: int = 0) -> list[str]:
    """Transform ``src`` into a fresh bucket, classify, and return the job-level problems
    (the object-level ones are in ``t``)."""
    dst_name = f"fdst-{uid()}"
    problems: list[str] = []
    job = src.transform(etl_name=etl_name, to_bck=client.bucket(dst_name), cont_on_err=cont_on_err,
                        num_workers=num_workers)
    try:
        success, aborted, err = wait_job(client, job)
    except Exception as e:
        problems.append(f"job {job} did not end cleanly: {type(e).__name__}: {e}")
        try:
            client.job(job).abort()
        except Exception:
            pass
        success, aborted, err = False, True, f"wait failed: {e}"
    if settle_s:
        time.sleep(settle_s)  # anything that lands now landed after the end
    errs = job_errors(endpoint, client, etl_name, job, src.name)
    dst = dst_contents(client, dst_name)
    t.job = {"id": job, "success": success, "aborted": aborted, "err": err[:300], "n_errors": len(errs),
             "error_examples": sorted(f"{k}: {v[:100]}" for k, v in errs.items())[:4]}
    classify_offline(t, objs, dst, errs, err if aborted else "")
    for n in errs:
        if n not in objs:
            problems.append(f"an error names {n!r}, not an object of this job")
    if success and (errs or t.correct != len(objs)):
        problems.append(f"job reported success with {len(errs)} errors and {t.correct}/{len(objs)} correct")
    if not success and t.correct == len(objs) and not errs:
        problems.append(f"job failed ({err[:200]}) although every object came out correct")
    delete_bucket(client, dst_name)
    return problems


def run_inline(t: Tally, endpoint: str, bck: str, etl_name: str, objs: dict[str, bytes], threads: int = 8) -> None:
    """GET every object with ``etl_name`` (``threads`` at a time: several requests in flight per pod)."""

    def one(name: str) -> tuple[str, int, bytes | None, str]:
        url = f"{endpoint}/v1/objects/{bck}/{quote(name)}"
        try:
            r = requests.get(url, params={"provider": "ais", "etl_name": etl_name}, timeout=(5, 60))
            return name, r.status_code, r.content, ""
        except requests.RequestException as e:  # an aborted body is an honest error
            return name, 0, None, f"{type(e).__name__}: {e}"

    t.attempted = len(objs)
    with ThreadPoolExecutor(threads) as ex:
        results = list(ex.map(one, list(objs)))
    for name, status, body, _exc in results:
        bad = bool(mode_of(name))
        data = objs[name]
        if status == 200 and body is not None:
            if body in acceptable_outputs(name, data):
                t.correct += 1
                continue
            owner = _owner_of_output(body, objs, name)
            if owner:
                t.misattributed += 1
                t.note(f"{name}: 200 with the output of {owner}")
            else:
                t.corrupt += 1
                t.note(f"{name}: 200 with {len(body)} bytes, expected {len(expected(data))}: {body[:40]!r}")
        elif status in (204, 202) or (200 <= status < 300):
            t.silently_missing += 1
            t.note(f"{name}: {status} without the output")
        else:
            t.missing_with_error += 1
        if not bad:
            t.collateral += 1
