"""The metadata the gateway owns and persists: the BMD (with the smap it travels with) and etlMD.

- :class:`ClusterMeta`: buckets (``<data>/gateway/bmd.json``), target joins, and the
  metasync that pushes ``{"smap", "bmd"}`` to targets after each change.
- :class:`EtlMd`: every ETL's entry (``<data>/gateway/etlmd.json``): init message,
  stage, error, secret, xid, pods. The ETL service changes it; the job service and
  the object redirects only ask whether an ETL runs.

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

import structlog

from aioetl.engine.core.etl import STAGE_RUNNING, etl_not_found
from aioetl.engine.core.smap import Snode
from aioetl.engine.gateway.cluster import ClusterMap, PeerClient
from aioetl.errors import bck_not_found

__all__ = ["ClusterMeta", "EtlMd", "load_bmd", "write_private_json"]

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


def load_bmd(path: str) -> dict[str, Any]:
    """The persisted BMD ``{"version", "buckets", "cluster_uuid"}``, or a new empty one."""
    try:
        with open(path) as f:
            bmd: dict[str, Any] = json.load(f)
            return bmd
    except FileNotFoundError:
        return {"version": 0, "buckets": {}, "cluster_uuid": secrets.token_hex(5)}


class ClusterMeta:
    """The BMD, and changes of it or of the smap, pushed to targets.

    Args:
        bmd: as :func:`load_bmd` returns it.
        path: where the BMD persists.
        cluster: the smap (its lock serializes every change here).
        peers: for the metasync.
    """

    def __init__(self, *, bmd: dict[str, Any], path: str, cluster: ClusterMap, peers: PeerClient) -> None:
        self.bmd = bmd
        self.path = path
        self.cluster = cluster
        self.peers = peers

    @property
    def version(self) -> int:
        return int(self.bmd.get("version", 0))

    def meta(self) -> dict[str, Any]:
        """``{"smap", "bmd"}`` as targets take it (join reply, metasync)."""
        return {"smap": self.cluster.smap.to_json(), "bmd": self.bmd}

    # -- buckets -------------------------------------------------------------------
    def bucket_names(self) -> list[str]:
        return sorted(self.bmd["buckets"])

    def has_bucket(self, bck: str) -> bool:
        return bck in self.bmd["buckets"]

    def require_bucket(self, bck: str) -> dict[str, Any]:
        """The props of ``bck``.

        Raises:
            NotFound: no such bucket.
        """
        props: dict[str, Any] | None = self.bmd["buckets"].get(bck)
        if props is None:
            raise bck_not_found(bck)
        return props

    async def create_bucket(self, bck: str, like: str = "") -> None:
        """Add ``bck`` (props copied from ``like`` if given), persist, push to targets."""
        props = {"provider": "ais", "created": time.time_ns(), "bid": secrets.randbits(48)}
        if like and like in self.bmd["buckets"]:
            props = {**self.bmd["buckets"][like], "created": props["created"], "bid": props["bid"]}

        def add(b: dict[str, Any]) -> None:
            b.setdefault(bck, props)

        await self.update_buckets(add)
        log.info("bucket created", bck=bck, like=like)

    async def destroy_bucket(self, bck: str) -> None:
        """Drop ``bck`` from the BMD, persist, push to targets (which then delete its objects)."""

        def drop(b: dict[str, Any]) -> None:
            b.pop(bck, None)

        await self.update_buckets(drop)
        log.info("bucket destroyed", bck=bck)

    async def update_buckets(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to the buckets, bump the BMD version, persist, push to every target."""
        async with self.cluster.lock:
            change(self.bmd["buckets"])
            self.bmd["version"] += 1
            await asyncio.get_running_loop().run_in_executor(None, write_private_json, self.path, self.bmd)
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
    """etlMD: ``{name: {"msg", "stage", "error", "secret", "xid", "pods"}}``, persisted.

    Args:
        path: where it persists (``<data>/gateway/etlmd.json``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.md: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path) as f:
                md: dict[str, dict[str, Any]] = json.load(f)
                return md
        except FileNotFoundError:
            return {}

    def save(self) -> None:
        """Persist every entry (synchronously: etlMD is small and changes rarely)."""
        write_private_json(self.path, self.md)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.md.get(name)

    def require(self, name: str) -> dict[str, Any]:
        """The entry of ``name``.

        Raises:
            NotFound: no such ETL.
        """
        e = self.md.get(name)
        if e is None:
            raise etl_not_found(name)
        return e

    def require_running(self, name: str) -> dict[str, Any]:
        """The entry of ``name`` if it is Running.

        Raises:
            NotFound: no such ETL, or it is not Running (as AIStore answers).
        """
        e = self.require(name)
        if e["stage"] != STAGE_RUNNING:
            raise etl_not_found(name)
        return e
