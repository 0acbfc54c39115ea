"""The metadata the gateway owns and persists: the BMD (with the smap it travels with) and etlMD.

- :class:`ClusterMeta`: buckets (``<data>/gateway/bmd.json``), target joins, and the
  metasync that pushes ``{"smap", "bmd"}`` to targets after each change.
- :class:`EtlMd`: every ETL's :class:`EtlEntry` (``<data>/gateway/etlmd.json``):
  init message, stage, secret, xid, error, pods. The ETL service changes it; the job
  service and the object redirects only ask whether an ETL runs.

Both are typed in memory (:class:`Bmd`, :class:`EtlEntry`, msgspec Structs) and
keep their JSON as it was when they were dicts: same keys, same order, an absent
optional key stays absent (``msgspec.UNSET``). The BMD that travels to targets
(metasync body, join reply) is :meth:`Bmd.to_json`, the same document the file holds.

Both files are written with :func:`write_private_json` (temp file, mode 0600 as
etlMD holds per-ETL secrets, fsync, rename).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from aioetl.engine.core.etl import STAGE_RUNNING, EtlStage, etl_not_found
from aioetl.engine.core.names import split_bck_key
from aioetl.engine.core.smap import Snode
from aioetl.engine.gateway.cluster import ClusterMap, PeerClient
from aioetl.errors import bck_not_found

__all__ = ["Bmd", "ClusterMeta", "EtlEntry", "EtlMd", "load_bmd", "write_private_json"]

log = structlog.get_logger("aioetl.gateway.metadata")


def write_private_json(path: str, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path``: temp file (mode 0600), fsync, rename.

    Raises:
        OSError: the directory cannot be created or the disk is full.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Bmd(msgspec.Struct):
    """The bucket metadata: ``{"version", "buckets", "cluster_uuid"}`` on disk and on the wire.

    Attributes:
        version: bumped on every change of ``buckets``.
        buckets: bucket key (``b``, or ``aws:b`` for a remote bucket,
            :mod:`aioetl.engine.core.names`) -> props, AIStore's props passed through as
            they are (``provider``, ``created`` in ns, ``bid``, ``extra``...).
        cluster_uuid: set when the BMD is first made; absent (``UNSET``) in a BMD
            that never had one, and then left out of its JSON.
    """

    version: int = 0
    buckets: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    cluster_uuid: str | msgspec.UnsetType = msgspec.UNSET

    def to_json(self) -> dict[str, Any]:
        """A fresh JSON document of this BMD, as ``bmd.json`` holds it and targets take it."""
        doc: dict[str, Any] = msgspec.to_builtins(self)
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Bmd:
        """The BMD in ``doc`` (as :meth:`to_json` makes it).

        Raises:
            msgspec.ValidationError: ``doc`` is not a BMD.
        """
        return msgspec.convert(doc, cls)

    @property
    def uuid(self) -> str:
        """``cluster_uuid``, or ``""`` when the BMD has none."""
        return self.cluster_uuid if isinstance(self.cluster_uuid, str) else ""


class EtlEntry(msgspec.Struct):
    """One ETL in etlMD: ``{"msg", "stage", "secret", "xid", "error"[, "pods"]}`` on disk.

    Attributes:
        msg: the init message (``PUT /v1/etl`` body) verbatim, as ``view()`` returns it.
        stage: changed only through :func:`~aioetl.engine.core.etl.next_stage`.
        secret: the per-ETL secret the targets check on object requests.
        xid: the ETL's xaction id (``etl-<hex>``), new on every init.
        error: why it is Aborted; ``""`` otherwise.
        pods: target id -> that target's reply to its pod's init; absent (``UNSET``)
            until the ETL first ran, and then left out of its JSON.
    """

    msg: dict[str, Any]
    stage: EtlStage
    secret: str = ""
    xid: str = ""
    error: str = ""
    pods: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


def load_bmd(path: str) -> Bmd:
    """The persisted BMD, or a new empty one with a new ``cluster_uuid``.

    Raises:
        msgspec.ValidationError: the file holds no BMD.
    """
    try:
        with open(path) as f:
            return Bmd.from_json(json.load(f))
    except FileNotFoundError:
        return Bmd(cluster_uuid=secrets.token_hex(5))


class ClusterMeta:
    """The BMD, and changes of it or of the smap, pushed to targets.

    Args:
        bmd: as :func:`load_bmd` returns it.
        path: where the BMD persists.
        cluster: the smap (its lock serializes every change here).
        peers: for the metasync.
    """

    def __init__(self, *, bmd: Bmd, path: str, cluster: ClusterMap, peers: PeerClient) -> None:
        self.bmd = bmd
        self.path = path
        self.cluster = cluster
        self.peers = peers

    @property
    def version(self) -> int:
        return self.bmd.version

    def meta(self) -> dict[str, Any]:
        """``{"smap", "bmd"}`` as targets take it (join reply, metasync)."""
        return {"smap": self.cluster.smap.to_json(), "bmd": self.bmd.to_json()}

    # -- buckets -------------------------------------------------------------------
    def bucket_names(self) -> list[str]:
        return sorted(self.bmd.buckets)

    def has_bucket(self, bck: str) -> bool:
        return bck in self.bmd.buckets

    def require_bucket(self, bck: str) -> dict[str, Any]:
        """The props of ``bck``.

        Raises:
            NotFound: no such bucket.
        """
        props: dict[str, Any] | None = self.bmd.buckets.get(bck)
        if props is None:
            raise bck_not_found(bck)
        return props

    async def create_bucket(self, bck: str, like: str = "") -> None:
        """Add ``bck`` (props copied from ``like`` if given and of the same provider),
        persist, push to targets."""
        provider = split_bck_key(bck)[0]
        props: dict[str, Any] = {"provider": provider, "created": time.time_ns(), "bid": secrets.randbits(48)}
        if like and like in self.bmd.buckets and split_bck_key(like)[0] == provider:
            props = {**self.bmd.buckets[like], "created": props["created"], "bid": props["bid"]}

        def add(b: dict[str, dict[str, Any]]) -> None:
            b.setdefault(bck, props)

        await self.update_buckets(add)
        log.info("bucket created", bck=bck, like=like)

    async def destroy_bucket(self, bck: str) -> None:
        """Drop ``bck`` from the BMD, persist, push to targets (which then delete its objects)."""

        def drop(b: dict[str, dict[str, Any]]) -> None:
            b.pop(bck, None)

        await self.update_buckets(drop)
        log.info("bucket destroyed", bck=bck)

    async def evict_bucket(self, bck: str, *, keep_md: bool) -> None:
        """Drop every cached copy of remote bucket ``bck`` (AIStore ``evict-remote-bck``):
        without ``keep_md`` the bucket leaves the BMD (it is added again on next use);
        with it, it stays with a new ``bid``, which makes every target drop its copies."""

        def evict(b: dict[str, dict[str, Any]]) -> None:
            if keep_md and bck in b:
                b[bck] = {**b[bck], "bid": secrets.randbits(48)}
            else:
                b.pop(bck, None)

        await self.update_buckets(evict)
        log.info("remote bucket evicted", bck=bck, keep_md=keep_md)

    async def set_bucket_props(self, bck: str, props: dict[str, Any]) -> None:
        """Replace the props of ``bck`` (same ``bid``: nothing is dropped), persist, push."""

        def put(b: dict[str, dict[str, Any]]) -> None:
            if bck in b:
                b[bck] = {**props, "bid": b[bck]["bid"]}

        await self.update_buckets(put)

    async def update_buckets(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        """Apply ``change`` to the buckets, bump the BMD version, persist, push to every target."""
        async with self.cluster.lock:
            change(self.bmd.buckets)
            self.bmd.version += 1
            await asyncio.get_running_loop().run_in_executor(None, write_private_json, self.path, self.bmd.to_json())
            meta = self.meta()
        await self.peers.metasync(meta)

    # -- targets -------------------------------------------------------------------
    async def join(self, node: Snode) -> dict[str, Any]:
        """Add (or re-add) target ``node`` and push the new map to the others.

        Returns:
            ``{"smap", "bmd"}`` for the joiner (it takes them from the join's reply).
        """
        async with self.cluster.lock:
            version = self.cluster.add_target(node)
            log.info("target joined", target=node.daemon_id, url=node.url, version=version)
            meta = self.meta()
        await self.peers.metasync(meta, skip=node.daemon_id)
        return meta


class EtlMd:
    """etlMD: ``{name: EtlEntry}``, persisted as ``{name: {"msg", "stage", ...}}``.

    Args:
        path: where it persists (``<data>/gateway/etlmd.json``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.md: dict[str, EtlEntry] = self._load()

    def _load(self) -> dict[str, EtlEntry]:
        """The persisted entries, or none.

        Raises:
            msgspec.ValidationError: the file holds no etlMD.
        """
        try:
            with open(self.path) as f:
                return msgspec.convert(json.load(f), dict[str, EtlEntry])
        except FileNotFoundError:
            return {}

    def to_json(self) -> dict[str, Any]:
        """Every entry as a JSON document, as ``etlmd.json`` holds it."""
        doc: dict[str, Any] = msgspec.to_builtins(self.md)
        return doc

    def save(self) -> None:
        """Persist every entry (synchronously: etlMD is small and changes rarely)."""
        write_private_json(self.path, self.to_json())

    def get(self, name: str) -> EtlEntry | None:
        return self.md.get(name)

    def require(self, name: str) -> EtlEntry:
        """The entry of ``name``.

        Raises:
            NotFound: no such ETL.
        """
        e = self.md.get(name)
        if e is None:
            raise etl_not_found(name)
        return e

    def require_running(self, name: str) -> EtlEntry:
        """The entry of ``name`` if it is Running.

        Raises:
            NotFound: no such ETL, or it is not Running (as AIStore answers).
        """
        e = self.require(name)
        if e.stage != STAGE_RUNNING:
            raise etl_not_found(name)
        return e
