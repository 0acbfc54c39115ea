"""Loopback tests of the pod-side ETL servers: real pod processes started through
``python -m aioetl.communicators.pod.bootstrap`` with cloudpickled classes (defined here;
this module is registered with cloudpickle by value so the pods need not import it).

The peer target is a **stand-in**: a small aiohttp app on 127.0.0.1:0 (in a
thread) serving ``GET`` and accepting ``PUT`` on
``/v1/etl/_object/<etl>/<secret>/<escaped uname>`` and recording what it got. The
real target side (engine/) is being written concurrently; the contract between
the two is the wire protocol (reference §1-§3), which is what these tests check.
A second stand-in peer accepts connections and drops them (transient network errors).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import cloudpickle
import pytest
import requests
from aiohttp import web
from websockets.sync.client import connect as ws_connect

from aioetl.communicators import (
    AiohttpServer,
    ETLDirectPutTransientError,
    FastAPIServer,
    classify_ws_text,
    parse_ws_error,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ETL = "pod-etl"
SECRET = "SECRETabcd"
TOKEN = "tok-123"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVERT = bytes(255 - i for i in range(256))
MIB = 1 << 20


# -- ETL classes (pickled by value into the pods) ------------------------------------------


def _buffered(self: Any, data: Any, path: str, etl_args: str) -> bytes:
    if etl_args == "raise":
        raise ValueError("boom")
    if etl_args == "bail":
        raise ETLDirectPutTransientError("http://next", ConnectionError("lost"), bail_without_local_retry=True)
    if etl_args.startswith("sleep"):
        time.sleep(float(etl_args[5:]))
    if etl_args == "pid":
        return str(os.getpid()).encode()
    if isinstance(data, str):
        return f"PATH:{data}".encode()
    return f"{path}|{etl_args}|".encode() + data.upper()


class Buffered(AiohttpServer):
    transform = _buffered


class BufferedFastAPI(FastAPIServer):
    def transform(self, data: Any, path: str, etl_args: str) -> bytes:
        return b"F:" + _buffered(self, data, path, etl_args)


class Streaming(AiohttpServer):
    def transform_stream(self, reader: Any, path: str, etl_args: str) -> Iterator[bytes]:
        if etl_args == "raise":
            raise ValueError("early boom")
        while True:
            chunk = reader.read(4096)
            if not chunk:
                return
            yield chunk.translate(INVERT)


class WhereRuns(AiohttpServer):
    """Answers the name of the thread its transform ran on: ``cpu`` burns ~6 ms of
    CPU in pure Python, ``io`` sleeps 6 ms."""

    def transform(self, data: Any, path: str, etl_args: str) -> bytes:
        if etl_args == "cpu":
            t0, x = time.thread_time(), 0
            while time.thread_time() - t0 < 0.006:
                x += sum(range(500))
        else:
            time.sleep(0.006)
        return threading.current_thread().name.encode()


class NotAServer:
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return data


def _ais_fastapi_class() -> type:
    from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer as AisFastAPIServer

    class AisUpper(AisFastAPIServer):
        def transform(self, data: Any, path: str, etl_args: str) -> bytes:
            return b"AIS:" + data.upper()

    return AisUpper


# -- stand-in peers ---------------------------------------------------------------------------


class StandInTarget:
    """A stand-in AIS target: the ``_object`` route only (see the module docstring)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: list[dict[str, Any]] = []
        self.gets: list[dict[str, Any]] = []
        self.port = 0
        self._loop_ready = threading.Event()
        self._stop: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        import asyncio

        async def handle(request: web.Request) -> web.StreamResponse:
            raw = request.rel_url.raw_path
            prefix = "/v1/etl/_object/"
            if not raw.startswith(prefix) or raw[len(prefix):].count("/") < 2:
                return web.Response(status=400, text=f"bad path {raw}")
            etl, secret, esc = raw[len(prefix):].split("/", 2)
            if etl != ETL or secret != SECRET:
                return web.Response(status=403, text="unrecognized request source")
            uname = unquote(esc)
            rec = {"path_qs": request.raw_path, "headers": dict(request.headers), "uname": uname}
            if request.method == "GET":
                self.gets.append(rec)
                if uname not in self.objects:
                    return web.Response(status=404, text=f"object {uname} does not exist")
                return web.Response(body=self.objects[uname])
            rec["body"] = await request.read()
            self.puts.append(rec)
            return web.Response(status=200)

        async def main() -> None:
            app = web.Application(client_max_size=64 * MIB)
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._loop_ready.set()
            await self._stop.wait()
            await runner.cleanup()

        asyncio.run(main())

    def start(self) -> StandInTarget:
        self._thread.start()
        assert self._loop_ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class DroppingPeer:
    """Accepts TCP connections and closes them at once; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()

    def close(self) -> None:
        self.sock.close()


# -- pods ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pod:
    """One pod process started through the bootstrap."""

    def __init__(self, cls: type | None, target: StandInTarget, *, builtin: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self._args = (cls, target, builtin, env)
        self._spawn(cls, target, builtin, env)

    def _spawn(self, cls: type | None, target: StandInTarget, builtin: str | None, env: dict[str, str] | None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = {k: v for k, v in os.environ.items() if not k.startswith(("AIS_", "ETL_", "NUM_WORKERS", "OS_PACKAGES"))}
        e["PYTHONPATH"] = ROOT
        e["AIS_TARGET_URL"] = f"{target.url}/v1/etl/_object/{ETL}/{SECRET}"
        e["NUM_WORKERS"] = "1"
        if cls is not None:
            e["ETL_CLASS_PAYLOAD"] = base64.b64encode(cloudpickle.dumps(cls)).decode()
        e.update(env or {})
        cmd = [sys.executable, "-m", "aioetl.communicators.pod.bootstrap", "--host", "127.0.0.1",
               "--port", str(self.port)]
        if builtin:
            cmd += ["--builtin", builtin]
        self.proc = subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._ready: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if line.startswith("READY "):
                self._ready.put(line)
        self._ready.put("EOF")

    def wait_ready(self, timeout_s: float = 30) -> Pod:
        for _ in range(3):
            line = self._ready.get(timeout=timeout_s)
            log = "\n".join(self.lines)
            if line == "EOF" and "Address already in use" in log:
                self.proc.wait(10)  # another process took the free port meanwhile: pick another
                self._spawn(*self._args)
                continue
            assert line == f"READY {self.url}", log
            return self
        raise AssertionError("no free port after 3 tries")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def target() -> Iterator[StandInTarget]:
    t = StandInTarget().start()
    yield t
    t.stop()


@pytest.fixture(scope="module")
def pods(target: StandInTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Pod]]:
    """The module's pods, started in parallel."""
    fast = {"AIOETL_DIRECT_PUT_BACKOFF_S": "0.01", "AIS_DIRECT_PUT_RETRIES": "2"}
    specs: dict[str, tuple[type | None, dict[str, Any]]] = {
        "buffered": (Buffered, {"env": {**fast, "AIS_AUTHN_TOKEN": TOKEN}}),
        "direct_fqn": (Buffered, {"env": {"ETL_DIRECT_FQN": "true"}}),
        "streaming": (Streaming, {"env": fast}),
        "fastapi": (BufferedFastAPI, {"env": fast}),
        "ais_fastapi": (_ais_fastapi_class(), {}),
    }
    started = {name: Pod(cls, target, **kw) for name, (cls, kw) in specs.items()}
    try:
        for p in started.values():
            p.wait_ready()
        yield started
    finally:
        codes = {name: p.stop() for name, p in started.items()}
    assert codes == {name: 0 for name in started}, codes  # SIGTERM is a clean exit
    for name, p in started.items():  # no unhandled error escaped the request handlers
        log = "\n".join(p.lines)
        assert "Traceback" not in log and "Error handling request" not in log, f"pod {name}:\n{log}"


