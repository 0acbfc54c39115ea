"""What every target-side communicator shares: the per-object errors, the
:class:`Reply` a communicator gives for one object, the FQN encoding AIStore puts
in requests (:func:`fqn_param`), the mapping of a pod's error replies
(:func:`pod_error`) and the base class (:class:`CommBase`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import aiohttp
import structlog

from aioetl.errors import AioetlError, BadRequest, ClientError, TransientError

__all__ = ["MAX_ERR_BODY", "CommBase", "EtlFailed", "EtlRetry", "Lender", "PodResult", "Reply", "fqn_param",
           "obj_uname", "obj_uri",
           "pod_error"]

MAX_ERR_BODY = 64 * 1024
log = structlog.get_logger("aioetl.comm")


class EtlFailed(ClientError):
    """The ETL failed on one object (transform error, pod gone, bad reply)."""

    status = 422


class EtlRetry(EtlFailed, TransientError):
    """The pod asked for the object to be sent again: its 503 (hpush/hpull with
    ``Ais-Etl-Retry-Reason: direct-put-transient``, as AIStore's pods send it when a
    direct put failed transiently; a ws error reply with status 503)."""

    status = 503


@dataclass
class PodResult:
    """Outcome of one ws round trip: ``data`` (transformed bytes) or ``delivered`` bytes by direct put."""

    data: bytes | None = None
    delivered: int = -1


@dataclass
class Reply:
    """A pod's answer for one object, whatever the comm type (:meth:`Communicator.send`).

    Exactly one of:

    - ``data``: the whole result in memory (ws);
    - ``stream``: the result's body, not yet read (hpush, hpull); ``size`` is its
      ``Content-Length`` when the pod sent one (else it is chunked);
    - ``delivered``: the pod put the result to its destination itself (direct put):
      the byte count it claims, ``-1`` when it names none (hpush/hpull 204).
      ``uncertain``: the claim cannot be told from a failed direct put
      (``aistore[etl]``'s ws pods answer "0" for both): ask the destination.

    ``etl`` and ``what`` name the ETL and the object in the errors of :meth:`read`
    and :meth:`chunks`.
    """

    etl: str
    what: str
    data: bytes | None = None
    stream: aiohttp.StreamReader | None = None
    size: int | None = None
    delivered: int | None = None
    uncertain: bool = False

    def broken(self, e: BaseException) -> EtlFailed:
        """The error for a reply that broke while being read (424, AIStore's pod-gone status)."""
        return EtlFailed(f'ETL error: etl job "{self.etl}": pod failed mid-transform of {self.what}: '
                         f"{type(e).__name__}: {e}", status=424)

    async def chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The result's bytes, in chunks; the whole of ``data``, or ``stream`` as it arrives.

        Raises:
            EtlFailed: the body broke, or ended short of its ``Content-Length`` (424).
            ValueError: the reply is "delivered", it has no bytes.
        """
        if self.data is not None:
            yield self.data
            return
        if self.stream is None:
            raise ValueError(f"{self.what}: the pod delivered it by direct put; there are no bytes to read")
        n = 0
        try:
            async for chunk in self.stream.iter_chunked(chunk_size):
                n += len(chunk)
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self.broken(e) from e
        if self.size is not None and n != self.size:
            raise self.broken(ValueError(f"{n} bytes where Content-Length said {self.size}"))

    async def read(self) -> bytes:
        """The whole result (see :meth:`chunks` for the errors)."""
        if self.data is not None:
            return self.data
        return b"".join([c async for c in self.chunks()])


_PATH_SEGMENT_SAFE = "$&+:=@"
# the characters of the fast path: the safe ones plus the two it escapes itself
_FAST_FQN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/%" + _PATH_SEGMENT_SAFE)


def obj_uname(bck: str, obj: str) -> str:
    """``ais/@#/b/o``, or ``aws/@#/b/o`` for the bucket key ``aws:b`` (the engine's
    ``aioetl.engine.core.names.make_uname``; communicators do not import the engine)."""
    p, sep, name = bck.partition(":")
    return f"{p}/@#/{name}/{obj}" if sep else f"ais/@#/{bck}/{obj}"


def obj_uri(bck: str, obj: str) -> str:
    """``ais://b/o`` or ``aws://b/o`` for messages (as :func:`obj_uname`)."""
    p, sep, name = bck.partition(":")
    return f"{p}://{name}/{obj}" if sep else f"ais://{bck}/{obj}"


def fqn_param(fqn: str) -> str:
    """``url.PathEscape(fqn)`` as AIStore puts it in ``etl_fqn`` (then query-encoded again).

    Fast path (ASCII names of the usual characters): only ``%`` and ``/`` need
    escaping, done with two ``str.replace`` (~0.3 us; ``urllib.parse.quote`` spends
    ~10 us on a 100-character FQN, one Python call per byte). Any other string goes
    through ``quote`` with the same safe set, so both paths give the same text.
    """
    if _FAST_FQN.issuperset(fqn):
        return fqn.replace("%", "%25").replace("/", "%2F")
    return quote(fqn, safe=_PATH_SEGMENT_SAFE)


def pod_error(etl: str, status: int, body: bytes | str) -> AioetlError:
    """Map a pod's error reply to the error the target answers with (module docstring)."""
    text = body if isinstance(body, str) else body[:MAX_ERR_BODY].decode(errors="replace")
    text = text.strip()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            text = str(doc.get("error") or doc.get("detail") or doc.get("message") or text)
    except ValueError:
        pass
    msg = f'ETL error: etl job "{etl}": {text or f"status {status}"}'
    if 400 <= status < 500:
        return EtlFailed(msg, status=status)
    return EtlFailed(msg)


class Lender(Protocol):
    """Lends a confined pod one object file at a time (``aioetl.engine.target.storage.FqnLender``)."""

    def lend(self, fqn: str) -> str: ...

    def give_back(self, path: str) -> None: ...


class CommBase:
    """Base of the comm types. ``lender``: when set (the pod is confined), every FQN
    sent is a link lent for the request's duration (:class:`Lender`), not the object's
    own file."""

    def __init__(self, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession,
                 lender: Lender | None = None) -> None:
        self.etl = etl
        self.pod_url = pod_url
        self.obj_timeout_s = obj_timeout_s
        self.session = session
        self.lender = lender

    @contextlib.contextmanager
    def _lent(self, fqn: str | None) -> Iterator[str | None]:
        """The FQN to send for one request: a link lent for the block's duration when the
        pod is confined (given back when the block ends: by then the pod's reply has
        begun, so it has opened its input), else ``fqn`` itself."""
        if not fqn or self.lender is None:
            yield fqn
            return
        lender = self.lender
        link = lender.lend(fqn)
        try:
            yield link
        finally:
            lender.give_back(link)

    def _timeout(self, what: str, timeout_s: float | None = None) -> BadRequest:
        return BadRequest(f'etl job "{self.etl}": timeout: {what} took longer than obj_timeout '
                          f"({timeout_s or self.obj_timeout_s:g}s) (Client.Timeout exceeded)")

    def _unreachable(self, e: Exception) -> EtlFailed:
        return EtlFailed(f'ETL error: etl job "{self.etl}": pod at {self.pod_url} unreachable or died: {e}', status=424)

    async def close(self) -> None:
        return None
