"""Job records that survive a restart: one JSON file per job and node, written atomically.

A target keeps, for every xaction it runs, the last snapshot and the control
message under ``<data_dir>/jobs/<xid>/<node_id>.json`` (next to the job's
error report ``<node_id>.errors.jsonl``)::

    {"version": 1, "xid": "...", "node": "t-1a2b3c", "saved_ns": 1732..., "msg": {...}, "snap": {...}}

``snap`` is the ``qryxstats`` snapshot (:meth:`aioetl.xactions.xact.Xaction.snap`),
``msg`` the job message as the target received it (``TcbMsg.to_wire()`` plus
whatever the caller adds). A write goes to a temp file in the same directory,
is fsynced, then renamed over the record (POSIX rename is atomic: a reader,
or a restart, sees the old record or the new one, never a torn one).

After a restart, :meth:`JobRecords.load_all` returns every record of this
node; a record whose snapshot was still running (the process died before the
xaction ended) is rewritten as aborted with the reason
``target <id> restarted while the job was running``, so the gateway and the
SDK see a failure that names the target rather than an empty share.

AIStore keeps no such records (its xactions live in memory, ``xact/xreg``);
after a restart AIStore answers ``404`` for a job the restarted nodes ran.
aioetl keeps them so ``job.wait()`` ends with a clear failure instead.

The file's shape is :class:`RecordFile` (a msgspec Struct: decoding checks it);
the in-memory record is :class:`JobRecord`.

This module imports nothing else from aioetl (``xactions`` is a leaf package).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import msgspec

from aioetl.xactions.xact import rfc3339

__all__ = ["RECORD_VERSION", "JobRecord", "JobRecords", "RecordFile", "atomic_write_json", "restart_reason"]

RECORD_VERSION = 1
_RUNNING_STATES = ("created", "running", "draining")


def atomic_write_json(path: str, doc: Any, *, fsync: bool = True) -> None:
    """Write ``doc`` as JSON to ``path``: temp file in the same directory, fsync, rename.

    Args:
        path: the final file; its directory is created if missing.
        doc: anything ``json.dumps`` takes.
        fsync: flush the file (and the directory entry) to disk before returning;
            ``False`` only where losing the last write on a power cut is fine
            (tmpfs data roots lose everything anyway).

    Raises:
        OSError: the directory cannot be created or the disk is full; the temp
            file is removed and the previous record, if any, stays intact.
    """
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        try:
            fd = os.open(d, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def restart_reason(node_id: str) -> str:
    """The abort reason of a job found running on ``node_id`` after its restart."""
    return f"target {node_id} restarted while the job was running"


def snap_running(snap: dict[str, Any]) -> bool:
    """True if a ``qryxstats`` snapshot describes an xaction that had not ended."""
    state = snap.get("state")
    if isinstance(state, str) and state:
        return state in _RUNNING_STATES
    return not snap.get("is_idle", False) and not snap.get("aborted", False)


def mark_restarted(snap: dict[str, Any], node_id: str, now_ns: int | None = None) -> dict[str, Any]:
    """A copy of a running ``snap`` turned into an aborted one (pure).

    ``abort-err`` and, when empty, ``err`` get :func:`restart_reason`; ``end-time``
    is ``now_ns``; stats are kept as last saved (a lower bound of the work done).
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    reason = restart_reason(node_id)
    out = dict(snap)
    out.update({"aborted": True, "is_idle": True, "abort-err": reason, "end-time": rfc3339(now_ns),
                "state": "aborted"})
    if not out.get("err"):
        out["err"] = reason
    return out


class RecordFile(msgspec.Struct):
    """The JSON document of one record file, field for field and in file order::

        {"version": 1, "xid": "...", "node": "t-1a2b3c", "saved_ns": 1732..., "msg": {...}, "snap": {...}}

    Decoding is lenient where older or hand-edited files may differ (``msg`` and
    ``saved_ns`` may be null or missing, numbers may be strings) and strict where
    the record is useless otherwise (``snap`` must be an object).
    """

    snap: dict[str, Any]
    version: int = RECORD_VERSION
    xid: str = ""
    node: str | None = None
    saved_ns: int | None = None
    msg: Any = None

    def to_json(self) -> dict[str, Any]:
        """The document, keys in the order they are written."""
        return {"version": self.version, "xid": self.xid, "node": self.node, "saved_ns": self.saved_ns,
                "msg": self.msg, "snap": self.snap}


_RECORD_DECODER = msgspec.json.Decoder(RecordFile, strict=False)