def _fqn_param(path: str) -> dict[str, str]:
    return {"etl_fqn": quote(path, safe="")}  # url.PathEscape; requests query-encodes it again


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["buffered", "streaming", "fastapi", "ais_fastapi"])
def test_health(pods: dict[str, Pod], name: str) -> None:
    r = requests.get(pods[name].url + "/health", timeout=10)
    assert (r.status_code, r.content) == (200, b"Running")


@pytest.mark.parametrize(("name", "prefix"), [("buffered", b""), ("fastapi", b"F:")])
def test_hpush_body_and_etl_args(pods: dict[str, Pod], name: str, prefix: bytes) -> None:
    r = requests.put(pods[name].url + "/bck/dir/obj%20x.txt", params={"etl_args": "  a1 "}, data=b"hello", timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == prefix + b"bck/dir/obj x.txt|a1|HELLO"
    assert r.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(("name", "prefix"), [("buffered", b""), ("fastapi", b"F:")])
def test_hpush_fqn(pods: dict[str, Pod], tmp_path: Any, name: str, prefix: bytes) -> None:
    f = tmp_path / "@ais" / "bck" / "%ob" / "dir" / "a b+c.txt"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"from disk")
    r = requests.put(pods[name].url + "/bck/dir/a%20b+c.txt", params=_fqn_param(str(f)), data=b"", timeout=10)
    assert (r.status_code, r.content) == (200, prefix + b"bck/dir/a b+c.txt||FROM DISK")
    r = requests.put(pods[name].url + "/bck/o", params=_fqn_param(str(tmp_path / "missing")), timeout=10)
    assert r.status_code == 404
    assert "file not found" in r.text and "missing" in r.text


