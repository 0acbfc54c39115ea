"""Pure tests of the pod-side wire helpers (aioetl.communicators.wire.frames): literal inputs, literal outputs."""

from __future__ import annotations

import json

import pytest

import aioetl.communicators as communicators
from aioetl.communicators import wire
from aioetl.communicators.wire.frames import (
    DirectPutOutcome,
    InvalidPipelineError,
    WsControl,
    WsProtocolError,
    backoff_delay_s,
    classify_ws_text,
    compose_direct_put_url,
    direct_put_outcome,
    encode_ws_delivered,
    encode_ws_error,
    is_stage_url,
    parse_etl_pipeline,
    parse_ws_error,
    sanitize_fqn,
    stage_object_path,
    target_get_url,
)

TARGET = "http://10.0.0.5:9080/v1/etl/_object/my-etl1/SECRETabcd"


# -- exports ---------------------------------------------------------------------------


@pytest.mark.parametrize("mod", [communicators, wire])
def test_exports_are_honest(mod: object) -> None:
    names = mod.__all__  # type: ignore[attr-defined]
    assert len(set(names)) == len(names)  # no name twice (ruff keeps __all__ sorted)
    for name in names:
        assert getattr(mod, name) is not None, name


def test_fastapi_server_is_exported_lazily() -> None:
    from aioetl.communicators.pod.fastapi_server import FastAPIServer

    assert communicators.FastAPIServer is FastAPIServer
    with pytest.raises(AttributeError):
        communicators.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


# -- pipeline header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ("", "")),
        ("", ("", "")),
        ("   ", ("", "")),
        ("http://a:1", ("http://a:1", "")),
        ("http://a:1,http://b:2", ("http://a:1", "http://b:2")),
        (" http://a:1 , http://b:2 ,http://t:3/x?owt=3 ", ("http://a:1", "http://b:2,http://t:3/x?owt=3")),
    ],
)
def test_parse_etl_pipeline(header: str | None, expected: tuple[str, str]) -> None:
    assert parse_etl_pipeline(header) == expected


@pytest.mark.parametrize("header", [",", "a,,b", ",a", "a,", ",,invalid,,", "a, ,b"])
def test_parse_etl_pipeline_rejects_empty_entries(header: str) -> None:
    with pytest.raises(InvalidPipelineError, match="empty entry"):
        parse_etl_pipeline(header)
    assert issubclass(InvalidPipelineError, ValueError)


def test_is_stage_url() -> None:
    assert is_stage_url("http://127.0.0.1:8001")
    assert not is_stage_url("http://10.0.0.7:9080/ais%2F@%23%2Fdst%2Fo?owt=3")


# -- next-hop URL (§2.2) -------------------------------------------------------------------


def test_direct_put_url_to_a_target_keeps_the_escaped_path_and_query() -> None:
    entry = "http://10.0.0.7:9080/ais%2F@%23%2Fdst-bck%2Fdir%2Fobj.txt?owt=3&uuid=XID1"
    assert compose_direct_put_url(entry, TARGET, "src-bck/dir/obj.txt") == (
        "http://10.0.0.7:9080/v1/etl/_object/my-etl1/SECRETabcd/ais%2F@%23%2Fdst-bck%2Fdir%2Fobj.txt?owt=3&uuid=XID1"
    )


def test_direct_put_url_appends_etl_args_and_replaces_an_existing_one() -> None:
    entry = "http://10.0.0.7:9080/ais%2F@%23%2Fd%2Fo?owt=3&etl_args=old&uuid=XID1"
    assert compose_direct_put_url(entry, TARGET, "s/o", "dp") == (
        "http://10.0.0.7:9080/v1/etl/_object/my-etl1/SECRETabcd/ais%2F@%23%2Fd%2Fo?owt=3&uuid=XID1&etl_args=dp"
    )
    assert compose_direct_put_url("http://h:1/x", TARGET, "s/o", "a b&c") == (
        "http://h:1/v1/etl/_object/my-etl1/SECRETabcd/x?etl_args=a+b%26c"
    )


def test_direct_put_url_to_a_stage_quotes_the_object_path() -> None:
    assert compose_direct_put_url("http://127.0.0.1:8001", TARGET, "bck/dir/obj.txt") == (
        "http://127.0.0.1:8001/bck/dir/obj.txt"
    )
    assert compose_direct_put_url("http://127.0.0.1:8001", TARGET, "ais/@#/b/o x?", "pp") == (
        "http://127.0.0.1:8001/ais/@%23/b/o%20x%3F?etl_args=pp"
    )
    assert compose_direct_put_url("http://h:2", "https://t:1/v1/etl/_object/e/s", "b/o") == "https://h:2/b/o"


