"""``aioetl.communicators.cork``: frames written in one loop tick leave in one ``writelines``,
at most ``max_frames`` per call, in order; over a real aiohttp ws connection too.

The recording transport below stands in for an asyncio transport only to count the
``writelines`` calls (what a real socket would turn into ``send()`` syscalls)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from aioetl.communicators.cork import FLUSH_BYTES, CorkedTransport, cork_ws


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.closing = False

    def writelines(self, bufs: list[bytes]) -> None:
        self.calls.append(list(bufs))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append([b"<close>"])
        self.closing = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


def test_one_tick_one_writelines_in_order() -> None:
    async def main() -> _Recorder:
        rec = _Recorder()
        t = CorkedTransport(rec)
        for i in range(5):
            t.write(b"frame-%d" % i)
        assert rec.calls == []  # nothing sent inside the tick
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return rec

    rec = asyncio.run(main())
    assert rec.calls == [[b"frame-%d" % i for i in range(5)]]


def test_max_frames_caps_each_send_and_bare_headers_do_not_count() -> None:
    async def main() -> _Recorder:
        rec = _Recorder()
        t = CorkedTransport(rec, max_frames=4)
        for i in range(10):
            t.write(b"\x82\x7e\x00\x20")  # a bare 4-byte header, as aiohttp writes big frames
            t.write(b"payload-%02d" % i * 4)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return rec

    rec = asyncio.run(main())
    assert [len(c) for c in rec.calls] == [8, 8, 4]
    flat = [b for c in rec.calls for b in c]
    assert flat[1::2] == [b"payload-%02d" % i * 4 for i in range(10)]


def test_big_buffers_go_at_once_and_closing_transport_gets_nothing() -> None:
    async def main() -> tuple[_Recorder, _Recorder]:
        big, closed = _Recorder(), _Recorder()
        t = CorkedTransport(big)
        t.write(b"x" * FLUSH_BYTES)
        assert len(big.calls) == 1  # not held to the end of the tick
        closed.closing = True
        t2 = CorkedTransport(closed)
        t2.write(b"late")
        assert t2.get_extra_info("peername") == "extra:peername"  # the rest passes through
        await asyncio.sleep(0)
        return big, closed

    big, closed = asyncio.run(main())
    assert len(big.calls) == 1 and closed.calls == []


def test_close_sends_what_is_buffered_first() -> None:
    async def main() -> _Recorder:
        rec = _Recorder()
        t = CorkedTransport(rec)
        t.write(b"last reply")
        t.close()  # same tick: the frame must not be lost
        await asyncio.sleep(0)
        return rec

    assert asyncio.run(main()).calls == [[b"last reply"], [b"<close>"]]


def test_cork_ws_on_a_real_connection_keeps_order() -> None:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert cork_ws(ws, 2)
        async for msg in ws:
            await ws.send_bytes(msg.data)
        return ws

    async def main() -> list[bytes]:
        app = web.Application()
        app.router.add_get("/ws", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                assert cork_ws(ws) and not cork_ws(ws)  # installed once
                sizes = [10, 70_000, 3, 200_000, 1]
                for i, n in enumerate(sizes):
                    await ws.send_bytes(bytes([i]) * n)
                return [(await ws.receive_bytes()) for _ in sizes]
        finally:
            await runner.cleanup()

    got = asyncio.run(main())
    assert got == [bytes([i]) * n for i, n in enumerate([10, 70_000, 3, 200_000, 1])]
