"""Xactions: the state machine, ids, counting stats, errors and snapshots of a job.

One job (``etl-bck``, ``etl-listrange``) runs as one xaction per target, all
with the same id. Each target's xaction moves through::

    CREATED --start--> RUNNING --all work handed out--> DRAINING --all results in--> FINISHED
        \\                  \\                              \\
         +------------------+-------------abort-------------+--> ABORTED

"No more work" (DRAINING) is a different state from "all results delivered"
(FINISHED). :meth:`Xaction.transition` is the one place state changes; it
rejects illegal moves and logs legal ones.

Snapshots follow AIStore's wire shape (``core/xaction_wire.go``): stats
counters are JSON *strings*, times RFC 3339 (Go's zero time while running),
``glob.id`` packs ``njoggers | nworkers << 10``. :class:`XactSnap` is that shape
as a msgspec Struct; :meth:`Xaction.snap` returns it as the plain dict callers
and the JSON encoder take.
"""

from __future__ import annotations

import enum
import json
import os
import re
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from aioetl.xactions.errs import InvalidMsg, ObjErrs

__all__ = ["GO_ZERO_TIME", "InvalidXid", "State", "WireBck", "XactSnap", "XactStats", "Xaction", "new_xid",
           "validate_xid"]

log = structlog.get_logger("aioetl.xaction")

GO_ZERO_TIME = "0001-01-01T00:00:00Z"
MAX_XACT_ERRS = 8  # AIStore's default cap of an xaction's own error set


def new_xid(prefix: str = "") -> str:
    """A job id: 9 random letters/digits, optionally prefixed (AIStore's ``tco-...``)."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(9))


_XID_RE = re.compile(r"(?:tco-)?[A-Za-z0-9]{9}")


class InvalidXid(InvalidMsg):
    """A job id that :func:`new_xid` cannot have made. Its ``status`` (400) lets an
    HTTP boundary answer it as the caller's mistake without importing this package's
    errors into the engine's tree."""

    status = 400


def validate_xid(xid: str) -> str:
    """Check that ``xid`` has the shape of a job id before any path is built from it.

    Job ids name files and directories (``<data>/jobs/<xid>/...``), so an id from a
    request must be exactly what :func:`new_xid` makes: 9 letters/digits, optionally
    prefixed ``tco-``. Anything else (``../x``, ``a/b``, empty, NUL) is refused.

    Returns:
        the id unchanged.

    Raises:
        InvalidXid: any other shape.
    """
    if not isinstance(xid, str) or not _XID_RE.fullmatch(xid):
        raise InvalidXid(f"invalid job id {str(xid)[:64]!r}: expected 9 letters or digits, optionally prefixed 'tco-'")
    return xid


def rfc3339(ns: int) -> str:
    if not ns:
        return GO_ZERO_TIME
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 10**9:09d}Z"


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    FINISHED = "finished"
    ABORTED = "aborted"


_LEGAL = {
    State.CREATED: {State.RUNNING, State.ABORTED},
    State.RUNNING: {State.DRAINING, State.ABORTED},
    State.DRAINING: {State.FINISHED, State.ABORTED},
    State.FINISHED: set(),
    State.ABORTED: set(),
}


class IllegalTransition(RuntimeError):
    """A state change the xaction state machine does not allow."""


class XactStats:
    """AIStore's counting stats: objects and bytes written locally, sent out, received;
    plus ``remote-objs``/``remote-bytes``: source objects fetched from a remote backend
    (cold GETs of an ``aws://`` source; AIStore counts these per target as "cold GET")."""

    __slots__ = ("in_bytes", "in_objs", "loc_bytes", "loc_objs", "out_bytes", "out_objs", "remote_bytes",
                 "remote_objs")

    def __init__(self) -> None:
        self.loc_objs = self.loc_bytes = self.out_objs = self.out_bytes = self.in_objs = self.in_bytes = 0
        self.remote_objs = self.remote_bytes = 0

    def to_wire(self) -> dict[str, str]:
        return {"loc-objs": str(self.loc_objs), "loc-bytes": str(self.loc_bytes),
                "out-objs": str(self.out_objs), "out-bytes": str(self.out_bytes),
                "in-objs": str(self.in_objs), "in-bytes": str(self.in_bytes),
                "remote-objs": str(self.remote_objs), "remote-bytes": str(self.remote_bytes)}


class WireNamespace(msgspec.Struct):
    uuid: str = ""
    name: str = ""


class WireBck(msgspec.Struct):
    """A bucket as snapshots carry it (``cmn.Bck``): ``{"name", "provider", "namespace"}``."""

    name: str
    provider: str = "ais"
    namespace: WireNamespace = msgspec.field(default_factory=WireNamespace)

    @classmethod
    def of_key(cls, key: str) -> WireBck:
        """From an engine bucket key: ``b`` -> ais ``b``, ``aws:b`` -> aws ``b``
        (``aioetl.engine.core.names``; xactions do not import the engine)."""
        provider, sep, name = key.partition(":")
        return cls(name, provider) if sep else cls(key)


class XactSnap(msgspec.Struct):
    """One target's ``qryxstats`` snapshot of a job (``core/xaction_wire.go`` Snap), in
    wire order, plus aioetl's progress fields (the SDK ignores those).

    Counters in ``stats`` and the progress fields are decimal strings, as in Go.
    """

    id: str
    kind: str
    start_time: str = msgspec.field(name="start-time")
    end_time: str = msgspec.field(name="end-time")
    bck: WireBck
    src_bck: WireBck = msgspec.field(name="src-bck")
    dst_bck: WireBck = msgspec.field(name="dst-bck")
    ctlmsg: str
    abort_err: str = msgspec.field(name="abort-err")
    err: str
    glob_id: str = msgspec.field(name="glob.id")
    stats: dict[str, str]
    aborted: bool
    is_idle: bool
    # aioetl extensions (progress): ignored by the SDK
    total_objs: str = msgspec.field(name="total-objs")
    total_bytes: str = msgspec.field(name="total-bytes")
    done_objs: str = msgspec.field(name="done-objs")
    done_bytes: str = msgspec.field(name="done-bytes")
    err_total: str = msgspec.field(name="err-total")
    obj_errs: list[str] = msgspec.field(name="obj-errs")
    """Up to 8 distinct messages: the gateway sums them over targets."""
    state: str
    node: str


