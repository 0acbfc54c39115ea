"""The pieces of the pod server, without a pod: settings, the error table, the ws
byte budget and reply order, the thread bridge (pure or on a private loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import logging
import threading
from collections.abc import Iterator

import aiohttp
import pytest

from aioetl.communicators.pod.bridge import LoopReader, stream_chunks
from aioetl.communicators.pod.config import PodConfig
from aioetl.communicators.pod.errors import ETLDirectPutTransientError, TargetRequestError, error_reply
from aioetl.communicators.pod.ws_pipeline import ByteBudget, serve_pipelined
from aioetl.communicators.wire.frames import InvalidPipelineError, WsControl, parse_ws_frame

LOG = logging.getLogger("test_pod_parts")

# -- settings ----------------------------------------------------------------------------


def test_config_from_env() -> None:
    c = PodConfig.from_env({"AIS_TARGET_URL": " http://t:1/v1/etl/_object/e/s/ ", "ETL_DIRECT_FQN": "True",
                            "AIS_DIRECT_PUT_RETRIES": "-2", "AIS_AUTHN_TOKEN": "tok"})
    assert c.target_url == "http://t:1/v1/etl/_object/e/s"
    assert c.direct_fqn and c.direct_put_retries == 0 and c.authn_token == "tok"


@pytest.mark.parametrize("env", [{}, {"AIS_TARGET_URL": "  "}, {"AIS_TARGET_URL": "x", "AIS_DIRECT_PUT_RETRIES": "a"}])
def test_config_refuses_a_bad_environment(env: dict[str, str]) -> None:
    with pytest.raises(OSError):
        PodConfig.from_env(env)


# -- the error table --------------------------------------------------------------------------


def test_error_table() -> None:
    assert error_reply(InvalidPipelineError("x"), "b/o")[0] == 400
    status, msg, _ = error_reply(FileNotFoundError(2, "gone", "/m/o"), "b/o")
    assert (status, msg) == (404, "Error processing object 'b/o': file not found at '/m/o'.")
    assert error_reply(TargetRequestError(403, "no"), "b/o")[0] == 403
    cause = ConnectionResetError()
    assert error_reply(ETLDirectPutTransientError("http://n", cause), "b/o")[:1] == (502,)
    status, _, headers = error_reply(ETLDirectPutTransientError("http://n", cause, True), "b/o")
    assert (status, headers) == (503, {"Ais-Etl-Retry-Reason": "direct-put-transient"})
    assert error_reply(aiohttp.ClientPayloadError("cut"), "b/o")[0] == 502
    assert error_reply(ValueError("boom"), "b/o") == (500, "Processing error: ValueError: boom", {})


# -- the ws byte budget and reply order ---------------------------------------------------------


def test_budget_lets_one_item_through_and_waits_for_room() -> None:
    async def main() -> None:
        b = ByteBudget(2, 100)
        await b.acquire(1000)  # alone: passes whatever its size
        waiter = asyncio.create_task(b.acquire(10))
        await asyncio.sleep(0)
        assert not waiter.done()
        b.release(1000)
        await waiter
        assert b.statistics() == {"items": 1, "bytes": 10, "max_items": 2, "max_bytes": 100}

    asyncio.run(main())


class _Conn:
    """A ws peer that sends ``incoming`` and records what comes back."""

    def __init__(self, incoming: list[tuple[bool, bytes | str]]) -> None:
        self.incoming = list(incoming)
        self.sent: list[bytes | str] = []
        self.hold = asyncio.Event()  # recv() blocks on it once incoming is used up

    async def recv(self) -> tuple[bool, bytes | str] | None:
        if self.incoming:
            return self.incoming.pop(0)
        await self.hold.wait()
        return None

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def send_text(self, data: str) -> None:
        self.sent.append(data)


def _req(path: str, rid: int | None = None) -> list[tuple[bool, bytes | str]]:
    doc: dict[str, object] = {"path": path}
    if rid is not None:
        doc["id"] = rid
    return [(False, json.dumps(doc)), (True, path.encode())]


def test_replies_go_out_in_request_order() -> None:
    async def main() -> None:
        conn = _Conn(_req("slow") + _req("fast") + _req("inline"))
        conn.hold.set()
        release = asyncio.Event()

        async def answer(ctrl: WsControl, body: bytes | None) -> bytes | str:
            if ctrl.path == "slow":
                await release.wait()
            else:
                release.set()
            return b"out-" + (body or b"")

        def inline(ctrl: WsControl, body: bytes | None) -> bytes | str | None:
            return None  # never eligible: everything goes through answer()

        await serve_pipelined(conn, answer=answer, answer_inline=inline, max_inflight=8,
                              max_inflight_bytes=1 << 20, logger=LOG)
        assert conn.sent == [b"out-slow", b"out-fast", b"out-inline"]

    asyncio.run(main())


def test_inline_answers_only_with_nothing_ahead_and_ids_are_framed() -> None:
    async def main() -> None:
        conn = _Conn(_req("a", rid=7) + _req("b", rid=8))
        conn.hold.set()
        seen: list[str] = []

        async def answer(ctrl: WsControl, body: bytes | None) -> bytes | str:
            raise AssertionError("not reached: both are answered inline")

        def inline(ctrl: WsControl, body: bytes | None) -> bytes | str | None:
            seen.append(ctrl.path)
            return body

        await serve_pipelined(conn, answer=answer, answer_inline=inline, max_inflight=8,
                              max_inflight_bytes=1 << 20, logger=LOG)
        assert seen == ["a", "b"]
        assert [parse_ws_frame(f)[0] for f in conn.sent if isinstance(f, bytes)] == [7, 8]

    asyncio.run(main())


def test_a_bad_control_frame_is_answered_400_and_ends_reading() -> None:
    async def main() -> None:
        conn = _Conn([(False, "not json"), *_req("never")])

        async def answer(ctrl: WsControl, body: bytes | None) -> bytes | str:
            raise AssertionError("not reached")

        await serve_pipelined(conn, answer=answer, answer_inline=lambda c, b: None, max_inflight=8,
                              max_inflight_bytes=1 << 20, logger=LOG)
        assert len(conn.sent) == 1 and isinstance(conn.sent[0], str)
        assert json.loads(conn.sent[0])["status"] == 400

    asyncio.run(main())


def test_cancelling_the_connection_cancels_the_answers_in_flight() -> None:
    async def main() -> None:
        conn = _Conn(_req("x"))  # then recv() blocks
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def answer(ctrl: WsControl, body: bytes | None) -> bytes | str:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b""

        task = asyncio.create_task(serve_pipelined(conn, answer=answer, answer_inline=lambda c, b: None,
                                                   max_inflight=8, max_inflight_bytes=1 << 20, logger=LOG))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled.is_set() and conn.sent == []

    asyncio.run(main())


# -- the thread bridge ------------------------------------------------------------------------------


def test_loop_reader_reads_on_the_loop_for_a_thread() -> None:
    async def main() -> None:
        src = io.BytesIO(b"abcdefgh")

        async def aread(n: int) -> bytes:
            return src.read(n)

        reader = LoopReader(asyncio.get_running_loop(), aread)
        with pytest.raises(RuntimeError):
            reader.read(1)  # on the loop's own thread: would deadlock
        got = await asyncio.to_thread(lambda: [reader.read(3), reader.read(), reader.read(1)])
        assert got == [b"abc", b"defgh", b""]

    asyncio.run(main())


def test_closing_the_loop_reader_fails_a_pending_read_and_releases_the_source() -> None:
    async def main() -> None:
        released, asked = asyncio.Event(), asyncio.Event()

        async def aread(n: int) -> bytes:
            asked.set()
            await asyncio.Event().wait()
            return b""

        reader = LoopReader(asyncio.get_running_loop(), aread, released.set)
        read = asyncio.create_task(asyncio.to_thread(reader.read, 4))
        await asked.wait()  # the thread waits for bytes (it may not have noted its request yet)
        reader.close()
        with pytest.raises(ValueError):
            await read
        await released.wait()

    asyncio.run(main())


def test_closing_a_stream_early_closes_its_input_and_the_transform() -> None:
    closed = threading.Event()

    def transform(reader: io.BytesIO) -> Iterator[bytes]:
        try:
            while chunk := reader.read(2):
                yield chunk
        finally:
            closed.set()

    async def main() -> None:
        reader = io.BytesIO(b"aabbcc")
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            failed: list[BaseException] = []
            gen = stream_chunks(ex, lambda: transform(reader), reader, failed)
            assert await gen.__anext__() == b"aa"
            await gen.aclose()
            assert reader.closed
        assert closed.is_set() and not failed

    asyncio.run(main())


def test_a_failing_transform_is_recorded() -> None:
    def transform() -> Iterator[bytes]:
        yield b"x"
        raise KeyError("late")

    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            failed: list[BaseException] = []
            out = []
            with pytest.raises(KeyError):
                async for c in stream_chunks(ex, transform, io.BytesIO(), failed):
                    out.append(c)
            assert out == [b"x"] and isinstance(failed[0], KeyError)

    asyncio.run(main())
