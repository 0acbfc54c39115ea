"""The services a target is made of, built once at its entry point and passed in.

A target process (:func:`aioetl.engine.target.target.run_target`) builds, in order:

- :class:`NodeInfo`: who this target is (id, URL once listening, the gateway, the data root);
- :class:`ClusterView`: the cluster map (smap) and BMD it last accepted, and the
  placement questions asked of them (owner of an object, bucket exists);
- the object store (:class:`aioetl.engine.target.storage.Store`);
- :class:`aioetl.engine.target.peers.Peers`: intra-cluster HTTP with the cluster credential;
- :class:`aioetl.engine.target.objects.ObjectIO`: object bytes in and out over HTTP;
- the ETL registry (:class:`aioetl.engine.target.etl.EtlManager`) and the job
  registry (:class:`aioetl.engine.scheduler.offline.OfflineJobs`), which need each
  other only through the narrow protocols below (:class:`JobControl`).

Nothing here imports the modules that use it, so the target's modules form no
import cycle (``tests/test_layers.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from aioetl.engine.core.names import make_uname, split_bck_key, validate_bck_name
from aioetl.engine.core.smap import Smap, Snode
from aioetl.errors import bck_not_found

__all__ = ["ClusterView", "JobControl", "NodeInfo"]


@dataclass
class NodeInfo:
    """This target's identity.

    Attributes:
        node_id: stable target id (HRW hashes it).
        gateway_url: where it joined.
        data_dir: the cluster's data root (job records, pod directories).
        url: its own URL, set once it listens (``""`` before).
    """

    node_id: str
    gateway_url: str
    data_dir: str
    url: str = ""


@dataclass
class ClusterView:
    """The smap and BMD this target last accepted (AIStore's ``meta.Smap``/``meta.BMD``
    as a target holds them), and the placement decisions made from them.

    Attributes:
        node_id: this target (to tell "mine" from a peer's).
        smap: the cluster map; ``None`` before the first join answer.
        bmd: ``{"version": int, "buckets": {name: props}}``.
    """

    node_id: str
    smap: Smap | None = None
    bmd: dict[str, Any] = field(default_factory=lambda: {"version": 0, "buckets": {}})

    def check_bck(self, bck: str) -> None:
        """Raises InvalidName (bad name) or NotFound (not in the BMD); ``bck`` is a bucket
        key (``b`` or ``aws:b``, :mod:`aioetl.engine.core.names`)."""
        validate_bck_name(split_bck_key(bck)[1])
        if bck not in self.bmd["buckets"]:
            raise bck_not_found(bck)

    def owner(self, bck: str, obj: str) -> Snode | None:
        """The HRW owner of ``bck/obj`` when that is another target, else ``None`` (this
        target owns it, or there is no map or a single target)."""
        smap = self.smap
        if smap is None or len(smap.targets) < 2:
            return None
        node = smap.hrw_target(make_uname(bck, obj))
        return None if node.daemon_id == self.node_id else node

    def node_at(self, url: str) -> str:
        """The id of the target at ``url`` (the URL itself when the map does not know it)."""
        if self.smap is not None:
            for node in self.smap.targets.values():
                if node.url == url:
                    return node.daemon_id
        return url


class JobControl(Protocol):
    """What the ETL registry asks of the job registry (``OfflineJobs`` implements it)."""

    def abort(self, *, xid: str = "", kind: str = "", etl: str = "", err: str) -> int:
        """Abort the matching running jobs; returns how many."""
        ...

    def count_in(self, xid: str, size: int) -> None:
        """An object of job ``xid`` arrived here (``in`` stats)."""
        ...

    def obj_errors(self, xid: str) -> list[dict[str, Any]]:
        """Per-object errors (at most 128) of job ``xid`` here."""
        ...
