"""HTTP plumbing shared by the gateway and the targets (aiohttp on uvloop).

- :func:`error_middleware` maps :class:`~aioetl.errors.AioetlError` (and stray
  exceptions) to AIStore-shaped error responses, in one place.
- :func:`split_obj_path` reads bucket and object names from the *raw* request
  path, so that ``a/../b`` reaches validation as written instead of being
  normalized into another object's name.
- :func:`read_action` parses the ``{"action","name","value"}`` bodies
  (``cmn.ActionMsg``) with a clear 400 on malformed JSON.
- Limits at the edge (issue #11): a JSON body is at most :data:`MAX_JSON_BYTES`
  (:data:`MAX_INIT_JSON_BYTES` for ETL init, which carries code) and
  :data:`MAX_JSON_DEPTH` levels deep, and has the shape registered for its route
  (:mod:`.bodies`); object names must be valid UTF-8 with valid percent-escapes;
  an upload body that sends nothing for :data:`BODY_IDLE_TIMEOUT_S` is cut
  (:func:`iter_body`). Header lines are bounded by aiohttp's defaults
  (``max_line_size``/``max_field_size`` 8190 bytes: a longer one is a 400).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
import structlog
from aiohttp import web

from aioetl.engine.core.bodies import schema_for
from aioetl.errors import AioetlError, BadRequest, InvalidName, error_body
from aioetl.xactions.errs import InvalidMsg
from aioetl.xactions.xact import validate_xid

__all__ = [
    "BODY_IDLE_TIMEOUT_S",
    "MAX_INIT_JSON_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "RequestTimeout",
    "error_middleware",
    "install_uvloop",
    "iter_body",
    "json_response",
    "read_action",
    "read_json",
    "split_obj_path",
    "unquote_name",
]

log = structlog.get_logger("aioetl.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_JSON_BYTES = 8 << 20
"""Largest JSON body of a control route (8 MiB); larger is a 413."""
MAX_INIT_JSON_BYTES = 64 << 20
"""Largest ETL init body (64 MiB): ``init_class`` sends the pickled class and its deps."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of a JSON body; AIStore's messages nest 4 levels at most."""
_INIT_ROUTES = frozenset({("PUT", "/v1/etl"), ("POST", "/v1/etl/_init")})
# routes whose handler reads the body itself (request.json()): checked before it runs
_PREVALIDATE = frozenset({("POST", "/v1/cluster/join")})
# public routes whose {id} is a job id that the handler passes on into paths
# (the gateway's job-errors route forwards it to every target's report path)
_XID_ROUTES = frozenset({("GET", "/v1/jobs/{id}/errors")})


def _env_seconds(name: str, default: float) -> float:
    try:
        v = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return v if v > 0 else default


BODY_IDLE_TIMEOUT_S = _env_seconds("AIOETL_BODY_IDLE_TIMEOUT_S", 60.0)
"""An upload that sends no byte for this long is cut (``AIOETL_BODY_IDLE_TIMEOUT_S``,
read once when a node process imports this module; tests set it before starting one)."""


class RequestTimeout(BadRequest):
    """A request body stalled past the idle timeout (408); the connection is closed."""

    status = 408


