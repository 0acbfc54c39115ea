"""``aioetl etl ...``: initialize, inspect and use ETLs from the command line.

    aioetl etl init class FILE.py --name NAME [--class CLS] [--comm-type hpush|hpull|ws] [--dep PKG ...]
    aioetl etl init spec FILE.yaml --name NAME
    aioetl etl init image IMAGE --name NAME [--command "..."]
    aioetl etl ls | show NAME | logs NAME | stop NAME | start NAME | rm NAME
    aioetl etl object NAME ais://bck/obj [OUT] [--args ARGS]      (or aws://bck/obj, s3://bck/obj)
    aioetl etl bucket ... | objects ...     (offline jobs, defined in :mod:`.jobs`)
"""

from __future__ import annotations

import base64
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer
from rich.table import Table

from aioetl.engine.client.cli.common import (
    DataOpt,
    EndpointOpt,
    check,
    console,
    http_client,
    new_app,
    out,
    parse_url,
)
from aioetl.engine.client.cli.jobs import etl_bucket, etl_objects

etl_app = new_app("Initialize, inspect and use ETLs.")
init_app = new_app("Initialize an ETL on every target.")
etl_app.add_typer(init_app, name="init")

COMM = typer.Option("hpush", "--comm-type", help="hpush, hpull or ws.")
NAME = typer.Option(..., "--name", "-n", help="ETL name: 6-32 of [a-z0-9-].")


def _base_msg(name: str, comm: str, init_timeout: str, obj_timeout: str, direct_put: bool) -> dict[str, Any]:
    if comm not in ("hpush", "hpull", "ws"):
        raise typer.BadParameter(f"--comm-type must be hpush, hpull or ws, not {comm!r}")
    return {"name": name, "communication": f"{comm}://", "init_timeout": init_timeout,
            "obj_timeout": obj_timeout, "support_direct_put": direct_put or comm == "ws"}


def _init(msg: dict[str, Any], endpoint: str | None, data: str | None) -> None:
    with http_client(endpoint, data) as c:
        xid = check(c.put("/etl", json=msg)).text
    console.print(f"etl {msg['name']} running ({msg['communication']}), xaction {xid}")


def load_class(path: Path, cls_name: str | None) -> type:
    """Import ``path`` as a module and return its ETL server class (the one named, or the last defined)."""
    spec = importlib.util.spec_from_file_location(f"aioetl_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise typer.BadParameter(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    found = [c for _, c in inspect.getmembers(mod, inspect.isclass)
             if c.__module__ == mod.__name__ and any(b.__name__ == "ETLServer" for b in c.__mro__[1:])]
    if cls_name:
        found = [c for c in found if c.__name__ == cls_name]
    if not found:
        raise typer.BadParameter(f"no ETLServer subclass{' named ' + cls_name if cls_name else ''} in {path}")
    found.sort(key=lambda c: inspect.getsourcelines(c)[1])
    import cloudpickle

    cloudpickle.register_pickle_by_value(mod)
    return found[-1]


@init_app.command("class")
def init_class(
    file: Path, name: str = NAME, cls: str | None = typer.Option(None, "--class", help="Class name in FILE."),
    comm: str = COMM, dep: list[str] = typer.Option([], "--dep", help="pip package for the pod (repeatable)."),
    os_pkg: list[str] = typer.Option([], "--os-package", help="OS package the pod needs (repeatable)."),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the pod (repeatable)."),
    direct_fqn: bool = typer.Option(False, "--direct-file-access", help="transform() gets the object's path."),
    init_timeout: str = "5m", obj_timeout: str = "45s",
    direct_put: bool = typer.Option(True, "--direct-put/--no-direct-put"),
    endpoint: str | None = EndpointOpt, data: str | None = DataOpt,
) -> None:
    """Initialize a Python ETL server class from FILE.py (as the SDK's init_class does)."""
    import cloudpickle

    klass = load_class(file, cls)
    envs = [{"name": "ETL_CLASS_PAYLOAD", "value": base64.b64encode(cloudpickle.dumps(klass)).decode()}]
    if dep:
        envs.append({"name": "PACKAGES", "value": ",".join(dep)})
    if os_pkg:
        envs.append({"name": "OS_PACKAGES", "value": ",".join(os_pkg)})
    for kv in env:
        k, sep, v = kv.partition("=")
        if not sep:
            raise typer.BadParameter(f"--env expects KEY=VALUE, got {kv!r}")
        envs.append({"name": k, "value": v})
    if direct_fqn:
        envs.append({"name": "ETL_DIRECT_FQN", "value": "true"})
    msg = _base_msg(name, comm, init_timeout, obj_timeout, direct_put)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    msg["runtime"] = {"image": f"aistorage/runtime_python:{py}", "env": envs}
    _init(msg, endpoint, data)


