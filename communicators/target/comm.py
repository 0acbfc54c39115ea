"""Target-side communicators: how a target talks to its ETL pod.

- :class:`HpushComm` (``hpush://``): ``PUT <pod>/<bck>/<obj>?etl_fqn=..&etl_args=..``
  over a pool of keep-alive connections; the pod reads the object from its FQN
  (AIStore's default, ``ext/etl/communicator.go``) or from the body.
- :class:`HpullComm` (``hpull://``): inline GETs are answered with a 307 to the
  pod, which then reads the object itself; pipelines are refused (400), as
  AIStore does, because a redirect drops the ``Ais-Node-Url`` header.
- :class:`WsComm` (``ws://``): a session of persistent WebSocket connections;
  with our pods requests are pipelined and replies carry the request id; with
  AIStore's pods (order-based replies, §1.5) one request per connection.

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
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import structlog

from aioetl.communicators.cork import cork_ws
from aioetl.communicators.wire.const import HEADER_REQ_ID, HEADER_WORKER, HEADER_WS_IDS
from aioetl.communicators.wire.frames import (
    WS_KIND_DATA,
    WS_KIND_DELIVERED,
    WS_KIND_ERROR,
    WsProtocolError,
    parse_ws_frame,
)
from aioetl.errors import AioetlError, BadRequest, ClientError, TransientError

__all__ = [
    "Communicator",
    "EtlFailed",
    "EtlRetry",
    "HpullComm",
    "HpushComm",
    "Lender",
    "PodResult",
    "Reply",
    "WsComm",
    "classify_ws_reply",
    "fqn_param",
    "make_communicator",
    "pod_error",
]

MAX_ERR_BODY = 64 * 1024
log = structlog.get_logger("aioetl.comm")


class EtlFailed(ClientError):
    """The ETL failed on one object (transform error, pod gone, bad reply)."""

    status = 422


class EtlRetry(EtlFailed, TransientError):
    """The pod asked for the object to be sent again: its 503 (hpush/hpull with
    ``Ais-Etl-Retry-Reason: direct-put-transient``, as AIStore's pods send it when a
    direct put failed transiently; a ws error reply with status 503)."""

    status = 503


@dataclass
class PodResult:
    """Outcome of one ws round trip: ``data`` (transformed bytes) or ``delivered`` bytes by direct put."""

    data: bytes | None = None
    delivered: int = -1


@dataclass
class Reply:
    """A pod's answer for one object, whatever the comm type (:meth:`Communicator.send`).

    Exactly one of:

    - ``data``: the whole result in memory (ws);
    - ``stream``: the result's body, not yet read (hpush, hpull); ``size`` is its
      ``Content-Length`` when the pod sent one (else it is chunked);
    - ``delivered``: the pod put the result to its destination itself (direct put):
      the byte count it claims, ``-1`` when it names none (hpush/hpull 204).
      ``uncertain``: the claim cannot be told from a failed direct put
      (``aistore[etl]``'s ws pods answer "0" for both): ask the destination.

    ``etl`` and ``what`` name the ETL and the object in the errors of :meth:`read`
    and :meth:`chunks`.
    """

    etl: str
    what: str
    data: bytes | None = None
    stream: aiohttp.StreamReader | None = None
    size: int | None = None
    delivered: int | None = None
    uncertain: bool = False

    def broken(self, e: BaseException) -> EtlFailed:
        """The error for a reply that broke while being read (424, AIStore's pod-gone status)."""
        return EtlFailed(f'ETL error: etl job "{self.etl}": pod failed mid-transform of {self.what}: '
                         f"{type(e).__name__}: {e}", status=424)

    async def chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The result's bytes, in chunks; the whole of ``data``, or ``stream`` as it arrives.

        Raises:
            EtlFailed: the body broke, or ended short of its ``Content-Length`` (424).
            ValueError: the reply is "delivered", it has no bytes.
        """
        if self.data is not None:
            yield self.data
            return
        if self.stream is None:
            raise ValueError(f"{self.what}: the pod delivered it by direct put; there are no bytes to read")
        n = 0
        try:
            async for chunk in self.stream.iter_chunked(chunk_size):
                n += len(chunk)
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self.broken(e) from e
        if self.size is not None and n != self.size:
            raise self.broken(ValueError(f"{n} bytes where Content-Length said {self.size}"))

    async def read(self) -> bytes:
        """The whole result (see :meth:`chunks` for the errors)."""
        if self.data is not None:
            return self.data
        return b"".join([c async for c in self.chunks()])


class Communicator(Protocol):
    """How a target sends objects to one ETL pod: ``hpush://``, ``hpull://`` or ``ws://``
    (AIStore ``ext/etl/communicator.go``). Built by :func:`make_communicator`.

    Attributes:
        etl: the ETL name (in error texts).
        lender: lends a confined pod the files it reads by FQN (None: unconfined).
    """

    etl: str
    lender: Lender | None

    def send(self, bck: str, obj: str, *, fqn: str | None, etl_args: str = "", pipeline: Sequence[str] = (),
             direct: bool = False, timeout_s: float | None = None) -> AbstractAsyncContextManager[Reply]:
        """Send one object; ``async with`` it to get the :class:`Reply` (released on exit).

        Args:
            fqn: the file the pod reads (lent when confined); None is not supported by
                every type (the target always has a local FQN for its own objects).
            pipeline: next hops (``Ais-Node-Url``); with ``direct`` the last one is
                the destination target, and "delivered" is the valid answer.
            timeout_s: per-object limit (default: the ETL's ``obj_timeout``).

        Raises:
            EtlFailed: an error reply, a reply of the wrong kind, the pod gone (424).
            BadRequest: the timeout (text has "timeout", as AIStore's).
        """
        ...

    def redirect_url(self, uname: str, fqn: str | None, etl_args: str) -> str | None:
        """Where an inline GET goes instead (hpull: the pod), or None (the target relays)."""
        ...

    async def close(self) -> None: ...


def make_communicator(comm_type: str, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession,
                      *, lender: Lender | None = None, n_conns: int = 2,
                      conns_per_process: int = 0) -> Communicator:
    """The communicator of ``comm_type`` (``"hpush://"``, ``"hpull://"`` or ``"ws://"``,
    AIStore's ``etl.Hpush``/``Hpull``/``WebSocket``) for the pod at ``pod_url``.

    ``n_conns``/``conns_per_process``: ws connections (see :class:`WsComm`).

    Raises:
        ValueError: an unknown comm type.
    """
    if comm_type == "ws://":
        return WsComm(etl, pod_url, obj_timeout_s, session, n_conns=n_conns, conns_per_process=conns_per_process,
                      lender=lender)
    if comm_type == "hpull://":
        return HpullComm(etl, pod_url, obj_timeout_s, session, lender)
    if comm_type == "hpush://":
        return HpushComm(etl, pod_url, obj_timeout_s, session, lender)
    raise ValueError(f"unknown communication type {comm_type!r}")


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


class Lender(Protocol):
    """Lends a confined pod one object file at a time (``aioetl.engine.target.storage.FqnLender``)."""

    def lend(self, fqn: str) -> str: ...

    def give_back(self, path: str) -> None: ...


class _Comm:
    """Base of the comm types. ``lender``: when set (the pod is confined), every FQN
    sent is a link lent for the request's duration (:class:`Lender`), not the object's
    own file."""

    def __init__(self, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession,
                 lender: Lender | None = None) -> None:
        self.etl = etl
        self.pod_url = pod_url
        self.obj_timeout_s = obj_timeout_s
        self.session = session
        self.lender = lender

    def _timeout(self, what: str, timeout_s: float | None = None) -> BadRequest:
        return BadRequest(f'etl job "{self.etl}": timeout: {what} took longer than obj_timeout '
                          f"({timeout_s or self.obj_timeout_s:g}s) (Client.Timeout exceeded)")

    def _unreachable(self, e: Exception) -> EtlFailed:
        return EtlFailed(f'ETL error: etl job "{self.etl}": pod at {self.pod_url} unreachable or died: {e}', status=424)

    async def close(self) -> None:
        return None


class HpushComm(_Comm):
    """``hpush://``: PUT to the pod.

    An HTTP/1.1 reply names no request: a pod that sends one reply too many leaves
    it on the keep-alive connection, where the next request would read it as its
    own. So every request carries ``Aioetl-Req-Id: <n>``; our pods echo it, and
    for them a pooled connection is used and a reply whose echo differs closes the
    connection and the request is sent again on a fresh one. A pod that does not
    echo (AIStore's) gets a new connection per request, on which the one reply
    provably answers the one request.
    """

    def __init__(self, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession,
                 lender: Lender | None = None) -> None:
        super().__init__(etl, pod_url, obj_timeout_s, session, lender)
        self._echoes: bool | None = None  # learnt from the pod's first reply
        self._ids = itertools.count(1)
        self._fresh: aiohttp.ClientSession | None = None  # one connection per request

    def _session_for_next(self) -> aiohttp.ClientSession:
        if self._echoes:
            return self.session
        if self._fresh is None:
            self._fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0),
                                                auto_decompress=False)
        return self._fresh

    async def close(self) -> None:
        if self._fresh is not None:
            await self._fresh.close()
            self._fresh = None

    @staticmethod
    def _params_headers(fqn: str | None, etl_args: str,
                        pipeline: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """The query (``etl_fqn``, ``etl_args``) and ``Ais-Node-Url`` of one request."""
        params: dict[str, str] = {}
        if fqn:
            params["etl_fqn"] = fqn_param(fqn)
        if etl_args:
            params["etl_args"] = etl_args
        headers = {"Ais-Node-Url": ",".join(pipeline)} if pipeline else {}
        return params, headers

    def request_args(self, bck: str, obj: str, fqn: str | None, etl_args: str,
                     pipeline: list[str]) -> tuple[str, dict[str, str], dict[str, str]]:
        url = f"{self.pod_url}/{quote(bck, safe='')}/{quote(obj, safe='/')}"
        return (url, *self._params_headers(fqn, etl_args, pipeline))

    async def open(self, bck: str, obj: str, *, fqn: str | None, body: Any = None, etl_args: str = "",
                   pipeline: list[str] | None = None, size: int | None = None,
                   timeout_s: float | None = None, direct: bool = False) -> aiohttp.ClientResponse:
        """Send one object; returns the pod's (successful) response, body unread.
        ``timeout_s`` overrides ``obj_timeout`` (a job's ``request_timeout``); ``direct``:
        the last hop of ``pipeline`` is a direct put to a target, so a 204 ("delivered")
        is a valid answer (without it, a 204 is an error).

        Raises:
            EtlFailed: pod error status, pod unreachable, or a 204 nobody asked for.
            BadRequest: timeout (text has "timeout").
        """
        lent = self.lender.lend(fqn) if fqn and self.lender is not None else None
        fqn = lent or fqn
        try:
            url, params, headers = self.request_args(bck, obj, fqn, etl_args, pipeline or [])
            if body is None:
                headers["Content-Length"] = "0"
                body = b""
            elif size is not None:
                headers["Content-Length"] = str(size)
            return await self._send("PUT", url, params, headers, body, f"{bck}/{obj}", timeout_s, direct)
        finally:
            if lent:  # the pod has read its input once its reply has begun
                self.lender.give_back(lent)  # type: ignore[union-attr]

    @contextlib.asynccontextmanager
    async def send(self, bck: str, obj: str, *, fqn: str | None, etl_args: str = "", pipeline: Sequence[str] = (),
                   direct: bool = False, timeout_s: float | None = None) -> AsyncIterator[Reply]:
        """:meth:`Communicator.send` over :meth:`open`: a 204 is "delivered", any other
        2xx a ``stream``; the response is released when the block ends."""
        resp = await self.open(bck, obj, fqn=fqn, etl_args=etl_args, pipeline=list(pipeline),
                               timeout_s=timeout_s, direct=direct)
        try:
            what = f"ais://{bck}/{obj}"
            if resp.status == 204:
                yield Reply(self.etl, what, delivered=-1)
            else:
                yield Reply(self.etl, what, stream=resp.content, size=resp.content_length)
        finally:
            resp.release()

    def redirect_url(self, uname: str, fqn: str | None, etl_args: str) -> str | None:
        """hpush relays through the target: never a redirect."""
        return None

    async def _send(self, method: str, url: str, params: dict[str, str], headers: dict[str, str],
                    body: Any, what: str, timeout_s: float | None = None,
                    direct: bool = False) -> aiohttp.ClientResponse:
        """One request to the pod under ``obj_timeout``; pod errors mapped (module docstring).

        A request that fails before any reply on a pooled connection (the pod closed it,
        or left bytes of an earlier over-long reply on it) is sent once more on a fresh
        one, when its body can be sent again. A 2xx reply other than 204 must prove its
        length (``Content-Length`` or chunked): a reply that ends where the connection
        closes cannot be told from a cut one. A 204 is accepted only when ``direct``.
        """
        replayable = not body or isinstance(body, (bytes, bytearray, memoryview))
        for attempt in range(2):
            rid = str(next(self._ids))
            headers[HEADER_REQ_ID] = rid
            try:
                resp = await self._session_for_next().request(
                    method, url, params=params, data=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout_s or self.obj_timeout_s))
            except TimeoutError:
                raise self._timeout(f'transform of "{what}"', timeout_s) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientResponseError) as e:
                if attempt == 0 and replayable:
                    continue
                raise self._unreachable(e) from e
            except aiohttp.ClientError as e:
                raise self._unreachable(e) from e
            echo = resp.headers.get(HEADER_REQ_ID)
            if echo == rid:
                self._echoes = True
                break
            if echo is None and not self._echoes:  # a pod that does not echo: fresh connections
                self._echoes = False
                break
            # a reply to another request (left on a pooled connection): never attributed here
            resp.close()
            log.warning("pod reply dropped: it answers another request", etl=self.etl, pod=self.pod_url,
                        sent=rid, echoed=echo)
            if attempt == 0 and replayable:
                continue
            raise EtlFailed(f'ETL error: etl job "{self.etl}": the pod at {self.pod_url} answered "{what}" with '
                            f"the reply to another request (id {echo!r}, sent {rid})", status=502)
        if not 200 <= resp.status < 300:
            raise await self._error_reply(resp)
        if resp.status == 204 and not direct:
            resp.release()
            raise EtlFailed(f'ETL error: etl job "{self.etl}": pod answered 204 (delivered by direct put) for '
                            f'"{what}", but no direct put was requested', status=502)
        if (resp.status != 204 and resp.content_length is None
                and "chunked" not in resp.headers.get("Transfer-Encoding", "").lower()):
            resp.close()
            raise EtlFailed(f'ETL error: etl job "{self.etl}": the pod\'s reply for "{what}" has neither '
                            "Content-Length nor chunked encoding, so a cut reply could not be told from a "
                            "complete one", status=502)
        return resp

    async def _error_reply(self, resp: aiohttp.ClientResponse) -> AioetlError:
        try:
            text = await resp.content.read(MAX_ERR_BODY)
        except (TimeoutError, aiohttp.ClientError):
            text = b""
        resp.release()
        if resp.status == 503 and resp.headers.get("Ais-Etl-Retry-Reason", "") == "direct-put-transient":
            return EtlRetry(f'ETL error: etl job "{self.etl}": direct put failed transiently: '
                            f"{text[:2000].decode(errors='replace')}")
        return pod_error(self.etl, resp.status, text)


class HpullComm(HpushComm):
    """``hpull://``: inline GETs are redirected to the pod; offline, the target GETs from it."""

    def redirect_url(self, uname: str, fqn: str | None, etl_args: str) -> str | None:
        """Where an inline GET is redirected. A lent FQN (confined pod) stays for
        ``obj_timeout``: the client's GET to the pod is not seen by the target."""
        q = []
        if fqn and self.lender is not None:
            fqn = self.lender.lend(fqn)
            asyncio.get_running_loop().call_later(self.obj_timeout_s, self.lender.give_back, fqn)
        if fqn:
            q.append("etl_fqn=" + quote(fqn_param(fqn), safe=""))
        if etl_args:
            q.append("etl_args=" + quote(etl_args, safe=""))
        return f"{self.pod_url}/{quote(uname, safe='@')}" + ("?" + "&".join(q) if q else "")

    async def open(self, bck: str, obj: str, *, fqn: str | None, body: Any = None, etl_args: str = "",
                   pipeline: list[str] | None = None, size: int | None = None,
                   timeout_s: float | None = None, direct: bool = False) -> aiohttp.ClientResponse:
        url = f"{self.pod_url}/{quote(f'ais/@#/{bck}/{obj}', safe='@')}"
        lent = self.lender.lend(fqn) if fqn and self.lender is not None else None
        fqn = lent or fqn
        try:
            params, headers = self._params_headers(fqn, etl_args, pipeline or [])
            return await self._send("GET", url, params, headers, None, f"{bck}/{obj}", timeout_s, direct)
        finally:
            if lent:
                self.lender.give_back(lent)  # type: ignore[union-attr]


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


class WsComm(_Comm):
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
        lent = self.lender.lend(fqn) if fqn and self.lender is not None else None
        fqn = lent or fqn
        try:
            return await self._transform(obj, fqn, body, etl_args, pipeline, direct)
        finally:
            if lent:
                self.lender.give_back(lent)  # type: ignore[union-attr]

    @contextlib.asynccontextmanager
    async def send(self, bck: str, obj: str, *, fqn: str | None, etl_args: str = "", pipeline: Sequence[str] = (),
                   direct: bool = False, timeout_s: float | None = None) -> AsyncIterator[Reply]:
        """:meth:`Communicator.send` over :meth:`transform`: the result is ``data``, or
        "delivered" (``uncertain`` when a pod that does not echo ids says 0 bytes).
        ``timeout_s`` is not used: a ws session's per-object limit is set when it is
        built (a job builds its own session with the job's limit)."""
        res = await self.transform(obj, fqn=fqn, etl_args=etl_args, pipeline=list(pipeline), direct=direct)
        what = f"ais://{bck}/{obj}"
        if res.data is not None:
            yield Reply(self.etl, what, data=res.data)
        else:
            yield Reply(self.etl, what, delivered=res.delivered, uncertain=res.delivered <= 0 and not self.ids)

    def redirect_url(self, uname: str, fqn: str | None, etl_args: str) -> str | None:
        """ws relays through the target: never a redirect."""
        return None

    async def _transform(self, obj: str, fqn: str | None, body: bytes | None, etl_args: str,
                         pipeline: list[str] | None, direct: bool) -> PodResult:
        ctrl: dict[str, Any] = {"path": obj}
        if fqn:
            ctrl["fqn"] = fqn_param(fqn)
        if etl_args:
            ctrl["etl_args"] = etl_args
        if pipeline:
            ctrl["pipeline"] = ",".join(pipeline)
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

    async def _round_trip(self, c: _WsConn, ctrl: dict[str, Any], obj: str, fqn: str | None, body: bytes | None,
                          direct: bool) -> PodResult:
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        if c.ids:
            ctrl["id"] = rid
        fut: asyncio.Future[PodResult | AioetlError] = loop.create_future()
        c.pending[rid] = _Req(fut, direct)
        try:
            async with c.send_lock:
                await c.ws.send_bytes(json.dumps(ctrl).encode())
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
