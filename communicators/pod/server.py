"""The pod-side ETL server framework: :class:`ETLServer`, API-compatible with
``aistore[etl]`` 2.0.0's ``ETLServer``, and the framework-neutral request logic
that both of our web servers (:mod:`.aiohttp_server`, :mod:`.fastapi_server`)
wrap.

A user subclasses a server and overrides one of

- ``transform(data, path, etl_args) -> bytes`` (buffered): ``data`` is the
  object's bytes, or its local path as ``str`` when ``ETL_DIRECT_FQN=true`` and
  the target passed an FQN;
- ``transform_stream(reader, path, etl_args) -> Iterator[bytes]`` (streaming):
  ``reader`` is a binary file-like object (the opened file, the request body, or
  the target's response), read in a worker thread; output chunks go out as they
  come, so a large object is never held whole.

Streaming is used iff ``transform_stream`` is overridden and ``transform`` is
not (as aistore[etl]).

Request handling (protocol reference §1-§3): the source is the body, the local
file (``etl_fqn``) or a ``GET`` from the target (hpull); the result is returned,
or sent on with a ``PUT`` to the next hop of ``Ais-Node-Url`` (another ETL stage,
or a target: direct put), and the caller is answered per §2.4.

Errors map to replies in one place (:meth:`ETLServer.error_reply`)::

    InvalidPipelineError            400 "Invalid pipeline header: ..."
    FileNotFoundError               404 "Error processing object ...: file not found at ..."
    TargetRequestError (hpull GET)  the target's status
    ETLDirectPutTransientError      503 + Ais-Etl-Retry-Reason: direct-put-transient
                                    if bail_without_local_retry, else 502
    aiohttp.ClientError (hpull GET) 502 "Network error: ..."
    anything else                   500 "Processing error: <Type>: <message>"

Over ws (aioetl extension) an error is the TEXT frame ``{"error","status"}``.

Where ``transform()`` runs, decided per call (:class:`_OffloadPolicy`) from an
EWMA of past calls' wall time, after 4 warm-up calls in a thread:

- on the event loop when calls have been fast (under 2 ms) and the input is
  small (<= 256 KiB): a thread hop would cost more than the call;
- also on the event loop when calls are CPU-bound, not long (under 100 ms), the
  input is at most 16 MiB, and the server runs at least as many processes as
  this process has usable CPUs (``NUM_WORKERS``; :meth:`ETLServer.set_processes`):
  the processes already use every core, and handing each call to a thread costs
  a GIL hand-off between the loop and the worker per C call the transform makes
  (Pillow's decoder releases and re-takes the GIL per chunk). CPU-bound means
  that on-loop calls spent over 0.75 of their running time on the CPU (thread
  CPU time / (wall time - time runnable but waiting for a CPU)); a slow
  transform is probed on the loop once after the warm-up and once per 256 calls
  in threads after that. Measured with ``perf.bench_workloads`` (1,000 PNG
  thumbnails, 2 cores, NUM_WORKERS=2, ws): engine overhead 0.07-0.10 on the loop
  vs 0.17 in threads, same rounds;
- else in a worker thread (I/O-bound or long transforms, fewer processes than
  CPUs, large inputs), so one slow call does not hold up the others.

``transform_in_thread = True/False`` on the class forces one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Protocol

import aiohttp
import yarl

from aioetl.communicators.wire.const import (
    DEFAULT_DIRECT_PUT_RETRIES,
    ENV_AUTHN_TOKEN,
    ENV_DIRECT_FQN,
    ENV_DIRECT_PUT_BACKOFF_S,
    ENV_DIRECT_PUT_RETRIES,
    ENV_TARGET_URL,
    HEADER_AUTHORIZATION,
    HEADER_DIRECT_PUT_LENGTH,
    HEADER_ETL_RETRY_REASON,
    HEADER_NODE_URL,
    RETRY_BACKOFF_FIRST_S,
    RETRY_REASON_DIRECT_PUT_TRANSIENT,
)
from aioetl.communicators.wire.frames import (
    DirectPutOutcome,
    InvalidPipelineError,
    WsControl,
    WsProtocolError,
    backoff_delay_s,
    compose_direct_put_url,
    direct_put_outcome,
    encode_ws_delivered,
    encode_ws_error,
    frame_ws_reply,
    parse_etl_pipeline,
    sanitize_fqn,
    target_get_url,
)

__all__ = [
    "BodySource",
    "ETLDirectPutTransientError",
    "ETLServer",
    "PodConfig",
    "PodReply",
    "PodRequest",
    "TargetRequestError",
    "WsConnection",
]

INLINE_MAX_BYTES = 256 * 1024
INLINE_MAX_S = 0.002
CPU_BOUND_SHARE = 0.75
INLINE_CPU_MAX_S = 0.1
INLINE_CPU_MAX_BYTES = 16 << 20
PROBE_EVERY = 256
READ_CHUNK_BYTES = 1 << 20
_END = object()


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


def _is_transient(e: BaseException) -> bool:
    """Ours or aistore's ETLDirectPutTransientError (duck-typed: no aistore import)."""
    return isinstance(e, ETLDirectPutTransientError) or (
        type(e).__name__ == "ETLDirectPutTransientError" and hasattr(e, "bail_without_local_retry")
    )


