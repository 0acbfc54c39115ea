"""HTTP plumbing shared by the gateway and the targets (aiohttp on uvloop).

- :func:`error_middleware` maps :class:`~engine.errors.AioetlError` (and stray
  exceptions) to AIStore-shaped error responses, in one place.
- :func:`split_obj_path` reads bucket and object names from the *raw* request
  path, so that ``a/../b`` reaches validation as written instead of being
  normalized into another object's name.
- :func:`read_action` parses the ``{"action","name","value"}`` bodies
  (``cmn.ActionMsg``) with a clear 400 on malformed JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

import structlog
from aiohttp import web

from .errors import AioetlError, BadRequest, error_body

__all__ = [
    "error_middleware",
    "install_uvloop",
    "json_response",
    "read_action",
    "read_json",
    "split_obj_path",
]

log = structlog.get_logger("aioetl.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def error_middleware(node_id: str) -> Any:
    """aiohttp middleware: AioetlError -> its status; anything else -> 500, logged."""

    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except AioetlError as e:
            if e.status >= 500:
                log.warning("request failed", method=request.method, path=request.path, status=e.status, err=e.message)
            return error_response(request, e.status, e.message, node_id)
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - the boundary: every error becomes a response
            log.exception("internal error", method=request.method, path=request.path)
            return error_response(request, 500, f"internal error: {type(e).__name__}: {e}", node_id)

    return mw


def split_obj_path(request: web.Request, root: str = "/v1/objects/") -> tuple[str, str]:
    """``(bucket, object)`` from the raw path ``<root><bck>/<obj...>``, unquoted once.

    Raises:
        BadRequest: the path has no bucket or no object part.
    """
    raw = request.raw_path.partition("?")[0]
    if not raw.startswith(root):
        raise BadRequest(f"invalid URL path {raw[:200]!r}")
    rest = raw[len(root):]
    bck, sep, obj = rest.partition("/")
    if not bck or not sep or not obj:
        raise BadRequest(f"invalid URL path {raw[:200]!r}: expected {root}<bucket>/<object>")
    return unquote(bck, errors="strict"), unquote(obj, errors="strict")


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """Parse the request body as JSON; 400 with the parser's reason on failure."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadRequest("request body is empty: expected JSON")
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"malformed JSON in request body: {e}") from None


async def read_action(request: web.Request, *, required: bool = True) -> tuple[str, Any]:
    """Parse an ``ActionMsg`` body: returns ``(action, value)``.

    Raises:
        BadRequest: malformed JSON, not an object, or no ``action``.
    """
    doc = await read_json(request, required=required)
    if doc is None:
        return "", None
    if not isinstance(doc, dict) or not isinstance(doc.get("action", None), str):
        raise BadRequest('invalid action message: expected {"action": str, "name": str, "value": ...}')
    return doc["action"], doc.get("value")


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(doc).encode(), content_type="application/json")
