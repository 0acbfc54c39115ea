"""Target-side communicators: how a target talks to its ETL pod.

- :class:`HpushComm` (``hpush://``): ``PUT <pod>/<bck>/<obj>?etl_fqn=..&etl_args=..``
  over a pool of keep-alive connections; the pod reads the object from its FQN
  (AIStore's default, ``ext/etl/communicator.go``) or from the body.
- :class:`HpullComm` (``hpull://``): inline GETs are answered with a 307 to the
  pod, which then reads the object itself; pipelines are refused (400), as
  AIStore does, because a redirect drops the ``Ais-Node-Url`` header.
- :class:`WsComm` (``ws://``): a session of persistent WebSocket connections;
  requests are pipelined and answered in FIFO order per connection (§1.5).

Every type applies a per-object timeout (``obj_timeout``), ws included
(AIStore has none there). Pod answers map to errors in one place,
:func:`pod_error`:

    pod 200/202       -> transformed bytes
    pod 204 / ws TEXT digits -> delivered by direct put ("skip")
    pod 4xx           -> the same 4xx, text "ETL error: <body>"
    pod 5xx           -> 422 "ETL error: <body>" (a transform failure is not a
                         server fault the client should retry: the SDK retries
                         5xx for ~90 s)
    ws TEXT other     -> 422 (our pods send {"error","status"}; upstream FastAPI
                         pods send "Transform error: ...", which AIStore loses)
    pod unreachable   -> 424 "ETL pod ... unreachable"
    timeout           -> 400 "... timeout ..." (Go's text contains "Timeout" too)
"""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from engine.errors import AioetlError, BadRequest, ClientError

from .const import HEADER_WORKER
from .cork import cork_ws

__all__ = [
    "EtlFailed",
    "HpullComm",
    "HpushComm",
    "PodResult",
    "WsComm",
    "classify_ws_reply",
    "fqn_param",
    "pod_error",
]

MAX_ERR_BODY = 64 * 1024


class EtlFailed(ClientError):
    """The ETL failed on one object (transform error, pod gone, bad reply).

    ``transient`` marks the pod's 503 + ``Ais-Etl-Retry-Reason: direct-put-transient``
    reply: the object may be sent again.
    """

    status = 422
    transient = False


@dataclass
class PodResult:
    """Outcome of one object: ``data`` (transformed bytes) or ``delivered`` bytes by direct put."""

    data: bytes | None = None
    delivered: int = -1


# Go's url.PathEscape keeps the unreserved characters and "$&+:=@" (RFC 3986 §3.3 sub-delims
# a path segment may hold, minus ";" and ","); FQNs hold "/", "@" and "%" (``@ais/<bck>/%ob/``).
_PATH_SEGMENT_SAFE = "$&+:=@"
# the characters of the fast path: the safe ones plus the two it escapes itself
_FAST_FQN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/%" + _PATH_SEGMENT_SAFE)


def fqn_param(fqn: str) -> str:
    """``url.PathEscape(fqn)`` as AIStore puts it in ``etl_fqn`` (then query-encoded again).

    Fast path (ASCII names of the usual characters): only ``%`` and ``/`` need
    escaping, done with two ``str.replace`` (~0.3 us; ``urllib.parse.quote`` spends
    ~10 us on a 100-character FQN, one Python call per byte). Any other string goes
    through ``quote`` with the same safe set, so both paths give the same text.
    """
    if _FAST_FQN.issuperset(fqn):
        return fqn.replace("%", "%25").replace("/", "%2F")
    return quote(fqn, safe=_PATH_SEGMENT_SAFE)


def pod_error(etl: str, status: int, body: bytes | str) -> AioetlError:
    """Map a pod's error reply to the error the target answers with (module docstring)."""
    text = body if isinstance(body, str) else body[:MAX_ERR_BODY].decode(errors="replace")
    text = text.strip()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            text = str(doc.get("error") or doc.get("detail") or doc.get("message") or text)
    except ValueError:
        pass
    msg = f'ETL error: etl job "{etl}": {text or f"status {status}"}'
    if 400 <= status < 500:
        return EtlFailed(msg, status=status)
    return EtlFailed(msg)


def classify_ws_reply(kind: aiohttp.WSMsgType, data: Any) -> PodResult | AioetlError:
    """BINARY -> bytes; TEXT of digits -> delivered; any other TEXT -> an error."""
    if kind == aiohttp.WSMsgType.BINARY:
        return PodResult(data=bytes(data))
    text = str(data).strip()
    if text.isdigit():
        return PodResult(delivered=int(text))
    status = 422
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and "error" in doc:
            text = str(doc["error"])
            status = int(doc.get("status") or 422)
    except ValueError:
        pass
    return pod_error("", status if status < 500 else 500, text)


