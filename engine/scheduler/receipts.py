"""Delivery receipts: a direct put counts only when its destination target says so.

A pod that direct-puts an object (AIStore ``ext/etl`` direct put: the pod ``PUT``\\ s
the transformed object straight to the target that owns the destination, via
``/v1/etl/_object/...?uuid=<job>``) reports "delivered" to the target that sent it
the object. That report alone proves nothing: ``aistore[etl]``'s ``FastAPIServer``
answers ``"0"`` both for an empty object that was delivered and for a direct put
that failed, and a pod can answer after its object timed out. So the destination
keeps, per job, what it stored and what it must refuse, and the sender settles
with it:

- :meth:`Receipts.commit` stores a job's object (the work file is renamed into
  place) unless the job was aborted or the object revoked; the name is then
  "received" with its size;
- :meth:`Receipts.settle` (``POST /v1/xactions/_settle``) answers, for a list of
  destination keys (``<bck>/<obj>``), which were received (with sizes) and which
  were not; with ``revoke`` the missing ones are refused from then on, so an
  object whose outcome the sender has decided (failed, timed out) can never
  appear later. A commit already in progress finishes first, so its answer is
  final;
- :meth:`Receipts.abort`: every later object of the job is refused.

This mirrors the role of AIStore's per-job receive side (``xact/xs/tcb.go``
``recv``: objects arriving for an aborted xaction are dropped), made explicit
per object.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from aioetl.engine.target.storage import LomMD, write_in_thread
from aioetl.errors import Conflict

__all__ = ["JobReceipts", "Receipts"]

RECEIPTS_TTL_S = 3600.0


class JobReceipts:
    """One job's receive side on one target.

    Attributes:
        received: destination key -> stored size (bytes), until settled.
        revoked: keys refused from now on.
        aborted: the abort reason; non-empty refuses every object.
    """

    __slots__ = ("aborted", "committing", "failed", "received", "revoked", "touched")

    def __init__(self) -> None:
        self.received: dict[str, int] = {}
        self.failed: dict[str, str] = {}  # key -> why storing it here failed (e.g. out of space)
        self.revoked: set[str] = set()
        self.committing: dict[str, asyncio.Future[None]] = {}
        self.aborted = ""
        self.touched = time.monotonic()


class Receipts:
    """The receipts of every job on one target (created on first use: a peer's direct
    put may arrive before this target has heard of the job)."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobReceipts] = {}

    def get(self, xid: str) -> JobReceipts:
        r = self.jobs.get(xid)
        if r is None:
            r = self.jobs[xid] = JobReceipts()
        r.touched = time.monotonic()
        return r

    def check(self, xid: str, key: str) -> None:
        """Raise :class:`Conflict` (409) if object ``key`` of job ``xid`` must be refused."""
        r = self.jobs.get(xid)
        if r is None:
            return
        if r.aborted:
            raise Conflict(f'job {xid} was aborted ({r.aborted}): refusing "{key}"')
        if key in r.revoked:
            raise Conflict(f'job {xid}: "{key}" already ended (failed or timed out at its sender): refused')

    async def commit(self, xid: str, key: str, finalize: Callable[[], LomMD], in_thread: bool,
                     record: bool = True) -> LomMD:
        """Make a received work file visible, unless refused.

        Args:
            xid: the job id (``?uuid=``).
            key: ``<bck>/<obj>``.
            finalize: the work file's ``finalize`` (fsync + rename).
            in_thread: run ``finalize`` in a thread (a disk), else right here (tmpfs).
            record: remember the key for :meth:`settle` (direct puts; a peer's own PUT is
                acknowledged by its reply and needs no receipt).

        Raises:
            Conflict: the job was aborted or the key revoked; nothing becomes visible.
        """
        self.check(xid, key)
        r = self.get(xid)
        if not in_thread:
            md = finalize()
            if record:
                r.received[key] = md.size
            return md
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        r.committing[key] = fut
        try:
            md = await write_in_thread(finalize)
            if record:
                r.received[key] = md.size
            return md
        finally:
            if r.committing.get(key) is fut:
                del r.committing[key]
            fut.set_result(None)

    def note_failure(self, xid: str, key: str, why: str) -> None:
        """Object ``key`` of job ``xid`` could not be stored here (full disk, refused...):
        :meth:`settle` tells its sender why, since a pod may not (aistore[etl] answers "0")."""
        r = self.get(xid)
        if len(r.failed) < 100_000:
            r.failed[key] = why

    async def settle(self, xid: str, keys: Iterable[str],
                     revoke: bool) -> tuple[dict[str, int], list[str], dict[str, str]]:
        """Which of ``keys`` job ``xid`` received here.

        Returns:
            ``(received, missing, reasons)``: ``{key: size}`` (forgotten here: each key is
            settled once), the keys not received (revoked when ``revoke``), and for those
            of them whose store failed here, why.
        """
        r = self.get(xid)
        received: dict[str, int] = {}
        missing: list[str] = []
        reasons: dict[str, str] = {}
        for key in keys:
            fut = r.committing.get(key)
            if fut is not None:
                await asyncio.shield(fut)
            size = r.received.pop(key, None)
            if size is not None:
                received[key] = size
                r.failed.pop(key, None)
            else:
                missing.append(key)
                why = r.failed.pop(key, None) if revoke else r.failed.get(key)
                if why:
                    reasons[key] = why
                if revoke:
                    r.revoked.add(key)
        return received, missing, reasons

    def abort(self, xid: str, reason: str) -> None:
        """Refuse every later object of job ``xid``."""
        self.get(xid).aborted = reason or "aborted"

    def gc(self, ttl_s: float = RECEIPTS_TTL_S) -> None:
        """Forget jobs untouched for ``ttl_s`` seconds."""
        now = time.monotonic()
        for xid in [x for x, r in self.jobs.items() if now - r.touched > ttl_s and not r.committing]:
            del self.jobs[xid]
