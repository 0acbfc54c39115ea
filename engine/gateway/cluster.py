"""What the gateway's services share: the cluster map and the client that talks to targets.

- :class:`ClusterMap`: the smap (targets and their URLs, the proxy), the lock
  under which the smap and the BMD change together, and the map version at
  which each target last joined. State only, no I/O (besides reading
  ``<data>/cluster.json`` for the set of targets a restarted cluster expects).
- :class:`PeerClient`: calls to targets over the one HTTP session that carries
  the cluster credential: broadcast to every target (or some), metasync, a
  target's readiness after it joined.

Both are built once at the gateway's entry point and passed to each service
(:class:`~aioetl.engine.gateway.etl.GatewayEtl`,
:class:`~aioetl.engine.gateway.jobs.GatewayJobs`, the bucket routes); no service
reaches another through the gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import msgspec
import structlog

from aioetl.engine.core.smap import Smap, Snode
from aioetl.errors import AioetlError, NodeUnavailable

__all__ = ["READY_TIMEOUT_S", "ClusterMap", "PeerClient", "Reply", "err_text"]

log = structlog.get_logger("aioetl.gateway.cluster")

READY_TIMEOUT_S = 30.0  # how long a joined target may take to apply its join reply
_READY_POLL_S = (0.02, 0.5)  # first and longest pause between readiness polls

Reply = tuple[Snode, int, bytes]
"""One target's answer to a broadcast: ``(target, HTTP status, body)``; status 0 = no answer."""

_page_dec = msgspec.msgpack.Decoder()


def err_text(body: bytes) -> str:
    """The message of a node's error reply (``{"message": ...}``), else the body as text (2000 chars at most)."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and "message" in doc:
            return str(doc["message"])
    except ValueError:
        pass
    return body.decode(errors="replace")[:2000]


class ClusterMap:
    """The gateway's cluster map.

    Args:
        proxy_id: the gateway's node id.
        uuid: the cluster's uuid (kept in the BMD).
        cluster_json: ``<data>/cluster.json`` of a local cluster (the targets it
            expects back after a restart), or ``""``.
    """

    def __init__(self, *, proxy_id: str, uuid: str, cluster_json: str = "") -> None:
        self.smap = Smap(proxy=Snode(proxy_id, "proxy", ""), uuid=uuid)
        self.lock = asyncio.Lock()
        """Held while the smap or the BMD changes, so one metasync carries both consistently."""
        self._cluster_json = cluster_json
        self._joined_at: dict[str, int] = {}

    @property
    def proxy(self) -> Snode:
        return self.smap.proxy

    @property
    def version(self) -> int:
        return self.smap.version

    def set_proxy_url(self, url: str) -> None:
        self.smap.proxy = Snode(self.smap.proxy.daemon_id, "proxy", url)

    def targets(self) -> list[Snode]:
        """Every target in the map, in join order."""
        return list(self.smap.targets.values())

    def target(self, tid: str) -> Snode | None:
        return self.smap.targets.get(tid)

    def has_target(self, tid: str) -> bool:
        return tid in self.smap.targets

    def add_target(self, node: Snode) -> int:
        """Add (or re-add, with its new URL) a target; the caller holds :attr:`lock`.

        Returns:
            the new map version, at which ``node`` counts as joined (:meth:`joined_version`).
        """
        self.smap.targets[node.daemon_id] = node
        self.smap.version += 1
        self._joined_at[node.daemon_id] = self.smap.version
        return self.smap.version

    def joined_version(self, tid: str) -> int:
        """The map version of ``tid``'s last join (0 if unknown)."""
        return self._joined_at.get(tid, 0)

    def expected_joined(self) -> bool:
        """Whether every target ``cluster.json`` lists is in the map (True without the file)."""
        if not self._cluster_json:
            return True
        try:
            with open(self._cluster_json) as f:
                want = {t["id"] for t in json.load(f)["targets"]}
        except (OSError, ValueError, KeyError, TypeError):
            return True
        return want <= set(self.smap.targets)


