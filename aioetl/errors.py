"""The one exception tree of aioetl, and its mapping to AIStore's HTTP errors.

::

    AioetlError                      root; carries the HTTP status it maps to
    +-- ClientError (4xx)            the caller's mistake; never retried
    |   +-- InvalidName              bucket/object/ETL name AIStore would reject (400)
    |   +-- BadRequest               malformed body, bad query, bad range (400)
    |   +-- NotFound                 bucket, object or ETL does not exist (404)
    |   +-- AlreadyExists            bucket or ETL exists (409)
    |   +-- Conflict                 concurrent or shape conflict, e.g. "a" vs "a/b" (409)
    |   +-- RangeNotSatisfiable      Range outside the object (416)
    +-- ServerError (5xx)            our fault or the machine's
        +-- InsufficientStorage      disk full (507)
        +-- NodeUnavailable          a peer target did not answer (503)

Why the text matters: the aistore SDK classifies errors by the response *text*
(``ais://bck`` vs ``ais://bck/obj``, "etl job") and status, not by JSON fields
(``aistore/sdk/response_handler.py``), so messages follow the Go wording, e.g.
``bucket "ais://b" does not exist`` and ``object "ais://b/o" does not exist``.
The body shape follows ``cmn/err.go`` ``ErrHTTP``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AioetlError",
    "AlreadyExists",
    "BadRequest",
    "ClientError",
    "Conflict",
    "InsufficientStorage",
    "InvalidName",
    "NodeUnavailable",
    "NotFound",
    "RangeNotSatisfiable",
    "ServerError",
    "bck_not_found",
    "error_body",
    "obj_not_found",
]


class AioetlError(Exception):
    """Root of every error aioetl raises on purpose.

    Attributes:
        status: the HTTP status code this error is answered with.
    """

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ClientError(AioetlError):
    """A 4xx: the request cannot succeed as sent."""

    status = 400


class InvalidName(ClientError):
    """A bucket, object or ETL name that AIStore rejects (400)."""


class BadRequest(ClientError):
    """Malformed JSON, unknown action, bad query parameter (400)."""


class NotFound(ClientError):
    """A bucket, object or ETL that does not exist (404)."""

    status = 404


class AlreadyExists(ClientError):
    """A bucket or ETL that already exists (409)."""

    status = 409


class Conflict(ClientError):
    """A request that conflicts with current state (409)."""

    status = 409


class RangeNotSatisfiable(ClientError):
    """A Range header outside the object (416)."""

    status = 416


class ServerError(AioetlError):
    """A 5xx: the server failed; the SDK retries these."""

    status = 500


class InsufficientStorage(ServerError):
    """Out of disk space on a mountpath (507, as AIStore answers)."""

    status = 507


class NodeUnavailable(ServerError):
    """A peer node could not be reached (503)."""

    status = 503


def bck_not_found(bucket: str, provider: str = "ais") -> NotFound:
    """The Go text for a missing bucket: ``bucket "ais://b" does not exist``."""
    return NotFound(f'bucket "{provider}://{bucket}" does not exist')


def obj_not_found(bucket: str, obj: str, provider: str = "ais") -> NotFound:
    """The Go text for a missing object: ``object "ais://b/o" does not exist``."""
    return NotFound(f'object "{provider}://{bucket}/{obj}" does not exist')


def error_body(
    message: str, status: int, *, method: str = "", path: str = "", node: str = ""
) -> bytes:
    """Render the JSON body AIStore sends with an error (``cmn/err.go`` ErrHTTP).

    Args:
        message: human text; keeps the ``ais://bck[/obj]`` form the SDK parses.
        status: HTTP status code.
        method, path, node: request method, URL path and answering node id.

    Returns:
        UTF-8 JSON bytes.
    """
    doc: dict[str, Any] = {
        "message": message,
        "method": method,
        "url_path": path,
        "remote_addr": "",
        "caller": "",
        "node": node,
        "status": status,
    }
    return json.dumps(doc).encode()