_TRANSIENT_NET = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


def _parse_bool(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "t", "yes", "y", "on")


@dataclass(frozen=True, kw_only=True)
class PodConfig:
    """What a pod learns from its environment (read once, by :meth:`from_env`).

    Attributes:
        target_url: ``AIS_TARGET_URL``: ``<target>/v1/etl/_object/<etl>/<secret>``.
        direct_fqn: ``ETL_DIRECT_FQN``: buffered ``transform()`` gets the FQN as ``str``.
        direct_put_retries: ``AIS_DIRECT_PUT_RETRIES`` (default 3): local retries of a
            replayable direct put.
        direct_put_backoff_s: first retry delay (doubles, capped at 30 s);
            ``AIOETL_DIRECT_PUT_BACKOFF_S``, default 1 s as aistore[etl].
        authn_token: ``AIS_AUTHN_TOKEN``: sent as ``Authorization: Bearer`` on
            requests to targets.
    """

    target_url: str
    direct_fqn: bool = False
    direct_put_retries: int = DEFAULT_DIRECT_PUT_RETRIES
    direct_put_backoff_s: float = RETRY_BACKOFF_FIRST_S
    authn_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PodConfig:
        """Read the pod's environment.

        Raises:
            EnvironmentError: ``AIS_TARGET_URL`` is missing or empty (as aistore[etl]),
                or a number does not parse.
        """
        env = os.environ if environ is None else environ
        target = (env.get(ENV_TARGET_URL) or "").strip()
        if not target:
            raise OSError(f"Environment variable '{ENV_TARGET_URL}' must be set.")
        try:
            retries = int(env.get(ENV_DIRECT_PUT_RETRIES) or DEFAULT_DIRECT_PUT_RETRIES)
            backoff = float(env.get(ENV_DIRECT_PUT_BACKOFF_S) or RETRY_BACKOFF_FIRST_S)
        except ValueError as e:
            raise OSError(f"bad direct-put retry settings: {e}") from None
        return cls(
            target_url=target.rstrip("/"),
            direct_fqn=_parse_bool(env.get(ENV_DIRECT_FQN)),
            direct_put_retries=max(0, retries),
            direct_put_backoff_s=max(0.0, backoff),
            authn_token=env.get(ENV_AUTHN_TOKEN) or None,
        )


# -- the framework-neutral request and reply ---------------------------------------


