"""The fast default pod server: :class:`AiohttpServer`, an :class:`~.server.ETLServer`
served by aiohttp's low-level HTTP server on uvloop (:mod:`.aiohttp_shell`: routes,
worker processes).

:func:`make_handler` and :func:`serve` are re-exported from the shell.
"""

from __future__ import annotations

from aioetl.communicators.pod.aiohttp_shell import make_handler, serve
from aioetl.communicators.pod.server import ETLServer

__all__ = ["AiohttpServer", "make_handler", "serve"]


class AiohttpServer(ETLServer):
    """An ETL server served by aiohttp (the default; same user API as aistore[etl]).
    Constructor: :class:`~.server.ETLServer`'s (``host``, ``port``, ``config``)."""

    def start(self, *, workers: int = 1) -> None:
        """Serve until SIGTERM/SIGINT (blocking); ``workers`` processes share the port."""
        serve(self, self.host, self.port, workers=workers)
