"""Target-side communicators: how a target talks to its ETL pod.

- :class:`HpushComm` (``hpush://``): ``PUT <pod>/<bck>/<obj>?etl_fqn=..&etl_args=..``
  over a pool of keep-alive connections; the pod reads the object from its FQN
  (AIStore's default, ``ext/etl/communicator.go``) or from the body.
- :class:`HpullComm` (``hpull://``): inline GETs are answered with a 307 to the
  pod, which then reads the object itself; pipelines are refused (400), as
  AIStore does, because a redirect drops the ``Ais-Node-Url`` header.
- :class:`WsComm` (``ws://``): a session of persistent WebSocket connections;
  with our pods requests are pipelined and replies carry the request id; with
  AIStore's pods (order-based replies, §1.5) one request per connection.

Every type applies a per-object timeout (``obj_timeout``), ws included
(AIStore has none there). Pod answers map to errors in one place,
:func:`pod_error`:

    pod 200/202       -> transformed bytes
    pod 204 / ws TEXT digits -> delivered by direct put ("skip")
    pod 4xx           -> the same 4xx, text "ETL error: <body>"
    pod 5xx           -> 422 "ETL error: <body>" (a transform failure is not a
                         server fault the client should retry: the SDK retries
                         5xx for ~90 s)
    ws TEXT other     -> 422 (our pods send {"error","status"}; upstream FastAPI
                         pods send "Transform error: ...", which AIStore loses)
    pod unreachable   -> 424 "ETL pod ... unreachable"
    timeout           -> 400 "... timeout ..." (Go's text contains "Timeout" too)
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import aiohttp

from aioetl.communicators.target.base import (
    CommBase,
    EtlFailed,
    EtlRetry,
    Lender,
    PodResult,
    Reply,
    fqn_param,
    pod_error,
)
from aioetl.communicators.target.http import HpullComm, HpushComm
from aioetl.communicators.target.ws import WsComm, classify_ws_reply

__all__ = [
    "CommBase",
    "CommFactory",
    "Communicator",
    "EtlFailed",
    "EtlRetry",
    "HpullComm",
    "HpushComm",
    "Lender",
    "PodResult",
    "Reply",
    "WsComm",
    "classify_ws_reply",
    "fqn_param",
    "make_communicator",
    "pod_error",
]


class Communicator(Protocol):
    """How a target sends objects to one ETL pod: ``hpush://``, ``hpull://`` or ``ws://``
    (AIStore ``ext/etl/communicator.go``). Built by :func:`make_communicator`.

    Attributes:
        etl: the ETL name (in error texts).
        lender: lends a confined pod the files it reads by FQN (None: unconfined).
    """

    etl: str
    lender: Lender | None

    def send(self, bck: str, obj: str, *, fqn: str | None, etl_args: str = "", pipeline: Sequence[str] = (),
             direct: bool = False, timeout_s: float | None = None) -> AbstractAsyncContextManager[Reply]:
        """Send one object; ``async with`` it to get the :class:`Reply` (released on exit).

        Args:
            fqn: the file the pod reads (lent when confined); None is not supported by
                every type (the target always has a local FQN for its own objects).
            pipeline: next hops (``Ais-Node-Url``); with ``direct`` the last one is
                the destination target, and "delivered" is the valid answer.
            timeout_s: per-object limit (default: the ETL's ``obj_timeout``).

        Raises:
            EtlFailed: an error reply, a reply of the wrong kind, the pod gone (424).
            BadRequest: the timeout (text has "timeout", as AIStore's).
        """
        ...

    def redirect_url(self, uname: str, fqn: str | None, etl_args: str) -> str | None:
        """Where an inline GET goes instead (hpull: the pod), or None (the target relays)."""
        ...

    async def close(self) -> None: ...


class CommFactory(Protocol):
    """The shape of :func:`make_communicator` (a target is given one; tests pass their own)."""

    def __call__(self, comm_type: str, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession,
                 *, lender: Lender | None = None, n_conns: int = 2, conns_per_process: int = 0) -> Communicator: ...


def make_communicator(comm_type: str, etl: str, pod_url: str, obj_timeout_s: float, session: aiohttp.ClientSession,
                      *, lender: Lender | None = None, n_conns: int = 2,
                      conns_per_process: int = 0) -> Communicator:
    """The communicator of ``comm_type`` (``"hpush://"``, ``"hpull://"`` or ``"ws://"``,
    AIStore's ``etl.Hpush``/``Hpull``/``WebSocket``) for the pod at ``pod_url``.

    ``n_conns``/``conns_per_process``: ws connections (see :class:`WsComm`).

    Raises:
        ValueError: an unknown comm type.
    """
    if comm_type == "ws://":
        return WsComm(etl, pod_url, obj_timeout_s, session, n_conns=n_conns, conns_per_process=conns_per_process,
                      lender=lender)
    if comm_type == "hpull://":
        return HpullComm(etl, pod_url, obj_timeout_s, session, lender)
    if comm_type == "hpush://":
        return HpushComm(etl, pod_url, obj_timeout_s, session, lender)
    raise ValueError(f"unknown communication type {comm_type!r}")


# Go's url.PathEscape keeps the unreserved characters and "$&+:=@" (RFC 3986 §3.3 sub-delims
# a path segment may hold, minus ";" and ","); FQNs hold "/", "@" and "%" (``@ais/<bck>/%ob/``).
