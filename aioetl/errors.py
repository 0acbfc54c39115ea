"""The one exception tree of aioetl, and its mapping to AIStore's HTTP errors.

::

    AioetlError                          root; carries the HTTP status it maps to
    +-- TransientError (503)             marker: the same call may succeed if retried
    +-- ClientError (4xx)                the caller's mistake; never retried
    |   +-- RequestError (400)           the request itself is malformed
    |   |   +-- InvalidName              bucket/object/ETL name AIStore would reject (400)
    |   |   +-- BadRequest               malformed body, bad query, bad range (400)
    |   |   +-- RangeNotSatisfiable      Range outside the object (416)
    |   +-- NotFound                     bucket, object or ETL does not exist (404)
    |   +-- AlreadyExists                bucket or ETL exists (409)
    |   +-- Conflict                     concurrent or shape conflict, e.g. "a" vs "a/b" (409)
    |   +-- Forbidden                    a remote backend refused the credentials (403)
    +-- ServerError (5xx)                our fault or the machine's
        +-- StorageError (500)           a mountpath failed: read, write, rename, fsync
        |   +-- InsufficientStorage      disk full (507)
        +-- PeerError (502)              another node answered wrongly
        |   +-- NodeUnavailable *        a peer target did not answer, or none is in the map (503)
        |   +-- RemoteError              a remote backend (S3) answered with an error (502)
        |       +-- RemoteUnavailable *  the remote backend did not answer or said 5xx/429 (503)
        +-- TransformError (500)         an ETL pod or the user's transform failed
        |   +-- PodUnavailable *         a pod did not answer, or asked to be retried (503)
        +-- XactionError (500)           a job (xaction) failed or ended in a bad state
        +-- ConfigError (500)            a node's own configuration is unusable

    * also a TransientError

Retrying: a failure that may go away by itself is a :class:`TransientError`
(``except TransientError`` / ``isinstance``); the classes marked ``*`` are.
A new retryable failure inherits from its domain class *and* TransientError,
domain first, so it keeps the domain's status::

    class PodUnavailable(TransformError, TransientError): status = 503

:func:`is_transient` also honours the older ``transient = True`` attribute that
some errors carry (``communicators``), until those raise TransientError subclasses.

Why the text matters: the aistore SDK classifies errors by the response *text*
(``ais://bck`` vs ``ais://bck/obj``, "etl job") and status, not by JSON fields
(``aistore/sdk/response_handler.py``), so messages follow the Go wording, e.g.
``bucket "ais://b" does not exist`` and ``object "ais://b/o" does not exist``.
The body shape follows ``cmn/err.go`` ``ErrHTTP``.

This module imports nothing else from aioetl, so every layer can use it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AioetlError",
    "AlreadyExists",
    "BadRequest",
    "ClientError",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "InvalidName",
    "NodeUnavailable",
    "NotFound",
    "PeerError",
    "PodUnavailable",
    "RangeNotSatisfiable",
    "RemoteError",
    "RemoteUnavailable",
    "RequestError",
    "ServerError",
    "StorageError",
    "TransformError",
    "TransientError",
    "XactionError",
    "bck_not_found",
    "error_body",
    "is_transient",
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


class TransientError(AioetlError):
    """Marker: a failure that may go away if the same call is made again (503).

    Catch it (``except TransientError``) or test it (``isinstance``) to decide on a
    retry; a concrete error inherits from its failure domain first and from this
    second (see the module docstring). Nothing raises a bare TransientError.
    """

    status = 503


class ClientError(AioetlError):
    """A 4xx: the request cannot succeed as sent."""

    status = 400


class RequestError(ClientError):
    """The request itself is malformed: its names, body, query or headers (400)."""

    status = 400


class InvalidName(RequestError):
    """A bucket, object or ETL name that AIStore rejects (400)."""


class BadRequest(RequestError):
    """Malformed JSON, unknown action, bad query parameter (400)."""


class RangeNotSatisfiable(RequestError):
    """A Range header outside the object (416)."""

    status = 416


class NotFound(ClientError):
    """A bucket, object or ETL that does not exist (404)."""

    status = 404


class AlreadyExists(ClientError):
    """A bucket or ETL that already exists (409)."""

    status = 409


class Conflict(ClientError):
    """A request that conflicts with current state (409)."""

    status = 409


class Forbidden(ClientError):
    """A remote backend refused the request: wrong credentials or no permission (403)."""

    status = 403


class ServerError(AioetlError):
    """A 5xx: the server failed; the SDK retries these."""

    status = 500


class StorageError(ServerError):
    """A mountpath operation failed: read, write, rename or fsync (500)."""

    status = 500


class InsufficientStorage(StorageError):
    """Out of disk space on a mountpath (507, as AIStore answers)."""

    status = 507


class PeerError(ServerError):
    """Another node of the cluster answered with an error or garbage (502)."""

    status = 502


class NodeUnavailable(PeerError, TransientError):
    """A peer node could not be reached, or the map has no target for it (503; transient)."""

    status = 503


class RemoteError(PeerError):
    """A remote backend (an S3 endpoint) answered with an error that is not the caller's (502)."""

    status = 502


class RemoteUnavailable(RemoteError, TransientError):
    """A remote backend did not answer, or answered 5xx/429 after the retries (503)."""

    status = 503


class TransformError(ServerError):
    """An ETL pod or the user's transform failed (500)."""

    status = 500


class PodUnavailable(TransformError, TransientError):
    """A pod did not answer, or answered 503 asking to be retried (503; transient)."""

    status = 503


class XactionError(ServerError):
    """A job (xaction) failed, or ended in a state it should not have (500)."""

    status = 500


class ConfigError(ServerError):
    """A node's own configuration (flags, data root, secret, mountpaths) is unusable (500)."""

    status = 500


def is_transient(exc: BaseException) -> bool:
    """True if retrying the call that raised ``exc`` may succeed.

    A :class:`TransientError`, or (until every caller raises one) any exception whose
    ``transient`` attribute is ``True``.
    """
    return isinstance(exc, TransientError) or getattr(exc, "transient", False) is True


def _uri(bucket: str, provider: str) -> str:
    p, sep, name = bucket.partition(":")  # a bucket key "aws:b" (aioetl.engine.core.names)
    return f"{p}://{name}" if sep else f"{provider}://{bucket}"


def bck_not_found(bucket: str, provider: str = "ais") -> NotFound:
    """The Go text for a missing bucket: ``bucket "ais://b" does not exist`` (``bucket`` may be a
    bucket key such as ``aws:b``)."""
    return NotFound(f'bucket "{_uri(bucket, provider)}" does not exist')


def obj_not_found(bucket: str, obj: str, provider: str = "ais") -> NotFound:
    """The Go text for a missing object: ``object "ais://b/o" does not exist`` (``bucket`` may be a
    bucket key such as ``aws:b``)."""
    return NotFound(f'object "{_uri(bucket, provider)}/{obj}" does not exist')


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
