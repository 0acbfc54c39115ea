"""Pure checks of the edge validators of issue #11: names, job ids, JSON depth and
shapes, YAML specs, num-workers."""

from __future__ import annotations

import time

import msgspec
import pytest

from aioetl.engine.core.bodies import BODY_SCHEMAS, Join, Metasync, XactStart
from aioetl.engine.core.etl import MAX_SPEC_BYTES, load_spec_yaml
from aioetl.engine.node.httpd import _depth_ok, unquote_name
from aioetl.errors import BadRequest, InvalidName
from aioetl.xactions.errs import InvalidMsg
from aioetl.xactions.tcb import ETL_BCK, MAX_NUM_WORKERS, TcbMsg
from aioetl.xactions.xact import InvalidXid, new_xid, validate_xid


@pytest.mark.parametrize("raw,want", [("a%20b", "a b"), ("%C3%A9t%C3%A9", "été"), ("a/b", "a/b"), ("%25", "%")])
def test_unquote_name_decodes_valid_names(raw: str, want: str) -> None:
    assert unquote_name(raw) == want


@pytest.mark.parametrize("raw", ["a%zz", "a%4", "%", "%%41", "%ff", "%C0%AF", "%E0%80%AF", "%ED%A0%80", "a%C3"])
def test_unquote_name_refuses_bad_escapes_and_invalid_utf8(raw: str) -> None:
    with pytest.raises(InvalidName):
        unquote_name(raw)


def test_validate_xid_accepts_what_new_xid_makes() -> None:
    for prefix in ("", "tco-"):
        x = new_xid(prefix)
        assert validate_xid(x) == x


@pytest.mark.parametrize("xid", ["", "../../x", "abc", "AbCdEfGh1/", "AbCdEfGh1\n", "tco-", "xyz-AbCdEfGh1",
                                 "AbCdEfGh10", "AbCdEfGh\x00", "..", "é" * 9])
def test_validate_xid_refuses_other_shapes(xid: str) -> None:
    with pytest.raises(InvalidXid):
        validate_xid(xid)


def test_depth_check_is_iterative_and_exact() -> None:
    doc: object = 1
    for _ in range(64):
        doc = [doc]
    assert _depth_ok(doc, 64)
    assert not _depth_ok([doc], 64)
    deep: object = {}
    for _ in range(100_000):  # far past the recursion limit: no RecursionError
        deep = {"a": deep}
    assert not _depth_ok(deep, 64)


def test_body_schemas_name_the_field() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"daemon_id"):
        msgspec.convert({"url": "http://127.0.0.1:1"}, Join)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.bmd"):
        msgspec.convert({"bmd": {"buckets": {}}}, Metasync)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.msg"):
        msgspec.convert({"id": "x", "kind": "k", "src": "a", "dst": "b", "msg": []}, XactStart)
    assert ("PUT", "/v1/metasync") in BODY_SCHEMAS


def test_join_needs_a_usable_id_and_url() -> None:
    msgspec.convert({"daemon_id": "t-1a2b3c", "url": "http://127.0.0.1:8081"}, Join)
    for bad in ({"daemon_id": "../t", "url": "http://127.0.0.1:1"}, {"daemon_id": "t1", "url": "file:///etc"}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, Join)


BOMB = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
)


def test_yaml_alias_bomb_refused_in_milliseconds() -> None:
    t0 = time.monotonic()
    with pytest.raises(BadRequest, match="expand"):
        load_spec_yaml(BOMB)
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("text", ["a: &a [*a]", "[" * 5000 + "]" * 5000, "\x1f", "!!python/object/apply:os.system [x]",
                                  "x" * (MAX_SPEC_BYTES + 1)])
def test_bad_yaml_is_a_bad_request(text: str) -> None:
    with pytest.raises(BadRequest):
        load_spec_yaml(text)


def test_yaml_with_a_few_aliases_still_loads() -> None:
    assert load_spec_yaml("x: &x {a: 1}\ny: *x\n") == {"x": {"a": 1}, "y": {"a": 1}}


def test_num_workers_cap() -> None:
    assert TcbMsg.parse(ETL_BCK, {"id": "e", "num-workers": MAX_NUM_WORKERS}).num_workers == MAX_NUM_WORKERS
    for bad in (MAX_NUM_WORKERS + 1, 100000, 1e400, "many"):
        with pytest.raises(InvalidMsg, match="num-workers"):
            TcbMsg.parse(ETL_BCK, {"id": "e", "num-workers": bad})
