"""Typed shapes of the JSON bodies that aioetl's own routes accept (issue #11).

Every body is checked at the edge, in :func:`aioetl.engine.node.httpd.read_json`, against the
struct registered here for its route (method + route template, as aiohttp matched
it), before the handler looks inside: a body of the wrong shape is a 400 that names
the field (msgspec's ``Expected `str`, got `int` - at `$.daemon_id```), never a
``KeyError`` or ``AttributeError`` answered as a 500 after part of the work is done.

The structs constrain only what the handlers read; unknown fields pass (the SDK and
newer nodes may send more). Handlers still get the plain decoded JSON, so the
validation adds no coupling to them. Public bodies that the handlers already check
field by field (``ActionMsg``, list-objects, ETL init from the SDK) keep their own
AIStore-worded messages and are not listed here.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

__all__ = ["BODY_SCHEMAS", "schema_for"]


class _Net(msgspec.Struct):
    direct_url: str


class _Snode(msgspec.Struct):
    daemon_id: str
    daemon_type: str
    public_net: _Net
    flags: int = 0


class _Smap(msgspec.Struct):
    proxy_si: _Snode
    tmap: dict[str, _Snode] = {}
    version: int = 1
    uuid: str = ""
    creation_time: str = ""


class _Bmd(msgspec.Struct):
    version: int
    buckets: dict[str, dict[str, Any]]


class Metasync(msgspec.Struct):
    """``PUT /v1/metasync`` (target): a newer smap and/or BMD from the gateway."""

    smap: _Smap | None = None
    bmd: _Bmd | None = None


class Join(msgspec.Struct):
    """``POST /v1/cluster/join`` (gateway): a target registers.

    The id is a file-name-safe token (it names the target's directories and logs) and
    the URL an ``http(s)://host:port`` the gateway will redirect clients to, so a
    garbage join cannot put an unusable node into the cluster map.
    """

    daemon_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")]


class XactStart(msgspec.Struct):
    """``POST /v1/xactions/_start`` (target); ``msg`` is checked by ``TcbMsg.parse``."""

    id: str
    kind: str
    src: str
    dst: str
    msg: dict[str, Any]


class XactAbort(msgspec.Struct):
    """``POST /v1/xactions/_abort`` (target): every field optional, a filter."""

    id: str | None = None
    kind: str | None = None
    etl: str | None = None
    err: str | None = None


class EtlInitTarget(msgspec.Struct):
    """``POST /v1/etl/_init`` (target); ``msg`` is checked by ``parse_init_msg``."""

    msg: Any = None
    secret: str | None = None
    xid: str | None = None


class LsoPage(msgspec.Struct):
    """``GET /v1/buckets/<bck>`` (target): one listing page for the gateway; with
    ``?what=present`` the ``names`` to look up, with ``?what=remote-head`` the bucket ``props``."""

    uuid: str | None = None
    prefix: str | None = None
    token: str | None = None
    pagesize: int | None = None
    names: list[str] | None = None
    props: dict[str, Any] | None = None
    flags: int | None = None  # list flags; only LS_ARCH_DIR (1 << 3) is read: list shards' members too


class JobAbortFromTarget(msgspec.Struct):
    """``POST /v1/jobs/<id>/_abort`` (gateway): a target's first error."""

    err: str | None = None


# (method, route template) -> struct. Templates are aiohttp's canonical paths; a
# template served by both node kinds with different bodies must not be listed
# (the gateway's GET /v1/buckets/{bck} is read by read_action, which skips this table).
BODY_SCHEMAS: dict[tuple[str, str], type[msgspec.Struct]] = {
    ("PUT", "/v1/metasync"): Metasync,
    ("POST", "/v1/cluster/join"): Join,
    ("POST", "/v1/xactions/_start"): XactStart,
    ("POST", "/v1/xactions/_abort"): XactAbort,
    ("POST", "/v1/etl/_init"): EtlInitTarget,
    ("GET", "/v1/buckets/{bck}"): LsoPage,
    ("POST", "/v1/jobs/{id}/_abort"): JobAbortFromTarget,
}


def schema_for(method: str, template: str) -> type[msgspec.Struct] | None:
    """The struct registered for a route, or None."""
    return BODY_SCHEMAS.get((method.upper(), template))