def test_direct_fqn_gives_transform_a_path(pods: dict[str, Pod], tmp_path: Any) -> None:
    f = tmp_path / "obj.bin"
    f.write_bytes(b"x")
    r = requests.put(pods["direct_fqn"].url + "/bck/obj.bin", params=_fqn_param(str(f)), timeout=10)
    assert (r.status_code, r.content) == (200, f"PATH:{f}".encode())
    r = requests.put(pods["direct_fqn"].url + "/bck/obj.bin", data=b"body", timeout=10)
    assert (r.status_code, r.content) == (200, b"bck/obj.bin||BODY")  # no FQN: bytes as usual


def test_hpull_from_target(pods: dict[str, Pod], target: StandInTarget, tmp_path: Any) -> None:
    target.objects["ais/@#/src/dir/o 1.txt"] = b"pulled"
    esc = quote("ais/@#/src/dir/o 1.txt", safe="@")
    n_gets = len(target.gets)
    r = requests.get(f"{pods['buffered'].url}/{esc}", params={"etl_args": "g"}, timeout=10)
    assert (r.status_code, r.content) == (200, b"ais/@#/src/dir/o 1.txt|g|PULLED")
    got = target.gets[n_gets]
    assert got["path_qs"] == f"/v1/etl/_object/{ETL}/{SECRET}/ais%2F@%23%2Fsrc%2Fdir%2Fo%201.txt"
    assert got["headers"]["Authorization"] == f"Bearer {TOKEN}"
    # missing object: the target's status passes through
    r = requests.get(f"{pods['buffered'].url}/{quote('ais/@#/src/nope', safe='@')}", timeout=10)
    assert r.status_code == 404 and "does not exist" in r.text
    # with etl_fqn the pod reads the file and does not call the target
    f = tmp_path / "o"
    f.write_bytes(b"local")
    n_gets = len(target.gets)
    r = requests.get(f"{pods['buffered'].url}/{esc}", params=_fqn_param(str(f)), timeout=10)
    assert (r.status_code, r.content) == (200, b"ais/@#/src/dir/o 1.txt||LOCAL")
    assert len(target.gets) == n_gets


def _ws(pod: Pod) -> Any:
    return ws_connect(pod.url.replace("http://", "ws://") + "/ws", max_size=None, open_timeout=10)


@pytest.mark.parametrize(("name", "prefix"), [("buffered", b""), ("fastapi", b"F:")])
def test_ws_pipelined_requests_are_answered_fifo(pods: dict[str, Pod], tmp_path: Any, name: str, prefix: bytes) -> None:
    f = tmp_path / "o3"
    f.write_bytes(b"third")
    with _ws(pods[name]) as ws:
        # the first request is slow: a pod that answered in completion order would reorder
        ws.send(json.dumps({"path": "o1", "etl_args": "sleep0.3"}).encode())
        ws.send(b"first")
        ws.send(json.dumps({"path": "o2"}).encode())
        ws.send(b"second")
        ws.send(json.dumps({"path": "o3", "fqn": quote(str(f), safe="")}).encode())
        replies = [ws.recv(timeout=10) for _ in range(3)]
    assert replies == [prefix + b"o1|sleep0.3|FIRST", prefix + b"o2||SECOND", prefix + b"o3||THIRD"]


