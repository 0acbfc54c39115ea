"""The ``aioetl`` command line (typer + rich): the root app, clusters, buckets, objects.

Bucket arguments are URLs: ``ais://BUCKET[/OBJECT]`` for a cluster bucket,
``aws://BUCKET[/OBJECT]`` or ``s3://BUCKET[/OBJECT]`` for a remote S3 bucket
(:func:`.common.parse_url`). The ETL commands live in :mod:`.etl`, the offline jobs in :mod:`.jobs`, what they
share (options, consoles, errors, URLs, HTTP) in :mod:`.common`; this module only
imports them and registers their apps, so nothing imports it back.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from aioetl.engine.client.cli.common import (
    DEFAULT_DATA,
    DataOpt,
    EndpointOpt,
    console,
    data_client,
    die,
    human,
    new_app,
    out,
    parse_url,
    resolve_endpoint,
    run,
)
from aioetl.engine.client.cli.etl import etl_app
from aioetl.engine.client.cli.jobs import NAMES, TEMPLATE, WAIT, job_app, listrange, start_job
from aioetl.engine.core.names import bck_uri, is_remote
from aioetl.engine.node.launcher import ClusterError, LocalCluster, stop_running

#: ``LsoEnt.f`` bit of an entry a target has a copy of (AIStore ``apc.EntryIsCached``)
ENTRY_CACHED = 1 << 6

app = new_app("aioetl: transform objects next to the data (AIStore ETL model).", add_completion=False)
cluster_app = new_app("Start, stop and inspect a local cluster.")
bucket_app = new_app("Create, remove, list and evict buckets.")
app.add_typer(cluster_app, name="cluster")
app.add_typer(bucket_app, name="bucket")
app.add_typer(etl_app, name="etl")
app.add_typer(job_app, name="job")


# -- cluster -------------------------------------------------------------------
@cluster_app.command("up")
def cluster_up(
    targets: int | None = typer.Option(None, "--targets", "-t",
                                       help="Number of targets (default 3, or the data root's)."),
    data: str = typer.Option(DEFAULT_DATA, "--data", "-d", help="Data root."),
    port: int = typer.Option(8080, "--port", "-p", help="Gateway port (0 = any free port)."),
    mountpaths: int = typer.Option(1, "--mountpaths", help="Mountpaths per target (new data roots only)."),
    detach: bool = typer.Option(False, "--detach", help="Return once healthy; stop later with 'cluster down'."),
) -> None:
    """Start a gateway and N targets on 127.0.0.1; foreground until Ctrl-C/SIGTERM."""
    cl = LocalCluster(targets=targets, data_dir=data, port=port, mountpaths_per_target=mountpaths, detach=detach)
    t0 = time.monotonic()
    try:
        cl.start()
    except ClusterError as e:
        raise die(str(e)) from None
    console.print(f"cluster up in {time.monotonic() - t0:.1f}s: gateway {cl.endpoint}, "
                  f"{len(cl.targets)} targets, data {cl.data_dir}, cluster secret {cl.secret_path} (0600)")
    from aioetl.engine.target.pods import confinement

    warning = confinement().warning()
    if warning:  # said once here; each target also logs it once
        console.print(Text.assemble(("warning:", "yellow"), " ", warning))
    out.print(cl.endpoint)
    if detach:
        return
    stop = {"sig": 0}

    def on_sig(signum: int, _frame: object) -> None:
        stop["sig"] = signum

    signal.signal(signal.SIGINT, on_sig)
    signal.signal(signal.SIGTERM, on_sig)
    code = 0
    while not stop["sig"]:
        dead = cl.dead_nodes()
        if dead:
            for n in dead:
                code_s = n.proc.returncode if n.proc else "?"
                console.print(f"{n.role} {n.node_id} exited ({code_s}); log: {n.log_path}", style="red")
            code = 1
            break
        time.sleep(0.2)
    console.print("stopping cluster...")
    cl.stop()
    console.print("cluster stopped")
    raise typer.Exit(code)


@cluster_app.command("down")
def cluster_down(data: str = typer.Option(DEFAULT_DATA, "--data", "-d", help="Data root.")) -> None:
    """Stop the cluster running on --data."""
    n = stop_running(data)
    if n == 0:
        console.print(f"no cluster running on {os.path.abspath(data)}")
    else:
        console.print(f"stopped {n} nodes")


@cluster_app.command("status")
def cluster_status(endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Show nodes, their URLs and mountpath capacity."""
    import httpx

    ep = resolve_endpoint(endpoint, data)
    try:
        smap = httpx.get(f"{ep}/v1/daemon", params={"what": "smap"}, timeout=5).json()
    except httpx.HTTPError as e:
        raise die(f"no gateway at {ep}: {e}") from None
    tbl = Table(title=f"cluster {smap.get('uuid', '')} (smap v{smap['version']})")
    for col in ("node", "type", "url", "mountpaths", "used", "avail"):
        tbl.add_column(col)
    p = smap["proxy_si"]
    tbl.add_row(p["daemon_id"], "gateway", p["public_net"]["direct_url"], "", "", "")
    for tid, t in sorted(smap["tmap"].items()):
        url = t["public_net"]["direct_url"]
        try:
            cap = httpx.get(f"{url}/v1/daemon", params={"what": "capacity"}, timeout=5).json()["mountpaths"]
            used = sum(m["used"] for m in cap)
            avail = sum(m["avail"] for m in cap)
            tbl.add_row(tid, "target", url, str(len(cap)), human(used), human(avail))
        except httpx.HTTPError:
            tbl.add_row(tid, "target", url, "?", Text("unreachable", style="red"), "")
    out.print(tbl)