class _Comm:
    def __init__(self, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession) -> None:
        self.etl = etl
        self.pod_url = pod_url
        self.obj_timeout_s = obj_timeout_s
        self.session = session

    def _timeout(self, what: str) -> BadRequest:
        return BadRequest(f'etl job "{self.etl}": timeout: {what} took longer than obj_timeout '
                          f"({self.obj_timeout_s:g}s) (Client.Timeout exceeded)")

    def _unreachable(self, e: Exception) -> EtlFailed:
        return EtlFailed(f'ETL error: etl job "{self.etl}": pod at {self.pod_url} unreachable or died: {e}', status=424)

    async def close(self) -> None:
        return None


class HpushComm(_Comm):
    """``hpush://``: PUT to the pod, pooled keep-alive connections."""

    def request_args(self, bck: str, obj: str, fqn: str | None, etl_args: str,
                     pipeline: list[str]) -> tuple[str, dict[str, str], dict[str, str]]:
        url = f"{self.pod_url}/{quote(bck, safe='')}/{quote(obj, safe='/')}"
        params: dict[str, str] = {}
        if fqn:
            params["etl_fqn"] = fqn_param(fqn)
        if etl_args:
            params["etl_args"] = etl_args
        headers = {"Ais-Node-Url": ",".join(pipeline)} if pipeline else {}
        return url, params, headers

    async def open(self, bck: str, obj: str, *, fqn: str | None, body: Any = None, etl_args: str = "",
                   pipeline: list[str] | None = None, size: int | None = None) -> aiohttp.ClientResponse:
        """Send one object; returns the pod's (successful) response, body unread.

        Raises:
            EtlFailed: pod error status or pod unreachable.
            BadRequest: timeout (text has "timeout").
        """
        url, params, headers = self.request_args(bck, obj, fqn, etl_args, pipeline or [])
        if body is None:
            headers["Content-Length"] = "0"
            body = b""
        elif size is not None:
            headers["Content-Length"] = str(size)
        return await self._send("PUT", url, params, headers, body, f"{bck}/{obj}")

    async def _send(self, method: str, url: str, params: dict[str, str], headers: dict[str, str],
                    body: Any, what: str) -> aiohttp.ClientResponse:
        """One request to the pod under ``obj_timeout``; pod errors mapped (module docstring)."""
        try:
            resp = await self.session.request(method, url, params=params, data=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=self.obj_timeout_s))
        except asyncio.TimeoutError:
            raise self._timeout(f'transform of "{what}"') from None
        except aiohttp.ClientError as e:
            raise self._unreachable(e) from e
        if resp.status >= 400:
            raise await self._error_reply(resp)
        return resp

    async def _error_reply(self, resp: aiohttp.ClientResponse) -> AioetlError:
        try:
            text = await resp.content.read(MAX_ERR_BODY)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            text = b""
        resp.release()
        if resp.status == 503 and resp.headers.get("Ais-Etl-Retry-Reason", "") == "direct-put-transient":
            err = EtlFailed(f'ETL error: etl job "{self.etl}": direct put failed transiently: '
                            f"{text[:2000].decode(errors='replace')}", status=503)
            err.transient = True
            return err
        return pod_error(self.etl, resp.status, text)


class HpullComm(HpushComm):
    """``hpull://``: inline GETs are redirected to the pod; offline, the target GETs from it."""

    def redirect_url(self, uname: str, fqn: str | None, etl_args: str) -> str:
        q = []
        if fqn:
            q.append("etl_fqn=" + quote(fqn_param(fqn), safe=""))
        if etl_args:
            q.append("etl_args=" + quote(etl_args, safe=""))
        return f"{self.pod_url}/{quote(uname, safe='@')}" + ("?" + "&".join(q) if q else "")

    async def open(self, bck: str, obj: str, *, fqn: str | None, body: Any = None, etl_args: str = "",
                   pipeline: list[str] | None = None, size: int | None = None) -> aiohttp.ClientResponse:
        uname = f"ais/@#/{bck}/{obj}"
        url = f"{self.pod_url}/{quote(uname, safe='@')}"
        params: dict[str, str] = {}
        if fqn:
            params["etl_fqn"] = fqn_param(fqn)
        if etl_args:
            params["etl_args"] = etl_args
        headers = {"Ais-Node-Url": ",".join(pipeline)} if pipeline else {}
        return await self._send("GET", url, params, headers, None, f"{bck}/{obj}")


BALANCE_REDIALS = 8  # per connection, see WsComm._dial_balanced
_EXPIRED: Any = object()  # result of a ws request future whose per-object timeout fired


def _expire(fut: "asyncio.Future[Any]") -> None:
    if not fut.done():
        fut.set_result(_EXPIRED)


def _pod_worker(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, int] | None:
    """``(index, count)`` from our pods' ``Aioetl-Worker`` handshake header; None when absent."""
    resp = getattr(ws, "_response", None)
    value = resp.headers.get(HEADER_WORKER, "") if resp is not None else ""
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        return None
    return (i, n) if 0 <= i < n else None


