"""The pod-side ETL server: :class:`ETLServer`, API-compatible with
``aistore[etl]`` 2.0.0's ``ETLServer``, holding the framework-neutral request
logic that both of our web servers (:mod:`.aiohttp_server`, :mod:`.fastapi_server`)
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

The pieces, one module each:

- :mod:`.config`: :class:`PodConfig`, the settings read from the environment;
- :mod:`.interface`: :class:`PodRequest`, :class:`PodReply` and the protocols a
  web-framework shell and this class meet on;
- :mod:`.errors`: the errors, and how each is answered (:meth:`ETLServer.error_reply`);
- :mod:`.offload`: whether ``transform()`` runs on the loop or in a thread;
- :mod:`.bridge`: worker threads reading from and writing to the loop (streaming);
- :mod:`.direct_put`: the ``PUT`` to the next hop, with retries;
- :mod:`.ws_pipeline`: a ws connection's pipelining and reply order;
- :mod:`.aiohttp_shell`: the aiohttp routes and the serving processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import sys
from collections.abc import AsyncGenerator, Iterator
from typing import Any, BinaryIO, ClassVar

import aiohttp
import yarl

from aioetl.communicators.pod.aiohttp_shell import serve
from aioetl.communicators.pod.bridge import LoopReader, as_bytes, close_quietly, read_path, stream_chunks
from aioetl.communicators.pod.config import PodConfig
from aioetl.communicators.pod.direct_put import DirectPutClient
from aioetl.communicators.pod.errors import ETLDirectPutTransientError, TargetRequestError, error_reply
from aioetl.communicators.pod.interface import BodySource, PodReply, PodRequest, WsConnection
from aioetl.communicators.pod.offload import INLINE_MAX_BYTES, OffloadPolicy, call_inline, call_timed, usable_cpus
from aioetl.communicators.pod.ws_pipeline import serve_pipelined
from aioetl.communicators.wire.const import HEADER_AUTHORIZATION
from aioetl.communicators.wire.frames import (
    WsControl,
    encode_ws_delivered,
    encode_ws_error,
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


class ETLServer:
    """Base of every aioetl ETL server (API of ``aistore[etl]``'s ``ETLServer``).

    Subclasses override :meth:`transform` or :meth:`transform_stream`, optionally
    :meth:`get_mime_type`, and call ``super().__init__()`` from their own
    ``__init__``. Attributes kept for compatibility: ``host_target``,
    ``direct_fqn``, ``direct_put_retries``, ``token``, ``logger``, ``use_streaming``.

    Args:
        host: address its shell binds (the bootstrap overrides it with ``--host``).
        port: port its shell binds (the bootstrap overrides it with ``--port``).
        config: the pod settings; by default read from the environment
            (:meth:`PodConfig.from_env`).

    Raises:
        EnvironmentError: ``AIS_TARGET_URL`` is not set.
        TypeError: neither ``transform`` nor ``transform_stream`` is overridden.
    """

    transform_in_thread: ClassVar[bool | None] = None  # None: decide per call (:mod:`.offload`)
    ws_max_inflight: ClassVar[int] = 64  # pipelined ws requests processed at once, per connection
    ws_max_inflight_bytes: ClassVar[int] = 256 << 20
    max_threads: ClassVar[int] = 64

    def __init__(self, host: str = "0.0.0.0", port: int = 8000, *, config: PodConfig | None = None) -> None:
        cfg = config if config is not None else PodConfig.from_env()
        self.host = host
        self.port = port
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
        self._policy = OffloadPolicy(self.transform_in_thread)
        self.worker = (0, 1)  # (index, count) of this process among NUM_WORKERS
        self._session: aiohttp.ClientSession | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._direct_put: DirectPutClient | None = None
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
        serve(self, getattr(self, "host", "0.0.0.0"), int(getattr(self, "port", 8000)))

    # -- lifecycle -------------------------------------------------------------
    def set_processes(self, n: int, index: int = 0) -> None:
        """Tell the server how many processes serve its port (``NUM_WORKERS``) and
        which one this is (0-based). With at least one per usable CPU, CPU-bound
        transforms run on the event loop (:mod:`.offload`); ``(index, n)`` goes
        out as the ``Aioetl-Worker`` ws handshake header. Call before serving."""
        self._policy.cores_covered = n >= usable_cpus()
        self.worker = (index, n)

    async def startup(self) -> None:
        """Open the outbound HTTP session and the worker threads (call on the serving loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                auto_decompress=False,
            )
            self._direct_put = DirectPutClient(
                self._session, host_target=self.host_target, auth=self._auth, retries=self.direct_put_retries,
                backoff_first_s=self.config.direct_put_backoff_s, logger=self.logger)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.max_threads, thread_name_prefix="etl")

    async def shutdown(self) -> None:
        """Close what :meth:`startup` opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._direct_put = None
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

    @property
    def _next_hop(self) -> DirectPutClient:
        """The client of the next hops (:mod:`.direct_put`), open between startup and
        shutdown. (Not ``direct_put``: aistore[etl]'s server has a bool of that name.)"""
        if self._direct_put is None:
            raise RuntimeError("ETLServer.startup() has not run")
        return self._direct_put

    # -- errors ------------------------------------------------------------------
    def error_reply(self, e: BaseException, path: str) -> tuple[int, str, dict[str, str]]:
        """Map an error to ``(status, message, headers)`` (:func:`.errors.error_reply`)."""
        return error_reply(e, path)

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
        return await loop.run_in_executor(self.executor, read_path, path)

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
            return LoopReader(loop, resp.content.read, resp.close)
        assert body is not None
        return LoopReader(loop, body.read)

    # -- transform calls --------------------------------------------------------------
    async def _call_transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        nbytes = len(data) if isinstance(data, (bytes, bytearray)) else 0
        if self._policy.in_thread(nbytes):
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.executor, self._timed_transform, data, path, etl_args)
        else:
            out = self._inline_transform(data, path, etl_args)
        return as_bytes(out)

    def _inline_transform(self, data: bytes | str, path: str, etl_args: str) -> Any:
        """Run on the loop, timing the call and its thread CPU time (for the policy)."""
        return call_inline(self._policy, lambda: self.transform(data, path, etl_args))

    def _timed_transform(self, data: bytes | str, path: str, etl_args: str) -> Any:
        return call_timed(self._policy, lambda: self.transform(data, path, etl_args))

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
            o = await self._next_hop.put_retrying(first, rest, out, req.path, req.etl_args)
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
                    o = await self._next_hop.put(first, rest, chunks, req.path, req.etl_args, failed)
                    return PodReply(o.status, o.body, o.headers())
                except ETLDirectPutTransientError as e:
                    if attempt >= retries:
                        if not replayable:
                            e.bail_without_local_retry = True
                        raise
                    await self._next_hop.back_off(attempt, retries, e, "streaming direct put")
                finally:
                    await chunks.aclose()
                    close_quietly(reader)
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

    def _stream_chunks(self, reader: Any, path: str, etl_args: str,
                       failed: list[BaseException]) -> AsyncGenerator[bytes, None]:
        """``transform_stream`` over ``reader``, chunk by chunk (:func:`.bridge.stream_chunks`)."""
        return stream_chunks(self.executor, lambda: self.transform_stream(reader, path, etl_args), reader, failed)

    # -- WebSocket --------------------------------------------------------------------
    async def serve_ws(self, conn: WsConnection) -> None:
        """Serve one ws connection until it closes (§1.5): requests are read and
        processed concurrently (at most ``ws_max_inflight`` / ``ws_max_inflight_bytes``
        per connection), replies go out strictly in request order
        (:func:`.ws_pipeline.serve_pipelined`). Cancelling it drops the unanswered
        requests."""
        await serve_pipelined(conn, answer=self._ws_one, answer_inline=self._ws_inline,
                              max_inflight=self.ws_max_inflight, max_inflight_bytes=self.ws_max_inflight_bytes,
                              logger=self.logger)

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
            return as_bytes(self._inline_transform(data, ctrl.path, ctrl.etl_args))
        except Exception as e:
            status, msg, _ = self.error_reply(e, ctrl.path)
            self._log_error(status, msg)
            return encode_ws_error(msg, status)

    async def _ws_one(self, ctrl: WsControl, body: bytes | None) -> bytes | str:
        """One ws request -> BINARY bytes, TEXT ``str(n)`` (delivered), or TEXT JSON error."""
        try:
            first, rest = parse_etl_pipeline(ctrl.pipeline)
            if self.use_streaming:
                loop = asyncio.get_running_loop()
                out = await loop.run_in_executor(self.executor, self._collect_stream, ctrl.fqn, body, ctrl.path,
                                                 ctrl.etl_args)
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
            o = await self._next_hop.put_retrying(first, rest, out, ctrl.path, ctrl.etl_args)
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

    def _collect_stream(self, fqn: str, body: bytes | None, path: str, etl_args: str) -> bytes:
        """``transform_stream`` over the file ``fqn`` (if set) or ``body``, whole (in a worker thread)."""
        reader: BinaryIO
        with open(sanitize_fqn(fqn), "rb") if fqn else io.BytesIO(body or b"") as reader:
            return b"".join(as_bytes(c) for c in self.transform_stream(reader, path, etl_args))


async def _prepend(head: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        yield head
        async for c in rest:
            yield c
    finally:
        await rest.aclose()


def _register_with_aistore() -> None:
    """Make ``issubclass(OurServer, aistore ETLServer)`` true (aistore's is an ABC), so the
    official SDK's ``Etl.init_class`` accepts classes written against this package."""
    try:
        from aistore.sdk.etl.webserver.base_etl_server import ETLServer as AisETLServer
    except ImportError:  # aistore[etl] not installed: nothing to register with
        return
    AisETLServer.register(ETLServer)


_register_with_aistore()
