"""The direct put: the pod's ``PUT`` of a result to the next hop of the pipeline
(another ETL stage, or a target), with local retries when the body can be replayed.

A lost, refused, reset or timed-out connection is :class:`.errors.ETLDirectPutTransientError`
(retryable); any other failure to talk to the next hop is an answer of 500; the
next hop's own answer is mapped by :func:`.wire.frames.direct_put_outcome`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import yarl

from aioetl.communicators.pod.errors import TRANSIENT_NET, ETLDirectPutTransientError
from aioetl.communicators.wire.const import HEADER_DIRECT_PUT_LENGTH, HEADER_NODE_URL
from aioetl.communicators.wire.frames import (
    DirectPutOutcome,
    backoff_delay_s,
    compose_direct_put_url,
    direct_put_outcome,
)

__all__ = ["DirectPutClient"]


class DirectPutClient:
    """Sends results on to the next hop over one HTTP session.

    Args:
        session: the pod's outbound session (not closed here).
        host_target: this pod's target URL (``AIS_TARGET_URL``): a next hop that is
            this target gets the object path appended to it.
        auth: headers for requests to targets (``Authorization``), may be empty.
        retries: local retries of a replayable put.
        backoff_first_s: delay before the first retry (doubles, capped).
        logger: where failures and retries are logged.
    """

    def __init__(self, session: aiohttp.ClientSession, *, host_target: str, auth: dict[str, str], retries: int,
                 backoff_first_s: float, logger: logging.Logger) -> None:
        self.session = session
        self.host_target = host_target
        self.auth = auth
        self.retries = retries
        self.backoff_first_s = backoff_first_s
        self.logger = logger

    async def put(self, first: str, rest: str, data: bytes | AsyncIterator[bytes], path: str, etl_args: str,
                  failed: list[BaseException] | None = None) -> DirectPutOutcome:
        """One ``PUT`` of ``data`` to ``first``, carrying the rest of the pipeline.

        Args:
            first: the next hop's URL.
            rest: the hops after it (``Ais-Node-Url``), ``""`` if none.
            data: the result, in hand or streamed.
            path: the object's path, as the pod received it.
            etl_args: the request's ``etl_args``.
            failed: where a streamed transform records its error.

        Raises:
            ETLDirectPutTransientError: connection lost, refused, reset or timed out.
            Exception: the streamed transform failed (from ``failed``).
        """
        url = compose_direct_put_url(first, self.host_target, path, etl_args)
        headers = dict(self.auth)
        if rest:
            headers[HEADER_NODE_URL] = rest
        sent = [0]
        if isinstance(data, (bytes, bytearray, memoryview)):
            sent[0] = len(data)
            payload: Any = data
        else:
            payload = _counting(data, sent)
        try:
            async with self.session.put(yarl.URL(url, encoded=True), data=payload, headers=headers) as resp:
                body = await resp.read()
                outcome = direct_put_outcome(resp.status, body, sent[0], resp.headers.get(HEADER_DIRECT_PUT_LENGTH))
        except TRANSIENT_NET as e:
            if failed:
                raise failed[0] from None
            raise ETLDirectPutTransientError(first, e) from e
        except Exception as e:
            if failed:
                raise failed[0] from None
            self.logger.error("direct put to %s failed: %r", url, e)
            return DirectPutOutcome(500, repr(e).encode(), 0)
        if failed:
            raise failed[0]
        if outcome.status >= 300:
            self.logger.error("direct put to %s: HTTP %d: %s", url, outcome.status, outcome.body[:256])
        return outcome

    async def put_retrying(self, first: str, rest: str, data: bytes, path: str, etl_args: str) -> DirectPutOutcome:
        """:meth:`put` for bytes in hand: they are replayable, so retry locally with backoff.

        Raises:
            ETLDirectPutTransientError: still transient after the last retry.
        """
        retries = self.retries
        for attempt in range(retries + 1):
            try:
                return await self.put(first, rest, data, path, etl_args)
            except ETLDirectPutTransientError as e:
                if attempt >= retries:
                    raise
                await self.back_off(attempt, retries, e, "direct put")
        raise AssertionError("unreachable")

    async def back_off(self, attempt: int, retries: int, e: BaseException, what: str) -> None:
        """Log a failed ``attempt`` (0-based) of ``retries + 1`` and sleep before the next."""
        delay = backoff_delay_s(attempt, self.backoff_first_s)
        self.logger.warning("%s attempt %d/%d failed, retrying in %.2fs: %s", what, attempt + 1, retries + 1, delay, e)
        await asyncio.sleep(delay)


async def _counting(chunks: AsyncIterator[bytes], sent: list[int]) -> AsyncIterator[bytes]:
    async for c in chunks:
        sent[0] += len(c)
        yield c
