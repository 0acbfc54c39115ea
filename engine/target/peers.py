"""Intra-cluster HTTP of a target: calls to the gateway and to peer targets.

Every call carries the cluster credential (:func:`aioetl.engine.node.auth.auth_headers`);
pods never get this session (they have their own, without it). One place for the
PUT of an object to the target that owns it, used by every path that sends a
result to a peer (offline jobs, copies, the ``object_to`` copy of one object), so
a peer's refusal reads the same everywhere: a 507 is
:class:`aioetl.errors.InsufficientStorage` naming the peer, anything else an
:class:`aioetl.errors.AioetlError` with the peer's status.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from aioetl.engine.core.names import bck_uri, split_bck_key
from aioetl.engine.node.auth import auth_headers
from aioetl.engine.target.services import ClusterView
from aioetl.errors import AioetlError, InsufficientStorage, NodeUnavailable

__all__ = ["Peers"]

PEER_TIMEOUT = aiohttp.ClientTimeout(total=30)


class _Counted:
    """An async iterator over a response body that counts the bytes it yields."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.n = 0

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.content.read(1 << 20)
        if not chunk:
            raise StopAsyncIteration
        self.n += len(chunk)
        return chunk


class Peers:
    """The target's intra-cluster client.

    Args:
        cluster: names peers in error messages (``ClusterView.node_at``).
        gateway_url: the gateway.
        secret: the cluster secret.
    """

    def __init__(self, cluster: ClusterView, gateway_url: str, secret: str) -> None:
        self.cluster = cluster
        self.gateway_url = gateway_url
        self._secret = secret
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session (inside the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=PEER_TIMEOUT, headers=auth_headers(self._secret))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session.

        Raises:
            RuntimeError: before :meth:`start` or after :meth:`close`.
        """
        if self._session is None:
            raise RuntimeError("intra-cluster session is not open (target not started, or shutting down)")
        return self._session

    async def delete_object(self, url: str, bck: str, obj: str) -> None:
        """``DELETE`` ``bck/obj`` on the target at ``url`` (absent is fine).

        Raises:
            AioetlError: the target refused, with its status. NodeUnavailable: it did not answer.
        """
        provider, name = split_bck_key(bck)
        params = {"provider": provider} if provider != "ais" else {}
        try:
            async with self.session.delete(f"{url}/v1/objects/{quote(name, safe='')}/{quote(obj, safe='/')}",
                                           params=params, timeout=aiohttp.ClientTimeout(total=60)) as r:
                if r.status >= 400 and r.status != 404:
                    text = (await r.read())[:500].decode(errors="replace")
                    raise AioetlError(f"DELETE of {bck_uri(bck, obj)} at {url} failed: {r.status} {text}",
                                      status=r.status)
        except aiohttp.ClientConnectionError as e:
            raise NodeUnavailable(f"DELETE of {bck_uri(bck, obj)} at target {self.cluster.node_at(url)}: "
                                  f"{type(e).__name__}: {e}") from e

    async def put_object(self, url: str, bck: str, obj: str, body: Any, *, xid: str = "",
                         size: int | None = None) -> int:
        """PUT one object to the target at ``url`` (its HRW owner).

        Args:
            body: bytes, a file object, or an aiohttp ``StreamReader`` (streamed and counted).
            xid: the job it belongs to (``?uuid=``: counted ``in`` there, refused
                there once the job is aborted).
            size: ``Content-Length`` when known.

        Returns:
            bytes sent.

        Raises:
            InsufficientStorage: the peer is out of space (507), naming the peer.
            NodeUnavailable: the peer could not be reached or dropped the connection (503).
            AioetlError: any other refusal, with the peer's status; or the error an async
                iterator ``body`` raised (e.g. a pod's reply that broke), as it was raised.
        """
        headers = {"Content-Length": str(size)} if size is not None else {}
        params = {"uuid": xid, "owt": "3"} if xid else {}
        provider, name = split_bck_key(bck)
        if provider != "ais":
            params["provider"] = provider
        counted = _Counted(body) if isinstance(body, aiohttp.StreamReader) else None
        try:
            async with self.session.put(f"{url}/v1/objects/{quote(name, safe='')}/{quote(obj, safe='/')}",
                                        params=params, data=counted or body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=300)) as r:
                if r.status >= 400:
                    text = (await r.read())[:500].decode(errors="replace")
                    if r.status == 507:
                        raise InsufficientStorage(f"target {self.cluster.node_at(url)} out of space: {text}")
                    raise AioetlError(f"PUT of {bck_uri(bck, obj)} to {url} failed: {r.status} {text}",
                                      status=r.status)
        except aiohttp.ClientConnectionError as e:
            if isinstance(e.__cause__, AioetlError):  # the body's side broke (aiohttp wraps it), not the peer
                raise e.__cause__ from None
            raise NodeUnavailable(f"PUT of {bck_uri(bck, obj)} to target {self.cluster.node_at(url)}: "
                                  f"{type(e).__name__}: {e}") from e
        if counted is not None:
            return counted.n
        if size is not None:
            return size
        return len(body) if isinstance(body, (bytes, bytearray, memoryview)) else 0

    async def post_gateway(self, path: str, doc: dict[str, Any]) -> None:
        """POST ``doc`` to the gateway's ``path`` and read the answer.

        Raises:
            aiohttp.ClientError, TimeoutError: the gateway is unreachable (the callers, an
                abort request and a pod-exit notice, treat it as best effort).
            RuntimeError: the session is closed (the target is shutting down).
        """
        async with self.session.post(f"{self.gateway_url}{path}", json=doc) as r:
            await r.read()

    async def settle(self, url: str, xid: str, keys: list[str],
                     revoke: bool) -> tuple[dict[str, int], list[str], dict[str, str]]:
        """Ask the target at ``url`` which of job ``xid``'s direct puts arrived
        (``POST /v1/xactions/_settle``, :mod:`aioetl.engine.scheduler.receipts`).

        Returns:
            ``(received {key: size}, missing [key], reasons {key: why})``.

        Raises:
            ValueError: a non-200 answer; aiohttp.ClientError, TimeoutError: unreachable.
        """
        async with self.session.post(f"{url}/v1/xactions/_settle", json={"id": xid, "keys": keys, "revoke": revoke},
                                     timeout=aiohttp.ClientTimeout(total=60)) as r:
            if r.status != 200:
                raise ValueError(f"settle: HTTP {r.status}: {(await r.read())[:300]!r}")
            doc = await r.json()
        return ({str(k): int(v) for k, v in doc["received"].items()}, [str(k) for k in doc["missing"]],
                {str(k): str(v) for k, v in (doc.get("reasons") or {}).items()})