class BodySource(Protocol):
    """The request body as the web framework hands it over."""

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end."""
        ...

    async def read_all(self) -> bytes:
        """The whole body."""
        ...


@dataclass(slots=True)
class PodRequest:
    """One hpush/hpull request, decoded.

    Attributes:
        is_get: hpull (``GET``) rather than hpush (``PUT``).
        path: decoded path without the leading ``/`` (``bck/obj`` or ``ais/@#/bck/obj``).
        etl_args: query ``etl_args``, stripped.
        fqn: query ``etl_fqn`` after query decoding (still path-escaped), ``""`` if absent.
        pipeline: ``Ais-Node-Url`` or None.
        body: the request body.
    """

    is_get: bool
    path: str
    etl_args: str
    fqn: str
    pipeline: str | None
    body: BodySource


@dataclass(slots=True)
class PodReply:
    """What to answer. ``stream`` (chunked 200) replaces ``body`` when set; its first
    chunk has already been produced, so an early transform error is a plain 500."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    stream: AsyncIterator[bytes] | None = None


class WsConnection(Protocol):
    """A WebSocket as the web framework hands it over."""

    async def recv(self) -> tuple[bool, bytes | str] | None:
        """``(is_binary, data)`` of the next message, or None once closed."""
        ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_text(self, data: str) -> None: ...


# -- helpers: threads <-> loop --------------------------------------------------------


class _LoopReader(io.RawIOBase):
    """A blocking binary reader, used from a worker thread, over an async ``read(n)``
    running on ``loop``. ``close()`` (from any thread) fails a pending read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, aread: Callable[[int], Awaitable[bytes]],
                 on_close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._loop = loop
        self._aread = aread
        self._on_close = on_close
        self._pending: concurrent.futures.Future[bytes] | None = None
        self._eof = False
        self._loop_thread = threading.get_ident()  # constructed on the loop

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed reader")
        if size is None or size < 0:
            return self.readall()
        if size == 0 or self._eof:
            return b""
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("the request body reader must be read from a worker thread, not the event loop")
        cf = asyncio.run_coroutine_threadsafe(self._aread(size), self._loop)  # type: ignore[arg-type]
        self._pending = cf
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
        parts = []
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


def _next_chunk(it: Iterator[bytes]) -> Any:
    return next(it, _END)


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:
        pass


class _OffloadPolicy:
    """Decides per call whether ``transform()`` runs on the loop or in a thread
    (pure state, fed by :meth:`record`; the rules are in the module docstring).

    ``inline_share`` is the CPU share of the last on-loop calls: thread CPU time /
    (wall time - time spent runnable but waiting for a CPU). It is measured only
    on the loop, because in worker threads contention for the GIL and the CPUs
    hides it (2 processes x 8 threads of Pillow thumbnails on 2 cores showed 0.13).
    """

    def __init__(self, forced: bool | None, *, max_inline_bytes: int = INLINE_MAX_BYTES,
                 max_inline_s: float = INLINE_MAX_S, warmup: int = 4) -> None:
        self.forced = forced
        self.max_inline_bytes = max_inline_bytes
        self.max_inline_s = max_inline_s
        self.warmup = warmup
        self.samples = 0
        self.ewma_s = 0.0
        self.inline_share: float | None = None  # None: not probed yet
        self.since_probe = 0  # calls in threads since the last on-loop call
        self.verify_next = False
        self.cores_covered = False  # the server runs >= usable-CPU processes

    def in_thread(self, nbytes: int) -> bool:
        if self.forced is not None:
            return self.forced
        if self.samples < self.warmup:
            return True
        if nbytes <= self.max_inline_bytes and self.ewma_s <= self.max_inline_s:
            return False  # fast: a thread hop would cost more than the call
        if not self.cores_covered or nbytes > INLINE_CPU_MAX_BYTES or self.ewma_s > INLINE_CPU_MAX_S:
            return True
        if self.inline_share is None or self.since_probe >= PROBE_EVERY:
            return False  # probe: measure the CPU share on the loop
        return self.inline_share < CPU_BOUND_SHARE

    @property
    def measure_share(self) -> bool:
        """Whether the next on-loop call should also read the scheduler's wait time
        (two ``/proc`` reads): on a probe, and after a call whose plain CPU share
        (a lower bound of the real one) was under the threshold."""
        return (self.forced is None and self.samples >= self.warmup and self.ewma_s > self.max_inline_s
                and (self.inline_share is None or self.since_probe > 0 or self.verify_next))

    def record(self, seconds: float, *, inline: bool = False, share: float | None = None,
               exact: bool = True) -> None:
        """Feed one call: wall ``seconds``; for on-loop calls the CPU ``share``,
        ``exact`` (wait time subtracted) or a lower bound (CPU time / wall time)."""
        self.ewma_s = seconds if self.samples == 0 else 0.8 * self.ewma_s + 0.2 * seconds
        self.samples += 1
        if not inline:
            self.since_probe += 1
            return
        self.since_probe = 0
        if share is None:
            return
        if not exact and share < CPU_BOUND_SHARE:
            self.verify_next = True  # I/O, or only waiting for a CPU: measure the next one
            return
        self.verify_next = False
        self.inline_share = share if self.inline_share is None else 0.7 * self.inline_share + 0.3 * share


class _ByteBudget:
    """At most ``max_items`` and ``max_bytes`` in flight; one item always passes when
    nothing is in flight (so one huge object cannot deadlock). One acquirer at a
    time (a ws connection's reader); :meth:`release` is synchronous."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items = 0
        self.bytes = 0
        self._waiter: asyncio.Future[None] | None = None

    def _fits(self, n: int) -> bool:
        return self.items == 0 or (self.items < self.max_items and self.bytes + n <= self.max_bytes)

    async def acquire(self, n: int) -> None:
        while not self._fits(n):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.items += 1
        self.bytes += n

    def release(self, n: int) -> None:
        self.items -= 1
        self.bytes -= n
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


# -- the base class --------------------------------------------------------------------


class ETLServer:
    """Base of every aioetl ETL server (API of ``aistore[etl]``'s ``ETLServer``).

    Subclasses override :meth:`transform` or :meth:`transform_stream`, optionally
    :meth:`get_mime_type`, and call ``super().__init__()`` from their own
    ``__init__``. Attributes kept for compatibility: ``host_target``,
    ``direct_fqn``, ``direct_put_retries``, ``token``, ``logger``, ``use_streaming``.

    Args:
        config: the pod settings; by default read from the environment
            (:meth:`PodConfig.from_env`).

    Raises:
        EnvironmentError: ``AIS_TARGET_URL`` is not set.
        TypeError: neither ``transform`` nor ``transform_stream`` is overridden.
    """

    transform_in_thread: ClassVar[bool | None] = None  # None: decide per call (module docstring)
    ws_max_inflight: ClassVar[int] = 64  # pipelined ws requests processed at once, per connection
    ws_max_inflight_bytes: ClassVar[int] = 256 << 20
    max_threads: ClassVar[int] = 64

    def __init__(self, *, config: PodConfig | None = None) -> None:
        cfg = config if config is not None else PodConfig.from_env()
        self.config = cfg
        self.host_target = cfg.target_url
        self.direct_fqn = cfg.direct_fqn
        self.direct_put_retries = cfg.direct_put_retries
        self.token = cfg.authn_token
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                                format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
        self.logger = logging.getLogger(type(self).__name__)
        has_transform = type(self).transform is not ETLServer.transform
        has_stream = type(self).transform_stream is not ETLServer.transform_stream
        if not has_transform and not has_stream:
            raise TypeError(f"{type(self).__name__} must override either transform() or transform_stream()")
        self.use_streaming = has_stream and not has_transform
        self._policy = _OffloadPolicy(self.transform_in_thread)
        self.worker = (0, 1)  # (index, count) of this process among NUM_WORKERS
        self._session: aiohttp.ClientSession | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._auth: dict[str, str] = {HEADER_AUTHORIZATION: f"Bearer {self.token}"} if self.token else {}

    # -- user API ------------------------------------------------------------
    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        """Transform one object (buffered mode).

        Args:
            data: the object's bytes; its local path (``str``) when
                ``ETL_DIRECT_FQN=true`` and this is the first stage of an FQN request.
            path: ``bck/obj`` (hpush), ``ais/@#/bck/obj`` (hpull), ``obj`` (ws).
            etl_args: per-request arguments (query ``etl_args``), stripped.

        Returns:
            The transformed bytes.
        """
        raise NotImplementedError("Subclass must override either transform() or transform_stream()")

    def transform_stream(self, reader: BinaryIO, path: str, etl_args: str) -> Iterator[bytes]:
        """Transform one object as a stream (runs in a worker thread).

        Args:
            reader: binary file-like input; ``read(n)`` blocks until data arrives.
            path: as for :meth:`transform`.
            etl_args: as for :meth:`transform`.

        Yields:
            Output chunks.
        """
        raise NotImplementedError("Subclass must override either transform() or transform_stream()")

    def get_mime_type(self) -> str:
        """Content type of a transformed reply (default ``application/octet-stream``)."""
        return "application/octet-stream"

    def sanitize_fqn(self, fqn: str) -> str:
        """Decode an ``etl_fqn`` value into a normalized absolute path (:func:`.wire.sanitize_fqn`)."""
        return sanitize_fqn(fqn)

    def start(self) -> None:
        """Serve on ``self.host:self.port`` with the aiohttp server until SIGTERM (blocking)."""
        from aioetl.communicators.pod.aiohttp_server import serve

        serve(self, getattr(self, "host", "0.0.0.0"), int(getattr(self, "port", 8000)))

    # -- lifecycle -------------------------------------------------------------
    def set_processes(self, n: int, index: int = 0) -> None:
        """Tell the server how many processes serve its port (``NUM_WORKERS``) and
        which one this is (0-based). With at least one per usable CPU, CPU-bound
        transforms run on the event loop (module docstring); ``(index, n)`` goes
        out as the ``Aioetl-Worker`` ws handshake header. Call before serving."""
        self._policy.cores_covered = n >= _usable_cpus()
        self.worker = (index, n)

    async def startup(self) -> None:
        """Open the outbound HTTP session and the worker threads (call on the serving loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                auto_decompress=False,
            )
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.max_threads, thread_name_prefix="etl")

    async def shutdown(self) -> None:
        """Close what :meth:`startup` opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ETLServer.startup() has not run")
        return self._session

    @property
    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            raise RuntimeError("ETLServer.startup() has not run")
        return self._executor

    # -- errors ------------------------------------------------------------------
    def error_reply(self, e: BaseException, path: str) -> tuple[int, str, dict[str, str]]:
        """Map an error to ``(status, message, headers)`` (module docstring)."""
        if isinstance(e, InvalidPipelineError):
            return 400, f"Invalid pipeline header: {e}", {}
        if isinstance(e, FileNotFoundError):
            where = e.filename or path
            return 404, f"Error processing object {path!r}: file not found at {where!r}.", {}
        if isinstance(e, TargetRequestError):
            return e.status, str(e), {}
        if _is_transient(e):
            if getattr(e, "bail_without_local_retry", False):
                return 503, f"Direct put bailed (one-shot body): {e}", {
                    HEADER_ETL_RETRY_REASON: RETRY_REASON_DIRECT_PUT_TRANSIENT}
            return 502, f"Direct put failed after retries: {e}", {}
        if isinstance(e, aiohttp.ClientError):
            return 502, f"Network error: {type(e).__name__}: {e}", {}
        return 500, f"Processing error: {type(e).__name__}: {e}", {}

    def _log_error(self, status: int, msg: str) -> None:
        if status >= 500:
            self.logger.error("%s", msg)
        else:
            self.logger.warning("%s", msg)

    # -- sources -------------------------------------------------------------------
    async def _read_file(self, path: str) -> bytes:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise FileNotFoundError(2, "No such file or directory", path) from None
        if size <= INLINE_MAX_BYTES:
            with open(path, "rb") as f:
                return f.read()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, _read_path, path)

    async def _get_from_target(self, path: str) -> bytes:
        url = target_get_url(self.host_target, path)
        async with self.session.get(yarl.URL(url, encoded=True), headers=self._auth) as resp:
            if resp.status >= 300:
                raise TargetRequestError(resp.status, (await resp.read()).decode(errors="replace"))
            return await resp.read()

    async def _open_reader(self, fqn: str, path: str, is_get: bool, body: BodySource | None) -> io.RawIOBase | BinaryIO:
        """The ``transform_stream`` input: the opened file, the target's response, or the body."""
        if fqn:
            return open(sanitize_fqn(fqn), "rb")
        loop = asyncio.get_running_loop()
        if is_get:
            url = target_get_url(self.host_target, path)
            resp = await self.session.get(yarl.URL(url, encoded=True), headers=self._auth)
            if resp.status >= 300:
                text = (await resp.read()).decode(errors="replace")
                resp.release()
                raise TargetRequestError(resp.status, text)
            return _LoopReader(loop, resp.content.read, resp.close)
        assert body is not None
        return _LoopReader(loop, body.read)

    # -- transform calls --------------------------------------------------------------
    async def _call_transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        nbytes = len(data) if isinstance(data, (bytes, bytearray)) else 0
        if self._policy.in_thread(nbytes):
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.executor, self._timed_transform, data, path, etl_args)
        else:
            out = self._inline_transform(data, path, etl_args)
        return _as_bytes(out)

    def _inline_transform(self, data: bytes | str, path: str, etl_args: str) -> Any:
        """Run on the loop, timing the call and its thread CPU time (for the policy)."""
        exact = self._policy.measure_share
        w0 = _runqueue_wait_ns() if exact else -1
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        try:
            return self.transform(data, path, etl_args)
        finally:
            c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
            wall = t1 - t0
            ran = wall
            if exact:
                w1 = _runqueue_wait_ns()
                ran -= w1 - w0 if w0 >= 0 and w1 >= 0 else 0
            share = min(1.0, (c1 - c0) / ran) if ran > 0 else None
            self._policy.record(wall / 1e9, inline=True, share=share, exact=exact)

    def _timed_transform(self, data: bytes | str, path: str, etl_args: str) -> Any:
        t0 = time.perf_counter()
        try:
            return self.transform(data, path, etl_args)
        finally:
            self._policy.record(time.perf_counter() - t0)

    async def _stream_chunks(self, reader: Any, path: str, etl_args: str, failed: list[BaseException]) -> AsyncIterator[bytes]:
        """Run ``transform_stream`` in a worker thread, one ``next()`` per chunk; a
        user error is also recorded in ``failed`` (so a PUT that carried the stream
        can tell it from a network error). Closes ``reader`` at the end."""
        loop = asyncio.get_running_loop()
        ex = self.executor
        it: Iterator[bytes] | None = None
        cf: concurrent.futures.Future[Any] | None = None
        try:
            try:
                cf = ex.submit(lambda: iter(self.transform_stream(reader, path, etl_args)))
                it = await asyncio.wrap_future(cf, loop=loop)
                while True:
                    cf = ex.submit(_next_chunk, it)
                    chunk = await asyncio.wrap_future(cf, loop=loop)
                    if chunk is _END:
                        return
                    if chunk:
                        yield _as_bytes(chunk)
            except Exception as e:
                failed.append(e)
                raise
        finally:
            _close_quietly(reader)
            if it is not None:
                if cf is not None and not cf.done():
                    cf.add_done_callback(lambda _f, g=it: ex.submit(_close_quietly, g))
                else:
                    ex.submit(_close_quietly, it)

    # -- next hop ---------------------------------------------------------------------
    async def _put_next(self, first: str, rest: str, data: bytes | AsyncIterator[bytes], path: str,
                        etl_args: str, failed: list[BaseException] | None = None) -> DirectPutOutcome:
        """One ``PUT`` to the next hop.

        Raises:
            ETLDirectPutTransientError: connection lost, refused, reset or timed out.
            Exception: the streamed transform failed (from ``failed``).
        """
        url = compose_direct_put_url(first, self.host_target, path, etl_args)
        headers = dict(self._auth)
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
        except _TRANSIENT_NET as e:
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

    async def _put_next_retrying(self, first: str, rest: str, data: bytes, path: str, etl_args: str) -> DirectPutOutcome:
        """Buffered: bytes in hand are replayable, so retry locally with backoff."""
        retries = self.direct_put_retries
        for attempt in range(retries + 1):
            try:
                return await self._put_next(first, rest, data, path, etl_args)
            except ETLDirectPutTransientError as e:
                if attempt >= retries:
                    raise
                delay = backoff_delay_s(attempt, self.config.direct_put_backoff_s)
                self.logger.warning("direct put attempt %d/%d failed, retrying in %.2fs: %s",
                                    attempt + 1, retries + 1, delay, e)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # -- HTTP -------------------------------------------------------------------------
    async def handle_http(self, req: PodRequest) -> PodReply:
        """Serve one hpush (``PUT``) or hpull (``GET``) request; never raises (except on
        cancellation: the client went away, nothing is answered)."""
        try:
            first, rest = parse_etl_pipeline(req.pipeline)
            if self.use_streaming:
                return await self._http_streaming(req, first, rest)
            return await self._http_buffered(req, first, rest)
        except Exception as e:
            status, msg, headers = self.error_reply(e, req.path)
            self._log_error(status, msg)
            return PodReply(status, msg.encode(), headers, "text/plain")

    async def _http_buffered(self, req: PodRequest, first: str, rest: str) -> PodReply:
        data: bytes | str
        if req.fqn and self.direct_fqn:
            data = sanitize_fqn(req.fqn)
        elif req.fqn:
            data = await self._read_file(sanitize_fqn(req.fqn))
        elif req.is_get:
            data = await self._get_from_target(req.path)
        else:
            data = await req.body.read_all()
        out = await self._call_transform(data, req.path, req.etl_args)
        if first:
            o = await self._put_next_retrying(first, rest, out, req.path, req.etl_args)
            return PodReply(o.status, o.body, o.headers())
        return PodReply(200, out, {}, self.get_mime_type())

    async def _http_streaming(self, req: PodRequest, first: str, rest: str) -> PodReply:
        if first:
            replayable = bool(req.fqn) or req.is_get
            retries = self.direct_put_retries if replayable else 0
            for attempt in range(retries + 1):
                reader = await self._open_reader(req.fqn, req.path, req.is_get, req.body)
                failed: list[BaseException] = []
                chunks = self._stream_chunks(reader, req.path, req.etl_args, failed)
                try:
                    o = await self._put_next(first, rest, chunks, req.path, req.etl_args, failed)
                    return PodReply(o.status, o.body, o.headers())
                except ETLDirectPutTransientError as e:
                    if attempt >= retries:
                        if not replayable:
                            e.bail_without_local_retry = True
                        raise
                    delay = backoff_delay_s(attempt, self.config.direct_put_backoff_s)
                    self.logger.warning("streaming direct put attempt %d/%d failed, retrying in %.2fs: %s",
                                        attempt + 1, retries + 1, delay, e)
                    await asyncio.sleep(delay)
                finally:
                    await chunks.aclose()
                    _close_quietly(reader)
            raise AssertionError("unreachable")
        reader = await self._open_reader(req.fqn, req.path, req.is_get, req.body)
        chunks = self._stream_chunks(reader, req.path, req.etl_args, [])
        try:
            head = await chunks.__anext__()
        except StopAsyncIteration:
            return PodReply(200, b"", {}, self.get_mime_type())
        except BaseException:
            await chunks.aclose()
            raise
        return PodReply(200, b"", {}, self.get_mime_type(), stream=_prepend(head, chunks))

    # -- WebSocket --------------------------------------------------------------------
    async def serve_ws(self, conn: WsConnection) -> None:
        """Serve one ws connection until it closes (§1.5): requests are read and
        processed concurrently (at most ``ws_max_inflight`` / ``ws_max_inflight_bytes``
        per connection), replies go out strictly in request order. A request whose
        control frame carries an ``id`` is answered with one framed BINARY reply
        (:func:`.wire.frame_ws_reply`), so the target attributes it by id, not by
        position. Cancelling it drops the unanswered requests."""
        budget = _ByteBudget(self.ws_max_inflight, self.ws_max_inflight_bytes)
        order: asyncio.Queue[tuple[asyncio.Task[bytes | str], int, int | None] | None] = asyncio.Queue()
        outstanding = 0  # requests queued for the writer and not yet answered

        async def send(reply: bytes | str, rid: int | None) -> None:
            if rid is not None:  # the target sent an id: one framed BINARY reply (wire docstring)
                await conn.send_bytes(frame_ws_reply(rid, reply))
            elif isinstance(reply, str):
                await conn.send_text(reply)
            else:
                await conn.send_bytes(reply)

        async def writer() -> None:
            nonlocal outstanding
            while True:
                item = await order.get()
                if item is None:
                    return
                task, n, rid = item
                try:
                    reply = await task
                finally:
                    budget.release(n)
                await send(reply, rid)
                outstanding -= 1

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(writer())
                try:
                    while True:
                        msg = await conn.recv()
                        if msg is None:
                            break
                        try:
                            ctrl = WsControl.decode(msg[1])
                        except WsProtocolError as e:
                            err = encode_ws_error(str(e), 400)
                            await budget.acquire(0)
                            outstanding += 1
                            order.put_nowait((tg.create_task(_const(err)), 0, None))
                            break  # cannot tell whether a body frame follows: stop reading
                        body: bytes | None = None
                        if not ctrl.fqn:
                            m2 = await conn.recv()
                            if m2 is None:
                                break
                            body = m2[1] if isinstance(m2[1], bytes) else m2[1].encode()
                        if outstanding == 0:  # nothing ahead of it: may be answered right here
                            reply = self._ws_inline(ctrl, body)
                            if reply is not None:
                                await send(reply, ctrl.id)
                                continue
                        n = len(body) if body is not None else 0
                        await budget.acquire(n)
                        outstanding += 1
                        order.put_nowait((tg.create_task(self._ws_one(ctrl, body)), n, ctrl.id))
                finally:
                    order.put_nowait(None)
        except* (ConnectionError, aiohttp.ClientError, RuntimeError) as eg:
            self.logger.debug("ws connection ended: %r", eg.exceptions)

    def _ws_inline(self, ctrl: WsControl, body: bytes | None) -> bytes | str | None:
        """Answer one ws request synchronously when all of it runs on the loop anyway:
        no next hop, a buffered ``transform()`` the policy puts on the loop, the input
        in the body or a local file of at most 256 KiB. Saves the task, queue and
        budget round of :meth:`_ws_one`. Returns None when not eligible (nothing has
        been done then), else the reply as :meth:`_ws_one` would give it."""
        if self.use_streaming or ctrl.pipeline:
            return None
        try:
            data: bytes | str | None = None
            if ctrl.fqn and self.direct_fqn:
                data, n = sanitize_fqn(ctrl.fqn), 0
            elif ctrl.fqn:
                path = sanitize_fqn(ctrl.fqn)
                n = os.stat(path).st_size
                if n > INLINE_MAX_BYTES:
                    return None
            else:
                data = body or b""
                n = len(data)
            if self._policy.in_thread(n):
                return None
            if data is None:  # the file: read only once the call is known to stay here
                with open(path, "rb") as f:
                    data = f.read()
            return _as_bytes(self._inline_transform(data, ctrl.path, ctrl.etl_args))
        except Exception as e:
            status, msg, _ = self.error_reply(e, ctrl.path)
            self._log_error(status, msg)
            return encode_ws_error(msg, status)

    async def _ws_one(self, ctrl: WsControl, body: bytes | None) -> bytes | str:
        """One ws request -> BINARY bytes, TEXT ``str(n)`` (delivered), or TEXT JSON error."""
        try:
            first, rest = parse_etl_pipeline(ctrl.pipeline)
            if self.use_streaming:
                reader: Any = open(sanitize_fqn(ctrl.fqn), "rb") if ctrl.fqn else io.BytesIO(body or b"")
                loop = asyncio.get_running_loop()
                out = await loop.run_in_executor(self.executor, self._collect_stream, reader, ctrl.path, ctrl.etl_args)
            else:
                data: bytes | str
                if ctrl.fqn and self.direct_fqn:
                    data = sanitize_fqn(ctrl.fqn)
                elif ctrl.fqn:
                    data = await self._read_file(sanitize_fqn(ctrl.fqn))
                else:
                    data = body or b""
                out = await self._call_transform(data, ctrl.path, ctrl.etl_args)
            if not first:
                return out
            o = await self._put_next_retrying(first, rest, out, ctrl.path, ctrl.etl_args)
            if o.status == 200:
                return o.body
            if o.status == 204:
                return encode_ws_delivered(o.length)
            return encode_ws_error(f"direct put to {first} failed: HTTP {o.status}: "
                                   f"{o.body[:1024].decode(errors='replace')}", o.status)
        except Exception as e:
            status, msg, _ = self.error_reply(e, ctrl.path)
            self._log_error(status, msg)
            return encode_ws_error(msg, status)

    def _collect_stream(self, reader: Any, path: str, etl_args: str) -> bytes:
        try:
            return b"".join(_as_bytes(c) for c in self.transform_stream(reader, path, etl_args))
        finally:
            _close_quietly(reader)


