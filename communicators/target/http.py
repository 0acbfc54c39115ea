"""``hpush://`` and ``hpull://``: one HTTP request per object to the pod
(AIStore ``ext/etl/communicator.go``). Replies are attributed by an echoed
request id (our pods) or by a fresh connection per request (pods that do not
echo), and must prove their length."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from aioetl.communicators.target.base import (
    MAX_ERR_BODY,
    CommBase,
    EtlFailed,
    EtlRetry,
    Lender,
    Reply,
    fqn_param,
    obj_uname,
    obj_uri,
    pod_error,
)
from aioetl.communicators.wire.const import HEADER_ETL_RETRY_REASON, HEADER_REQ_ID, RETRY_REASON_DIRECT_PUT_TRANSIENT
from aioetl.errors import AioetlError

__all__ = ["HpullComm", "HpushComm"]

log = structlog.get_logger("aioetl.comm")


class HpushComm(CommBase):
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
        with self._lent(fqn) as fqn:
            url, params, headers = self.request_args(bck, obj, fqn, etl_args, pipeline or [])
            if body is None:
                headers["Content-Length"] = "0"
                body = b""
            elif size is not None:
                headers["Content-Length"] = str(size)
            return await self._send("PUT", url, params, headers, body, f"{bck}/{obj}", timeout_s, direct)

    @contextlib.asynccontextmanager
    async def send(self, bck: str, obj: str, *, fqn: str | None, etl_args: str = "", pipeline: Sequence[str] = (),
                   direct: bool = False, timeout_s: float | None = None) -> AsyncIterator[Reply]:
        """:meth:`Communicator.send` over :meth:`open`: a 204 is "delivered", any other
        2xx a ``stream``; the response is released when the block ends."""
        resp = await self.open(bck, obj, fqn=fqn, etl_args=etl_args, pipeline=list(pipeline),
                               timeout_s=timeout_s, direct=direct)
        try:
            what = obj_uri(bck, obj)
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
        if resp.status == 503 and resp.headers.get(HEADER_ETL_RETRY_REASON, "") == RETRY_REASON_DIRECT_PUT_TRANSIENT:
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
        url = f"{self.pod_url}/{quote(obj_uname(bck, obj), safe='@')}"
        with self._lent(fqn) as fqn:
            params, headers = self._params_headers(fqn, etl_args, pipeline or [])
            return await self._send("GET", url, params, headers, None, f"{bck}/{obj}", timeout_s, direct)
