"""Sans-I/O pieces of the target <-> pod wire (pod side): plain functions on
strings and bytes, no sockets, testable with literal values.

- the pipeline header ``Ais-Node-Url`` (:func:`parse_etl_pipeline`) and the URL
  of the next hop (:func:`compose_direct_put_url`, §2.2 of the protocol reference);
- FQN decoding (:func:`sanitize_fqn`, §1.2) and the hpull GET URL
  (:func:`target_get_url`, §1.4);
- the ws control message (:class:`WsControl`) and the ws replies
  (:func:`encode_ws_error`, :func:`classify_ws_text`, §1.5);
- what a stage answers after a direct put or a pipeline hop
  (:func:`direct_put_outcome`, §2.4) and the local retry backoff.

ws reply convention (aioetl extension over AIStore, where every TEXT frame
counts as success and transform errors are lost):

    BINARY                         transformed bytes
    TEXT "<decimal digits>"        delivered by direct put, that many bytes
    TEXT {"error": str, "status": int}   the object failed (our pods)
    TEXT anything else             the object failed (upstream pods send
                                   "Transform error: ..." or "Invalid pipeline header: ...")

Request ids (aioetl extension): AIStore matches ws replies to requests by order
alone (``ext/etl/websocket_comm.go``), so a pod that skips or adds one reply shifts
every later reply onto the wrong object. A target talking to our pods (they answer
the ws handshake with ``Aioetl-Ws-Ids: 1``) puts an integer ``id`` in
each control frame; our pods then answer every request with one BINARY frame
that starts with the 9-byte header ``>QB`` (the id, the reply kind) and carries
the reply above as payload (:func:`frame_ws_reply`, :func:`parse_ws_frame`):

    kind 0 (WS_KIND_DATA)        payload = transformed bytes
    kind 1 (WS_KIND_DELIVERED)   payload = ASCII decimal length delivered by direct put
    kind 2 (WS_KIND_ERROR)       payload = {"error": str, "status": int} (UTF-8 JSON)

A reply is then attributed by its id only: a missing, late or extra reply
affects its own object, never another.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from aioetl.communicators.wire.const import (
    HEADER_DIRECT_PUT_LENGTH,
    QPARAM_ETL_ARGS,
    RETRY_BACKOFF_FIRST_S,
    RETRY_BACKOFF_MAX_S,
    WS_ETL_ARGS,
    WS_FQN,
    WS_ID,
    WS_PATH,
    WS_PIPELINE,
)

__all__ = [
    "WS_KIND_DATA",
    "WS_KIND_DELIVERED",
    "WS_KIND_ERROR",
    "WS_REPLY_HEADER",
    "DirectPutOutcome",
    "InvalidPipelineError",
    "WsControl",
    "WsProtocolError",
    "backoff_delay_s",
    "classify_ws_text",
    "compose_direct_put_url",
    "direct_put_outcome",
    "encode_ws_delivered",
    "encode_ws_error",
    "frame_ws_reply",
    "is_stage_url",
    "parse_etl_pipeline",
    "parse_ws_error",
    "parse_ws_frame",
    "sanitize_fqn",
    "stage_object_path",
    "target_get_url",
]


class InvalidPipelineError(ValueError):
    """A malformed ``Ais-Node-Url`` value (an empty entry); the pod answers 400."""


class WsProtocolError(ValueError):
    """A ws control frame that is not a JSON object of strings."""


# -- pipeline header and next-hop URL -------------------------------------------


def parse_etl_pipeline(header: str | None) -> tuple[str, str]:
    """Split ``Ais-Node-Url`` into the next hop and the rest of the list.

    Args:
        header: comma-separated URLs, e.g. ``"http://h:1,http://t:2/ais%2F@%23%2Fb%2Fo"``;
            None, empty or blank means "no pipeline".

    Returns:
        ``(first, rest)``: ``first`` is ``""`` when there is no pipeline; ``rest``
        is the remaining entries joined by ``,`` (``""`` when none remain).

    Raises:
        InvalidPipelineError: an entry is empty (``"a,,b"``, ``",a"``, ``"a,"``),
            as ``aistore[etl]`` ``parse_etl_pipeline`` does.
    """
    if header is None or not header.strip():
        return "", ""
    entries = [e.strip() for e in header.strip().split(",")]
    if any(not e for e in entries):
        raise InvalidPipelineError(f"Pipeline header contains empty entry: {header!r}")
    return entries[0], ",".join(entries[1:])


def is_stage_url(entry: str) -> bool:
    """True if a pipeline entry is another ETL stage (``http://host:port``, no path);
    False if it is a target's direct-put address (it has a path)."""
    return not urlsplit(entry).path


def stage_object_path(path: str) -> str:
    """The request path a next ETL stage gets for object ``path``: ``quote(path, safe="/@")``
    (aistore[etl] 2.0.0), e.g. ``"ais/@#/b/o x"`` -> ``"ais/@%23/b/o%20x"``."""
    return quote(path, safe="/@")


def compose_direct_put_url(entry: str, target_url: str, obj_path: str, etl_args: str = "") -> str:
    """The URL of the ``PUT`` to the next hop (§2.2).

    Scheme from ``target_url`` (the pod's ``AIS_TARGET_URL``), host from ``entry``;
    the path is ``target_url``'s path + ``entry``'s path (kept escaped, verbatim)
    when ``entry`` is a target, else ``/`` + :func:`stage_object_path`; the query is
    ``entry``'s, with ``etl_args`` replacing any existing one and appended last.

    Args:
        entry: one ``Ais-Node-Url`` entry.
        target_url: ``<target>/v1/etl/_object/<etl>/<secret>``.
        obj_path: the decoded object path the stage received (``bck/obj`` or ``ais/@#/bck/obj``).
        etl_args: forwarded transform arguments; ``""`` forwards nothing.

    Returns:
        An already-escaped URL; send it without re-quoting.
    """
    dst = urlsplit(entry)
    base = urlsplit(target_url)
    path = base.path.rstrip("/") + dst.path if dst.path else "/" + stage_object_path(obj_path)
    query = dst.query
    if etl_args:
        pairs = [(k, v) for k, v in parse_qsl(dst.query, keep_blank_values=True) if k != QPARAM_ETL_ARGS]
        pairs.append((QPARAM_ETL_ARGS, etl_args))
        query = urlencode(pairs)
    return urlunsplit((base.scheme or "http", dst.netloc, path, query, ""))


def target_get_url(target_url: str, path: str) -> str:
    """hpull without an FQN: ``<AIS_TARGET_URL>/<quote(path, safe="@")>``, e.g.
    ``ais/@#/b/d/o`` -> ``.../ais%2F@%23%2Fb%2Fd%2Fo`` (one path segment, as the
    target's ``_object`` route expects)."""
    return f"{target_url.rstrip('/')}/{quote(path, safe='@')}"


def sanitize_fqn(fqn: str) -> str:
    """Decode an ``etl_fqn`` value (after ordinary query decoding) or a ws ``fqn``
    field into an absolute, normalized local path: unquote once more (the target
    path-escapes the FQN), force a leading ``/``, collapse ``..``.

    Example: ``"%2Fmnt%2Fmp1%2F@ais%2Fb%2F%25ob%2Fa%20b"`` -> ``"/mnt/mp1/@ais/b/%ob/a b"``.
    """
    return os.path.normpath(os.path.join("/", unquote(fqn).lstrip("/")))


# -- direct-put replies (§2.4) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectPutOutcome:
    """What a stage answers its caller after the PUT to the next hop.

    Attributes:
        status: 204 (delivered), 200 (content from a later stage), or an error status.
        body: the content (200) or the error text; ``b""`` for 204.
        length: bytes delivered by direct put (``Ais-Direct-Put-Length``), 0 if unknown.
    """

    status: int
    body: bytes
    length: int

    @property
    def delivered(self) -> bool:
        """True for a 204: the object reached its destination."""
        return self.status == 204

    def headers(self) -> dict[str, str]:
        """``{"Ais-Direct-Put-Length": n}`` when ``length`` > 0, else ``{}`` (as AIStore)."""
        return {HEADER_DIRECT_PUT_LENGTH: str(self.length)} if self.length > 0 else {}


def direct_put_outcome(status: int, body: bytes, sent_bytes: int, length_header: str | None) -> DirectPutOutcome:
    """Map the next hop's reply to this stage's reply (§2.4).

    Args:
        status: the next hop's HTTP status.
        body: its body.
        sent_bytes: how many bytes this stage sent in the PUT.
        length_header: its ``Ais-Direct-Put-Length`` header, if any.

    Returns:
        204 -> 204 with the next hop's length; 200 with a body -> 200 with that body
        (a later ETL stage answered with content); 200 empty -> 204 with
        ``sent_bytes`` (a target stored it); anything else -> unchanged.
    """
    if status == 204:
        try:
            n = int(length_header or 0)
        except ValueError:
            n = 0
        return DirectPutOutcome(204, b"", n)
    if status == 200:
        if body:
            return DirectPutOutcome(200, body, 0)
        return DirectPutOutcome(204, b"", sent_bytes)
    return DirectPutOutcome(status, body, 0)


def backoff_delay_s(attempt: int, first_s: float = RETRY_BACKOFF_FIRST_S, max_s: float = RETRY_BACKOFF_MAX_S) -> float:
    """Delay before local retry ``attempt`` (0-based): ``min(first_s * 2**attempt, max_s)``;
    the defaults give aistore[etl]'s 1, 2, 4, ... 30 s."""
    return min(first_s * (2.0**attempt), max_s)


# -- WebSocket (§1.5) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WsControl:
    """The control frame that precedes (or replaces) each object on a ws connection.

    Attributes:
        pipeline: comma-joined next hops, as ``Ais-Node-Url``.
        etl_args: transform arguments (stripped on decode).
        fqn: ``url.PathEscape(FQN)``; ``""`` means one BINARY body frame follows.
        path: the object name (no bucket).
        id: the request id (aioetl extension, see the module docstring); None when the
            target did not send one (AIStore's order-based protocol).
    """

    pipeline: str = ""
    etl_args: str = ""
    fqn: str = ""
    path: str = ""
    id: int | None = None

    @classmethod
    def decode(cls, data: bytes | str) -> WsControl:
        """Parse the JSON control frame; absent fields are ``""``.

        Raises:
            WsProtocolError: not JSON, not an object, a non-string field, or an ``id``
                that is not a non-negative integer below 2**64.
        """
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise WsProtocolError(f"ws control frame is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise WsProtocolError("ws control frame is not a JSON object")
        vals: dict[str, str] = {}
        for key in (WS_PIPELINE, WS_ETL_ARGS, WS_FQN, WS_PATH):
            v = doc.get(key)
            if v is None:
                v = ""
            if not isinstance(v, str):
                raise WsProtocolError(f"ws control field {key!r} is not a string")
            vals[key] = v
        rid = doc.get(WS_ID)
        if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 1 << 64):
            raise WsProtocolError(f"ws control field {WS_ID!r} is not an integer id")
        return cls(pipeline=vals[WS_PIPELINE], etl_args=vals[WS_ETL_ARGS].strip(), fqn=vals[WS_FQN],
                   path=vals[WS_PATH], id=rid)

    def encode(self) -> bytes:
        """JSON bytes with empty fields omitted (Go ``omitempty``), compact, key order
        ``pipeline, etl_args, fqn, path``."""
        doc: dict[str, Any] = {}
        fields = ((WS_PIPELINE, self.pipeline), (WS_ETL_ARGS, self.etl_args), (WS_FQN, self.fqn), (WS_PATH, self.path))
        for key, v in fields:
            if v:
                doc[key] = v
        if self.id is not None:
            doc[WS_ID] = self.id
        return json.dumps(doc, separators=(",", ":")).encode()


def encode_ws_delivered(length: int) -> str:
    """TEXT reply for "delivered by direct put": ``str(length)``."""
    return str(int(length))


def encode_ws_error(message: str, status: int) -> str:
    """TEXT reply for a failed object: ``{"error": message, "status": status}``."""
    return json.dumps({"error": message, "status": int(status)}, separators=(",", ":"))


def parse_ws_error(text: str) -> tuple[str, int]:
    """``(message, status)`` of an error TEXT reply: our JSON gives its fields; any other
    text (upstream's ``"Transform error: ..."``) is the message, with status 500."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text, 500
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        status = doc.get("status")
        return doc["error"], status if isinstance(status, int) and not isinstance(status, bool) else 500
    return text, 500


def classify_ws_text(text: str) -> tuple[bool, int | str]:
    """Classify a TEXT reply: ``(True, n)`` if it is only decimal digits (delivered
    by direct put, ``n`` bytes), else ``(False, message)``; the message is the
    ``error`` field of our JSON, otherwise the whole text."""
    t = text.strip()
    if t and t.isascii() and t.isdigit():
        return True, int(t)
    return False, parse_ws_error(text)[0]


# -- ws replies with request ids (aioetl extension, module docstring) -------------------

WS_REPLY_HEADER = struct.Struct(">QB")  # request id, reply kind
WS_KIND_DATA = 0
WS_KIND_DELIVERED = 1
WS_KIND_ERROR = 2


def frame_ws_reply(req_id: int, reply: bytes | str) -> bytes:
    """The BINARY frame answering request ``req_id``.

    Args:
        req_id: the control frame's ``id``.
        reply: transformed bytes, or the TEXT reply the order-based protocol would
            send (:func:`encode_ws_delivered` digits or :func:`encode_ws_error` JSON).

    Returns:
        ``WS_REPLY_HEADER`` + payload; e.g. ``frame_ws_reply(7, "12")`` is
        ``b"\\x00"*7 + b"\\x07\\x01" + b"12"``.
    """
    if isinstance(reply, str):
        t = reply.strip()
        kind = WS_KIND_DELIVERED if t and t.isascii() and t.isdigit() else WS_KIND_ERROR
        return WS_REPLY_HEADER.pack(req_id, kind) + reply.encode()
    return WS_REPLY_HEADER.pack(req_id, WS_KIND_DATA) + reply


def parse_ws_frame(frame: bytes) -> tuple[int, int, bytes]:
    """``(id, kind, payload)`` of a framed reply.

    Raises:
        WsProtocolError: shorter than the header, or an unknown kind.
    """
    if len(frame) < WS_REPLY_HEADER.size:
        raise WsProtocolError(f"ws reply of {len(frame)} bytes is shorter than its {WS_REPLY_HEADER.size}-byte header")
    rid, kind = WS_REPLY_HEADER.unpack_from(frame)
    if kind not in (WS_KIND_DATA, WS_KIND_DELIVERED, WS_KIND_ERROR):
        raise WsProtocolError(f"ws reply {rid}: unknown kind {kind}")
    return rid, kind, frame[WS_REPLY_HEADER.size:]
