"""Per-object errors of a job, as AIStore keeps them (``cmn/cos/err.go`` Errs), and
:class:`InvalidMsg`, this package's one exception.

At most :data:`MAX_OBJ_ERRS` (128) distinct messages are kept per job for
``view(job_id).obj_errors``; duplicates (same message text) are dropped. Every
failure, past the cap too, is counted, and can be streamed to a full report by
the caller (``on_error`` hook).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MAX_OBJ_ERRS", "InvalidMsg", "ObjErrs"]

MAX_OBJ_ERRS = 128


class InvalidMsg(ValueError):
    """A job message, job id, template or duration the caller got wrong.

    ``xactions`` imports nothing else from aioetl, so its errors are not in
    ``aioetl.errors``' tree; the HTTP boundary (``aioetl.engine.node.httpd``)
    answers this with its ``status`` (400) and its text.
    """

    status = 400


class ObjErrs:
    """A capped, message-deduplicated list of ``{"obj_name", "msg", "ecode"}``.

    Args:
        cap: how many distinct errors to keep (128, AIStore's ``MaxObjErr``).
        on_error: called with every error, kept or not (for a full report).
    """

    def __init__(self, cap: int = MAX_OBJ_ERRS, on_error: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cap = cap
        self.total = 0
        self._items: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._on_error = on_error

    def add(self, obj_name: str, msg: str, ecode: int) -> bool:
        """Record one failure. Returns True if it was kept in the capped list.

        The message names the object (``ais://b/o: <error>``), as AIStore's do, so that
        deduplication by text drops repeats of one object's error, not other objects'.
        """
        if obj_name and obj_name not in msg:
            msg = f"{obj_name}: {msg}"
        self.total += 1
        err = {"obj_name": obj_name, "msg": msg, "ecode": ecode}
        if self._on_error is not None:
            self._on_error(err)
        if len(self._items) >= self.cap or msg in self._seen:
            return False
        self._seen.add(msg)
        self._items.append(err)
        return True

    def to_list(self) -> list[dict[str, Any]]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
