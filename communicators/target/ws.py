"""``ws://``: a session of persistent WebSocket connections to the pod
(AIStore ``ext/etl/webskt.go``). With our pods requests are pipelined and each
reply carries its request id; with AIStore's pods (order-based replies) one
request per connection, then the connection is closed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import structlog

from aioetl.communicators.cork import cork_ws
from aioetl.communicators.target.base import (
    CommBase,
    EtlFailed,
    EtlRetry,
    Lender,
    PodResult,
    Reply,
    fqn_param,
    obj_uri,
    pod_error,
)
from aioetl.communicators.wire.const import HEADER_WORKER, HEADER_WS_IDS
from aioetl.communicators.wire.frames import (
    WS_KIND_DATA,
    WS_KIND_DELIVERED,
    WS_KIND_ERROR,
    WsControl,
    WsProtocolError,
    parse_ws_frame,
)
from aioetl.errors import AioetlError

__all__ = ["WsComm", "classify_ws_reply"]

log = structlog.get_logger("aioetl.comm")


BALANCE_REDIALS = 8  # per connection, see WsComm._dial_balanced
# AIStore's pods match replies by order alone: one request in flight per connection (then a
# reply provably belongs to it), and this many connections at least, so a job still has
# 8 requests in flight (AIStore's bundle_multiplier 2 x 4 connections)
WS_ORDER_CONNS = 8
WS_EXPIRED_IDS = 4096  # per connection: ids of timed-out requests whose late reply is dropped
_EXPIRED: Any = object()  # result of a ws request future whose per-object timeout fired


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(_EXPIRED)


def _pod_header(ws: aiohttp.ClientWebSocketResponse, name: str) -> str:
    """A header of the pod's ws handshake reply ("" when absent)."""
    resp = getattr(ws, "_response", None)
    return resp.headers.get(name, "") if resp is not None else ""


def _pod_worker(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, int] | None:
    """``(index, count)`` from our pods' ``Aioetl-Worker`` handshake header; None when absent."""
    value = _pod_header(ws, HEADER_WORKER)
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        return None
    return (i, n) if 0 <= i < n else None


class _Anomaly(EtlFailed):
    """A reply of a kind the request did not ask for (order-based: its reader stops, as
    nothing it sends can be attributed any more)."""


def classify_ws_reply(kind: aiohttp.WSMsgType, data: Any, direct: bool = False) -> PodResult | AioetlError:
    """An order-based (AIStore) reply to a request that asked for a direct put (``direct``) or not.

    BINARY -> bytes; TEXT of digits -> delivered; any other TEXT -> an error. Bytes where
    a direct put was asked for, or "delivered" where none was, is an :class:`_Anomaly`.
    """
    if kind == aiohttp.WSMsgType.BINARY:
        if direct:
            return _Anomaly("ETL error: pod answered with bytes where a direct put was requested")
        return PodResult(data=bytes(data))
    text = str(data).strip()
    if text.isascii() and text.isdigit():
        if not direct:
            return _Anomaly(f"ETL error: pod answered {text!r} (delivered by direct put) "
                            "but no direct put was requested")
        return PodResult(delivered=int(text))
    status = 422
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and "error" in doc:
            text = str(doc["error"])
            status = int(doc.get("status") or 422)
    except (ValueError, TypeError):
        pass
    if status == 503:
        return EtlRetry(pod_error("", 500, text).message)
    return pod_error("", status if status < 500 else 500, text)


def _classify_framed(kind: int, payload: bytes, direct: bool) -> PodResult | AioetlError:
    """A reply framed with its request id (``aioetl.communicators.wire.frames``), attributed by that id."""
    if kind == WS_KIND_DATA:
        return classify_ws_reply(aiohttp.WSMsgType.BINARY, payload, direct)
    text = payload.decode(errors="replace")
    if kind == WS_KIND_DELIVERED and not (text.isascii() and text.strip().isdigit()):
        return _Anomaly(f"ETL error: malformed delivered length {text[:64]!r}")
    if kind == WS_KIND_ERROR and text.strip().isdigit():
        text = json.dumps({"error": text, "status": 500})
    return classify_ws_reply(aiohttp.WSMsgType.TEXT, text, direct)


