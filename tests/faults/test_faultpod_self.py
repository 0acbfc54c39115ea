"""The fault pod itself, on loopback without a cluster: it must misbehave exactly as
documented, or the fault cases would prove nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect as ws_connect

from . import faultlib, faultpod


def test_pod_and_tests_agree_on_the_transform_and_the_modes() -> None:
    for data in (b"", b"x", os.urandom(5000)):
        assert faultpod.expected(data) == faultlib.expected(data)
    for path in ("b/bad-none-002.bin", "ais/@#/b/bad-t503-012.bin", "bad-ack0-7.bin", "b/ok-001.bin", "b/notbad-x-1"):
        assert faultpod.mode_of(path) == faultlib.mode_of(path)
    assert faultlib.mode_of("b/bad-none-002.bin") == "none" and faultlib.mode_of("b/ok-001.bin") == ""


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path_factory.mktemp("faultpod")
    env = dict(os.environ, AIS_TARGET_URL="http://127.0.0.1:9/v1/etl/_object/e/s", FAULT_HANG_S="0.1")
    p = subprocess.Popen([sys.executable, faultpod.__file__, "--port", str(port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
    try:
        yield port, str(d)
    finally:
        p.terminate()
        p.wait(10)


def _raw(port: int, name: str, body: bytes, wait_s: float = 10.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"PUT /b/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
              + body)
    s.settimeout(wait_s)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    s.close()
    return out


def test_http_modes_break_the_wire_as_documented(pod: tuple[int, str]) -> None:
    port, _ = pod
    data = os.urandom(1000)
    out = faultpod.expected(data)
    half = out[: len(out) // 2]
    assert _raw(port, "ok-1.bin", data).endswith(b"\r\n\r\n" + out)
    assert _raw(port, "bad-none-1.bin", data) == b""
    assert _raw(port, "bad-short-1.bin", data) == (f"HTTP/1.1 200 OK\r\nContent-Length: {len(out)}\r\n\r\n".encode()
                                                    + half)
    assert _raw(port, "bad-nolen-1.bin", data).endswith(b"Connection: close\r\n\r\n" + half)
    assert _raw(port, "bad-cut-1.bin", data).endswith(f"{len(half):x}\r\n".encode() + half + b"\r\n")
    long = _raw(port, "bad-long-1.bin", data)
    assert f"Content-Length: {len(out)}\r\n".encode() in long and long.endswith(out + b"+16-extra-bytes+")
    two = _raw(port, "bad-two-1.bin", data)
    assert two.count(b"HTTP/1.1 200 OK") == 2 and two.endswith(b"unsolicited second reply")
    assert _raw(port, "bad-nodp204-1.bin", data).startswith(b"HTTP/1.1 204 ")
    first, again = _raw(port, "bad-t503-1.bin", data), _raw(port, "bad-t503-1.bin", data)
    assert first.startswith(b"HTTP/1.1 503 ") and b"Ais-Etl-Retry-Reason: direct-put-transient" in first
    assert again.endswith(out)
    assert not _raw(port, "bad-garbage-1.bin", data).startswith(b"HTTP/")


def test_ws_modes_break_the_order_as_documented(pod: tuple[int, str]) -> None:
    port, _ = pod
    data = [os.urandom(300 + i) for i in range(6)]
    names = ["ok-0.bin", "bad-none-1.bin", "bad-two-2.bin", "bad-text-3.bin", "bad-ack0-4.bin", "ok-5.bin"]
    with ws_connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        for n, d in zip(names, data, strict=True):
            ws.send(f'{{"path":"{n}"}}'.encode())
            ws.send(d)
        got = [ws.recv(timeout=5) for _ in range(6)]
    exp = faultpod.expected
    assert got == [exp(data[0]), exp(data[2]), exp(data[2]), exp(data[3]).hex(), "0", exp(data[5])]
