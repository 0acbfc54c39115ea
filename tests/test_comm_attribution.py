"""The target's communicators attribute a pod reply to an object only on proof.

Real loopback servers, no mocks: a scripted ws "pod" (aiohttp, in this process)
that misbehaves for chosen object names, once speaking AIStore's order-based
protocol (no ``Aioetl-Worker`` header) and once our id protocol; a raw asyncio
HTTP "pod" for hpush replies without a proven length or with a 204 nobody asked
for; and the receive side of direct puts (:mod:`aioetl.engine.scheduler.receipts`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aioetl.communicators.target.comm import HpushComm, WsComm
from aioetl.communicators.wire.const import HEADER_WS_IDS
from aioetl.communicators.wire.frames import WsControl, frame_ws_reply
from aioetl.engine.scheduler.receipts import Receipts
from aioetl.engine.target.storage import LomMD
from aioetl.errors import AioetlError, Conflict


async def _scripted_pod(ids: bool) -> tuple[web.AppRunner, str, dict[str, int]]:
    """A ws pod answering ``T:<path>``, except: ``skip*`` never answers, ``dup*``
    answers twice, ``slow*`` answers after 1.5 s, ``zero*`` answers TEXT "0",
    ``bogus*`` (ids) answers with an id that was never sent."""
    seen: dict[str, int] = {}

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        if ids:
            ws.headers[HEADER_WS_IDS] = "1"
        await ws.prepare(request)
        lock = asyncio.Lock()

        async def reply(ctrl: WsControl, payload: bytes | str, delay: float = 0.0) -> None:
            if delay:
                await asyncio.sleep(delay)
            async with lock:
                if ids:
                    await ws.send_bytes(frame_ws_reply(ctrl.id if ctrl.id is not None else 0, payload))
                elif isinstance(payload, str):
                    await ws.send_str(payload)
                else:
                    await ws.send_bytes(payload)

        tasks = []
        async for msg in ws:
            ctrl = WsControl.decode(msg.data)
            if not ctrl.fqn:
                await ws.receive()  # the body frame
            seen[ctrl.path] = seen.get(ctrl.path, 0) + 1
            out = b"T:" + ctrl.path.encode()
            p = ctrl.path
            if p.startswith("skip"):
                continue
            if p.startswith("dup"):
                await reply(ctrl, out)
                await reply(ctrl, out)
            elif p.startswith("slow"):
                tasks.append(asyncio.ensure_future(reply(ctrl, out, 1.5)))
            elif p.startswith("wait"):
                tasks.append(asyncio.ensure_future(reply(ctrl, out, 0.1)))
            elif p.startswith("twice"):  # a second reply, late: after the connection could be reused
                await reply(ctrl, out)
                tasks.append(asyncio.ensure_future(reply(ctrl, b"STRAY", 0.05)))
            elif p.startswith("zero"):
                await reply(ctrl, "0")
            elif p.startswith("bogus") and ids:
                await reply(WsControl(id=(ctrl.id or 0) + 10_000), out)
            else:
                await reply(ctrl, out)
        for t in tasks:
            t.cancel()
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", seen


NAMES = [f"ok-{i:02d}" for i in range(24)] + ["skip-1", "dup-1", "slow-1", "zero-1", "ok-late"]


async def _run_batch(ids: bool, names: list[str]) -> tuple[dict[str, Any], WsComm]:
    runner, url, _seen = await _scripted_pod(ids)
    session = aiohttp.ClientSession()
    comm = WsComm("etl-x", url, 1.0, session, n_conns=4)
    try:
        async def one(name: str) -> Any:
            try:
                res = await comm.transform(name, fqn=None, body=b"payload")
                return res.data
            except AioetlError as e:
                return e

        results = await asyncio.gather(*(one(n) for n in names))
        # once more after the anomalies: the communicator still works
        again = await asyncio.gather(*(one(n) for n in names if n.startswith("ok")))
        return {"first": dict(zip(names, results, strict=True)), "again": again}, comm
    finally:
        await comm.close()
        await session.close()
        await runner.cleanup()


@pytest.mark.parametrize("ids", [False, True], ids=["order-based", "request-ids"])
def test_ws_replies_never_misattributed(ids: bool) -> None:
    names = list(NAMES) + (["bogus-1"] if ids else [])
    out, comm = asyncio.run(_run_batch(ids, names))
    first = out["first"]
    for name, res in first.items():
        if isinstance(res, bytes):
            assert res == b"T:" + name.encode(), f"{name} got another object's reply: {res!r}"
    # the misbehaving objects fail, each with its own error
    assert "timeout" in str(first["skip-1"]).lower()
    assert "timeout" in str(first["slow-1"]).lower()
    assert first["dup-1"] == b"T:dup-1"  # the repeated reply is dropped
    assert isinstance(first["zero-1"], AioetlError) and "no direct put was requested" in str(first["zero-1"])
    if ids:  # a reply with an id never sent is dropped; its own request times out
        assert "timeout" in str(first["bogus-1"]).lower()
    # an anomaly affects its own object only
    oks = [n for n in names if n.startswith("ok")]
    assert all(first[n] == b"T:" + n.encode() for n in oks), \
        {n: first[n] for n in oks if first[n] != b"T:" + n.encode()}
    assert all(r == b"T:" + n.encode() for r, n in zip(out["again"], oks, strict=True))
    assert comm.ids is ids


def test_ws_order_mode_one_request_per_connection() -> None:
    async def run() -> int:
        runner, url, _ = await _scripted_pod(False)
        session = aiohttp.ClientSession()
        comm = WsComm("etl-x", url, 5.0, session, n_conns=2)
        peak = 0
        try:
            async def one(i: int) -> None:
                nonlocal peak
                await comm.transform(f"ok-{i}", fqn=None, body=b"x")
                peak = max(peak, max((len(c.pending) for c in comm.conns), default=0))

            await asyncio.gather(*(one(i) for i in range(40)))
            assert len(comm.conns) <= comm.n_conns
            return peak
        finally:
            await comm.close()
            await session.close()
            await runner.cleanup()

    assert asyncio.run(run()) <= 1


# -- hpush: a reply must prove its length ------------------------------------------------


async def _raw_http_pod(reply: bytes) -> tuple[asyncio.AbstractServer, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("reply, expect", [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhalf-of-it", "neither Content-Length nor chunked"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "mid-transform"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", "mid-transform"),
    (b"garbage, not HTTP\r\n\r\n", "unreachable"),
    (b"HTTP/1.1 204 No Content\r\n\r\n", "no direct put was requested"),
])
def test_hpush_reply_without_proven_length_is_an_error(reply: bytes, expect: str) -> None:
    async def run() -> str:
        server, url = await _raw_http_pod(reply)
        session = aiohttp.ClientSession()
        try:
            comm = HpushComm("etl-x", url, 5.0, session)
            try:
                resp = await comm.open("b", "o", fqn="/x")
                try:
                    await resp.read()
                finally:
                    resp.release()
            except AioetlError as e:
                return e.message
            except aiohttp.ClientPayloadError as e:
                return f"mid-transform: {e}"
            return "no error"
        finally:
            await session.close()
            server.close()

    assert expect in asyncio.run(run())


# -- the receive side of direct puts ----------------------------------------------------


def _md(size: int) -> LomMD:
    return LomMD(size=size, cksum="", version=1, atime_ns=0)


def test_receipts_settle_revoke_abort() -> None:
    async def run() -> None:
        r = Receipts()
        await r.commit("j1", "b/a", lambda: _md(3), in_thread=False)
        await r.commit("j1", "b/c", lambda: _md(5), in_thread=True)
        received, missing, _ = await r.settle("j1", ["b/a", "b/c", "b/late"], revoke=True)
        assert received == {"b/a": 3, "b/c": 5} and missing == ["b/late"]
        with pytest.raises(Conflict):  # revoked: the late direct put is refused
            await r.commit("j1", "b/late", lambda: _md(1), in_thread=False)
        # a check without revoke leaves the door open (the sender will send again)
        _, missing, _ = await r.settle("j1", ["b/again"], revoke=False)
        assert missing == ["b/again"]
        await r.commit("j1", "b/again", lambda: _md(2), in_thread=False)
        assert (await r.settle("j1", ["b/again"], revoke=True))[0] == {"b/again": 2}
        # a store that failed here is explained to the sender
        r.note_failure("j1", "b/full", "target t1: out of space writing \"ais://b/full\"")
        _, missing, why = await r.settle("j1", ["b/full"], revoke=True)
        assert missing == ["b/full"] and "out of space" in why["b/full"]
        r.abort("j1", "aborted by user")
        with pytest.raises(Conflict):
            r.check("j1", "b/z")
        # a job not heard of yet is accepted (a peer's pod may be faster than the start)
        r.check("j2", "b/z")

    asyncio.run(run())


def test_receipts_settle_waits_for_a_commit_in_progress() -> None:
    async def run() -> None:
        r = Receipts()
        import threading

        gate = threading.Event()

        def slow_finalize() -> LomMD:
            gate.wait(5)
            return _md(7)

        commit = asyncio.ensure_future(r.commit("j", "b/o", slow_finalize, in_thread=True))
        await asyncio.sleep(0.05)
        settle = asyncio.ensure_future(r.settle("j", ["b/o"], revoke=True))
        await asyncio.sleep(0.05)
        assert not settle.done()  # the commit in progress decides
        gate.set()
        await commit
        assert (await settle) == ({"b/o": 7}, [], {})

    asyncio.run(run())


def test_settle_route_refuses_bad_bodies(tmp_path: Any) -> None:
    """The settle body shape is checked (400), not trusted."""
    from aioetl.engine.scheduler.offline import OfflineJobs
    from aioetl.engine.scheduler.receipts import Receipts
    from aioetl.engine.target.peers import Peers
    from aioetl.engine.target.services import ClusterView, NodeInfo
    from aioetl.engine.target.storage import Store

    cluster = ClusterView("t1")
    jobs = OfflineJobs(NodeInfo("t1", "http://127.0.0.1:9", str(tmp_path)), cluster, Store([str(tmp_path / "mp")]),
                       Peers(cluster, "http://127.0.0.1:9", "secret"), Receipts())

    async def run() -> list[int]:
        app = web.Application()
        from aioetl.engine.node.httpd import error_middleware

        app.middlewares.append(error_middleware("t1"))
        app.router.add_post("/v1/xactions/_settle", jobs.h_settle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        out = []
        async with aiohttp.ClientSession() as s:
            for body in ([1], {"id": "x"}, {"id": "x", "keys": [1]}, {"id": "x", "keys": ["b/o"], "revoke": True}):
                async with s.post(f"http://127.0.0.1:{port}/v1/xactions/_settle", data=json.dumps(body)) as resp:
                    out.append(resp.status)
        await runner.cleanup()
        return out

    assert asyncio.run(run()) == [400, 400, 400, 200]


# -- hpush: a reply left over on a keep-alive connection is never another object's ------


async def _keepalive_pod(echo: bool) -> tuple[asyncio.AbstractServer, str]:
    """Answers ``T:<obj>`` with keep-alive; for ``two*`` objects it sends a second,
    unrequested reply right after (as a buggy pod might)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split()[1].split("?")[0]
                hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                n = int(hdrs.get("content-length", "0"))
                if n:
                    await reader.readexactly(n)
                obj = path.rsplit("/", 1)[-1]
                extra = f"aioetl-req-id: {hdrs['aioetl-req-id']}\r\n" if echo and "aioetl-req-id" in hdrs else ""
                body = f"T:{obj}".encode()
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)
                if obj.startswith("two"):
                    await writer.drain()
                    await asyncio.sleep(0.01)
                    stray = b"unsolicited"
                    writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(stray)}\r\n{extra}\r\n".encode() + stray)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("echo", [True, False], ids=["echoing-pod", "non-echoing-pod"])
