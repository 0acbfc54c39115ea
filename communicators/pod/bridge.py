"""Threads <-> event loop: a user's blocking ``transform_stream`` runs in worker
threads while the bytes it reads and writes move on the loop.

- :class:`LoopReader`: the blocking binary reader a worker thread reads the
  request body (or the target's response) from; each ``read(n)`` is one
  coroutine on the loop.
- :func:`stream_chunks`: the transform's output as an async generator, one
  ``next()`` per chunk in a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator
from typing import Any

__all__ = ["READ_CHUNK_BYTES", "LoopReader", "as_bytes", "close_quietly", "read_path", "stream_chunks"]

READ_CHUNK_BYTES = 1 << 20
_END = object()


class LoopReader(io.RawIOBase):
    """A blocking binary reader, used from a worker thread, over an async ``read(n)``
    running on ``loop``. ``close()`` (from any thread) fails a pending read.

    Args:
        loop: the loop ``aread`` runs on; the reader must be constructed on it.
        aread: ``read(n)`` of the source: up to ``n`` bytes, ``b""`` at the end.
        on_close: called on the loop once the reader is closed (releases the source).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, aread: Callable[[int], Coroutine[Any, Any, bytes]],
                 on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._loop = loop
        self._aread = aread
        self._on_close = on_close
        self._pending: concurrent.futures.Future[bytes] | None = None
        self._eof = False
        self._shut = False  # set by close() before it looks for a pending read
        self._loop_thread = threading.get_ident()  # constructed on the loop

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left if negative); blocks until they arrive.

        Raises:
            ValueError: the reader is closed, or was closed during the read.
            RuntimeError: called on the event loop's thread (it would deadlock).
        """
        if self.closed:
            raise ValueError("I/O operation on closed reader")
        if size is None or size < 0:
            return self.readall()
        if size == 0 or self._eof:
            return b""
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("the request body reader must be read from a worker thread, not the event loop")
        cf = asyncio.run_coroutine_threadsafe(self._aread(size), self._loop)
        self._pending = cf
        if self._shut:  # close() ran meanwhile and may not have seen cf
            cf.cancel()
        try:
            data = cf.result()
        except concurrent.futures.CancelledError:
            raise ValueError("I/O operation on closed reader") from None
        finally:
            self._pending = None
        if not data:
            self._eof = True
        return bytes(data)

    def readall(self) -> bytes:
        parts: list[bytes] = []
        while True:
            b = self.read(READ_CHUNK_BYTES)
            if not b:
                return b"".join(parts)
            parts.append(b)

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        n = len(data)
        memoryview(buf).cast("B")[:n] = data
        return n

    def close(self) -> None:
        if self.closed:
            return
        self._shut = True  # first: a read() that notes its request after this sees it
        cf = self._pending
        if cf is not None:
            cf.cancel()
        super().close()
        if self._on_close is not None:
            cb, self._on_close = self._on_close, None
            try:
                if threading.get_ident() == self._loop_thread:
                    cb()
                else:
                    self._loop.call_soon_threadsafe(cb)
            except RuntimeError:  # loop closed
                pass


def _next_chunk(it: Iterator[Any]) -> Any:
    return next(it, _END)


def close_quietly(obj: Any) -> None:
    """``obj.close()``, ignoring any error."""
    try:
        obj.close()
    except Exception:
        pass


def read_path(path: str) -> bytes:
    """The whole file at ``path`` (for a worker thread)."""
    with open(path, "rb") as f:
        return f.read()


def as_bytes(out: Any) -> bytes:
    """A transform's result as bytes.

    Raises:
        TypeError: not bytes, bytearray, memoryview or str.
    """
    if isinstance(out, bytes):
        return out
    if isinstance(out, (bytearray, memoryview)):
        return bytes(out)
    if isinstance(out, str):
        return out.encode()
    raise TypeError(f"transform must return bytes, not {type(out).__name__}")


async def stream_chunks(executor: concurrent.futures.Executor, start: Callable[[], Iterable[Any]], reader: Any,
                        failed: list[BaseException]) -> AsyncGenerator[bytes, None]:
    """Run ``start()`` (the user's ``transform_stream`` over ``reader``) in a worker
    thread, then one ``next()`` per chunk; a user error is also recorded in
    ``failed`` (so a PUT that carried the stream can tell it from a network error).
    Closes ``reader`` at the end; closing the generator early (``aclose``) also
    closes the transform's iterator, in a worker thread once its pending ``next()``
    returns (a thread cannot be interrupted)."""
    loop = asyncio.get_running_loop()
    it: Iterator[Any] | None = None
    cf: concurrent.futures.Future[Any] | None = None
    try:
        try:
            cf = executor.submit(lambda: iter(start()))
            started: Iterator[Any] = await asyncio.wrap_future(cf, loop=loop)
            it = started
            while True:
                cf = executor.submit(_next_chunk, started)
                chunk = await asyncio.wrap_future(cf, loop=loop)
                if chunk is _END:
                    return
                if chunk:
                    yield as_bytes(chunk)
        except Exception as e:
            failed.append(e)
            raise
    finally:
        close_quietly(reader)
        if it is not None:
            gen = it
            if cf is not None and not cf.done():
                cf.add_done_callback(lambda _f: executor.submit(close_quietly, gen))
            else:
                executor.submit(close_quietly, gen)
