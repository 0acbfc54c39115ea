"""The ``aioetl`` command line (typer + rich): the root app, clusters, buckets, objects.

The ETL commands live in :mod:`.etl`, the offline jobs in :mod:`.jobs`, what they
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
    parse_ais_url,
    resolve_endpoint,
    run,
)
from aioetl.engine.client.cli.etl import etl_app
from aioetl.engine.client.cli.jobs import job_app
from aioetl.engine.node.launcher import ClusterError, LocalCluster, stop_running

app = new_app("aioetl: transform objects next to the data (AIStore ETL model).", add_completion=False)
cluster_app = new_app("Start, stop and inspect a local cluster.")
bucket_app = new_app("Create, remove and list buckets.")
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
    """Create ais://BUCKET."""
    bck, _ = parse_ais_url(url)
    run(data_client(endpoint, data).create_bucket(bck))
    console.print(f"created ais://{bck}")


@bucket_app.command("rm")
def bucket_rm(url: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Destroy ais://BUCKET and every object in it."""
    bck, _ = parse_ais_url(url)
    run(data_client(endpoint, data).destroy_bucket(bck))
    console.print(f"destroyed ais://{bck}")


@bucket_app.command("ls")
def bucket_ls(endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """List buckets."""
    for name in run(data_client(endpoint, data).list_buckets()):
        out.print(f"ais://{name}")


@app.command("ls")
def ls(
    url: str,
    prefix: str = typer.Option("", "--prefix", help="Only names starting with this."),
    endpoint: str | None = EndpointOpt,
    data: str | None = DataOpt,
) -> None:
    """List objects of ais://BUCKET: name, size, version."""
    bck, obj_prefix = parse_ais_url(url)
    entries = run(data_client(endpoint, data).list_objects(bck, prefix=prefix or obj_prefix))
    tbl = Table(show_edge=False, box=None)
    tbl.add_column("NAME")
    tbl.add_column("SIZE", justify="right")
    tbl.add_column("VERSION", justify="right")
    for e in entries:
        tbl.add_row(e["n"], human(e["s"]), e.get("v", ""))
    out.print(tbl)
    console.print(f"{len(entries)} objects")


@app.command("put")
def put(
    path: Path,
    url: str,
    concurrency: int = typer.Option(16, "--concurrency", "-c", help="Uploads in flight."),
    endpoint: str | None = EndpointOpt,
    data: str | None = DataOpt,
) -> None:
    """Upload a file or a directory (recursively) to ais://BUCKET[/PREFIX]."""
    bck, prefix = parse_ais_url(url)
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
    """Download ais://BUCKET/OBJECT to a file or stdout."""
    bck, obj = parse_ais_url(url)
    if not obj:
        raise typer.BadParameter("expected ais://BUCKET/OBJECT")
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