@init_app.command("spec")
def init_spec(file: Path, name: str = NAME, comm: str = COMM, init_timeout: str = "5m", obj_timeout: str = "45s",
              endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Initialize from a Kubernetes Pod spec YAML (AIStore's init_spec)."""
    msg = _base_msg(name, comm, init_timeout, obj_timeout, comm == "ws")
    msg["spec"] = base64.b64encode(file.read_bytes()).decode()
    _init(msg, endpoint, data)


@init_app.command("image")
def init_image(image: str, name: str = NAME, comm: str = COMM,
               command: str | None = typer.Option(None, "--command", help="Container command (split on spaces)."),
               env: list[str] = typer.Option([], "--env", help="KEY=VALUE (repeatable)."),
               init_timeout: str = "5m", obj_timeout: str = "45s",
               direct_put: bool = typer.Option(False, "--direct-put/--no-direct-put"),
               endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Initialize from an image (aistorage/transformer_* map to built-ins; others run their command locally)."""
    msg = _base_msg(name, comm, init_timeout, obj_timeout, direct_put)
    rt: dict[str, Any] = {"image": image}
    if command:
        rt["command"] = command.split()
    if env:
        rt["env"] = [{"name": k, "value": v} for k, _, v in (kv.partition("=") for kv in env)]
    msg["runtime"] = rt
    _init(msg, endpoint, data)


@etl_app.command("ls")
def etl_ls(endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """List ETLs with their stage and inline counters."""
    with http_client(endpoint, data) as c:
        etls = check(c.get("/etl")).json()
    tbl = Table(box=None)
    for col in ("NAME", "STAGE", "XACTION", "OBJECTS", "IN", "OUT"):
        tbl.add_column(col)
    for e in etls:
        tbl.add_row(e["id"], e["stage"], e["xaction_id"], str(e["obj_count"]), str(e["in_bytes"]), str(e["out_bytes"]))
    out.print(tbl)


@etl_app.command("show")
def etl_show(name: str, job: str = typer.Option("", "--job", help="Show the errors of this offline job."),
             endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Show an ETL's init message and per-object errors."""
    with http_client(endpoint, data) as c:
        doc = check(c.get(f"/etl/{name}", params={"uuid": job})).json()
    msg = dict(doc["init_msg"])
    for e in (msg.get("runtime") or {}).get("env") or []:
        if e.get("name") == "ETL_CLASS_PAYLOAD":
            e["value"] = f"<{len(e['value'])} bytes of base64>"
    if "spec" in msg:
        msg["spec"] = f"<{len(msg['spec'])} bytes of base64>"
    out.print_json(json.dumps({"stage": doc.get("stage"), "error": doc.get("error"), "init_msg": msg}))
    errs = doc.get("obj_errors") or []
    console.print(f"{len(errs)} object errors")
    for e in errs[:50]:
        out.print(f"  {e['obj_name']}: [{e['ecode']}] {e['msg']}")


@etl_app.command("logs")
def etl_logs(name: str, target: str = typer.Option("", "--target", help="Only this target."),
             endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Print each pod's recent stdout/stderr."""
    with http_client(endpoint, data) as c:
        docs = check(c.get(f"/etl/{name}/logs" + (f"/{target}" if target else ""))).json()
    for d in docs:
        out.print(f"== {d['target_id']} ==", style="bold")
        sys.stdout.write(base64.b64decode(d.get("logs", "")).decode(errors="replace"))
        sys.stdout.flush()


def _post(name: str, verb: str, endpoint: str | None, data: str | None) -> None:
    with http_client(endpoint, data) as c:
        if verb == "rm":
            check(c.delete(f"/etl/{name}"))
        else:
            check(c.post(f"/etl/{name}/{verb}"))
    console.print(f"etl {name}: {verb} done")


@etl_app.command("stop")
def etl_stop(name: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Stop an ETL's pods (stage Aborted); 'start' brings it back."""
    _post(name, "stop", endpoint, data)


@etl_app.command("start")
def etl_start(name: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Start a stopped ETL again."""
    _post(name, "start", endpoint, data)


@etl_app.command("rm")
def etl_rm(name: str, endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Stop and delete an ETL."""
    _post(name, "rm", endpoint, data)


@etl_app.command("object")
def etl_object(name: str, url: str, out_path: Path | None = typer.Argument(None, help="Output file (default stdout)."),
               args: str = typer.Option("", "--args", help="etl_args passed to transform()."),
               endpoint: str | None = EndpointOpt, data: str | None = DataOpt) -> None:
    """Transform one object of ais://, aws:// or s3://BUCKET/OBJECT inline (GET with etl_name) to a file or stdout."""
    from aioetl.engine.core.names import AIS, split_bck_key

    bck, obj = parse_url(url, want_obj=True)
    provider, bck_name = split_bck_key(bck)
    params = {"etl_name": name}
    if provider != AIS:
        params["provider"] = provider
    if args:
        params["etl_args"] = args
    with http_client(endpoint, data) as c:
        path = f"/objects/{bck_name}/{quote(obj, safe='/')}"
        with c.stream("GET", path, params=params, follow_redirects=True) as r:
            if r.status_code >= 400:
                r.read()
                check(r)
            sink = open(out_path, "wb") if out_path else sys.stdout.buffer  # noqa: SIM115
            try:
                for chunk in r.iter_bytes():
                    sink.write(chunk)
            finally:
                if out_path:
                    sink.close()
                else:
                    sink.flush()


# the offline jobs are ETL commands too: ``aioetl etl bucket``, ``aioetl etl objects``
etl_app.command("bucket")(etl_bucket)
etl_app.command("objects")(etl_objects)