def install_uvloop() -> bool:
    """Use uvloop for the process's event loops when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or a minimal install
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def error_response(request: web.Request, status: int, message: str, node: str) -> web.Response:
    """An AIStore-style error: JSON body, or the ``Hdr-Error`` header for HEAD."""
    body = error_body(message, status, method=request.method, path=request.path, node=node)
    if request.method == "HEAD":
        return web.Response(status=status, headers={"Hdr-Error": body.decode()})
    return web.Response(status=status, body=body, content_type="application/json")


async def _prevalidate(request: web.Request) -> None:
    """Check the body of a route whose handler parses it itself, before the handler runs.

    The body is read with ``request.read()``, which aiohttp keeps for the handler's own
    ``request.json()``. It runs before any inner middleware (so a malformed join
    without the cluster credential is a 400, not a 401; it changes nothing either way).

    Raises:
        BadRequest: no Content-Length (411), too large (413), malformed, too deep or
            the wrong shape (400).
        RequestTimeout: the body is not all there after ``BODY_IDLE_TIMEOUT_S`` (408).
    """
    n = request.content_length
    if n is None:
        raise BadRequest("request body needs a Content-Length", status=411)
    if n > MAX_JSON_BYTES:
        raise BadRequest(f"request body too large: {n} > {MAX_JSON_BYTES} bytes", status=413)
    try:
        async with asyncio.timeout(BODY_IDLE_TIMEOUT_S):  # small bodies: the whole read, not each gap
            await request.read()
    except TimeoutError:
        raise RequestTimeout(f"request body stalled: not complete after {BODY_IDLE_TIMEOUT_S:g} s") from None
    bad = await _body_fault(request)
    if bad is not None:
        raise bad


async def _body_fault(request: web.Request) -> AioetlError | None:
    """The client's mistake in a route's JSON body (read and kept by aiohttp), if any.

    For the routes of :mod:`.bodies` whose handler parses the body itself (the
    gateway's join reads ``request.json()``): :func:`_prevalidate` calls this before
    the handler runs, so a body that is malformed, too deep or of the wrong shape is
    the 400 it is, not a ``KeyError`` answered 500.
    """
    if schema_for(*_route_key(request)) is None:
        return None
    try:
        raw = await request.read()  # aiohttp keeps the bytes a handler read
        check_body_shape(request, _parse_json(raw, required=True))
    except AioetlError as e:
        return e
    except Exception:
        return None
    return None


def error_middleware(node_id: str) -> Any:
    """aiohttp middleware: AioetlError -> its status; anything else -> 500, logged."""

    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            key = _route_key(request)
            if key in _XID_ROUTES:
                validate_xid(request.match_info.get("id", ""))
            elif key in _PREVALIDATE:
                await _prevalidate(request)
            return await handler(request)
        except AioetlError as e:
            if e.status >= 500:
                log.warning("request failed", method=request.method, path=request.path, status=e.status, err=e.message)
            resp = error_response(request, e.status, e.message, node_id)
            if isinstance(e, RequestTimeout):
                # answer, then close at once: aiohttp would otherwise linger up to 10 s
                # reading the rest of a body that is not coming
                resp.force_close()
                await resp.prepare(request)
                await resp.write_eof()
                if request.protocol is not None:
                    request.protocol.force_close()  # the transport flushes the reply, then closes
            return resp
        except InvalidMsg as e:  # xactions' own error (a bad job message or id)
            return error_response(request, e.status, str(e), node_id)
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("internal error", method=request.method, path=request.path)
            return error_response(request, 500, f"internal error: {type(e).__name__}: {e}", node_id)

    return mw


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def unquote_name(raw: str, what: str = "object name") -> str:
    """Percent-decode one name from a raw URL path, strictly.

    Raises:
        InvalidName: a ``%`` not followed by two hex digits, or bytes that are not
            valid UTF-8 (including overlong forms such as ``%C0%AF`` and encoded
            surrogates, which Python's strict decoder refuses).
    """
    if _BAD_ESCAPE.search(raw):
        raise InvalidName(f"{what} {raw[:200]!r} has an invalid percent-escape")
    try:
        return unquote_to_bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise InvalidName(f"{what} {raw[:200]!r} is not valid UTF-8: {e.reason} at byte {e.start}") from None


def split_obj_path(request: web.Request, root: str = "/v1/objects/") -> tuple[str, str]:
    """``(bucket, object)`` from the raw path ``<root><bck>/<obj...>``, unquoted once.

    Raises:
        BadRequest: the path has no bucket or no object part.
        InvalidName: a bad percent-escape or invalid UTF-8 in either name.
    """
    raw = request.raw_path.partition("?")[0]
    if not raw.startswith(root):
        raise BadRequest(f"invalid URL path {raw[:200]!r}")
    rest = raw[len(root):]
    bck, sep, obj = rest.partition("/")
    if not bck or not sep or not obj:
        raise BadRequest(f"invalid URL path {raw[:200]!r}: expected {root}<bucket>/<object>")
    return unquote_name(bck, "bucket name"), unquote_name(obj)


def _depth_ok(doc: Any, limit: int) -> bool:
    """True if ``doc`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items: Any = v.values()
        elif isinstance(v, list):
            items = v
        else:
            continue
        if d > limit:
            return False
        stack.extend((c, d + 1) for c in items if isinstance(c, (dict, list)))
    return True


def _route_key(request: web.Request) -> tuple[str, str]:
    route = request.match_info.route
    resource = route.resource
    return request.method.upper(), resource.canonical if resource is not None else ""


async def _read_json_doc(request: web.Request, *, required: bool) -> Any:
    limit = MAX_INIT_JSON_BYTES if _route_key(request) in _INIT_ROUTES else MAX_JSON_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"request body too large: {request.content_length} > {limit} bytes", status=413)
    buf = bytearray()
    async for chunk in iter_body(request):
        buf += chunk
        if len(buf) > limit:
            raise BadRequest(f"request body too large: more than {limit} bytes", status=413)
    return _parse_json(bytes(buf), required=required)


def _parse_json(raw: bytes, *, required: bool) -> Any:
    """Decode a JSON body, bounded in depth.

    Raises:
        BadRequest: empty (when ``required``), malformed, or nested deeper than
            :data:`MAX_JSON_DEPTH`.
    """
    if not raw.strip():
        if required:
            raise BadRequest("request body is empty: expected JSON")
        return None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"malformed JSON in request body: {e}") from None
    except RecursionError:
        raise BadRequest(f"JSON in request body is nested too deeply (limit {MAX_JSON_DEPTH})") from None
    if not _depth_ok(doc, MAX_JSON_DEPTH):
        raise BadRequest(f"JSON in request body is nested too deeply (limit {MAX_JSON_DEPTH})")
    return doc


def check_body_shape(request: web.Request, doc: Any) -> None:
    """Check ``doc`` against the struct registered for the request's route (:mod:`.bodies`).

    Raises:
        BadRequest: the shape is wrong; the message names the field.
    """
    schema = schema_for(*_route_key(request))
    if schema is None:
        return
    try:
        msgspec.convert(doc, schema)
    except msgspec.ValidationError as e:
        raise BadRequest(f"invalid request body: {e}") from None


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """Parse the request body as JSON, bounded and checked (see the module docstring).

    Returns:
        The decoded JSON (None for an empty body when not ``required``).

    Raises:
        BadRequest: malformed JSON (400, the parser's reason), too deep (400), the
            wrong shape for the route (400, naming the field), too large (413),
            stalled (408).
    """
    doc = await _read_json_doc(request, required=required)
    if doc is not None or required:  # a JSON null where an object is required: 400
        check_body_shape(request, doc)
    return doc


async def read_action(request: web.Request, *, required: bool = True) -> tuple[str, Any]:
    """Parse an ``ActionMsg`` body: returns ``(action, value)``.

    Raises:
        BadRequest: malformed JSON, not an object, or no ``action``.
    """
    doc = await _read_json_doc(request, required=required)
    if doc is None:
        return "", None
    if not isinstance(doc, dict) or not isinstance(doc.get("action", None), str):
        raise BadRequest('invalid action message: expected {"action": str, "name": str, "value": ...}')
    return doc["action"], doc.get("value")


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(doc).encode(), content_type="application/json")


async def iter_body(request: web.Request, idle_timeout_s: float | None = None) -> AsyncIterator[bytes]:
    """The request body in chunks as they arrive, cut when it stalls.

    Args:
        idle_timeout_s: longest wait for the next bytes (default
            :data:`BODY_IDLE_TIMEOUT_S`).

    Raises:
        RequestTimeout: no byte for ``idle_timeout_s``; the error middleware answers
            408 and closes the connection (what is left of the body is never read).
    """
    idle = BODY_IDLE_TIMEOUT_S if idle_timeout_s is None else idle_timeout_s
    content = request.content
    while True:
        chunk = content.read_nowait()  # what has arrived already: no timer for it
        if not chunk:
            if content.is_eof():
                return
            try:
                async with asyncio.timeout(idle):
                    chunk = await content.readany()
            except TimeoutError:
                raise RequestTimeout(f"request body stalled: no data for {idle:g} s") from None
            if not chunk:
                return
        yield chunk