class _Req:
    __slots__ = ("direct", "fut")

    def __init__(self, fut: asyncio.Future[Any], direct: bool) -> None:
        self.fut = fut
        self.direct = direct


class _WsConn:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.worker = _pod_worker(ws)
        self.ids = _pod_header(ws, HEADER_WS_IDS) == "1"  # our pods echo request ids (aioetl.communicators.wire.frames)
        self.pending: dict[int, _Req] = {}
        self.expired: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.send_lock = asyncio.Lock()
        self.broken = False  # no new requests: closing after an anomaly or a timeout
        self.used = False  # order mode: the connection has carried its one request
        self.reader: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return not self.broken and not self.ws.closed


class WsComm(CommBase):
    """``ws://``: persistent connections to the pod, replies attributed by proof.

    - Our pods (``Aioetl-Ws-Ids: 1`` handshake header): every request carries an id and
      the reply echoes it (``aioetl.communicators.wire.frames``); requests are pipelined over
      ``n_conns`` connections (with ``conns_per_process``: at most that many per pod
      process: fewer, deeper pipelines, whose replies the pod sends several per write).
      A missing reply times out its own object; a late, repeated or unknown id is
      dropped (logged); a TEXT frame or a malformed frame, which names no request,
      closes the connection and fails the requests in flight on it.
    - Any other pod (AIStore's order-based protocol, ``ext/etl/websocket_comm.go``):
      one request per connection, then the connection is closed, at most
      ``max(n_conns, WS_ORDER_CONNS)`` at a time, so a reply provably belongs to the
      one request (a reply that names no request could otherwise, arriving late,
      be taken for the next one's). A timeout, an unsolicited reply, or a reply of
      the wrong kind (bytes where a direct put was asked for, "delivered" where none
      was) fails that request; nothing else ever rides on its connection.
    """

    def __init__(self, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession,
                 n_conns: int = 2, conns_per_process: int = 0, lender: Lender | None = None) -> None:
        super().__init__(etl, pod_url, obj_timeout_s, session, lender)
        self.n_conns = n_conns
        self.conns_per_process = conns_per_process
        self.conns: list[_WsConn] = []
        self._dial_lock = asyncio.Lock()
        self._closed = False
        self._ids = itertools.count(1)
        self._order_mode: bool | None = None  # known after the first connection
        self._slots: asyncio.Semaphore | None = None  # order mode: one request per connection
        self._closing: set[asyncio.Future[Any]] = set()  # order mode: retired connections closing

    @property
    def ids(self) -> bool:
        """True once the pod is known to echo request ids (our pods)."""
        return self._order_mode is False

    async def _dial(self) -> _WsConn:
        ws_url = self.pod_url.replace("http://", "ws://", 1) + "/ws"
        try:
            ws = await self.session.ws_connect(ws_url, max_msg_size=0, autoping=False, heartbeat=None,
                                               timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._unreachable(e) from e
        cork_ws(ws)
        c = _WsConn(ws)
        c.reader = asyncio.get_running_loop().create_task(self._read_loop(c))
        return c

    def _anomaly(self, what: str) -> _Anomaly:
        return _Anomaly(f'ETL error: etl job "{self.etl}": ws protocol violation by the pod at {self.pod_url}: {what}')

    async def _read_loop(self, c: _WsConn) -> None:
        err: AioetlError | None = None
        try:
            async for msg in c.ws:
                if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        break
                    continue
                if c.ids:
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        err = self._anomaly("a TEXT frame where a framed reply was due")
                        break
                    try:
                        rid, kind, payload = parse_ws_frame(msg.data)
                    except WsProtocolError as e:
                        err = self._anomaly(str(e))
                        break
                    req = c.pending.pop(rid, None)
                    if req is None:
                        # late (timed out), repeated, or never sent: attributed to nothing, and
                        # the other requests on this connection are not affected
                        log.warning("ws reply dropped: its request is not in flight", etl=self.etl,
                                    pod=self.pod_url, id=rid, late=rid in c.expired)
                        c.expired.pop(rid, None)
                        continue
                    if not req.fut.done():
                        req.fut.set_result(_classify_framed(kind, payload, req.direct))
                    continue
                if not c.pending:
                    err = self._anomaly("a reply when no request was in flight")
                    break
                _, req = c.pending.popitem()
                res = classify_ws_reply(msg.type, msg.data, req.direct)
                if not req.fut.done():
                    req.fut.set_result(res)
                if isinstance(res, _Anomaly):
                    break
        except Exception as e:
            err = self._unreachable(e)
        finally:
            c.broken = True
            if c in self.conns:
                self.conns.remove(c)
            e2 = err or self._unreachable(ConnectionError("websocket closed by the pod"))
            for req in c.pending.values():
                if not req.fut.done():
                    req.fut.set_result(e2)
            c.pending.clear()
            if not c.ws.closed:
                await c.ws.close()

    async def _first(self) -> None:
        """Dial the first connection: it tells whether the pod speaks request ids."""
        async with self._dial_lock:
            if self._order_mode is not None:
                return
            c = await self._dial()
            self.conns.append(c)
            self._order_mode = not c.ids
            if self._order_mode:
                self.n_conns = max(self.n_conns, WS_ORDER_CONNS)
                self._slots = asyncio.Semaphore(self.n_conns)
            elif self.conns_per_process and c.worker is not None:
                self.n_conns = min(self.n_conns, self.conns_per_process * c.worker[1])

    async def _pick_ordered(self) -> _WsConn:
        """A connection that has carried no request yet (the first one dialed), else a new
        one: the caller holds one of ``n_conns`` slots, which bounds the connections."""
        for c in self.conns:
            if c.usable and not c.used:
                c.used = True
                return c
        c = await self._dial()
        self.conns.append(c)
        c.used = True
        return c

    def _retire(self, c: _WsConn) -> None:
        """Order mode: a connection carries one request. A reply that comes after the one
        awaited (a pod that answers twice, late) could otherwise be taken for the next
        request's: on a connection that carries nothing else it is attributed to nothing."""
        c.broken = True
        if c in self.conns:
            self.conns.remove(c)
        task = asyncio.get_running_loop().create_task(c.ws.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _pick(self) -> _WsConn:
        live = [c for c in self.conns if c.usable]
        if len(live) < self.n_conns and (not live or min(len(c.pending) for c in live) > 0):
            async with self._dial_lock:
                live = [c for c in self.conns if c.usable]
                if len(live) < self.n_conns:
                    c = await self._dial_balanced(live)
                    self.conns.append(c)
                    return c
        return min(live, key=lambda c: len(c.pending))

    async def _dial_balanced(self, live: list[_WsConn]) -> _WsConn:
        """Dial; when the pod names the worker process that accepted (our pods do), dial
        again, at most :data:`BALANCE_REDIALS` times, while the connection lands on a
        process that already holds its share of ``n_conns``. ``SO_REUSEPORT`` spreads
        connections at random: 8 over 2 processes land 7/1 or 8/0 one time in 7, and a
        process runs CPU-bound transforms one at a time, so that pod would use one core."""
        for _ in range(BALANCE_REDIALS):
            c = await self._dial()
            if c.worker is None or sum(1 for x in live if x.worker == c.worker) < -(-self.n_conns // c.worker[1]):
                return c
            await c.ws.close()
            if c.reader is not None:
                await asyncio.gather(c.reader, return_exceptions=True)
        return await self._dial()  # still uneven after the re-dials: take what comes

    async def transform(self, obj: str, *, fqn: str | None, body: bytes | None = None, etl_args: str = "",
                        pipeline: list[str] | None = None, direct: bool = False) -> PodResult:
        """One object round trip.

        Args:
            obj: the object name (the control frame's ``path``).
            fqn: the local file the pod reads; None sends ``body`` as a BINARY frame.
            pipeline: next hops (``Ais-Node-Url``), the last one a target when ``direct``.
            direct: the last hop is a direct put to a target: the reply must be
                "delivered", not bytes (and the other way round).

        Returns:
            ``PodResult`` with ``data`` (bytes) or ``delivered`` (bytes the pod says it
            delivered by direct put; only the destination can confirm it).

        Raises:
            EtlFailed: error reply, a reply of the wrong kind, or the connection died
                or broke protocol (then every request in flight on it fails).
            BadRequest: timeout (the reply, if it ever comes, is not used).
        """
        if self._closed:
            raise EtlFailed(f'etl job "{self.etl}": communicator closed', status=424)
        if self._order_mode is None:
            await self._first()
        with self._lent(fqn) as fqn:
            return await self._transform(obj, fqn, body, etl_args, pipeline, direct)

    @contextlib.asynccontextmanager
    async def send(self, bck: str, obj: str, *, fqn: str | None, etl_args: str = "", pipeline: Sequence[str] = (),
                   direct: bool = False, timeout_s: float | None = None) -> AsyncIterator[Reply]:
        """:meth:`Communicator.send` over :meth:`transform`: the result is ``data``, or
        "delivered" (``uncertain`` when a pod that does not echo ids says 0 bytes).
        ``timeout_s`` is not used: a ws session's per-object limit is set when it is
        built (a job builds its own session with the job's limit)."""
        res = await self.transform(obj, fqn=fqn, etl_args=etl_args, pipeline=list(pipeline), direct=direct)
        what = obj_uri(bck, obj)
        if res.data is not None:
            yield Reply(self.etl, what, data=res.data)
        else:
            yield Reply(self.etl, what, delivered=res.delivered, uncertain=res.delivered <= 0 and not self.ids)

    def redirect_url(self, uname: str, fqn: str | None, etl_args: str) -> str | None:
        """ws relays through the target: never a redirect."""
        return None

    async def _transform(self, obj: str, fqn: str | None, body: bytes | None, etl_args: str,
                         pipeline: list[str] | None, direct: bool) -> PodResult:
        ctrl = WsControl(path=obj, fqn=fqn_param(fqn) if fqn else "", etl_args=etl_args,
                         pipeline=",".join(pipeline) if pipeline else "")
        slots = self._slots
        if slots is not None:
            await slots.acquire()
        c: _WsConn | None = None
        try:
            c = await (self._pick_ordered() if slots is not None else self._pick())
            return await self._round_trip(c, ctrl, obj, fqn, body, direct)
        finally:
            if slots is not None:
                if c is not None:
                    self._retire(c)
                slots.release()

    async def _round_trip(self, c: _WsConn, ctrl: WsControl, obj: str, fqn: str | None, body: bytes | None,
                          direct: bool) -> PodResult:
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        frame = (dataclasses.replace(ctrl, id=rid) if c.ids else ctrl).encode()
        fut: asyncio.Future[PodResult | AioetlError] = loop.create_future()
        c.pending[rid] = _Req(fut, direct)
        try:
            async with c.send_lock:
                await c.ws.send_bytes(frame)
                if not fqn:
                    await c.ws.send_bytes(body or b"")
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as e:
            c.pending.pop(rid, None)
            c.broken = True
            raise self._unreachable(e) from e
        # a timer instead of wait_for(shield(fut)): no extra task per object
        timer = loop.call_later(self.obj_timeout_s, _expire, fut)
        done = False
        try:
            res = await fut
            done = res is not _EXPIRED
        finally:
            timer.cancel()
            # timed out or cancelled: with ids its late reply is recognized and dropped;
            # order-based, the connection is retired by transform()
            if not done and c.pending.pop(rid, None) is not None and c.ids:
                c.expired[rid] = None
                while len(c.expired) > WS_EXPIRED_IDS:
                    c.expired.popitem(last=False)
        if res is _EXPIRED:
            raise self._timeout(f'transform of "{obj}"')
        if isinstance(res, AioetlError):
            res.message = res.message.replace('etl job ""', f'etl job "{self.etl}"', 1)
            raise res
        return res

    async def close(self) -> None:
        self._closed = True
        for c in list(self.conns):
            await c.ws.close()
            if c.reader is not None:
                await asyncio.gather(c.reader, return_exceptions=True)
        self.conns.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