class Xaction:
    """One target's share of a job.

    Args:
        xid: job id (the same on every target).
        kind: ``etl-bck`` or ``etl-listrange``.
        node_id: this target's id.
        src_bck, dst_bck: bucket names.
        ctlmsg: a short description for snapshots.
        report_path: where every per-object failure is appended (JSON lines);
            the capped list keeps 128, the report keeps all.
    """

    def __init__(self, *, xid: str, kind: str, node_id: str, src_bck: str, dst_bck: str,
                 ctlmsg: str = "", report_path: str | None = None) -> None:
        self.xid, self.kind, self.node_id = xid, kind, node_id
        self.src_bck, self.dst_bck, self.ctlmsg = src_bck, dst_bck, ctlmsg
        self.state = State.CREATED
        self.stats = XactStats()
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.abort_err = ""
        self.errs: list[str] = []
        self.err_total = 0
        self.njoggers = 0
        self.nworkers = 0
        self.total_objs = 0  # known size of the work, for progress (0 = unknown)
        self.total_bytes = 0
        self.done_objs = 0  # source objects processed (success or error) and their bytes
        self.done_bytes = 0
        self._report_path = report_path
        self._report: Any = None
        self.obj_errs = ObjErrs(on_error=self._report_error)
        self._on_done: list[Callable[[Xaction], None]] = []
        self.log = log.bind(xid=xid, kind=kind, target=node_id)

    # -- state -------------------------------------------------------------------
    def transition(self, to: State) -> None:
        """Move to ``to``; raises :class:`IllegalTransition` for a move the machine forbids."""
        if to not in _LEGAL[self.state]:
            raise IllegalTransition(f"xaction {self.xid}: {self.state.value} -> {to.value} is not allowed")
        self.log.debug("xaction state", frm=self.state.value, to=to.value)
        self.state = to
        if to in (State.FINISHED, State.ABORTED):
            self.end_ns = time.time_ns()
            if self._report is not None:
                self._report.close()
                self._report = None
            for cb in self._on_done:
                cb(self)

    @property
    def running(self) -> bool:
        return self.state in (State.CREATED, State.RUNNING, State.DRAINING)

    @property
    def aborted(self) -> bool:
        return self.state is State.ABORTED

    def abort(self, err: str) -> bool:
        """Abort with ``err``; returns False if the xaction had already ended."""
        if not self.running:
            return False
        self.abort_err = err
        self.transition(State.ABORTED)
        self.log.info("xaction aborted", err=err)
        return True

    def on_done(self, cb: Callable[[Xaction], None]) -> None:
        self._on_done.append(cb)

    # -- errors --------------------------------------------------------------------
    def _report_error(self, err: dict[str, Any]) -> None:
        if self._report_path is None:
            return
        if self._report is None:
            os.makedirs(os.path.dirname(self._report_path), exist_ok=True)
            self._report = open(self._report_path, "a", buffering=1)  # noqa: SIM115 - closed on finish
        self._report.write(json.dumps(err) + "\n")

    def add_obj_err(self, obj_name: str, msg: str, ecode: int) -> None:
        """Record a per-object failure (capped list + full report + the xaction's own errors)."""
        self.obj_errs.add(obj_name, msg, ecode)
        if obj_name and obj_name not in msg:
            msg = f"{obj_name}: {msg}"
        self.err_total += 1
        if len(self.errs) < MAX_XACT_ERRS and msg not in self.errs:
            self.errs.append(msg)

    @property
    def err(self) -> str:
        """AIStore's ``err``: set when the job finished with errors (``coer``) or aborted."""
        if not self.errs:
            return self.abort_err
        more = f" (and {self.err_total - len(self.errs)} more)" if self.err_total > len(self.errs) else ""
        return f"{self.err_total} object error(s): " + "; ".join(self.errs) + more

    # -- wire ----------------------------------------------------------------------
    def snap_struct(self) -> XactSnap:
        """The ``qryxstats`` snapshot as a struct."""
        return XactSnap(
            id=self.xid,
            kind=self.kind,
            start_time=rfc3339(self.start_ns),
            end_time=rfc3339(self.end_ns),
            bck=WireBck.of_key(self.src_bck),
            src_bck=WireBck.of_key(self.src_bck),
            dst_bck=WireBck.of_key(self.dst_bck),
            ctlmsg=self.ctlmsg,
            abort_err=self.abort_err,
            err=self.err,
            glob_id=str(self.njoggers | (self.nworkers << 10)),
            stats=self.stats.to_wire(),
            aborted=self.aborted,
            is_idle=not self.running,
            total_objs=str(self.total_objs),
            total_bytes=str(self.total_bytes),
            done_objs=str(self.done_objs),
            done_bytes=str(self.done_bytes),
            err_total=str(self.err_total),
            obj_errs=list(self.errs),
            state=self.state.value,
            node=self.node_id,
        )

    def snap(self) -> dict[str, Any]:
        """The ``qryxstats`` snapshot (``core/xaction_wire.go`` Snap) as a JSON-ready dict
        (:class:`XactSnap`'s wire names and order)."""
        doc: dict[str, Any] = msgspec.to_builtins(self.snap_struct())
        return doc