class JobRecord(msgspec.Struct):
    """One node's record of one job.

    Attributes:
        xid: the job id.
        node_id: the node that wrote it.
        snap: the last ``qryxstats`` snapshot (after a restart: marked aborted).
        msg: the job message.
        saved_ns: when the record was last written (``time.time_ns()``).
        restarted: True if :meth:`JobRecords.load_all` found it running and marked it
            aborted (in memory only: not written to the file).
    """

    xid: str
    node_id: str
    snap: dict[str, Any]
    msg: dict[str, Any]
    saved_ns: int
    restarted: bool = False

    def to_file(self) -> RecordFile:
        """The file's document as a struct."""
        return RecordFile(snap=self.snap, version=RECORD_VERSION, xid=self.xid, node=self.node_id,
                          saved_ns=self.saved_ns, msg=self.msg)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON document."""
        return self.to_file().to_json()

    @classmethod
    def from_file(cls, doc: RecordFile, *, xid: str, node_id: str) -> JobRecord:
        """A record from a decoded file; ``xid`` is the directory's, ``node_id`` the
        fallback for a file that names no node."""
        return cls(xid=xid, node_id=doc.node or node_id, snap=doc.snap,
                   msg=doc.msg if isinstance(doc.msg, dict) else {}, saved_ns=doc.saved_ns or 0)


class JobRecords:
    """A target's job records under ``<data_dir>/jobs/<xid>/<node_id>.json``.

    Args:
        data_dir: the cluster data root (the target's ``cfg.data_dir``).
        node_id: this target's id.
        fsync: passed to :func:`atomic_write_json` (``False`` on a tmpfs data root).

    Every method is synchronous file I/O (a record is ~1-2 KiB: one small
    write and a rename); call them from a thread on a slow disk.
    """

    def __init__(self, data_dir: str, node_id: str, *, fsync: bool = True) -> None:
        self.root = os.path.join(data_dir, "jobs")
        self.node_id = node_id
        self.fsync = fsync

    def path(self, xid: str) -> str:
        """Where the record of ``xid`` lives.

        Raises:
            ValueError: ``xid`` is empty or not a plain file name (``/``, ``..``, NUL).
        """
        if not xid or xid in (".", "..") or "/" in xid or "\0" in xid:
            raise ValueError(f"invalid job id {xid!r}")
        return os.path.join(self.root, xid, f"{self.node_id}.json")

    def save(self, snap: dict[str, Any], msg: dict[str, Any]) -> JobRecord:
        """Write (or overwrite) the record of ``snap["id"]``; returns it.

        Raises:
            ValueError: the snapshot has no valid ``id``.
            OSError: the write failed (the previous record is intact).
        """
        rec = JobRecord(xid=str(snap.get("id") or ""), node_id=self.node_id, snap=dict(snap), msg=dict(msg),
                        saved_ns=time.time_ns())
        atomic_write_json(self.path(rec.xid), rec.to_json(), fsync=self.fsync)
        return rec

    def load(self, xid: str) -> JobRecord | None:
        """The record of ``xid`` as stored (no restart marking), or None if absent or unreadable."""
        try:
            with open(self.path(xid), "rb") as f:
                doc = _RECORD_DECODER.decode(f.read())
        except (OSError, ValueError, msgspec.DecodeError):
            return None
        return JobRecord.from_file(doc, xid=xid, node_id=self.node_id)

    def load_all(self, *, mark_running: bool = True) -> dict[str, JobRecord]:
        """Every record of this node, by job id. Call once at start-up.

        Args:
            mark_running: rewrite records that were still running as aborted with
                :func:`restart_reason` (on disk too, so a second restart keeps the reason).

        Unreadable or foreign files (torn temp files, other nodes' records, error
        reports) are skipped; leftover temp files of this node are removed.
        """
        out: dict[str, JobRecord] = {}
        try:
            xids = sorted(os.listdir(self.root))
        except OSError:
            return out
        for xid in xids:
            d = os.path.join(self.root, xid)
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for n in names:
                if n.startswith(f".{self.node_id}.json.") and n.endswith(".tmp"):
                    try:
                        os.unlink(os.path.join(d, n))
                    except OSError:
                        pass
            rec = self.load(xid)
            if rec is None:
                continue
            if mark_running and snap_running(rec.snap):
                rec.snap = mark_restarted(rec.snap, self.node_id)
                rec.restarted = True
                try:
                    atomic_write_json(self.path(xid), rec.to_json(), fsync=self.fsync)
                except OSError:
                    pass  # still reported aborted from memory
            out[xid] = rec
        return out

    def remove(self, xid: str) -> None:
        """Forget the record of ``xid`` (missing is fine)."""
        try:
            os.unlink(self.path(xid))
        except (OSError, ValueError):
            pass