def test_hpush_extra_reply_is_never_attributed(echo: bool) -> None:
    async def run() -> dict[str, Any]:
        server, url = await _keepalive_pod(echo)
        conn = aiohttp.TCPConnector(limit=2)  # few pooled connections: reuse is certain
        session = aiohttp.ClientSession(connector=conn)
        comm = HpushComm("etl-x", url, 5.0, session)
        out: dict[str, Any] = {}
        try:
            names = [f"{'two' if i % 5 == 0 else 'ok'}-{i}" for i in range(40)]

            async def one(name: str) -> None:
                try:
                    resp = await comm.open("b", name, fqn="/f")
                    try:
                        out[name] = await resp.read()
                    finally:
                        resp.release()
                except AioetlError as e:
                    out[name] = e

            for i in range(0, len(names), 4):  # a few at a time, so connections get reused
                await asyncio.gather(*(one(n) for n in names[i:i + 4]))
                await asyncio.sleep(0.02)
            return out
        finally:
            await comm.close()
            await session.close()
            server.close()

    out = asyncio.run(run())
    wrong = {n: r for n, r in out.items() if isinstance(r, bytes) and r != f"T:{n}".encode()}
    assert not wrong
    assert sum(1 for r in out.values() if isinstance(r, bytes)) == len(out)  # retried, not failed


def test_ws_order_mode_late_second_reply_is_never_attributed() -> None:
    """An order-based pod that answers a request twice, the second time late: the stray
    reply must not become the next request's output (a connection carries one request)."""
    async def run() -> dict[str, Any]:
        runner, url, _ = await _scripted_pod(False)
        session = aiohttp.ClientSession()
        comm = WsComm("etl-x", url, 2.0, session, n_conns=1)
        out: dict[str, Any] = {}
        try:
            for i in range(12):
                for name in (f"twice-{i}", f"wait-{i}"):  # "wait" is in flight when the stray comes
                    try:
                        out[name] = (await comm.transform(name, fqn=None, body=b"x")).data
                    except AioetlError as e:
                        out[name] = e
                await asyncio.sleep(0.06)  # the stray reply arrives while the next request is in flight
            return out
        finally:
            await comm.close()
            await session.close()
            await runner.cleanup()

    out = asyncio.run(run())
    wrong = {n: r for n, r in out.items() if isinstance(r, bytes) and r != f"T:{n}".encode()}
    assert not wrong
    assert all(r == f"T:{n}".encode() for n, r in out.items())