# -- small helpers -------------------------------------------------------------------------


def _runqueue_wait_ns() -> int:
    """Nanoseconds this thread has spent runnable but waiting for a CPU
    (``/proc/thread-self/schedstat``, second field); -1 where unavailable."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read_path(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _as_bytes(out: Any) -> bytes:
    if isinstance(out, bytes):
        return out
    if isinstance(out, (bytearray, memoryview)):
        return bytes(out)
    if isinstance(out, str):
        return out.encode()
    raise TypeError(f"transform must return bytes, not {type(out).__name__}")


async def _const(v: Any) -> Any:
    return v


async def _prepend(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield head
        async for c in rest:
            yield c
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


async def _counting(chunks: AsyncIterator[bytes], sent: list[int]) -> AsyncIterator[bytes]:
    async for c in chunks:
        sent[0] += len(c)
        yield c


def _register_with_aistore() -> None:
    """Make ``issubclass(OurServer, aistore ETLServer)`` true (aistore's is an ABC), so the
    official SDK's ``Etl.init_class`` accepts classes written against this package."""
    try:
        from aistore.sdk.etl.webserver.base_etl_server import ETLServer as AisETLServer
    except ImportError:  # aistore[etl] not installed: nothing to register with
        return
    AisETLServer.register(ETLServer)


_register_with_aistore()