def test_ws_fast_lane_keeps_fifo_behind_a_queued_request(pods: dict[str, Pod]) -> None:
    """Once warm, small requests are answered right in the reader (fast lane); one
    that goes to a worker thread (a 300 KiB body, slept on) must still be answered
    before the small requests sent after it."""
    big = b"b" * (300 << 10)
    with _ws(pods["buffered"]) as ws:
        for i in range(8):  # warm the offload policy: fast calls run on the loop
            ws.send(json.dumps({"path": f"w{i}"}).encode())
            ws.send(b"w")
            assert ws.recv(timeout=10) == f"w{i}||W".encode()
        ws.send(json.dumps({"path": "big", "etl_args": "sleep0.3"}).encode())
        ws.send(big)
        for i in range(5):
            ws.send(json.dumps({"path": f"s{i}"}).encode())
            ws.send(b"s")
        replies = [ws.recv(timeout=10) for _ in range(6)]
    assert replies[0] == b"big|sleep0.3|" + big.upper()
    assert replies[1:] == [f"s{i}||S".encode() for i in range(5)]


@pytest.mark.parametrize("name", ["buffered", "fastapi"])
def test_ws_errors_are_text_json_errors(pods: dict[str, Pod], name: str) -> None:
    with _ws(pods[name]) as ws:
        ws.send(json.dumps({"path": "o", "etl_args": "raise"}).encode())
        ws.send(b"x")
        ws.send(json.dumps({"path": "o", "pipeline": ",,invalid,,"}).encode())
        ws.send(b"x")
        ws.send(json.dumps({"path": "gone", "fqn": "%2Fno%2Fsuch%2Ffile"}).encode())
        ws.send(json.dumps({"path": "ok"}).encode())
        ws.send(b"fine")
        r1, r2, r3, r4 = (ws.recv(timeout=10) for _ in range(4))
    assert isinstance(r1, str) and classify_ws_text(r1)[0] is False
    msg, status = parse_ws_error(r1)
    assert status == 500 and "boom" in msg
    assert isinstance(r2, str) and parse_ws_error(r2)[1] == 400 and "Invalid pipeline header" in r2
    assert isinstance(r3, str) and parse_ws_error(r3)[1] == 404
    assert isinstance(r4, bytes) and r4.endswith(b"ok||FINE")


@pytest.mark.parametrize("name", ["buffered", "fastapi"])
def test_ws_request_ids_are_echoed_in_framed_replies(pods: dict[str, Pod], name: str) -> None:
    """Both of our servers announce ``Aioetl-Ws-Ids: 1`` and answer a request that
    carries an id with one BINARY frame: id, kind, payload (aioetl.communicators.wire.frames)."""
    from aioetl.communicators.wire.frames import WS_KIND_DATA, WS_KIND_ERROR, parse_ws_frame

    with _ws(pods[name]) as ws:
        assert ws.response.headers.get("Aioetl-Ws-Ids") == "1"
        ws.send(json.dumps({"path": "a", "id": 41}).encode())
        ws.send(b"x")
        ws.send(json.dumps({"path": "o", "etl_args": "raise", "id": 7}).encode())
        ws.send(b"x")
        ws.send(json.dumps({"path": "b", "id": 2**63}).encode())
        ws.send(b"y")
        frames = [ws.recv(timeout=10) for _ in range(3)]
    assert all(isinstance(f, bytes) for f in frames)
    (i1, k1, p1), (i2, k2, p2), (i3, k3, p3) = (parse_ws_frame(f) for f in frames)  # type: ignore[arg-type]
    assert (i1, k1) == (41, WS_KIND_DATA) and p1.endswith(b"a||X")
    assert (i2, k2) == (7, WS_KIND_ERROR) and parse_ws_error(p2.decode())[1] == 500
    assert (i3, k3) == (2**63, WS_KIND_DATA) and p3.endswith(b"b||Y")


def test_transform_error_is_500_with_text(pods: dict[str, Pod]) -> None:
    r = requests.put(pods["buffered"].url + "/b/o", params={"etl_args": "raise"}, data=b"x", timeout=10)
    assert r.status_code == 500 and "boom" in r.text
    r = requests.put(pods["fastapi"].url + "/b/o", params={"etl_args": "raise"}, data=b"x", timeout=10)
    assert r.status_code == 500 and "boom" in r.json()["detail"]
    r = requests.put(pods["streaming"].url + "/b/o", params={"etl_args": "raise"}, data=b"x", timeout=10)
    assert r.status_code == 500 and "early boom" in r.text


def test_malformed_pipeline_is_400(pods: dict[str, Pod]) -> None:
    for name in ("buffered", "streaming", "fastapi"):
        r = requests.put(pods[name].url + "/b/o", headers={"Ais-Node-Url": "http://a:1,,http://b:2"}, data=b"x",
                         timeout=10)
        assert r.status_code == 400 and "Invalid pipeline header" in r.text, name


