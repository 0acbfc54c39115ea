"""Cluster map (smap) and highest-random-weight (HRW) placement, sans-I/O.

HRW must agree bit for bit with the one the aistore SDK computes client side
(``aistore/sdk/types.py`` ``Smap.get_target_for_object``), so that the SDK's
``direct=True`` reads land on the target that holds the object:

    digest(s)   = xxh64(s.encode(), seed=1103515245)
    weight(t,u) = xoshiro256(t.id_digest ^ digest(u))      (64-bit wrapping)
    owner(u)    = argmax_t weight(t, u)

``id_digest`` of a node is ``digest(daemon_id)``, as in Go's ``Snode.Digest``.
The same weights choose a mountpath inside a target (AIStore ``fs/hrw.go``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import xxhash

from aioetl.errors import NodeUnavailable

__all__ = ["Smap", "Snode", "digest", "hrw_pick", "xoshiro256"]

XX_HASH_SEED = 1103515245
_MASK = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_ROT = 7

_T = TypeVar("_T")


def digest(name: str) -> int:
    """xxh64 of ``name`` (UTF-8) with AIStore's seed; an unsigned 64-bit int."""
    return xxhash.xxh64_intdigest(name.encode("utf-8", "surrogatepass"), XX_HASH_SEED)


def xoshiro256(seed: int) -> int:
    """The 64-bit mixing function AIStore's HRW applies to ``node_digest ^ name_digest``."""
    z = (seed + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _C1) & _MASK
    z = ((z ^ (z >> 27)) * _C2) & _MASK
    z = ((z ^ (z >> 31)) + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _C1) & _MASK
    z = ((z ^ (z >> 27)) * _C2) & _MASK
    z = ((z ^ (z >> 31)) * 5) & _MASK
    rotated = ((z << _ROT) | (z >> (64 - _ROT))) & _MASK
    return (rotated * 9) & _MASK


def hrw_pick(name_digest: int, node_digests: Iterable[tuple[int, _T]]) -> _T:
    """Return the item whose ``xoshiro256(node_digest ^ name_digest)`` is largest.

    Args:
        name_digest: :func:`digest` of the uname.
        node_digests: ``(node_digest, item)`` pairs; ties go to the first.

    Raises:
        NodeUnavailable: no candidates.
    """
    best: tuple[int, _T] | None = None
    for nd, item in node_digests:
        w = xoshiro256(nd ^ name_digest)
        if best is None or w > best[0]:
            best = (w, item)
    if best is None:
        raise NodeUnavailable("no targets in the cluster map")
    return best[1]


@dataclass
class Snode:
    """One node (gateway or target) as the SDK's ``Snode`` model expects it.

    Attributes:
        daemon_id: stable id, e.g. ``t-ab12cd``; HRW hashes it.
        daemon_type: ``"target"`` or ``"proxy"``.
        url: ``http://127.0.0.1:<port>``; public, control and data nets are one.
        flags: AIStore node flags (bit 2 maintenance, bit 3 decommission).
    """

    daemon_id: str
    daemon_type: str
    url: str
    flags: int = 0
    id_digest: int = field(init=False)

    def __post_init__(self) -> None:
        self.id_digest = digest(self.daemon_id)

    def to_json(self) -> dict[str, Any]:
        """Go's ``meta.Snode`` JSON (the fields the SDK reads)."""
        host, _, port = self.url.removeprefix("http://").partition(":")
        net = {"node_hostname": host, "daemon_port": port, "direct_url": self.url}
        return {
            "daemon_id": self.daemon_id,
            "daemon_type": self.daemon_type,
            "public_net": net,
            "intra_control_net": net,
            "intra_data_net": net,
            "flags": self.flags,
            "id_digest": self.id_digest,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Snode:
        return cls(
            daemon_id=doc["daemon_id"],
            daemon_type=doc["daemon_type"],
            url=doc["public_net"]["direct_url"],
            flags=int(doc.get("flags", 0)),
        )


@dataclass
class Smap:
    """The cluster map: one gateway (primary proxy) and the targets.

    ``version`` grows by one on every change; nodes keep the newest they saw.
    """

    proxy: Snode
    targets: dict[str, Snode] = field(default_factory=dict)
    version: int = 1
    uuid: str = ""
    creation_time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def active_targets(self) -> list[Snode]:
        """Targets not in maintenance or being decommissioned, sorted by id."""
        return [t for _, t in sorted(self.targets.items()) if not t.flags & (1 << 2 | 1 << 3)]

    def hrw_target(self, uname: str) -> Snode:
        """The target that owns ``uname`` (``ais/@#/bck/obj``).

        Raises:
            NodeUnavailable: the map has no active target.
        """
        d = digest(uname)
        return hrw_pick(d, ((t.id_digest, t) for t in self.active_targets()))

    def to_json(self) -> dict[str, Any]:
        """Go's ``meta.Smap`` JSON, as ``GET /v1/daemon?what=smap`` returns it."""
        return {
            "tmap": {tid: t.to_json() for tid, t in self.targets.items()},
            "pmap": {self.proxy.daemon_id: self.proxy.to_json()},
            "proxy_si": self.proxy.to_json(),
            "version": self.version,
            "uuid": self.uuid,
            "creation_time": self.creation_time,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Smap:
        return cls(
            proxy=Snode.from_json(doc["proxy_si"]),
            targets={tid: Snode.from_json(t) for tid, t in doc.get("tmap", {}).items()},
            version=int(doc.get("version", 1)),
            uuid=doc.get("uuid", ""),
            creation_time=doc.get("creation_time", ""),
        )