class PeerClient:
    """Calls from the gateway to targets.

    Args:
        cluster: whose targets "every target" means.
        session: the intra-cluster session (it sends the cluster credential); may be
            attached later with :meth:`attach` (a gateway built outside a loop).
    """

    def __init__(self, cluster: ClusterMap, session: aiohttp.ClientSession | None = None) -> None:
        self.cluster = cluster
        self._session = session

    def attach(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @property
    def session(self) -> aiohttp.ClientSession:
        """The intra-cluster session.

        Raises:
            NodeUnavailable: none attached yet (the gateway is not serving).
        """
        if self._session is None:
            raise NodeUnavailable("gateway not started: no session to reach targets")
        return self._session

    async def each_target(self, method: str, path: str, *, body: Any = None, timeout_s: float = 30.0,
                          targets: list[Snode] | None = None) -> list[Reply]:
        """``method path`` (JSON ``body``) on every target (or ``targets``) at once.

        Never raises for a target that fails: its reply has status 0 and says why.
        """
        session = self.session
        ts = targets if targets is not None else self.cluster.targets()

        async def one(t: Snode) -> Reply:
            try:
                async with session.request(method, t.url + path, json=body,
                                           timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                    return t, r.status, await r.read()
            except (TimeoutError, aiohttp.ClientError) as e:
                return t, 0, f"target {t.daemon_id} unreachable or timed out: {e!r}".encode()

        return list(await asyncio.gather(*(one(t) for t in ts)))

    async def gather_pages(self, method: str, path: str, body: Any) -> list[Any]:
        """``method path`` on every target; each 200 reply decoded from msgpack.

        Raises:
            NodeUnavailable: no targets, or one did not answer 200.
        """
        session = self.session
        targets = self.cluster.targets()
        if not targets:
            raise NodeUnavailable("no targets in the cluster map")

        async def one(t: Snode) -> Any:
            try:
                async with session.request(method, t.url + path, json=body) as r:
                    data = await r.read()
                    if r.status != 200:
                        raise NodeUnavailable(f"target {t.daemon_id} failed: {r.status} {data[:300]!r}")
                    return _page_dec.decode(data)
            except aiohttp.ClientError as e:
                raise NodeUnavailable(f"target {t.daemon_id} unreachable: {e}") from e

        return list(await asyncio.gather(*(one(t) for t in targets)))

    async def call(self, node: Snode, method: str, path: str, body: Any, *, timeout_s: float = 60.0) -> Any:
        """``method path`` with a JSON ``body`` on one target; its msgpack reply decoded.

        Raises:
            AioetlError: the target's own error, with its status and message (a remote
                backend's 403/404 reaches the client as such, not as a 5xx).
            NodeUnavailable: the target did not answer.
        """
        try:
            async with self.session.request(method, node.url + path, json=body,
                                            timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                data = await r.read()
                if r.status != 200:
                    raise AioetlError(err_text(data), status=r.status)
                return _page_dec.decode(data)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise NodeUnavailable(f"target {node.daemon_id} unreachable: {e!r}") from e

    async def get(self, node: Snode, path: str, *, timeout_s: float = 15.0) -> tuple[int, bytes, str]:
        """``GET path`` on ``node``: ``(status, body, content type)``.

        Raises:
            NodeUnavailable: no answer within ``timeout_s``.
        """
        try:
            async with self.session.get(node.url + path, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                return r.status, await r.read(), r.content_type
        except (TimeoutError, aiohttp.ClientError) as e:
            raise NodeUnavailable(f"target {node.daemon_id} unreachable: {e!r}") from e

    async def metasync(self, meta: dict[str, Any], skip: str = "") -> None:
        """Push ``{"smap", "bmd"}`` to every target but ``skip``; one that does not take it is logged."""
        session = self.session
        targets = [t for t in self.cluster.targets() if t.daemon_id != skip]

        async def one(t: Snode) -> None:
            try:
                async with session.put(f"{t.url}/v1/metasync", json=meta) as r:
                    if r.status != 200:
                        log.warning("metasync refused", target=t.daemon_id, status=r.status)
            except aiohttp.ClientError as e:
                log.warning("metasync failed", target=t.daemon_id, err=str(e))

        await asyncio.gather(*(one(t) for t in targets))

    async def wait_ready(self, tid: str, *, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Wait until target ``tid`` has applied the cluster map of its last join.

        A target joins while already serving, and applies the map (and BMD) from the
        join's reply after the gateway sent it; until then it cannot take an ETL init
        or a job. Ready = ``GET /v1/daemon?what=smap`` answers a map of at least the
        version at which the target joined (:meth:`ClusterMap.joined_version`) that
        has the target at its current URL. Polled with a growing pause.

        Returns:
            True once ready; False after ``timeout_s`` (logged), or if ``tid`` left the map.
        """
        deadline = time.monotonic() + timeout_s
        pause, longest = _READY_POLL_S
        while True:
            node = self.cluster.target(tid)
            if node is None:
                return False
            want = self.cluster.joined_version(tid)
            try:
                status, body, _ = await self.get(node, "/v1/daemon?what=smap", timeout_s=max(pause * 4, 1.0))
                if status == 200:
                    doc = json.loads(body)
                    if int(doc.get("version", 0)) >= want and _url_in(doc, tid) == node.url:
                        return True
            except (NodeUnavailable, ValueError, TypeError, KeyError, AttributeError):
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("joined target not ready in time", target=tid, timeout_s=timeout_s, version=want)
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, longest)


def _url_in(smap_doc: dict[str, Any], tid: str) -> str:
    """The URL ``smap_doc`` (a target's answer to ``what=smap``) has for target ``tid`` ("" if none)."""
    node = Smap.from_json(smap_doc).targets.get(tid)
    return node.url if node is not None else ""
