"""``make demo``: the main job, offline bucket-to-bucket ETL, on real data.

    python -m perf.demo [--images N] [--texts N] [--data DIR] [--targets N] [--keep]
                        [--sample N] [--seed S] [--disk] [--cache DIR]

Steps (each timed):

1. dataset: clip-art PNGs and fortune quotations from Debian packages
   (:mod:`perf.datasets`, cached per machine; the first run downloads ~132 MB);
2. a local cluster (:class:`aioetl.engine.node.launcher.LocalCluster`, ``--targets`` targets)
   whose data root is ``--data`` (default ``./demo-data``, git-ignored) and whose
   object data (the ``targets/`` subtree) lives on tmpfs ``/dev/shm`` when there
   is one (``--disk`` keeps it on the data root's filesystem);
3. upload into ``ais://demo-images`` and ``ais://demo-texts``
   (:meth:`aioetl.engine.client.data.DataClient.put_files`, straight to each HRW owner);
4. two ETLs initialized through the official aistore SDK,
   ``client.etl(name).init_class(dependencies=[...])(Cls)`` with the classes of
   :mod:`perf.workloads` (pickled by value, as a user's own classes would be);
5. two offline jobs, ``bucket.transform(..., cont_on_err=True)``, each watched
   with the CLI's live progress bar and closing summary (:mod:`aioetl.engine.client.cli.jobs`):
   PNG -> JPEG thumbnail into ``ais://demo-thumbs`` (``ext={"png": "jpg"}``) and
   text -> zstd into ``ais://demo-texts-zst`` (``ext={"txt": "txt.zst"}``);
6. checks: every source object has its output except the images over Pillow's
   ``MAX_IMAGE_PIXELS`` (decompression bombs), which must be exactly the job's
   per-object errors; a random sample of outputs equals a local recomputation
   byte for byte;
7. a summary (objects, bytes in and out, errors, throughput per job, where the
   time went, which filesystem held the objects); the cluster is stopped and,
   without ``--keep``, the data root and its tmpfs part are removed.

Exit status: 0 when every check passed, 1 when one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["JobReport", "main", "prepare_data_root", "remove_data_root"]

IMAGES_BCK, THUMBS_BCK = "demo-images", "demo-thumbs"
TEXTS_BCK, ZST_BCK = "demo-texts", "demo-texts-zst"
THUMB_ETL, ZSTD_ETL = "demo-thumbnail", "demo-zstd"
MARKER = ".aioetl-demo"
SHM = "/dev/shm"

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 132)


# -- data root -------------------------------------------------------------------------


def _shm_usable() -> bool:
    return os.path.isdir(SHM) and os.access(SHM, os.W_OK)


def remove_data_root(data: Path) -> None:
    """Delete a demo data root and the tmpfs directory its ``targets`` link points to.

    Raises:
        SystemExit: ``data`` exists but is not a demo data root (no marker file).
    """
    if not data.exists() and not data.is_symlink():
        return
    if not (data / MARKER).exists() and any(data.iterdir()):
        raise SystemExit(f"error: {data} exists and is not a demo data root (no {MARKER}); "
                         "pass another --data directory")
    link = data / "targets"
    if link.is_symlink():
        shm_root = Path(os.readlink(link)).parent
        if shm_root.name.startswith("aioetl-demo-") and shm_root.parent == Path(SHM):
            shutil.rmtree(shm_root, ignore_errors=True)
    shutil.rmtree(data)


def prepare_data_root(data: Path, *, use_shm: bool) -> tuple[Path, Path]:
    """Make a fresh demo data root.

    A previous demo root at ``data`` is removed first (never a running cluster's,
    never a directory without the demo marker). With ``use_shm`` the ``targets``
    subtree (every mountpath) is a symlink to ``/dev/shm/aioetl-demo-*/targets``.

    Returns:
        ``(object data directory, scratch directory for staging uploads)``, both
        on tmpfs with ``use_shm``; both removed by :func:`remove_data_root`.

    Raises:
        SystemExit: a cluster is running on ``data``, or ``data`` is not a demo root.
    """
    from aioetl.engine.node.launcher import running_nodes

    data = data.resolve()
    if data.exists():
        live = running_nodes(str(data))
        if live:
            raise SystemExit(f"error: a cluster is running on {data} (pids {[n['pid'] for n in live]}); "
                             f"stop it with: aioetl cluster down --data {data}")
        remove_data_root(data)
    data.mkdir(parents=True)
    (data / MARKER).write_text("data root of python -m perf.demo; removed by the next demo run\n")
    base = Path(tempfile.mkdtemp(prefix="aioetl-demo-", dir=SHM)) if use_shm else data
    (base / "targets").mkdir(exist_ok=True)
    (base / "staging").mkdir()
    if use_shm:
        (data / "targets").symlink_to(base / "targets", target_is_directory=True)
    return base / "targets", base / "staging"


# -- reports -----------------------------------------------------------------------------


@dataclass
class JobReport:
    """What one offline job did and what the checks found."""

    name: str
    etl: str
    src: str
    dst: str
    xid: str = ""
    src_objs: int = 0
    src_bytes: int = 0
    out_objs: int = 0
    out_bytes: int = 0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    expected_errors: set[str] = field(default_factory=set)
    sample_n: int = 0
    sample_ok: int = 0
    problems: list[str] = field(default_factory=list)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@contextlib.contextmanager
def _phase(times: dict[str, float], name: str) -> Iterator[None]:
    console.rule(f"[bold]{name}")
    t0 = time.monotonic()
    try:
        yield
    finally:
        times[name] = time.monotonic() - t0


# -- steps -------------------------------------------------------------------------------


def _stage_texts(items: Sequence[tuple[str, bytes]], root: Path) -> list[tuple[Path, str]]:
    """Write each quotation to ``root/<name>`` (tmpfs when available) for upload."""
    files = []
    for name, body in items:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
        files.append((p, name))
    return files


async def _upload(endpoint: str, sets: list[tuple[str, list[tuple[Path, str]]]]) -> list[tuple[str, int, int, float]]:
    from aioetl.engine.client.data import DataClient

    dc = DataClient(endpoint)
    res = []
    for bck, files in sets:
        await dc.create_bucket(bck)
        t0 = time.monotonic()
        nbytes, errors = await dc.put_files(bck, files, concurrency=16, progress=True)
        dt = time.monotonic() - t0
        if errors:
            raise RuntimeError(f"upload to ais://{bck}: {len(errors)} failed, first: {errors[0]}")
        console.print(f"ais://{bck}: {len(files)} objects, {_human(nbytes)} in {dt:.1f}s "
                      f"({len(files) / dt:.0f} obj/s, {_human(nbytes / dt)}/s)")
        res.append((bck, len(files), nbytes, dt))
    return res


def _init_etls(sdk: Any, env: dict[str, str]) -> None:
    import cloudpickle

    from . import workloads

    # pickle the classes by value, as a user's own module would travel: the pod does not import perf
    cloudpickle.register_pickle_by_value(workloads)
    for name, cls in ((THUMB_ETL, workloads.ThumbnailETL), (ZSTD_ETL, workloads.ZstdETL)):
        t0 = time.monotonic()
        sdk.etl(name).init_class(dependencies=workloads.DEPENDENCIES[cls.__name__], init_timeout="5m",
                                 obj_timeout="60s", **env)(cls)
        console.print(f"ETL {name} ({cls.__name__}, dependencies {workloads.DEPENDENCIES[cls.__name__]}) "
                      f"running in {time.monotonic() - t0:.1f}s")


def _run_job(sdk: Any, http: Any, rep: JobReport, ext: dict[str, str]) -> None:
    from aioetl.engine.client.cli.jobs import summary, watch

    rep.xid = sdk.bucket(rep.src).transform(etl_name=rep.etl, to_bck=sdk.bucket(rep.dst), ext=ext,
                                            cont_on_err=True, timeout="30m")
    console.print(f"job {rep.xid}: etl-bck {rep.etl} ais://{rep.src} -> ais://{rep.dst}, ext {ext}")
    tot = watch(http, rep.xid, progress=True)
    summary(rep.xid, tot)
    rep.stats = tot
    rep.seconds = float(tot["seconds"])
    if tot["aborted"]:
        rep.problems.append(f"job aborted: {'; '.join(tot['errs']) or '?'}")
    r = http.get(f"/jobs/{rep.xid}/errors")
    r.raise_for_status()
    rep.errors = [json.loads(line) for line in r.text.splitlines() if line.strip()]


def _check_job(rep: JobReport, src_names: list[str], to_name: Callable[[str], str],
               listing: dict[str, int], why: str) -> list[str]:
    """Outputs and errors against expectations; returns the names whose output must exist."""
    prefix = f"ais://{rep.src}/"
    failed = {e["obj_name"][len(prefix):] if e["obj_name"].startswith(prefix) else e["obj_name"] for e in rep.errors}
    if failed != rep.expected_errors:
        unexpected = sorted(failed - rep.expected_errors)
        missing = sorted(rep.expected_errors - failed)
        if unexpected:
            msgs = {e["obj_name"]: e["msg"] for e in rep.errors}
            rep.problems.append(f"{len(unexpected)} unexpected per-object error(s), e.g. "
                                f"{unexpected[0]}: {msgs.get(prefix + unexpected[0], '')[:200]}")
        if missing:
            rep.problems.append(f"{len(missing)} expected error(s) not reported, e.g. {missing[0]}")
    if why:
        vague = [e for e in rep.errors if why not in e["msg"].lower()]
        if vague:
            rep.problems.append(f"{len(vague)} error(s) do not say why ({why!r} missing), e.g. {vague[0]['msg'][:200]}")
    good = [n for n in src_names if n not in rep.expected_errors]
    want = {to_name(n) for n in good}
    have = set(listing)
    if want - have:
        rep.problems.append(f"{len(want - have)} output(s) missing from ais://{rep.dst}, e.g. {sorted(want - have)[0]}")
    if have - want:
        rep.problems.append(f"{len(have - want)} unexpected object(s) in ais://{rep.dst}, "
                            f"e.g. {sorted(have - want)[0]}")
    rep.out_objs = len(have)
    rep.out_bytes = sum(listing.values())
    return good


async def _fetch(endpoint: str, bck: str, names: Sequence[str]) -> dict[str, bytes]:
    from aioetl.engine.client.data import DataClient

    dc = DataClient(endpoint)
    sem = asyncio.Semaphore(8)

    async def one(n: str) -> tuple[str, bytes]:
        async with sem:
            return n, await dc.get_bytes(bck, n)

    return dict(await asyncio.gather(*(one(n) for n in names)))


async def _listing(endpoint: str, bck: str) -> dict[str, int]:
    from aioetl.engine.client.data import DataClient

    return {e["n"]: int(e.get("s") or 0) for e in await DataClient(endpoint).list_objects(bck)}


def _sample_check(endpoint: str, rep: JobReport, rng: random.Random, good: list[str], k: int,
                  to_name: Callable[[str], str], source: Callable[[str], bytes],
                  compute: Callable[[bytes], bytes]) -> None:
    names = sorted(rng.sample(good, min(k, len(good))))
    got = asyncio.run(_fetch(endpoint, rep.dst, [to_name(n) for n in names]))
    rep.sample_n = len(names)
    bad = []
    for n in names:
        if got[to_name(n)] == compute(source(n)):
            rep.sample_ok += 1
        else:
            bad.append(n)
    if bad:
        rep.problems.append(f"{len(bad)} of {len(names)} sampled outputs differ from the local computation, "
                            f"e.g. {rep.dst}/{to_name(bad[0])}")


# -- main --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m perf.demo``."""
    p = argparse.ArgumentParser(prog="python -m perf.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000, help="PNG images to thumbnail (default 5000)")
    p.add_argument("--texts", type=int, default=10000, help="quotations to compress (default 10000)")
    p.add_argument("--data", default="./demo-data", help="cluster data root (default ./demo-data, git-ignored)")
    p.add_argument("--targets", type=int, default=3, help="storage targets (default 3)")
    p.add_argument("--keep", action="store_true",
                   help="keep the data root (and its tmpfs objects) after the run; restart the cluster "
                        "with: aioetl cluster up --data DIR")
    p.add_argument("--sample", type=int, default=50, help="outputs per job checked byte for byte (default 50)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the sample (default: random, printed)")
    p.add_argument("--disk", action="store_true", help="keep object data on the data root's disk, not tmpfs")
    p.add_argument("--etl-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment variable of the ETL pods (init_class keyword; repeatable)")
    p.add_argument("--debug", action="store_true", help="print tracebacks")
    p.add_argument("--cache", default=None,
                   help="dataset cache (default $AIOETL_DATASETS_DIR or ~/.cache/aioetl/datasets)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the demo (see the module docstring). Returns the exit status: 0 ok, 1 a check failed, 2 usage."""
    args = build_parser().parse_args(argv)
    try:
        import aistore.sdk.etl.webserver.fastapi_server  # noqa: F401
        import PIL  # noqa: F401
        import zstandard  # noqa: F401
    except ImportError as e:
        console.print(f"[red]error:[/red] {e}: the demo needs Pillow, zstandard and aistore[etl] "
                      "(pip install -e '.[test,fastapi]' 'aistore[etl]')")
        return 2
    if args.images < 0 or args.texts < 0 or args.targets < 1 or args.sample < 0:
        console.print("[red]error:[/red] --images/--texts/--sample must be >= 0 and --targets >= 1")
        return 2
    etl_env = {}
    for kv in args.etl_env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            console.print(f"[red]error:[/red] --etl-env expects KEY=VALUE (got {kv!r})")
            return 2
        etl_env[k] = v
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    times: dict[str, float] = {}
    t_start = time.monotonic()

    import httpx
    from PIL import Image

    from aioetl.engine.node.launcher import LocalCluster
    from perf.common import filesystem_of

    from .datasets import Dataset, DatasetError
    from .workloads import thumbnail_jpeg, zstd_compress

    # 1. dataset
    with _phase(times, "dataset"):
        ds = Dataset(args.cache, log=lambda m: console.print(m))
        try:
            ds.ensure()
            pngs = ds.images(args.images)
            quotes = ds.texts(args.texts)
        except DatasetError as e:
            console.print(f"[red]error:[/red] {e}")
            return 1
        img_names = {ds.image_name(p): p for p in pngs}
        bombs = {ds.image_name(p) for p in ds.oversized(pngs, Image.MAX_IMAGE_PIXELS)}
        txt_bodies = dict(quotes)
        console.print(f"{len(pngs)} images ({_human(sum(p.stat().st_size for p in pngs))}), "
                      f"{len(quotes)} quotations ({_human(sum(len(b) for b in txt_bodies.values()))}) from "
                      f"{ds.base}; {len(bombs)} image(s) over MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS:,}")

    data = Path(args.data).resolve()
    use_shm = _shm_usable() and not args.disk
    objdir, staging = prepare_data_root(data, use_shm=use_shm)
    fs = filesystem_of(str(objdir))
    fs_text = f"{fs['fstype']} ({objdir})"
    reports = [JobReport("thumbnail", THUMB_ETL, IMAGES_BCK, THUMBS_BCK, expected_errors=bombs),
               JobReport("zstd", ZSTD_ETL, TEXTS_BCK, ZST_BCK)]
    reports[0].src_objs, reports[0].src_bytes = len(pngs), sum(p.stat().st_size for p in pngs)
    reports[1].src_objs, reports[1].src_bytes = len(quotes), sum(len(b) for b in txt_bodies.values())
    img_ext, txt_ext = {"png": "jpg"}, {"txt": "txt.zst"}

    def img_to(n: str) -> str:
        return n[: -len(".png")] + ".jpg" if n.endswith(".png") else n

    def txt_to(n: str) -> str:
        return n[: -len(".txt")] + ".txt.zst" if n.endswith(".txt") else n

    uploads: list[tuple[str, int, int, float]] = []
    failure = ""
    try:
        with _phase(times, "cluster start"):
            cluster = LocalCluster(targets=args.targets, data_dir=str(data), port=0).start()
            console.print(f"gateway {cluster.endpoint}, {args.targets} targets; data root {data}; "
                          f"object data on {fs_text}")
        try:
            from aistore.sdk import Client

            sdk = Client(cluster.endpoint, timeout=(10, 900))
            http = httpx.Client(base_url=cluster.endpoint + "/v1", timeout=httpx.Timeout(600.0, connect=5.0))
            with _phase(times, "upload"):
                staged = _stage_texts(quotes, staging)
                uploads = asyncio.run(_upload(cluster.endpoint, [
                    (IMAGES_BCK, [(p, n) for n, p in img_names.items()]), (TEXTS_BCK, staged)]))
                shutil.rmtree(staging, ignore_errors=True)
            with _phase(times, "etl init"):
                _init_etls(sdk, etl_env)
            with _phase(times, "thumbnail job"):
                _run_job(sdk, http, reports[0], img_ext)
            with _phase(times, "zstd job"):
                _run_job(sdk, http, reports[1], txt_ext)
            with _phase(times, "verify"):
                good = _check_job(reports[0], list(img_names), img_to,
                                  asyncio.run(_listing(cluster.endpoint, THUMBS_BCK)), why="decompression bomb")
                _sample_check(cluster.endpoint, reports[0], rng, good, args.sample, img_to,
                              lambda n: img_names[n].read_bytes(), thumbnail_jpeg)
                good = _check_job(reports[1], list(txt_bodies), txt_to,
                                  asyncio.run(_listing(cluster.endpoint, ZST_BCK)), why="")
                _sample_check(cluster.endpoint, reports[1], rng, good, args.sample, txt_to,
                              lambda n: txt_bodies[n], zstd_compress)
            http.close()
        finally:
            with _phase(times, "cluster stop"):
                cluster.stop()
    except (Exception, SystemExit) as e:
        failure = f"{type(e).__name__}: {e}"
        if args.debug and not isinstance(e, SystemExit):
            console.print_exception()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not args.keep:
            remove_data_root(data)

    total = time.monotonic() - t_start
    _print_summary(reports, uploads, times, total, fs_text, seed, args, data)
    problems = [f"{r.name}: {p}" for r in reports for p in r.problems]
    if failure:
        problems.insert(0, f"demo failed: {failure}")
    if problems:
        for p in problems:
            out.print(f"[red]FAIL[/red] {p}")
        return 1
    out.print(f"[green]OK[/green] every object transformed except the {len(reports[0].expected_errors)} "
              f"expected decompression-bomb error(s); {sum(r.sample_ok for r in reports)} sampled outputs match "
              f"the local computation byte for byte ({total:.0f}s in all)")
    return 0


def _print_summary(reports: list[JobReport], uploads: list[tuple[str, int, int, float]], times: dict[str, float],
                   total: float, fs_text: str, seed: int, args: argparse.Namespace, data: Path) -> None:
    out.rule("[bold]demo summary")
    tbl = Table(title="offline ETL jobs (etl-bck, cont_on_err)")
    for col in ("job", "objs in", "bytes in", "objs out", "bytes out", "errors", "seconds", "obj/s", "in/s",
                "sample"):
        tbl.add_column(col, justify="left" if col == "job" else "right")
    for r in reports:
        dt = max(r.seconds, 1e-9)
        tbl.add_row(r.name, str(r.src_objs), _human(r.src_bytes), str(r.out_objs), _human(r.out_bytes),
                    f"{len(r.errors)} ({len(r.expected_errors)} expected)", f"{r.seconds:.1f}",
                    f"{r.src_objs / dt:.0f}" if r.seconds else "-",
                    f"{_human(r.src_bytes / dt)}/s" if r.seconds else "-", f"{r.sample_ok}/{r.sample_n} match")
    out.print(tbl)
    for r in reports:
        out.print(f"{r.name}: job {r.xid or '-'}, ETL {r.etl}, ais://{r.src} -> ais://{r.dst}")
    for r in reports:
        for e in r.errors[:20]:
            name, msg = e["obj_name"], e["msg"]
            msg = msg[len(name) + 2:] if msg.startswith(f"{name}: ") else msg  # the xaction names the object
            out.print(f"  {r.name} error: {name}: {msg[:200]}", soft_wrap=True)
        if len(r.errors) > 20:
            out.print(f"  ... and {len(r.errors) - 20} more")
    for bck, n, nbytes, dt in uploads:
        out.print(f"upload ais://{bck}: {n} objects, {_human(nbytes)}, {dt:.1f}s ({n / dt:.0f} obj/s)")
    out.print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()) + f"; total {total:.1f}s")
    out.print(f"object data on {fs_text}; {args.targets} targets; {os.cpu_count()} CPUs; sample seed {seed}")
    if args.keep:
        out.print(f"kept {data}: restart with  aioetl cluster up --data {data}")


if __name__ == "__main__":
    sys.exit(main())