def _dst_entry(target: StandInTarget, uname: str, xid: str = "XID1") -> str:
    return f"{target.url}/{quote(uname, safe='@')}?owt=3&uuid={xid}"


def test_direct_put_to_target(pods: dict[str, Pod], target: StandInTarget) -> None:
    entry = _dst_entry(target, "ais/@#/dst/dir/obj.txt")
    r = requests.put(pods["buffered"].url + "/src/dir/obj.txt", params={"etl_args": "dp"}, data=b"payload",
                     headers={"Ais-Node-Url": entry}, timeout=10)
    expected = b"src/dir/obj.txt|dp|PAYLOAD"
    assert r.status_code == 204, r.text
    assert r.headers["Ais-Direct-Put-Length"] == str(len(expected))
    assert r.content == b""
    put = target.puts[-1]
    assert put["path_qs"] == (f"/v1/etl/_object/{ETL}/{SECRET}/ais%2F@%23%2Fdst%2Fdir%2Fobj.txt"
                              "?owt=3&uuid=XID1&etl_args=dp")
    assert put["body"] == expected
    assert put["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert "Ais-Node-Url" not in put["headers"]
    # the same over ws: TEXT str(n)
    with _ws(pods["buffered"]) as ws:
        ws.send(json.dumps({"path": "dir/obj.txt", "pipeline": _dst_entry(target, "ais/@#/dst/ws.txt")}).encode())
        ws.send(b"wsbody")
        reply = ws.recv(timeout=10)
    assert reply == str(len(b"dir/obj.txt||WSBODY"))
    assert target.puts[-1]["uname"] == "ais/@#/dst/ws.txt" and target.puts[-1]["body"] == b"dir/obj.txt||WSBODY"


def test_two_stage_pipeline(pods: dict[str, Pod], target: StandInTarget) -> None:
    stage2 = pods["fastapi"].url
    entry = _dst_entry(target, "ais/@#/dst/p.txt", "XP")
    r = requests.put(pods["buffered"].url + "/src/p.txt", params={"etl_args": "pp"}, data=b"abc",
                     headers={"Ais-Node-Url": f"{stage2},{entry}"}, timeout=10)
    expected = b"F:src/p.txt|pp|" + b"src/p.txt|pp|ABC".upper()
    assert r.status_code == 204, r.text
    assert r.headers["Ais-Direct-Put-Length"] == str(len(expected))
    put = target.puts[-1]
    assert put["body"] == expected
    assert put["path_qs"].endswith("/ais%2F@%23%2Fdst%2Fp.txt?owt=3&uuid=XP&etl_args=pp")
    # without a target at the end, the last stage's content comes back
    r = requests.put(pods["buffered"].url + "/src/p.txt", data=b"abc", headers={"Ais-Node-Url": stage2}, timeout=10)
    assert (r.status_code, r.content) == (200, b"F:src/p.txt||SRC/P.TXT||ABC")


def test_direct_put_transient_errors(pods: dict[str, Pod], tmp_path: Any) -> None:
    peer = DroppingPeer()
    try:
        entry = f"http://127.0.0.1:{peer.port}/ais%2F@%23%2Fdst%2Fo?owt=3&uuid=X"
        # the transform itself bails: 503 + retry reason
        r = requests.put(pods["buffered"].url + "/b/o", params={"etl_args": "bail"}, data=b"x", timeout=10)
        assert r.status_code == 503
        assert r.headers["Ais-Etl-Retry-Reason"] == "direct-put-transient"
        # streaming, one-shot hpush body: no local retry, 503 + retry reason
        r = requests.put(pods["streaming"].url + "/b/o", data=b"x" * 1000, headers={"Ais-Node-Url": entry}, timeout=10)
        assert r.status_code == 503, r.text
        assert r.headers["Ais-Etl-Retry-Reason"] == "direct-put-transient"
        assert peer.accepted == 1
        # streaming from an FQN (replayable): retried locally (AIS_DIRECT_PUT_RETRIES=2), then 502
        f = tmp_path / "o"
        f.write_bytes(b"y" * 1000)
        r = requests.put(pods["streaming"].url + "/b/o", params=_fqn_param(str(f)), headers={"Ais-Node-Url": entry},
                         timeout=10)
        assert r.status_code == 502 and "Ais-Etl-Retry-Reason" not in r.headers
        assert peer.accepted == 1 + 3
        # buffered: bytes in hand are replayable: retried, then 502
        r = requests.put(pods["buffered"].url + "/b/o", data=b"z", headers={"Ais-Node-Url": entry}, timeout=10)
        assert r.status_code == 502
        # 3 attempts; aiohttp may re-send a replayable body once per attempt on a dropped connection
        assert 3 <= peer.accepted - 4 <= 6
    finally:
        peer.close()


def test_streaming_1mib(pods: dict[str, Pod], target: StandInTarget, tmp_path: Any) -> None:
    data = os.urandom(MIB)
    expected = data.translate(INVERT)
    url = pods["streaming"].url
    r = requests.put(url + "/b/big", data=data, timeout=30)  # hpush
    assert r.status_code == 200 and r.content == expected
    assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
    target.objects["ais/@#/b/big"] = data  # hpull
    r = requests.get(f"{url}/{quote('ais/@#/b/big', safe='@')}", timeout=30)
    assert r.status_code == 200 and r.content == expected
    f = tmp_path / "big"  # FQN
    f.write_bytes(data)
    r = requests.put(url + "/b/big", params=_fqn_param(str(f)), timeout=30)
    assert r.status_code == 200 and r.content == expected
    with _ws(pods["streaming"]) as ws:  # ws (upstream raises NotImplementedError here)
        ws.send(json.dumps({"path": "big"}).encode())
        ws.send(data)
        ws.send(json.dumps({"path": "big", "fqn": quote(str(f), safe="")}).encode())
        assert ws.recv(timeout=30) == expected
        assert ws.recv(timeout=30) == expected
    # streaming direct put of a one-shot body: chunked PUT to the target
    r = requests.put(url + "/b/big", data=data, headers={"Ais-Node-Url": _dst_entry(target, "ais/@#/dst/big")},
                     timeout=30)
    assert r.status_code == 204 and r.headers["Ais-Direct-Put-Length"] == str(MIB)
    assert target.puts[-1]["body"] == expected
    assert target.puts[-1]["headers"].get("Transfer-Encoding") == "chunked"


def test_aistore_fastapi_subclass_runs_as_written(pods: dict[str, Pod]) -> None:
    url = pods["ais_fastapi"].url
    r = requests.put(url + "/b/o", data=b"abc", timeout=10)
    assert (r.status_code, r.content) == (200, b"AIS:ABC")
    with _ws(pods["ais_fastapi"]) as ws:
        ws.send(json.dumps({"path": "o"}).encode())
        ws.send(b"ws")
        assert ws.recv(timeout=10) == b"AIS:WS"


def _run_bootstrap(target: StandInTarget, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("AIS_", "ETL_", "OS_PACKAGES"))}
    e.update({"PYTHONPATH": ROOT, "AIS_TARGET_URL": f"{target.url}/v1/etl/_object/{ETL}/{SECRET}", **env})
    return subprocess.run([sys.executable, "-m", "aioetl.communicators.pod.bootstrap", "--host", "127.0.0.1",
                           "--port", str(_free_port()), *args], env=e, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_missing_os_packages_exit_3(target: StandInTarget) -> None:
    payload = base64.b64encode(cloudpickle.dumps(Buffered)).decode()
    r = _run_bootstrap(target, {"ETL_CLASS_PAYLOAD": payload, "OS_PACKAGES": "sh, no-such-pkg-xq1,no-such-pkg-xq2"})
    assert r.returncode == 3
    assert "missing OS packages: no-such-pkg-xq1, no-such-pkg-xq2" in r.stderr


def test_bad_payloads_exit_2(target: StandInTarget) -> None:
    r = _run_bootstrap(target, {"ETL_CLASS_PAYLOAD": base64.b64encode(cloudpickle.dumps(NotAServer)).decode()})
    assert r.returncode == 2 and "not a subclass of ETLServer" in r.stderr
    r = _run_bootstrap(target, {})
    assert r.returncode == 2 and "ETL_CLASS_PAYLOAD is not set" in r.stderr
    r = _run_bootstrap(target, {"AIS_TARGET_URL": ""}, "--builtin", "echo")
    assert r.returncode == 2 and "AIS_TARGET_URL" in r.stderr


def test_num_workers_2_serves_and_stops_on_sigterm(target: StandInTarget) -> None:
    import psutil

    pod = Pod(Buffered, target, env={"NUM_WORKERS": "2"}).wait_ready()
    try:
        workers = psutil.Process(pod.proc.pid).children()
        assert len(workers) == 2
        pids = set()
        for _ in range(40):  # new connection each time: SO_REUSEPORT spreads them
            r = requests.put(pod.url + "/b/o", params={"etl_args": "pid"}, data=b"", timeout=10,
                             headers={"Connection": "close"})
            assert r.status_code == 200
            pids.add(int(r.content))
        assert pids == {w.pid for w in workers}
    finally:
        code = pod.stop()
    assert code == 0
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


@pytest.mark.parametrize("workers", ["cpus", "1"])
def test_cpu_bound_transforms_move_to_the_loop(target: StandInTarget, workers: str) -> None:
    """After 4 warm-up calls in threads, a slow CPU-bound transform runs on the event
    loop (MainThread) when NUM_WORKERS covers the usable CPUs; when the same pod's
    calls turn I/O-bound, the first one or two still run on the loop and show a low
    CPU share, and the rest go back to worker threads (communicators/server.py docstring)."""
    cpus = len(os.sched_getaffinity(0))
    n = str(cpus) if workers == "cpus" else "1"
    pod = Pod(WhereRuns, target, env={"NUM_WORKERS": n}).wait_ready()
    try:
        with requests.Session() as s:  # one keep-alive connection: one worker process
            where = {kind: [s.put(pod.url + "/b/o", params={"etl_args": kind}, data=b"x", timeout=30).text
                            for _ in range(12)] for kind in ("cpu", "io")}
    finally:
        pod.stop()
    assert all(w.startswith("etl") for w in where["cpu"][:4]), where
    assert all(w.startswith("etl") for w in where["io"][2:]), where
    if int(n) >= cpus:
        assert where["cpu"][4:] == ["MainThread"] * 8, where
        assert where["io"][0] == "MainThread", where  # its CPU share is seen, then measured once more
    else:
        assert all(w.startswith("etl") for w in where["cpu"] + where["io"]), where


def test_ws_connections_are_spread_evenly_over_workers(target: StandInTarget) -> None:
    """Our pod names the accepting worker in the ws handshake (``Aioetl-Worker:
    i/n``); the target's WsComm re-dials until its 8 connections sit 4 and 4 on
    the two processes (left to SO_REUSEPORT, 7/1 or 8/0 happens one time in 7)."""
    import asyncio
    import collections

    import aiohttp

    from aioetl.communicators.target.comm import WsComm

    pod = Pod(Buffered, target, env={"NUM_WORKERS": "2"}).wait_ready()

    async def run() -> tuple[collections.Counter[Any], list[bytes]]:
        async with aiohttp.ClientSession() as s:
            comm = WsComm("pod-etl", pod.url, 30.0, s, n_conns=8)
            try:
                results = await asyncio.gather(*(comm.transform(f"o{i}", fqn=None, body=b"x", etl_args="pid")
                                                 for i in range(64)))
                return collections.Counter(c.worker for c in comm.conns), [r.data for r in results]
            finally:
                await comm.close()

    try:
        workers, pids = asyncio.run(run())
    finally:
        pod.stop()
    assert sum(workers.values()) == 8 and workers == {(0, 2): 4, (1, 2): 4}, workers
    assert len(set(pids)) == 2, "both processes answered"


def test_builtins(target: StandInTarget) -> None:
    import xxhash

    pods = {name: Pod(None, target, builtin=name, env={"SEED_DEFAULT": "500"} if name == "hash_with_args" else None)
            for name in ("hello_world", "echo", "md5", "hash_with_args")}
    try:
        for p in pods.values():
            p.wait_ready()
        data = b"some object bytes"

        def put(name: str, **kw: Any) -> bytes:
            r = requests.put(pods[name].url + "/b/o", data=data, timeout=10, **kw)
            assert r.status_code == 200, r.text
            return r.content

        assert put("hello_world") == b"Hello World!"
        assert put("echo") == data
        assert put("md5") == hashlib.md5(data).hexdigest().encode()
        assert put("hash_with_args") == xxhash.xxh64(data, seed=500).hexdigest().encode()
        seeded = xxhash.xxh64(data, seed=10000).hexdigest().encode()
        assert put("hash_with_args", params={"etl_args": "10000"}) == seeded
    finally:
        for p in pods.values():
            p.stop()
