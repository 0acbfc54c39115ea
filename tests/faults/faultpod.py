"""A raw ETL pod that misbehaves on the wire, on purpose, for chosen objects.

Started by a target as an ordinary pod process: the test inits an ETL with
``image="aioetl/faultpod"`` and ``command=[python, this file, "--port", "8000"]``
(the local pod runtime replaces 8000 with the port it allocated). It speaks
AIStore's protocols itself, on asyncio streams, so that it can break them:
hpush (``PUT /<bck>/<obj>``), hpull (``GET /<escaped uname>``), ws (``/ws``,
order-based replies, no ids: an upstream pod as far as the target can tell),
``/health``, and direct put to ``Ais-Node-Url`` / the ws ``pipeline`` field.

Objects named ``.../bad-<mode>-<n>.bin`` get ``<mode>``; all others the correct
output ``expected(data)`` (the same function as :func:`tests.faults.faultlib.expected`).

HTTP modes (hpush, hpull):
    none     close the connection without any response
    two      the right response, then a second, unsolicited one on the same connection
    garbage  random bytes instead of an HTTP response, then close
    short    Content-Length N, N/2 bytes sent, then close
    long     Content-Length N, N+16 bytes sent, connection kept open
    cut      chunked; half of the body in one chunk, then close (no last chunk)
    nolen    no Content-Length and not chunked: half of the body, then close
    die      status line, Content-Length and half of the body, then the process exits
    hang     sleep FAULT_HANG_S (> obj_timeout), then answer as usual (a late direct put too)
    t503     first request for the object: 503 + ``Ais-Etl-Retry-Reason: direct-put-transient``;
             later ones: the right answer
    nodp204  204 ("delivered by direct put") without putting anything anywhere

ws modes:
    none     no reply at all
    two      the right reply, then an extra BINARY frame
    text     a TEXT frame (hex of the output) instead of BINARY bytes / a direct put
    ack0     TEXT "0" ("direct put done") without putting anything
    garbage  random bytes written to the socket (ws framing broken), then close
    die      a BINARY frame header and half of its payload, then the process exits
    hang     sleep FAULT_HANG_S, then answer as usual

Environment: ``AIS_TARGET_URL`` (from the target), ``FAULT_HANG_S`` (default 6).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import struct
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

_BAD = re.compile(r"(?:^|/)bad-([a-z0-9]+)-\d+")
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TARGET_URL = os.environ.get("AIS_TARGET_URL", "")
HANG_S = float(os.environ.get("FAULT_HANG_S", "6"))
_seen_t503: set[str] = set()


def expected(data: bytes) -> bytes:
    return b"T" + hashlib.sha256(data).digest()[:8] + data[::-1]


def mode_of(path: str) -> str:
    m = _BAD.search(path)
    return m.group(1) if m else ""


def log(*a: Any) -> None:
    print("faultpod:", *a, file=sys.stderr, flush=True)


# -- direct put (§2.2 of the protocol reference) --------------------------------------------


def _direct_put_url(entry: str, obj_path: str) -> str:
    dst, base = urlsplit(entry), urlsplit(TARGET_URL)
    path = base.path.rstrip("/") + dst.path if dst.path else "/" + quote(obj_path, safe="/@")
    return urlunsplit((base.scheme or "http", dst.netloc, path, dst.query, ""))


def _put_blocking(url: str, data: bytes) -> int:
    req = urllib.request.Request(url, data=data, method="PUT", headers={"Content-Length": str(len(data))})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


async def direct_put(pipeline: str, obj_path: str, data: bytes) -> int:
    entry = pipeline.split(",")[0].strip()
    return await asyncio.to_thread(_put_blocking, _direct_put_url(entry, obj_path), data)


def _get_blocking(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return bytes(r.read())


async def read_object(path: str, query: dict[str, str], body: bytes) -> bytes:
    fqn = query.get("etl_fqn")
    if fqn:
        p = os.path.normpath(os.path.join("/", unquote(fqn).lstrip("/")))
        with open(p, "rb") as f:
            return f.read()
    if body:
        return body
    # hpull without an FQN: GET <AIS_TARGET_URL>/<quote(uname, safe="@")>
    return await asyncio.to_thread(_get_blocking, TARGET_URL.rstrip("/") + "/" + quote(path, safe="@"))


# -- HTTP ---------------------------------------------------------------------------------


def _response(status: int, reason: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    h = {"Content-Length": str(len(body)), **(headers or {})}
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return head.encode() + body


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await _read_headers(reader)  # trailers
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    return b""


async def handle_http(method: str, target: str, headers: dict[str, str], body: bytes,
                      writer: asyncio.StreamWriter) -> bool:
    """Answer one request; False when the connection must be closed."""
    split = urlsplit(target)
    if split.path == "/health":
        writer.write(_response(200, "OK", b"Running"))
        return True
    path = unquote(split.path).lstrip("/")  # hpush: bck/obj; hpull: ais/@#/bck/obj
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    mode = mode_of(path)
    if mode == "none":
        return False
    if mode == "garbage":
        writer.write(b"\x00\xff\xfeNOT-HTTP " + os.urandom(61))
        await writer.drain()
        return False
    if mode == "hang":
        await asyncio.sleep(HANG_S)
    if mode == "t503" and path not in _seen_t503:
        _seen_t503.add(path)
        writer.write(_response(503, "Service Unavailable", b"direct put: transient failure (injected)",
                               {"Ais-Etl-Retry-Reason": "direct-put-transient"}))
        return True
    if mode == "nodp204":
        writer.write(_response(204, "No Content", b"", {"Ais-Direct-Put-Length": "1000"}))
        return True
    try:
        out = expected(await read_object(path, query, body))
    except Exception as e:
        writer.write(_response(500, "Internal Server Error", f"faultpod: {e}".encode()))
        return True
    half = out[: len(out) // 2]
    if mode == "short":
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(out)}\r\n\r\n".encode() + half)
        await writer.drain()
        return False
    if mode == "long":
        writer.write(_response(200, "OK", out + b"+16-extra-bytes+", {"Content-Length": str(len(out))}))
        return True
    if mode == "cut":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + f"{len(half):x}\r\n".encode() + half
                     + b"\r\n")
        await writer.drain()
        return False
    if mode == "nolen":
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + half)
        await writer.drain()
        return False
    if mode == "die":
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(out)}\r\n\r\n".encode() + half)
        await writer.drain()
        log("dying mid-reply on", path)
        os._exit(17)
    pipeline = headers.get("ais-node-url", "")
    if pipeline:
        st = await direct_put(pipeline, path, out)
        if st in (200, 204):
            writer.write(_response(204, "No Content", b"", {"Ais-Direct-Put-Length": str(len(out))}))
        else:
            writer.write(_response(500, "Internal Server Error", f"direct put failed: {st}".encode()))
    else:
        writer.write(_response(200, "OK", out))
    if mode == "two":
        writer.write(_response(200, "OK", b"unsolicited second reply"))
    return True


# -- WebSocket (RFC 6455, server side, no extensions) --------------------------------------


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def _read_message(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes] | None:
    """One whole data message ``(opcode, payload)``; None on close."""
    buf, first_op = bytearray(), None
    while True:
        b0, b1 = await reader.readexactly(2)
        op, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytearray(await reader.readexactly(n))
        for i in range(n):
            data[i] ^= mask[i % 4]
        if op == 0x8:
            writer.write(_frame(0x8, bytes(data[:2])))
            return None
        if op == 0x9:
            writer.write(_frame(0xA, bytes(data)))
            continue
        if op == 0xA:
            continue
        if first_op is None:
            first_op = op
        buf += data
        if b0 & 0x80:
            return first_op, bytes(buf)


async def ws_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
    accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + _WS_GUID).encode()).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
    while True:
        msg = await _read_message(reader, writer)
        if msg is None:
            return
        ctrl = json.loads(msg[1])
        path = ctrl.get("path", "")
        if ctrl.get("fqn"):
            p = os.path.normpath(os.path.join("/", unquote(ctrl["fqn"]).lstrip("/")))
            with open(p, "rb") as f:
                data = f.read()
        else:
            body = await _read_message(reader, writer)
            if body is None:
                return
            data = body[1]
        out = expected(data)
        mode = mode_of(path)
        if mode == "none":
            continue
        if mode == "text":
            writer.write(_frame(0x1, out.hex().encode()))
            continue
        if mode == "ack0":
            writer.write(_frame(0x1, b"0"))
            continue
        if mode == "garbage":
            writer.write(b"\x00\xff\xfeNOT-A-FRAME" + os.urandom(61))
            await writer.drain()
            return
        if mode == "die":
            writer.write(struct.pack("!BBQ", 0x82, 127, len(out)) + out[: len(out) // 2])
            await writer.drain()
            log("dying mid-frame on", path)
            os._exit(17)
        if mode == "hang":
            await asyncio.sleep(HANG_S)
        pipeline = ctrl.get("pipeline", "")
        if pipeline:
            st = await direct_put(pipeline, path, out)
            ack = str(len(out)).encode() if st in (200, 204) else f"direct put failed: {st}".encode()
            writer.write(_frame(0x1, ack))
        else:
            writer.write(_frame(0x2, out))
        if mode == "two":
            writer.write(_frame(0x2, out))
        await writer.drain()


# -- server ---------------------------------------------------------------------------------


async def handle_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers = await _read_headers(reader)
            if headers.get("upgrade", "").lower() == "websocket":
                await ws_session(reader, writer, headers)
                return
            body = await _read_body(reader, headers)
            keep = await handle_http(method, target, headers, body, writer)
            await writer.drain()
            if not keep or headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(handle_conn, host, port, reuse_address=True, limit=1 << 20)
    log(f"listening on {host}:{port}, target {TARGET_URL}, hang {HANG_S}s")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # as PID 1 of a PID namespace, no default action
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    log("stopping")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    asyncio.run(main(a.host, a.port))
