"""Background work of the gateway, with an owner.

The gateway starts a few things that outlive the request that caused them (a
pod init on a target that just joined, the restart of a cluster's ETLs, the job
watcher). Each runs as a task of one :class:`TaskOwner`, built at the gateway's
entry point and closed when the app shuts down: no task is left running (or
unawaited) when the HTTP session it uses goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

__all__ = ["TaskOwner"]

log = structlog.get_logger("aioetl.gateway.tasks")


class TaskOwner:
    """A set of asyncio tasks that are kept, logged when they fail, and cancelled together.

    Args:
        name: for logs (e.g. the gateway's id).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failed = 0

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task of this owner (needs a running loop).

        An exception it ends with is logged (and counted in :meth:`statistics`); its
        cancellation is not an error.

        Raises:
            RuntimeError: the owner is closed (the gateway shuts down); ``coro`` is closed unrun.
        """
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name}: shutting down, {name} not started")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed += 1
            log.warning("background task failed", owner=self.name, task=task.get_name(), err=repr(exc))

    async def aclose(self) -> None:
        """Refuse new tasks, cancel the running ones and wait until they have ended.

        Cancelling ``aclose`` itself stops the wait (the tasks are cancelled already)
        and propagates: it is never swallowed.
        """
        self._closed = True
        while self._tasks:
            pending = set(self._tasks)
            for t in pending:
                t.cancel()
            await asyncio.wait(pending)

    def statistics(self) -> dict[str, int]:
        """``{"running", "failed"}``: tasks running now, tasks that ended with an exception so far."""
        return {"running": len(self._tasks), "failed": self._failed}
