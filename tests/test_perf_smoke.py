"""Smoke test of the perf harness: ``python -m perf --tiny`` runs end to end.

It starts a real one-target cluster and the echo server, moves a few objects,
and must produce a complete ``results.json``. No speed is ever asserted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # perf/ is not an installed package; run from any directory
    sys.path.insert(0, str(ROOT))

from perf.common import RssSampler, filesystem_of, interleave, percentile, ratio_median, run_loop, size_label  # noqa: E402

OPS = ("put", "get")
SIZES = ("10KiB", "16MiB")
VARIANTS = ("echo", "cluster", "direct")
FIELDS = ("seconds", "objects_per_s", "mib_per_s", "p50_ms", "p99_ms", "peak_rss_mib")


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_tiny_cluster_run_writes_complete_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "perf", "--tiny", "--only", "cluster", "--out", str(out),
         "--small-count", "4", "--large-count", "1", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "results.json").read_text())

    assert {"machine", "mode", "benchmarks", "measurements", "ratios"} <= doc.keys()
    m = doc["machine"]
    assert m["cpu_count"] >= 1 and m["python"] and _positive(m["mem_total_mib"])
    bench = doc["benchmarks"]["cluster"]
    assert "error" not in bench
    assert bench["info"]["data_fs"]["fstype"] == filesystem_of(str(tmp_path))["fstype"]
    for label, check in bench["info"]["redirect_check"].items():
        assert check["bytes_intact"] is True, label
        assert check["final_url_is_owner"] is True, label

    got = {(x["name"], x["variant"]): x for x in doc["measurements"]}
    want = {(f"{op}_{size}", v) for op in OPS for size in SIZES for v in VARIANTS}
    assert set(got) == want
    for key, x in got.items():
        assert x["count"] == (4 if key[0].endswith("10KiB") else 1), key
        assert x["concurrency"] == 16 and x["rounds"] == 1, key
        for f in FIELDS:
            assert _positive(x[f]), (key, f, x[f])
        assert x["p99_ms"] >= x["p50_ms"], key
        # CPU time comes in 10 ms ticks: a 4-object pass may use "0" of it
        assert x["server_cpu_s"] >= 0 and x["client_cpu_s"] >= 0, key
        if key[1] == "cluster":  # every request went through the gateway's 307
            assert x["extra"]["redirects_followed"] + x["extra"]["manual_redirects"] == x["count"], key

    want_ratios = {f"{a}_vs_{b}_{op}_{size}"
                   for a, b in (("cluster", "echo"), ("direct", "echo"), ("cluster", "direct"))
                   for op in OPS for size in SIZES}
    assert set(doc["ratios"]) == want_ratios
    assert all(_positive(v) for v in doc["ratios"].values())
    assert "| put_10KiB | cluster |" in proc.stdout
    # the data root was removed
    assert not list(tmp_path.glob("aioetl-perf-*"))


def test_interleave_alternates_and_ratios_are_per_round() -> None:
    order: list[str] = []

    def make(name: str, values: list[float]):  # type: ignore[no-untyped-def]
        it = iter(values)

        async def run() -> float:
            order.append(name)
            return next(it)

        return run

    # B is twice as fast as A in every round, although the machine drifts 4x between rounds
    res = run_loop(interleave({"A": make("A", [1.0, 4.0, 2.0]), "B": lambda: (order.append("B"), 0.0)[1]}, 3))
    assert order == ["A", "B", "B", "A", "B", "A"]
    assert res["A"] == [1.0, 4.0, 2.0] and res["B"] == [0.0, 0.0, 0.0]
    # four variants over 8 rounds: each runs first twice, and within rounds follows two different ones
    # (with a plain rotation W always followed Z)
    seq: list[str] = []
    run_loop(interleave({n: (lambda n=n: seq.append(n)) for n in "WXYZ"}, 8))
    firsts = [seq[i] for i in range(0, 32, 4)]
    assert all(firsts.count(n) == 2 for n in "WXYZ"), firsts
    for n in "WXYZ":
        before = {seq[i - 1] for i in range(1, 32) if seq[i] == n and i % 4}
        assert len(before) == 2, (n, before)
    assert ratio_median([2.0, 8.0, 4.0], [1.0, 4.0, 2.0]) == 2.0
    with pytest.raises(ValueError):
        run_loop(interleave({"A": lambda: 1}, 0))


def test_stat_helpers() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0
    assert size_label(10 * 1024) == "10KiB" and size_label(16 << 20) == "16MiB" and size_label(1000) == "1000B"


def test_rss_sampler_counts_descendants_and_survives_their_exit() -> None:
    """A child that holds 64 MiB resident is in the peak (the tree is resolved on
    enter), and the child exiting mid-sampling does not void the samples."""
    code = ("import sys, time; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); "
            "time.sleep(0.6)")
    alone = RssSampler([os.getpid()])
    alone.sample()
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        with RssSampler([os.getpid()], interval_s=0.05) as s:
            child.wait(timeout=10)
        assert alone.peak_bytes is not None and s.peak_bytes is not None
        assert s.peak_bytes >= alone.peak_bytes + (60 << 20)
    finally:
        child.kill()
        child.wait()


def test_filesystem_of_picks_longest_mount(tmp_path: Path) -> None:
    base = tmp_path.resolve()
    (base / "data disk" / "obj").mkdir(parents=True)
    (base / "data diskx").mkdir()
    escaped = str(base / "data disk").replace(" ", "\\040")
    mounts = base / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\n/dev/vdb {escaped} xfs rw 0 0\n")
    got = filesystem_of(str(base / "data disk" / "obj" / "not-yet"), str(mounts))
    assert got["fstype"] == "xfs" and got["mount_point"] == str(base / "data disk")
    assert filesystem_of(str(base / "data diskx"), str(mounts))["fstype"] == "ext4"


# -- offline and inline ETL benchmarks (tiny: a handful of objects; no speed asserted) --------


def _run_tiny(tmp_path: Path, name: str, *flags: str) -> tuple[dict, subprocess.CompletedProcess[str]]:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "perf", "--tiny", "--only", name, "--out", str(out), "--data-dir", str(tmp_path),
         *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "results.json").read_text())
    bench = doc["benchmarks"][name]
    assert "error" not in bench, bench
    assert bench["info"]["data_fs"]["fstype"] == filesystem_of(str(tmp_path))["fstype"]
    assert not list(tmp_path.glob("aioetl-perf-*")), "the data root was not removed"
    return doc, proc


def test_tiny_offline_run_covers_every_comm_and_baseline(tmp_path: Path) -> None:
    doc, proc = _run_tiny(tmp_path, "offline", "--offline-small-count", "5", "--offline-large-count", "1")
    got = {(x["name"], x["variant"]): x for x in doc["measurements"]}
    variants = ("raw", "inproc", "hpush", "hpull", "ws")
    assert set(got) == {(f"offline_{s}", v) for s in SIZES for v in variants}
    for (name, variant), x in got.items():
        assert x["count"] == (5 if name.endswith("10KiB") else 1), (name, variant)
        for f in ("seconds", "objects_per_s", "mib_per_s"):
            assert _positive(x[f]), (name, variant, f, x[f])
        if variant in ("raw", "inproc"):  # loops: per-object latencies, one at a time
            assert x["concurrency"] == 1 and _positive(x["p50_ms"]) and x["p99_ms"] >= x["p50_ms"]
        else:  # a job: timed as a whole, its workers as the concurrency
            assert x["p50_ms"] is None and x["concurrency"] >= 1 and x["extra"]["polls"] >= 1
            assert x["extra"]["etl"].startswith(f"echo-{variant}-")
        if variant == "raw":
            assert x["extra"]["impl"] in {f"{s}/{c}" for s in ("aiohttp", "websockets")
                                          for c in ("aiohttp", "websockets", "websockets-sync")}
    want = {f"{c}_{w}_vs_{b}" for c in ("hpush", "hpull", "ws") for w in ("small", "large") for b in ("raw", "inproc")}
    want |= {f"raw_{w}_vs_inproc" for w in ("small", "large")}
    assert set(doc["ratios"]) == want
    assert all(_positive(v) for v in doc["ratios"].values())
    info = doc["benchmarks"]["offline"]["info"]
    for w in ("small", "large"):
        cal = info["raw_calibration"][w]
        assert cal["chosen"] in cal["median_objects_per_s"] and len(cal["median_objects_per_s"]) == 6
    assert "| offline_10KiB | ws |" in proc.stdout


def test_tiny_inline_run_compares_pods(tmp_path: Path) -> None:
    doc, proc = _run_tiny(tmp_path, "inline", "--inline-requests", "6", "--inline-objects", "3")
    got = {x["variant"]: x for x in doc["measurements"]}
    assert set(got) == {"plain", "aiohttp_hpush", "aiohttp_ws", "fastapi_hpush", "fastapi_ws", "aiohttp_hpush_gw"}
    for v, x in got.items():
        assert x["name"] == "inline_get_10KiB" and x["count"] == 6 and x["concurrency"] == 32, v
        for f in FIELDS:
            assert _positive(x[f]), (v, f, x[f])
    assert got["aiohttp_hpush_gw"]["extra"]["redirects_followed"] == 6  # every GET went through a 307
    assert got["plain"]["extra"]["etl"] == "" and got["fastapi_ws"]["extra"]["etl"].startswith("fastapi-ws-")
    want = {"pod_vs_aistore_fastapi_hpush", "pod_vs_aistore_fastapi_ws", "gateway_vs_direct_hpush"}
    want |= {f"{v}_vs_plain" for v in got if v != "plain"}
    assert set(doc["ratios"]) == want
    assert all(_positive(v) for v in doc["ratios"].values())
    assert "| inline_get_10KiB | fastapi_ws |" in proc.stdout


def test_rawpipe_loops_copy_files_through_each_echo_server(tmp_path: Path) -> None:
    from perf.rawpipe import CLIENT_IMPLS, SERVER_IMPLS, WsEchoProcess, inproc_loop, raw_loop

    src = tmp_path / "src"
    src.mkdir()
    bodies = [os.urandom(n) for n in (0, 1, 10 * 1024, (1 << 20) + 3)]
    for i, b in enumerate(bodies):
        (src / str(i)).write_bytes(b)

    def pairs(tag: str) -> list[tuple[str, str]]:
        d = tmp_path / tag
        d.mkdir()
        return [(str(src / str(i)), str(d / str(i))) for i in range(len(bodies))]

    def same(ps: list[tuple[str, str]]) -> bool:
        return [Path(dst).read_bytes() for _, dst in ps] == bodies

    ps = pairs("inproc")
    assert len(inproc_loop(ps)) == len(bodies) and same(ps)
    for server in SERVER_IMPLS:
        with WsEchoProcess(server) as echo:
            assert echo.url.startswith("ws://127.0.0.1:")
            for client in CLIENT_IMPLS:
                ps = pairs(f"{server}-{client}")
                st = run_loop(raw_loop(echo.url, ps, client))
                assert len(st.latencies_s) == len(bodies) and st.bytes_echoed == sum(map(len, bodies))
                assert same(ps), (server, client)


# -- the issue #5 matrix: pods, matrix, workloads, charts and the markdown report (tiny) ----------

HEADLINE = ("ws_small_vs_raw", "pod_vs_aistore_fastapi", "vs_client_loop", "thumbnail_overhead")


def test_tiny_matrix_pods_workloads_write_json_png_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "perf", "--tiny", "--out", str(out), "--data-dir", str(tmp_path),
         "--only", "offline", "--only", "pods", "--only", "matrix", "--only", "workloads",
         "--offline-small-count", "3", "--offline-large-count", "0", "--offline-variants", "raw,ws",
         "--raw-impl", "aiohttp/aiohttp", "--pods-requests", "8", "--matrix-sizes", "10KiB",
         "--thumbnail-count", "3", "--zstd-count", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "results.json").read_text())
    assert {"machine", "mode", "benchmarks", "measurements", "ratios", "charts", "wall_s",
            "data_on_tmpfs"} <= doc.keys()
    assert doc["data_on_tmpfs"] is (filesystem_of(str(tmp_path))["fstype"] == "tmpfs")
    for name in ("offline", "pods", "matrix", "workloads"):
        bench = doc["benchmarks"][name]
        assert "error" not in bench, bench
        assert bench["info"]["data_fs"]["fstype"] == filesystem_of(str(tmp_path))["fstype"]
        assert bench["ratio_names"] and set(bench["ratio_names"]) <= set(doc["ratios"])
    assert not list(tmp_path.glob("aioetl-perf-*")), "a data root was not removed"

    ratios = doc["ratios"]
    assert set(HEADLINE) <= set(ratios)
    assert all(isinstance(v, float) and math.isfinite(v) for v in ratios.values())
    assert all(_positive(ratios[k]) for k in HEADLINE if k != "thumbnail_overhead")
    assert ratios["thumbnail_overhead"] < 1.0  # 1 - a positive ratio

    by = {(x["benchmark"], x["name"], x["variant"]): x for x in doc["measurements"]}
    pods = {v for b, _, v in by if b == "pods"}
    assert pods == {"aiohttp_fqn", "aiohttp_body", "fastapi_fqn", "fastapi_body"}
    matrix = {v for b, n, v in by if b == "matrix" and n == "matrix_10KiB"}
    assert matrix == {"aiohttp_hpush", "aiohttp_hpull", "aiohttp_ws", "aiohttp_hpush_nodp", "aiohttp_ws_dfa",
                      "fastapi_hpush", "fastapi_ws", "inproc", "mp_pool", "raw", "client_loop", "client_threads"}
    work = {v for b, n, v in by if b == "workloads" and n == "thumbnail"}
    assert work == {"aioetl_ws", "aioetl_hpush", "mp_pool", "inproc"}
    for key, x in by.items():
        if key[0] in ("pods", "matrix", "workloads"):
            assert x["count"] in (3, 4, 8), key
            assert _positive(x["objects_per_s"]) and _positive(x["seconds"]), key
    job = by[("matrix", "matrix_10KiB", "aiohttp_hpush_nodp")]["extra"]
    assert job["direct_put"] is False and job["comm"] == "hpush" and job["pod"] == "aiohttp"

    names = {x["name"] for x in doc["measurements"]}
    assert sorted(doc["charts"]) == sorted(f"{n}.png" for n in names)
    for c in doc["charts"]:
        head = (out / c).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n", c
    md = (out / "results.md").read_text()
    assert "| matrix_10KiB | client_loop |" in md and "| thumbnail | mp_pool |" in md
    for k in HEADLINE:
        assert f"| {k} |" in md
