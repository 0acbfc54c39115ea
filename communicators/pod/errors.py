"""The pod's errors and the one place they become replies.

::

    Exception
    ├── ETLDirectPutTransientError   transport: the PUT to the next hop lost its
    │                                connection (retryable: a type, not a message)
    └── TargetRequestError           protocol: the target answered an hpull GET non-2xx

Errors map to ``(status, message, headers)`` in :func:`error_reply`::

    InvalidPipelineError            400 "Invalid pipeline header: ..."
    FileNotFoundError               404 "Error processing object ...: file not found at ..."
    TargetRequestError (hpull GET)  the target's status
    ETLDirectPutTransientError      503 + Ais-Etl-Retry-Reason: direct-put-transient
                                    if bail_without_local_retry, else 502
    aiohttp.ClientError (hpull GET) 502 "Network error: ..."
    anything else                   500 "Processing error: <Type>: <message>"

Over ws (aioetl extension) an error is the TEXT frame ``{"error","status"}``.
"""

from __future__ import annotations

import asyncio

import aiohttp

from aioetl.communicators.wire.const import HEADER_ETL_RETRY_REASON, RETRY_REASON_DIRECT_PUT_TRANSIENT
from aioetl.communicators.wire.frames import InvalidPipelineError

__all__ = ["TRANSIENT_NET", "ETLDirectPutTransientError", "TargetRequestError", "error_reply", "is_transient"]


class ETLDirectPutTransientError(Exception):
    """A direct put (PUT to the next hop) failed with a transient network error.

    Same constructor and attributes as ``aistore.sdk.errors.ETLDirectPutTransientError``.
    A transform may raise it too. ``bail_without_local_retry=True`` makes the pod
    answer 503 + ``Ais-Etl-Retry-Reason: direct-put-transient`` (the target may
    re-send the object); otherwise the pod answers 502 (retries exhausted).

    Args:
        url: the next hop.
        cause: the underlying error.
        bail_without_local_retry: the source was one-shot, nothing was retried.
    """

    def __init__(self, url: str, cause: BaseException, bail_without_local_retry: bool = False) -> None:
        self.url = url
        self.cause = cause
        self.bail_without_local_retry = bail_without_local_retry
        super().__init__(f"direct_put to {url!r} failed with transient error: {type(cause).__name__}({cause})")


class TargetRequestError(Exception):
    """hpull: the target answered the pod's ``GET`` with a non-2xx ``status``."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(f"Target request failed: HTTP {status}: {text[:512]}")


TRANSIENT_NET = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)
"""aiohttp's errors that mean "the connection to the next hop went away": retryable."""


def is_transient(e: BaseException) -> bool:
    """Ours or aistore's ETLDirectPutTransientError (duck-typed: no aistore import)."""
    return isinstance(e, ETLDirectPutTransientError) or (
        type(e).__name__ == "ETLDirectPutTransientError" and hasattr(e, "bail_without_local_retry")
    )


def error_reply(e: BaseException, path: str) -> tuple[int, str, dict[str, str]]:
    """Map an error met while serving ``path`` to ``(status, message, headers)`` (table above)."""
    if isinstance(e, InvalidPipelineError):
        return 400, f"Invalid pipeline header: {e}", {}
    if isinstance(e, FileNotFoundError):
        where = e.filename or path
        return 404, f"Error processing object {path!r}: file not found at {where!r}.", {}
    if isinstance(e, TargetRequestError):
        return e.status, str(e), {}
    if is_transient(e):
        if getattr(e, "bail_without_local_retry", False):
            return 503, f"Direct put bailed (one-shot body): {e}", {
                HEADER_ETL_RETRY_REASON: RETRY_REASON_DIRECT_PUT_TRANSIENT}
        return 502, f"Direct put failed after retries: {e}", {}
    if isinstance(e, aiohttp.ClientError):
        return 502, f"Network error: {type(e).__name__}: {e}", {}
    return 500, f"Processing error: {type(e).__name__}: {e}", {}
