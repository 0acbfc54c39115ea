"""Write coalescing under aiohttp's WebSocket writer (target and pod side).

A ws frame written by aiohttp is one ``transport.write``: one ``send()`` syscall,
one loopback TCP segment and one wakeup of the peer. :class:`CorkedTransport`
collects the frames written during one event-loop tick and sends them with one
``writelines`` at the end of the tick, or as soon as ``max_frames`` are
collected.

- Target (:mod:`aioetl.communicators.target.comm`): several job workers sharing
  a connection write their control frames in the same tick (profiling the ws path showed a
  ``send()`` per small control frame as the target's largest cost, 37% of
  samples for 10 KiB objects).
- Pod (:mod:`aioetl.communicators.pod.aiohttp_shell`): requests that arrived
  together are answered on the loop one after another without yielding
  (``ETLServer._ws_inline``, :mod:`aioetl.communicators.pod.ws_pipeline`), so
  their replies leave together, at most ``max_frames`` per send: the target
  then handles several replies per wakeup (one recv, warm caches) instead of
  being woken for each, while the pod keeps the rest of its queue to work on.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["FLUSH_BYTES", "CorkedTransport", "cork_ws"]

FLUSH_BYTES = 1 << 20  # buffered bytes that are sent at once: holding big replies saves nothing
_BARE_HEADER_MAX = 14  # a ws frame header with a 64-bit length and a mask


class CorkedTransport:
    """A transport proxy that buffers ``write`` calls until the end of the tick.

    Args:
        transport: the asyncio transport to wrap (everything but ``write``,
            ``close`` and ``write_eof``, which send the buffer first, is passed
            through).
        max_frames: send as soon as this many frames are buffered (0: only at
            the end of the tick); a write of at most 14 bytes is a large frame's
            bare header, which aiohttp writes apart from its payload, and does
            not count. More than :data:`FLUSH_BYTES` buffered are sent at once.
    """

    def __init__(self, transport: Any, max_frames: int = 0) -> None:
        self._t = transport
        self._buf: list[bytes] = []
        self._frames = 0
        self._bytes = 0
        self._max = max_frames
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._buf:
            self._loop.call_soon(self.flush)
        n = len(data)
        self._buf.append(bytes(data))  # no copy for bytes; aiohttp may hand over a bytearray
        self._bytes += n
        if n > _BARE_HEADER_MAX:  # aiohttp writes a large frame's header on its own: not a frame
            self._frames += 1
        if (self._max and self._frames >= self._max) or self._bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what is buffered now (one ``writelines``); nothing if the transport is closing."""
        buf, self._buf = self._buf, []
        self._frames = self._bytes = 0
        if buf and not self._t.is_closing():
            self._t.writelines(buf)

    def close(self) -> None:
        """Send what is buffered, then close (``abort`` still drops it, as asyncio's does)."""
        self.flush()
        self._t.close()

    def write_eof(self) -> None:
        self.flush()
        self._t.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


def cork_ws(ws: Any, max_frames: int = 0) -> bool:
    """Install :class:`CorkedTransport` under an aiohttp ws response's writer (client
    or server side) when its layout is the known one. Returns whether it did."""
    writer = getattr(ws, "_writer", None)
    if writer is None or not hasattr(writer, "transport") or isinstance(writer.transport, CorkedTransport):
        return False
    if writer.transport is None:
        return False
    writer.transport = CorkedTransport(writer.transport, max_frames)
    return True