def test_stage_object_path_and_target_get_url() -> None:
    assert stage_object_path("ais/@#/bck/a b") == "ais/@%23/bck/a%20b"
    assert target_get_url(TARGET, "ais/@#/src-bck/dir/obj.txt") == (
        "http://10.0.0.5:9080/v1/etl/_object/my-etl1/SECRETabcd/ais%2F@%23%2Fsrc-bck%2Fdir%2Fobj.txt"
    )
    assert target_get_url(TARGET + "/", "ais/@#/b/%") == TARGET + "/ais%2F@%23%2Fb%2F%25"


# -- FQN (§1.2) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("%2Fmnt%2Fmp1%2F@ais%2Fb%2F%25ob%2Fa%20b", "/mnt/mp1/@ais/b/%ob/a b"),
        ("/mnt/mp1/@ais/b/%25ob/x", "/mnt/mp1/@ais/b/%ob/x"),
        ("mnt%2Fx", "/mnt/x"),
        ("%2F..%2F..%2Fetc%2Fpasswd", "/etc/passwd"),
        ("%2Fa%2F.%2Fb%2F..%2Fc", "/a/c"),
        ("%2Fa%2Bb", "/a+b"),
    ],
)
def test_sanitize_fqn(value: str, path: str) -> None:
    assert sanitize_fqn(value) == path


# -- direct-put outcome (§2.4) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "sent", "hdr", "expected"),
    [
        (204, b"", 10, "40", DirectPutOutcome(204, b"", 40)),
        (204, b"ignored", 10, None, DirectPutOutcome(204, b"", 0)),
        (204, b"", 10, "junk", DirectPutOutcome(204, b"", 0)),
        (200, b"", 40, None, DirectPutOutcome(204, b"", 40)),
        (200, b"content", 40, None, DirectPutOutcome(200, b"content", 0)),
        (507, b"no space", 40, None, DirectPutOutcome(507, b"no space", 0)),
    ],
)
def test_direct_put_outcome(status: int, body: bytes, sent: int, hdr: str | None, expected: DirectPutOutcome) -> None:
    assert direct_put_outcome(status, body, sent, hdr) == expected


def test_direct_put_outcome_headers() -> None:
    assert DirectPutOutcome(204, b"", 75).headers() == {"Ais-Direct-Put-Length": "75"}
    assert DirectPutOutcome(204, b"", 0).headers() == {}
    assert DirectPutOutcome(204, b"", 1).delivered and not DirectPutOutcome(200, b"x", 0).delivered


def test_backoff_delay() -> None:
    assert [backoff_delay_s(k) for k in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert [backoff_delay_s(k, 0.01) for k in range(3)] == [0.01, 0.02, 0.04]


# -- ws control frame and replies (§1.5) ---------------------------------------------------------


def test_ws_control_decode() -> None:
    frame = b'{"pipeline":"http://a:1","etl_args":"  10 ","fqn":"%2Fmnt%2Fo","path":"dir/o.txt"}'
    assert WsControl.decode(frame) == WsControl("http://a:1", "10", "%2Fmnt%2Fo", "dir/o.txt")
    assert WsControl.decode('{"path":"o"}') == WsControl(path="o")
    assert WsControl.decode(b'{"fqn":null,"path":"o","extra":1}') == WsControl(path="o")


@pytest.mark.parametrize("frame", [b"not json", b"[1,2]", b'{"path": 5}', b"\xff\xfe"])
def test_ws_control_decode_rejects(frame: bytes) -> None:
    with pytest.raises(WsProtocolError):
        WsControl.decode(frame)


def test_ws_control_encode_omits_empty_fields() -> None:
    assert WsControl(path="o").encode() == b'{"path":"o"}'
    assert WsControl("http://a:1", "x", "%2Ff", "o").encode() == (
        b'{"pipeline":"http://a:1","etl_args":"x","fqn":"%2Ff","path":"o"}'
    )
    assert WsControl().encode() == b"{}"


def test_ws_replies() -> None:
    assert encode_ws_delivered(33) == "33"
    err = encode_ws_error('bad "x"', 404)
    assert json.loads(err) == {"error": 'bad "x"', "status": 404}
    assert parse_ws_error(err) == ('bad "x"', 404)
    assert parse_ws_error("Transform error: boom") == ("Transform error: boom", 500)
    assert parse_ws_error('{"error":"e","status":"x"}') == ("e", 500)
    assert parse_ws_error("[1]") == ("[1]", 500)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("33", (True, 33)),
        ("0", (True, 0)),
        (" 7\n", (True, 7)),
        ('{"error":"Processing error: ValueError: boom","status":500}', (False, "Processing error: ValueError: boom")),
        ("Transform error: boom", (False, "Transform error: boom")),
        ("Invalid pipeline header: empty entry", (False, "Invalid pipeline header: empty entry")),
        ("direct put success", (False, "direct put success")),
        ("", (False, "")),
        ("-1", (False, "-1")),
        ("١٢", (False, "١٢")),
    ],
)
def test_classify_ws_text(text: str, expected: tuple[bool, object]) -> None:
    assert classify_ws_text(text) == expected
