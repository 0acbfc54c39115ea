"""A pod's ws connection (§1.5): requests read and processed concurrently under a
byte budget, replies written strictly in request order.

One request is a control frame (:class:`.wire.frames.WsControl`), followed by a
body frame unless the control names a local file (``fqn``). What a request is
answered with is not decided here: the caller passes ``answer`` (a coroutine per
request) and ``answer_inline`` (answers right away when it can, else None).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from aioetl.communicators.pod.interface import WsConnection
from aioetl.communicators.wire.frames import WsControl, WsProtocolError, encode_ws_error, frame_ws_reply

__all__ = ["ByteBudget", "serve_pipelined"]

WsReply = bytes | str
"""BINARY bytes, or TEXT: ``str(n)`` (delivered) or a JSON error."""


class ByteBudget:
    """At most ``max_items`` and ``max_bytes`` in flight; one item always passes when
    nothing is in flight (so one huge object cannot deadlock). One acquirer at a
    time (a ws connection's reader); :meth:`release` is synchronous."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items = 0
        self.bytes = 0
        self._waiter: asyncio.Future[None] | None = None

    def _fits(self, n: int) -> bool:
        return self.items == 0 or (self.items < self.max_items and self.bytes + n <= self.max_bytes)

    async def acquire(self, n: int) -> None:
        """Wait until an item of ``n`` bytes fits, then count it. Cancelling it counts nothing."""
        while not self._fits(n):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.items += 1
        self.bytes += n

    def release(self, n: int) -> None:
        """Uncount an item of ``n`` bytes and wake the acquirer."""
        self.items -= 1
        self.bytes -= n
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def statistics(self) -> dict[str, int]:
        """``{"items", "bytes", "max_items", "max_bytes"}`` now."""
        return {"items": self.items, "bytes": self.bytes, "max_items": self.max_items, "max_bytes": self.max_bytes}


async def _const(v: WsReply) -> WsReply:
    return v


async def serve_pipelined(conn: WsConnection, *,
                          answer: Callable[[WsControl, bytes | None], Coroutine[Any, Any, WsReply]],
                          answer_inline: Callable[[WsControl, bytes | None], WsReply | None],
                          max_inflight: int, max_inflight_bytes: int, logger: logging.Logger) -> None:
    """Serve ``conn`` until it closes.

    A request whose control frame carries an ``id`` is answered with one framed
    BINARY reply (:func:`.wire.frames.frame_ws_reply`), so the target attributes it
    by id, not by position. A control frame that does not decode is answered with
    a 400 error in its turn, and ends the reading (whether a body frame follows
    cannot be told).

    Args:
        conn: the connection.
        answer: one request (control, body or None) -> its reply; never raises.
        answer_inline: the reply when it can be given at once, else None (then
            nothing has been done); tried only when no earlier reply is pending.
        max_inflight: requests being answered at once.
        max_inflight_bytes: body bytes of requests being answered at once.
        logger: the end of the connection is logged at debug level.

    Cancelling it cancels the requests being answered and drops their replies.
    """
    budget = ByteBudget(max_inflight, max_inflight_bytes)
    order: asyncio.Queue[tuple[asyncio.Task[WsReply], int, int | None] | None] = asyncio.Queue()
    outstanding = 0  # requests queued for the writer and not yet answered

    async def send(reply: WsReply, rid: int | None) -> None:
        if rid is not None:  # the target sent an id: one framed BINARY reply (wire docstring)
            await conn.send_bytes(frame_ws_reply(rid, reply))
        elif isinstance(reply, str):
            await conn.send_text(reply)
        else:
            await conn.send_bytes(reply)

    async def writer() -> None:
        nonlocal outstanding
        while True:
            item = await order.get()
            if item is None:
                return
            task, n, rid = item
            try:
                reply = await task
            finally:
                budget.release(n)
            await send(reply, rid)
            outstanding -= 1

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer())
            try:
                while True:
                    msg = await conn.recv()
                    if msg is None:
                        break
                    try:
                        ctrl = WsControl.decode(msg[1])
                    except WsProtocolError as e:
                        err = encode_ws_error(str(e), 400)
                        await budget.acquire(0)
                        outstanding += 1
                        order.put_nowait((tg.create_task(_const(err)), 0, None))
                        break  # cannot tell whether a body frame follows: stop reading
                    body: bytes | None = None
                    if not ctrl.fqn:
                        m2 = await conn.recv()
                        if m2 is None:
                            break
                        body = m2[1] if isinstance(m2[1], bytes) else m2[1].encode()
                    if outstanding == 0:  # nothing ahead of it: may be answered right here
                        reply = answer_inline(ctrl, body)
                        if reply is not None:
                            await send(reply, ctrl.id)
                            continue
                    n = len(body) if body is not None else 0
                    await budget.acquire(n)
                    outstanding += 1
                    order.put_nowait((tg.create_task(answer(ctrl, body)), n, ctrl.id))
            finally:
                order.put_nowait(None)
    except* (ConnectionError, aiohttp.ClientError, RuntimeError) as eg:
        logger.debug("ws connection ended: %r", eg.exceptions)
