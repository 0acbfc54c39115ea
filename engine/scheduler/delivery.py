"""Where a result goes, decided once: the delivery planner and its sinks.

Every path that writes a result (an offline job's transformed or copied object,
the ``object_to`` copy of one object) asks :func:`plan` and then uses the sink of
the route it got, so the owner/local decision and the write are not repeated:

- ``LOCAL``: this target is the HRW owner: a work file here, renamed into place;
- ``PEER``: another target owns it: this target PUTs the bytes to it
  (:meth:`aioetl.engine.target.peers.Peers.put_object`, counted ``out`` here and
  ``in`` there);
- ``DIRECT``: another target owns it and the pod delivers it there itself
  (AIStore's direct put, ``ext/etl/dp.go``): the last hop of the request's
  pipeline is :func:`direct_put_hop`; the destination keeps a receipt and this
  target settles it (:mod:`aioetl.engine.scheduler.receipts`). A pod may still
  answer such a request with the bytes (AIStore's pods do when they do not put
  themselves): then the target sends them to the owner as for PEER.

:func:`plan` is a pure function of the cluster map (HRW placement, as AIStore's
``cluster/lom.go`` HrwTarget).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aioetl.communicators.target.comm import Reply
from aioetl.engine.core.names import is_remote, make_uname
from aioetl.engine.core.smap import Snode
from aioetl.engine.target.peers import Peers
from aioetl.engine.target.remote import RemoteObjects
from aioetl.engine.target.services import ClusterView
from aioetl.engine.target.storage import LomMD, Store, write_in_thread

__all__ = ["Delivery", "Route", "Sinks", "direct_put_hop", "plan"]


class Route(enum.Enum):
    LOCAL = "local"
    PEER = "peer"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A planned destination: ``route`` and, for PEER and DIRECT, the ``owner`` target."""

    route: Route
    owner: Snode | None = None

    @property
    def local(self) -> bool:
        return self.route is Route.LOCAL


def plan(cluster: ClusterView, bck: str, obj: str, *, direct_put: bool = False) -> Delivery:
    """The route of a result named ``bck/obj``.

    Args:
        direct_put: the pod can deliver to the owner itself (the ETL's
            ``direct_put``, or a ws job); only used when the owner is a peer.
    """
    owner = cluster.owner(bck, obj)
    if owner is None:
        return Delivery(Route.LOCAL)
    return Delivery(Route.DIRECT if direct_put else Route.PEER, owner)


def direct_put_hop(owner: Snode, bck: str, obj: str, xid: str) -> str:
    """The pipeline's last hop for a direct put of job ``xid``'s ``bck/obj`` to ``owner``
    (the pod PUTs to ``<owner>/<uname>?owt=3&uuid=<xid>``; ``Ais-Node-Url`` as AIStore sends)."""
    return f"{owner.url}/{quote(make_uname(bck, obj), safe='@')}?owt=3&uuid={xid}"


class Sinks:
    """The writes behind LOCAL and PEER.

    Args:
        store: this target's object store.
        peers: the intra-cluster client.
        remote: remote buckets' write-through (an output to an ``aws://`` bucket is
            uploaded first, then cached, :mod:`aioetl.engine.target.remote`).
    """

    def __init__(self, store: Store, peers: Peers, remote: RemoteObjects | None = None) -> None:
        self.store = store
        self.peers = peers
        self.remote = remote

    async def put_local(self, bck: str, obj: str, data: bytes) -> LomMD:
        """Write ``data`` as ``bck/obj`` here (inline on tmpfs, fsync in a thread on a disk)."""
        if self.remote is not None and is_remote(bck):
            return await self.remote.put_bytes(bck, obj, data)
        if self.store.mountpath_of(bck, obj).volatile:
            return self.store.put_bytes(bck, obj, data)
        return await write_in_thread(self.store.put_bytes, bck, obj, data)

    async def put_bytes(self, d: Delivery, bck: str, obj: str, data: bytes, *, xid: str = "") -> int:
        """Deliver whole ``data`` here (LOCAL) or to the owner (PEER, or DIRECT when the pod
        answered with the bytes instead of putting them). Returns bytes written or sent.

        Raises:
            InsufficientStorage, AioetlError, aiohttp.ClientError: the write failed here or at the peer.
        """
        if d.owner is None:
            await self.put_local(bck, obj, data)
            return len(data)
        return await self.peers.put_object(d.owner.url, bck, obj, data, xid=xid, size=len(data))

    async def _write_local(self, bck: str, obj: str, chunks: AsyncIterator[bytes]) -> int:
        """Write ``chunks`` as ``bck/obj`` here, all or nothing (work file, then rename)."""
        wf = self.store.open_work(bck, obj)
        try:
            async for chunk in chunks:
                wf.write(chunk)
            custom = await self.remote.write_through(wf) if self.remote is not None and is_remote(bck) else None
            md = wf.finalize(custom) if wf.mpath.volatile else \
                await write_in_thread(wf.finalize, custom)
        except BaseException:
            wf.abort()
            raise
        return md.size

    async def put_stream(self, d: Delivery, bck: str, obj: str, body: Any, *, size: int | None,
                         xid: str = "") -> int:
        """Deliver an open binary file (a large object being copied) here or to the owner,
        without reading it whole. Returns bytes written or sent."""
        if d.owner is not None:
            return await self.peers.put_object(d.owner.url, bck, obj, body, xid=xid, size=size)

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := body.read(1 << 20):
                yield chunk

        return await self._write_local(bck, obj, chunks())

    async def put_reply(self, d: Delivery, bck: str, obj: str, reply: Reply, *, xid: str = "") -> int:
        """Deliver a pod's reply here or to the owner (as :meth:`put_bytes`), streaming it
        (never whole in memory unless it already is). Returns bytes written or sent.

        Raises:
            EtlFailed: the pod's reply broke or came short (424; nothing was stored here,
                and the peer's work file is dropped with the cut PUT).
            InsufficientStorage, AioetlError, aiohttp.ClientError: the write failed here or at the peer.
        """
        if reply.data is not None:
            return await self.put_bytes(d, bck, obj, reply.data, xid=xid)
        if d.owner is None:
            return await self._write_local(bck, obj, reply.chunks())
        owner = d.owner
        sent = [0]

        async def body() -> AsyncIterator[bytes]:
            async for chunk in reply.chunks():
                sent[0] += len(chunk)
                yield chunk

        await self.peers.put_object(owner.url, bck, obj, body(), xid=xid, size=reply.size)  # a broken reply: EtlFailed
        return sent[0]