class _WsConn:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.worker = _pod_worker(ws)
        self.pending: collections.deque[asyncio.Future[PodResult | AioetlError]] = collections.deque()
        self.send_lock = asyncio.Lock()
        self.draining = False
        self.reader: asyncio.Task[None] | None = None


class WsComm(_Comm):
    """``ws://``: ``n_conns`` persistent connections, pipelined, FIFO per connection.

    With ``conns_per_process`` set and a pod that names its process count (our pods'
    ``Aioetl-Worker`` header), at most that many connections per pod process: fewer,
    deeper pipelines, whose replies the pod sends several per write.

    A request that times out marks its connection as draining: nothing new is
    sent on it, late replies are matched and dropped, and the connection is
    closed once empty, so one slow object never shifts the FIFO of others.
    """

    def __init__(self, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession,
                 n_conns: int = 2, conns_per_process: int = 0) -> None:
        super().__init__(etl, pod_url, obj_timeout_s, session)
        self.n_conns = n_conns
        self.conns_per_process = conns_per_process
        self.conns: list[_WsConn] = []
        self._dial_lock = asyncio.Lock()
        self._closed = False

    async def _dial(self) -> _WsConn:
        ws_url = self.pod_url.replace("http://", "ws://", 1) + "/ws"
        try:
            ws = await self.session.ws_connect(ws_url, max_msg_size=0, autoping=False, heartbeat=None,
                                               timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise self._unreachable(e) from e
        cork_ws(ws)
        c = _WsConn(ws)
        c.reader = asyncio.ensure_future(self._read_loop(c))
        return c

    async def _read_loop(self, c: _WsConn) -> None:
        err: AioetlError | None = None
        try:
            async for msg in c.ws:
                if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    if not c.pending:
                        err = EtlFailed(f'ETL error: etl job "{self.etl}": pod sent an unsolicited ws message')
                        break
                    fut = c.pending.popleft()
                    if not fut.done():
                        fut.set_result(classify_ws_reply(msg.type, msg.data))
                    if c.draining and not c.pending:
                        break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        except Exception as e:  # noqa: BLE001 - the connection is dead; fail its tasks below
            err = self._unreachable(e)
        finally:
            if c in self.conns:
                self.conns.remove(c)
            e2 = err or self._unreachable(ConnectionError("websocket closed by the pod"))
            while c.pending:
                fut = c.pending.popleft()
                if not fut.done():
                    fut.set_result(e2)
            if not c.ws.closed:
                await c.ws.close()

    async def _pick(self) -> _WsConn:
        live = [c for c in self.conns if not c.draining and not c.ws.closed]
        if len(live) < self.n_conns and (not live or min(len(c.pending) for c in live) > 0):
            async with self._dial_lock:
                live = [c for c in self.conns if not c.draining and not c.ws.closed]
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
            if c.worker is not None and self.conns_per_process:  # fewer, deeper connections
                self.n_conns = min(self.n_conns, self.conns_per_process * c.worker[1])
            if c.worker is None or sum(1 for x in live if x.worker == c.worker) < -(-self.n_conns // c.worker[1]):
                return c
            await c.ws.close()
            if c.reader is not None:
                await asyncio.gather(c.reader, return_exceptions=True)
        return await self._dial()  # still uneven after the re-dials: take what comes

    async def transform(self, obj: str, *, fqn: str | None, body: bytes | None = None, etl_args: str = "",
                        pipeline: list[str] | None = None) -> PodResult:
        """One object round trip.

        Raises:
            EtlFailed: error reply or the connection died.
            BadRequest: timeout.
        """
        if self._closed:
            raise EtlFailed(f'etl job "{self.etl}": communicator closed', status=424)
        ctrl: dict[str, str] = {"path": obj}
        if fqn:
            ctrl["fqn"] = fqn_param(fqn)
        if etl_args:
            ctrl["etl_args"] = etl_args
        if pipeline:
            ctrl["pipeline"] = ",".join(pipeline)
        c = await self._pick()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PodResult | AioetlError] = loop.create_future()
        try:
            async with c.send_lock:
                c.pending.append(fut)
                await c.ws.send_bytes(json.dumps(ctrl).encode())
                if not fqn:
                    await c.ws.send_bytes(body or b"")
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as e:
            raise self._unreachable(e) from e
        # a timer instead of wait_for(shield(fut)): the future stays in c.pending (the
        # reader matches the late reply to it and drops it), and no extra task per object
        timer = loop.call_later(self.obj_timeout_s, _expire, fut)
        try:
            res = await fut
        finally:
            timer.cancel()
        if res is _EXPIRED:
            c.draining = True
            if not c.pending or all(f.done() for f in c.pending):
                await c.ws.close()
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