# -- buckets -------------------------------------------------------------------
@bucket_app.command("create")
def bucket_create(url: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Create ais://BUCKET (an aws:// or s3:// bucket is created in S3; aioetl adds it on first use)."""
    bck, _ = parse_url(url)
    run(data_client(endpoint, data).create_bucket(bck))
    console.print(f"created {bck_uri(bck)}")


@bucket_app.command("rm")
def bucket_rm(url: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Destroy ais://BUCKET and every object in it (remote buckets are evicted, not destroyed)."""
    bck, _ = parse_url(url)
    run(data_client(endpoint, data).destroy_bucket(bck))
    console.print(f"destroyed {bck_uri(bck)}")


@bucket_app.command("ls")
def bucket_ls(endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """List buckets: ais:// ones and the aws:// ones in use."""
    for key in run(data_client(endpoint, data).list_buckets()):
        out.print(bck_uri(key))


@bucket_app.command("evict")
def bucket_evict(
    url: str,
    keep_md: bool = typer.Option(False, "--keep-md",
                                 help="Keep the bucket in the cluster (else it is re-added on use)."),
    names: str | None = NAMES, template: str | None = TEMPLATE, wait: bool = WAIT,
    endpoint: str | None = EndpointOpt, data: str | None = DataOpt,
) -> None:
    """Drop the cached copies of aws://BUCKET (alias s3://), or of some of its objects
    (aws://BUCKET/OBJECT, --list, --template); the remote keeps every object."""
    bck, obj = parse_url(url)
    if not is_remote(bck):
        raise typer.BadParameter(f"only remote buckets are evicted: expected aws://BUCKET or s3://BUCKET, got {url!r}")
    if obj or names or template:
        if keep_md:
            raise typer.BadParameter("--keep-md is for a whole bucket, not for objects")
        start_job(bck, "evict-listrange", listrange(obj, names, template), wait, endpoint, data, method="DELETE")
        return
    run(data_client(endpoint, data).evict_bucket(bck, keep_md=keep_md))
    console.print(f"evicted {bck_uri(bck)}" + (" (kept in the cluster)" if keep_md else ""))


@app.command("prefetch")
def prefetch(
    url: str, names: str | None = NAMES, template: str | None = TEMPLATE, wait: bool = WAIT,
    endpoint: str | None = EndpointOpt, data: str | None = DataOpt,
) -> None:
    """Fetch objects of aws://BUCKET (alias s3://) into the cluster: aws://BUCKET/OBJECT, --list or --template."""
    bck, obj = parse_url(url)
    if not is_remote(bck):
        raise typer.BadParameter(f"only remote buckets are prefetched: expected aws://BUCKET or s3://BUCKET, "
                                 f"got {url!r}")
    start_job(bck, "prefetch-listrange", listrange(obj, names, template), wait, endpoint, data)


@app.command("ls")
def ls(
    url: str,
    prefix: str = typer.Option("", "--prefix", help="Only names starting with this."),
    cached: bool = typer.Option(False, "--cached", help="Remote buckets: only the objects the cluster has."),
    endpoint: str | None = EndpointOpt,
    data: str | None = DataOpt,
) -> None:
    """List objects of ais://BUCKET, aws://BUCKET or s3://BUCKET: name, size, version (and cached, if remote)."""
    bck, obj_prefix = parse_url(url)
    remote = is_remote(bck)
    entries = run(data_client(endpoint, data).list_objects(bck, prefix=prefix or obj_prefix, cached_only=cached))
    tbl = Table(show_edge=False, box=None)
    tbl.add_column("NAME", overflow="fold")  # a name is never cut short, even when piped (80 columns)
    tbl.add_column("SIZE", justify="right")
    tbl.add_column("VERSION", justify="right")
    if remote:
        tbl.add_column("CACHED")
    n_cached = 0
    for e in entries:
        row = [e["n"], human(e["s"]), e.get("v", "")]
        if remote:
            is_cached = bool(int(e.get("f") or 0) & ENTRY_CACHED)
            n_cached += is_cached
            row.append("yes" if is_cached else "no")
        tbl.add_row(*row)
    out.print(tbl)
    console.print(f"{len(entries)} objects" + (f", {n_cached} cached" if remote else ""))


@app.command("put")
def put(
    path: Path,
    url: str,
    concurrency: int = typer.Option(16, "--concurrency", "-c", help="Uploads in flight."),
    endpoint: str | None = EndpointOpt,
    data: str | None = DataOpt,
) -> None:
    """Upload a file or a directory (recursively) to ais://BUCKET[/PREFIX] (or aws://, s3://: written through to S3)."""
    bck, prefix = parse_url(url)
    if not path.exists():
        raise die(f"{path} does not exist")
    if path.is_file():
        name = prefix if prefix and not url.endswith("/") else (prefix.rstrip("/") + "/" if prefix else "") + path.name
        files = [(path, name)]
    else:
        base = prefix.rstrip("/") + "/" if prefix else ""
        files = [(p, base + p.relative_to(path).as_posix()) for p in sorted(path.rglob("*")) if p.is_file()]
    if not files:
        raise die(f"no files under {path}")
    t0 = time.monotonic()
    nbytes, errors = run(data_client(endpoint, data).put_files(bck, files, concurrency=concurrency, progress=True))
    dt = time.monotonic() - t0
    console.print(f"put {len(files) - len(errors)} objects, {human(nbytes)} in {dt:.1f}s "
                  f"({human(nbytes / dt if dt else 0)}/s)")
    if errors:
        for name, err in errors[:20]:
            console.print(f"{name}: {err}", style="red")
        raise typer.Exit(1)


@app.command("get")
def get(
    url: str,
    out_path: Path | None = typer.Argument(None, help="Output file ('-' or omitted: stdout)."),
    endpoint: str | None = EndpointOpt,
    data: str | None = DataOpt,
) -> None:
    """Download ais://BUCKET/OBJECT (or aws://, s3://: fetched and cached on first GET) to a file or stdout."""
    bck, obj = parse_url(url, want_obj=True)
    dest = None if out_path is None or str(out_path) == "-" else out_path
    n = run(data_client(endpoint, data).get_to(bck, obj, dest))
    if dest is not None:
        console.print(f"wrote {human(n)} to {dest}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
