"""A bounded work queue that counts bytes as well as items, with watermarks.

Producers (joggers) ``await put(item, nbytes)``; they pause when the queue
holds ``high_items`` items or ``high_bytes`` bytes and resume only once it has
drained to the low watermarks (hysteresis, so producers do not wake for every
single item). One rule keeps it deadlock-free: an item is always admitted into
an *empty* queue, however large, so a single object bigger than ``high_bytes``
still flows.

Consumers ``await get()``; :meth:`close` says "no more items": ``get`` then
returns the rest and raises :class:`QueueClosed` when empty.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["ByteQueue", "QueueClosed", "QueueStats"]

T = TypeVar("T")


class QueueClosed(Exception):
    """The queue is closed and empty."""


@dataclass
class QueueStats:
    """A snapshot for tests and progress: current and peak fill, producer pauses."""

    items: int
    bytes: int
    peak_items: int
    peak_bytes: int
    pauses: int


class ByteQueue(Generic[T]):
    """See the module docstring.

    Args:
        high_items, high_bytes: pause producers at or above either.
        low_items, low_bytes: resume them at or below both (default: half of high).
    """

    def __init__(self, *, high_items: int = 1024, high_bytes: int = 256 << 20,
                 low_items: int | None = None, low_bytes: int | None = None) -> None:
        if high_items < 1 or high_bytes < 1:
            raise ValueError("watermarks must be positive")
        self.high_items, self.high_bytes = high_items, high_bytes
        self.low_items = high_items // 2 if low_items is None else low_items
        self.low_bytes = high_bytes // 2 if low_bytes is None else low_bytes
        self._q: collections.deque[tuple[T, int]] = collections.deque()
        self._bytes = 0
        self._closed = False
        self._paused = False
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._not_empty = asyncio.Event()
        self._peak_items = self._peak_bytes = self._pauses = 0

    def __len__(self) -> int:
        return len(self._q)

    def statistics(self) -> QueueStats:
        return QueueStats(len(self._q), self._bytes, self._peak_items, self._peak_bytes, self._pauses)

    async def put(self, item: T, nbytes: int) -> None:
        """Enqueue; waits while paused. Cancelling a waiting put loses nothing."""
        while self._q and (self._paused or len(self._q) >= self.high_items or self._bytes + nbytes > self.high_bytes):
            if self._closed:
                raise QueueClosed("put on a closed queue")
            if not self._paused:
                self._paused = True
                self._pauses += 1
                self._not_full.clear()
            await self._not_full.wait()
        if self._closed:
            raise QueueClosed("put on a closed queue")
        self._q.append((item, nbytes))
        self._bytes += nbytes
        self._peak_items = max(self._peak_items, len(self._q))
        self._peak_bytes = max(self._peak_bytes, self._bytes)
        self._not_empty.set()

    async def get(self) -> tuple[T, int]:
        """Dequeue ``(item, nbytes)``; raises :class:`QueueClosed` once closed and empty."""
        while not self._q:
            if self._closed:
                raise QueueClosed
            self._not_empty.clear()
            await self._not_empty.wait()
        item, n = self._q.popleft()
        self._bytes -= n
        if self._paused and len(self._q) <= self.low_items and self._bytes <= self.low_bytes:
            self._paused = False
            self._not_full.set()
        if not self._q:
            self._not_full.set()
            self._paused = False
        return item, n

    def close(self) -> None:
        """No more puts; wake every waiter."""
        self._closed = True
        self._not_empty.set()
        self._not_full.set()
