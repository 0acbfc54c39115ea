"""Offline transform jobs from the command line, with live progress.

    aioetl etl bucket ETL ais://src ais://dst [--prefix P --prepend P --ext jpg:txt --dry-run
                                              --num-workers N --cont-on-err --latest --sync --wait/--no-wait]
    aioetl etl objects ETL ais://src ais://dst (--list a,b,c | --template 'x-{0..99}.txt') [...]
    aioetl job ls | show ID | wait ID | stop ID | errors ID [OUT]

Either bucket may be remote: ``aws://b`` or ``s3://b`` wherever ``ais://b`` is
accepted (the gateway adds a remote bucket on first use; objects a job reaches
that are not cached yet are fetched by their owning targets). :func:`start_job`
starts the other bucket jobs (``aioetl prefetch``, ``aioetl bucket evict`` of
objects) the same way, with the same progress and summary.

Progress polls ``GET /v1/cluster?what=qryxstats`` (the SDK's ``get_details``) and
sums every target's snapshot: objects and bytes done, rate, ETA against the
totals the targets counted from their listings.

:func:`etl_bucket` and :func:`etl_objects` are ``aioetl etl`` commands: :mod:`.etl`
registers them on its app (this module does not import it, so there is no cycle).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.table import Table

from aioetl.engine.client.cli.common import (
    DataOpt,
    EndpointOpt,
    check,
    console,
    die,
    http_client,
    human,
    new_app,
    out,
    parse_url,
)
from aioetl.engine.core.names import bck_uri, split_bck_key

job_app = new_app("List, inspect, wait for and stop jobs.")


def _sum_snaps(snaps: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    tot: dict[str, Any] = {"done-objs": 0, "done-bytes": 0, "total-objs": 0, "total-bytes": 0, "err-total": 0,
                           "loc-objs": 0, "loc-bytes": 0, "out-objs": 0, "out-bytes": 0, "in-objs": 0, "in-bytes": 0,
                           "remote-objs": 0, "remote-bytes": 0}
    running = False
    aborted = False
    errs: list[str] = []
    for ss in snaps.values():
        for s in ss:
            for k in ("done-objs", "done-bytes", "total-objs", "total-bytes", "err-total"):
                tot[k] += int(s.get(k, 0) or 0)
            for k, v in s["stats"].items():  # a counter this client does not know yet is summed too
                tot[k] = tot.get(k, 0) + int(v)
            running |= not s.get("is_idle", True)
            aborted |= bool(s.get("aborted"))
            if s.get("abort-err"):
                errs.append(s["abort-err"])
            elif s.get("err"):
                errs.append(s["err"])
    tot.update(running=running and not aborted, aborted=aborted, errs=errs, targets=len(snaps))
    return tot


def watch(c: httpx.Client, xid: str, *, progress: bool = True, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll the job until every target finished; draw a progress bar. Returns the summed stats."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    t0 = time.monotonic()
    bar = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[bytes]}", markup=False), TextColumn("{task.fields[rate]}", markup=False),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not progress, transient=False)
    task = bar.add_task(xid, total=None, bytes="", rate="")
    tot: dict[str, Any] = {}
    with bar:
        while True:
            r = check(c.request("GET", "/cluster", params={"what": "qryxstats"}, json={"ID": xid}))
            tot = _sum_snaps(r.json())
            dt = max(time.monotonic() - t0, 1e-6)
            total = tot["total-objs"] or None
            bar.update(task, completed=tot["done-objs"], total=total,
                       bytes=f"{human(tot['done-bytes'])}/{human(tot['total-bytes']) if tot['total-bytes'] else '?'}",
                       rate=f"{tot['done-objs'] / dt:.0f} obj/s {human(tot['done-bytes'] / dt)}/s")
            if tot["targets"] and not tot["running"]:
                break
            time.sleep(poll_s)
    tot["seconds"] = time.monotonic() - t0
    return tot


def summary(xid: str, tot: dict[str, Any]) -> None:
    """The closing summary: objects, bytes in and out, errors, duration, throughput."""
    dt = max(tot.get("seconds", 0.0), 1e-6)
    status = "ABORTED" if tot["aborted"] else ("finished with errors" if tot["err-total"] else "finished")
    tbl = Table(title=f"job {xid}: {status}", box=None, show_header=False)
    tbl.add_column(justify="right")
    tbl.add_column()
    tbl.add_row("objects", f"{tot['done-objs']} of {tot['total-objs'] or '?'} processed")
    tbl.add_row("written locally", f"{tot['loc-objs']} objects, {human(tot['loc-bytes'])}")
    tbl.add_row("sent to peers", f"{tot['out-objs']} objects, {human(tot['out-bytes'])}")
    tbl.add_row("received", f"{tot['in-objs']} objects, {human(tot['in-bytes'])}")
    if tot.get("remote-objs"):
        tbl.add_row("fetched from remote", f"{tot['remote-objs']} objects, {human(tot.get('remote-bytes', 0))}")
    tbl.add_row("bytes in (source)", human(tot["done-bytes"]))
    tbl.add_row("bytes out", human(tot["loc-bytes"] + tot["out-bytes"]))
    tbl.add_row("errors", str(tot["err-total"]))
    tbl.add_row("duration", f"{dt:.2f}s")
    tbl.add_row("throughput", f"{tot['done-objs'] / dt:.1f} obj/s, {human(tot['done-bytes'] / dt)}/s")
    out.print(tbl)
    for e in tot["errs"][:5]:
        console.print(e, style="red")


def _start(c: httpx.Client, src: str, action: str, value: dict[str, Any], params: dict[str, str],
           method: str = "POST") -> str:
    """Start job ``action`` on bucket key ``src``; returns the job id (the gateway's reply)."""
    provider, name = split_bck_key(src)
    return check(c.request(method, f"/buckets/{name}", params={"provider": provider, **params},
                           json={"action": action, "name": "", "value": value})).text


def _uname(bck: str) -> str:
    """``bck_to`` of a bucket key: ``ais/@#/b/``, ``aws/@#/b/`` (AIStore's bucket uname)."""
    provider, name = split_bck_key(bck)
    return f"{provider}/@#/{name}/"


def _show(bck: str) -> str:
    """A bucket as ``GET /v1/jobs`` gives it (a key), as the user writes it: ``ais://b``, ``aws://b``."""
    return bck_uri(bck) if bck else ""


def _common(prefix: str, prepend: str, ext: list[str], dry_run: bool, num_workers: int, coer: bool,
            etl: str, pipeline: list[str], latest: bool = False, sync: bool = False) -> dict[str, Any]:
    ext_map = {}
    for e in ext:
        a, sep, b = e.partition(":")
        if not sep:
            raise typer.BadParameter(f"--ext expects FROM:TO, e.g. jpg:txt (got {e!r})")
        ext_map[a.lstrip(".")] = b.lstrip(".")
    v: dict[str, Any] = {"id": etl, "prefix": prefix, "prepend": prepend, "dry_run": dry_run, "force": False,
                         "latest-ver": latest, "synchronize": sync, "request_timeout": "5m",
                         "pipeline": pipeline or None}
    if ext_map:
        v["ext"] = ext_map
    if num_workers:
        v["num-workers"] = num_workers
    if coer:
        v["coer"] = True
    return v


def _finish(c: httpx.Client, xid: str, wait: bool) -> None:
    console.print(f"job {xid} started")
    if not wait:
        out.print(xid)
        return
    tot = watch(c, xid, progress=True)
    summary(xid, tot)
    if tot["aborted"] or tot["err-total"]:
        raise typer.Exit(1)


PIPE = typer.Option([], "--then", help="Further ETLs of a pipeline, in order (repeatable).")
LATEST = typer.Option(False, "--latest", help="Remote source: check cached objects against the remote version.")
SYNC = typer.Option(False, "--sync", help="Remote source: also remove destination objects gone from the source.")
NAMES = typer.Option(None, "--list", help="Comma-separated object names.")
TEMPLATE = typer.Option(None, "--template", help="Brace range, e.g. 'img-{0000..0999}.png'.")
WAIT = typer.Option(True, "--wait/--no-wait")


def listrange(obj: str, names: str | None, template: str | None) -> dict[str, Any]:
    """The ``objnames``/``template`` value of a list-range job: one object from the URL, ``--list``
    or ``--template`` (exactly one of them).

    Raises:
        typer.BadParameter: none or more than one.
    """
    if sum(map(bool, (obj, names, template))) != 1:
        raise typer.BadParameter("give exactly one of BUCKET/OBJECT, --list and --template")
    if template:
        return {"template": template}
    return {"objnames": [obj] if obj else [n for n in (names or "").split(",") if n]}


def start_job(bck: str, action: str, value: dict[str, Any], wait: bool, endpoint: str | None, data: str | None,
              *, method: str = "POST") -> None:
    """Start a job without a destination (``prefetch-listrange``, ``evict-listrange``) on bucket key
    ``bck``; then, as the ETL jobs do, wait with a progress bar and a summary, or print its id."""
    with http_client(endpoint, data) as c:
        _finish(c, _start(c, bck, action, value, {}, method), wait)


def etl_bucket(
    etl: str, src: str, dst: str,
    prefix: str = typer.Option("", "--prefix"), prepend: str = typer.Option("", "--prepend"),
    ext: list[str] = typer.Option([], "--ext", help="Extension mapping FROM:TO (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run"),
    num_workers: int = typer.Option(0, "--num-workers", help="0 auto, -1 serial, N ceiling per target."),
    coer: bool = typer.Option(False, "--cont-on-err", help="Continue on per-object errors."),
    then: list[str] = PIPE, latest: bool = LATEST, sync: bool = SYNC, wait: bool = WAIT,
    endpoint: str | None = EndpointOpt, data: str | None = DataOpt,
) -> None:
    """Transform every object of SRC into DST: ais://, aws:// or s3:// buckets (an ais:// DST is created
    if missing; an aws:// one must exist in S3)."""
    s, _ = parse_url(src)
    d, _ = parse_url(dst)
    with http_client(endpoint, data) as c:
        xid = _start(c, s, "etl-bck",
                     _common(prefix, prepend, ext, dry_run, num_workers, coer, etl, then, latest, sync),
                     {"bck_to": _uname(d)})
        _finish(c, xid, wait)


def etl_objects(
    etl: str, src: str, dst: str,
    names: str | None = NAMES, template: str | None = TEMPLATE,
    prepend: str = typer.Option("", "--prepend"), ext: list[str] = typer.Option([], "--ext"),
    dry_run: bool = typer.Option(False, "--dry-run"), num_workers: int = typer.Option(0, "--num-workers"),
    coer: bool = typer.Option(False, "--cont-on-err"), then: list[str] = PIPE,
    latest: bool = LATEST, sync: bool = SYNC, wait: bool = WAIT,
    endpoint: str | None = EndpointOpt, data: str | None = DataOpt,
) -> None:
    """Transform a list or a template of objects of SRC into DST: ais://, aws:// or s3:// buckets."""
    if bool(names) == bool(template):
        raise typer.BadParameter("give exactly one of --list and --template")
    s, _ = parse_url(src)
    d, _ = parse_url(dst)
    v = _common("", prepend, ext, dry_run, num_workers, coer, etl, then, latest, sync)
    d_provider, d_name = split_bck_key(d)
    v["tobck"] = {"name": d_name, "provider": d_provider, "namespace": None}
    if names:
        v["objnames"] = [n for n in names.split(",") if n]
    else:
        v["template"] = template
    with http_client(endpoint, data) as c:
        _finish(c, _start(c, s, "etl-listrange", v, {}), wait)


@job_app.command("ls")
def job_ls(endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """List jobs known to the targets (recent ones, running or finished)."""
    with http_client(endpoint, data) as c:
        jobs = check(c.get("/jobs")).json()
    tbl = Table(box=None)
    for col in ("ID", "KIND", "SRC", "DST", "STATE", "LOC", "OUT", "IN", "ERR"):
        tbl.add_column(col, overflow="fold" if col in ("ID", "SRC", "DST") else "ellipsis")  # ids are typed back
    for j in jobs:
        state = "aborted" if j["aborted"] else ("running" if not j["is_idle"] else "finished")
        s = j["stats"]
        tbl.add_row(j["id"], j["kind"], _show(j["src"]), _show(j["dst"]), state, str(s.get("loc-objs", 0)),
                    str(s.get("out-objs", 0)), str(s.get("in-objs", 0)), (j["err"] or "")[:60])
    out.print(tbl)


@job_app.command("show")
def job_show(xid: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Per-target snapshots of a job."""
    with http_client(endpoint, data) as c:
        snaps = check(c.request("GET", "/cluster", params={"what": "qryxstats"}, json={"ID": xid})).json()
    if not any(snaps.values()):
        raise die(f"job {xid} not found")
    out.print_json(json.dumps(snaps))


@job_app.command("wait")
def job_wait(xid: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Wait for a job with a progress bar, then print the summary."""
    with http_client(endpoint, data) as c:
        tot = watch(c, xid)
    summary(xid, tot)
    if tot["aborted"] or tot["err-total"]:
        raise typer.Exit(1)


@job_app.command("stop")
def job_stop(xid: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Abort a job on every target."""
    with http_client(endpoint, data) as c:
        check(c.put("/cluster", json={"action": "stop", "name": "", "value": {"ID": xid, "Kind": ""}}))
    console.print(f"job {xid} stopped")


@job_app.command("errors")
def job_errors(xid: str, out_path: Path | None = typer.Argument(None), endpoint: str | None = EndpointOpt,
               data: str | None = DataOpt) -> None:
    """Download the full per-object error report (JSON lines; every failure, past the cap of 128)."""
    with http_client(endpoint, data) as c:
        body = check(c.get(f"/jobs/{xid}/errors")).content
    if out_path:
        out_path.write_bytes(body)
        console.print(f"{body.count(b'{')} errors written to {out_path}")
    else:
        sys.stdout.buffer.write(body)
