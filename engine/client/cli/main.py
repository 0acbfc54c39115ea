"""The ``aioetl`` command line (typer + rich).

Endpoint resolution for data commands, first match wins: ``--endpoint``,
``$AIS_ENDPOINT``, the gateway of the running cluster in ``--data`` (or
``$AIOETL_DATA``), then ``http://127.0.0.1:8080``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from aioetl.engine.node.launcher import ClusterError, LocalCluster, running_nodes, stop_running

app = typer.Typer(help="aioetl: transform objects next to the data (AIStore ETL model).", no_args_is_help=True,
                  add_completion=False)
cluster_app = typer.Typer(help="Start, stop and inspect a local cluster.", no_args_is_help=True)
bucket_app = typer.Typer(help="Create, remove and list buckets.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(bucket_app, name="bucket")

console = Console(stderr=True)
out = Console()

DEFAULT_DATA = os.environ.get("AIOETL_DATA", "./data")


def _die(msg: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {msg}")
    return typer.Exit(code)


def resolve_endpoint(endpoint: str | None, data: str | None) -> str:
    """Pick the gateway URL (see the module docstring)."""
    if endpoint:
        return endpoint.rstrip("/")
    if os.environ.get("AIS_ENDPOINT"):
        return os.environ["AIS_ENDPOINT"].rstrip("/")
    d = data or DEFAULT_DATA
    for n in running_nodes(d):
        if str(n["node_id"]).startswith("p-"):
            return str(n["url"])
    return "http://127.0.0.1:8080"


EndpointOpt = typer.Option(None, "--endpoint", "-e", help="Gateway URL (default: $AIS_ENDPOINT or the cluster in --data).")
DataOpt = typer.Option(None, "--data", "-d", help="Cluster data root (default: $AIOETL_DATA or ./data).")


def parse_ais_url(url: str) -> tuple[str, str]:
    """``ais://bck[/obj]`` -> ``(bck, obj)``; raises typer.BadParameter."""
    if not url.startswith("ais://"):
        raise typer.BadParameter(f"expected ais://BUCKET[/OBJECT], got {url!r}")
    bck, _, obj = url[len("ais://"):].partition("/")
    if not bck:
        raise typer.BadParameter(f"no bucket in {url!r}")
    return bck, obj


# -- cluster -------------------------------------------------------------------
@cluster_app.command("up")
def cluster_up(
    targets: int | None = typer.Option(None, "--targets", "-t", help="Number of targets (default 3, or the data root's)."),
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
        raise _die(str(e))
    console.print(f"cluster up in {time.monotonic() - t0:.1f}s: gateway {cl.endpoint}, "
                  f"{len(cl.targets)} targets, data {cl.data_dir}, cluster secret {cl.secret_path} (0600)")
    from aioetl.engine.target.pods import confinement

    if confinement().warning():  # said once here; each target also logs it once
        console.print(f"[yellow]warning:[/yellow] {confinement().warning()}")
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
                console.print(f"[red]{n.role} {n.node_id} exited ({n.proc.returncode if n.proc else '?'}); log: {n.log_path}")
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
        raise _die(f"no gateway at {ep}: {e}")
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
            tbl.add_row(tid, "target", url, str(len(cap)), _human(used), _human(avail))
        except httpx.HTTPError:
            tbl.add_row(tid, "target", url, "?", "[red]unreachable", "")
    out.print(tbl)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return str(n)


# -- buckets -------------------------------------------------------------------
def _client(endpoint: str | None, data: str | None):  # type: ignore[no-untyped-def]
    from aioetl.engine.client.data import DataClient

    return DataClient(resolve_endpoint(endpoint, data))


@bucket_app.command("create")
def bucket_create(url: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Create ais://BUCKET."""
    bck, _ = parse_ais_url(url)
    _run(_client(endpoint, data).create_bucket(bck))
    console.print(f"created ais://{bck}")


@bucket_app.command("rm")
def bucket_rm(url: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Destroy ais://BUCKET and every object in it."""
    bck, _ = parse_ais_url(url)
    _run(_client(endpoint, data).destroy_bucket(bck))
    console.print(f"destroyed ais://{bck}")


@bucket_app.command("ls")
def bucket_ls(endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """List buckets."""
    for name in _run(_client(endpoint, data).list_buckets()):
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
    entries = _run(_client(endpoint, data).list_objects(bck, prefix=prefix or obj_prefix))
    tbl = Table(show_edge=False, box=None)
    tbl.add_column("NAME")
    tbl.add_column("SIZE", justify="right")
    tbl.add_column("VERSION", justify="right")
    for e in entries:
        tbl.add_row(e["n"], _human(e["s"]), e.get("v", ""))
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
        raise _die(f"{path} does not exist")
    if path.is_file():
        name = prefix if prefix and not url.endswith("/") else (prefix.rstrip("/") + "/" if prefix else "") + path.name
        files = [(path, name)]
    else:
        base = prefix.rstrip("/") + "/" if prefix else ""
        files = [(p, base + p.relative_to(path).as_posix()) for p in sorted(path.rglob("*")) if p.is_file()]
    if not files:
        raise _die(f"no files under {path}")
    t0 = time.monotonic()
    nbytes, errors = _run(_client(endpoint, data).put_files(bck, files, concurrency=concurrency, progress=True))
    dt = time.monotonic() - t0
    console.print(f"put {len(files) - len(errors)} objects, {_human(nbytes)} in {dt:.1f}s "
                  f"({_human(nbytes / dt if dt else 0)}/s)")
    if errors:
        for name, err in errors[:20]:
            console.print(f"[red]{name}: {err}")
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
    n = _run(_client(endpoint, data).get_to(bck, obj, dest))
    if dest is not None:
        console.print(f"wrote {_human(n)} to {dest}")


def _run(coro):  # type: ignore[no-untyped-def]
    from aioetl.engine.client.data import ClientError as _CE

    try:
        return asyncio.run(coro)
    except _CE as e:
        raise _die(str(e))


def _register_subcommands() -> None:
    from aioetl.engine.client.cli.etl import etl_app
    from aioetl.engine.client.cli.jobs import job_app

    app.add_typer(etl_app, name="etl")
    app.add_typer(job_app, name="job")


def main() -> None:
    """Console-script entry point."""
    _register_subcommands()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main", "parse_ais_url", "resolve_endpoint"]
