"""TcbMsg: flags honoured, ignored as AIStore ignores them, or refused; etl_args; template checks."""

from __future__ import annotations

import json

import pytest

from aioetl.xactions.errs import InvalidMsg
from aioetl.xactions.tcb import COPY_BCK, ETL_BCK, ETL_LISTRANGE, TcbMsg


def sdk_bck_value(**over: object) -> dict[str, object]:
    """What SDK 2.0.0 ``bucket.transform(...)`` sends by default (TCBckMsg.as_dict)."""
    v: dict[str, object] = {"id": "etl-x", "request_timeout": "5m", "pipeline": None, "prefix": "", "prepend": "",
                            "dry_run": False, "force": False, "latest-ver": False, "synchronize": False}
    v.update(over)
    return v


def test_sdk_defaults_parse_and_round_trip() -> None:
    m = TcbMsg.parse(ETL_BCK, sdk_bck_value())
    assert m.request_timeout_s == 300.0 and m.etl_args == "" and not m.sync
    again = TcbMsg.parse(ETL_BCK, m.to_wire())
    assert again == m, "the targets parse what the gateway sends back into the same message"


def test_latest_and_force_are_accepted_for_ais_buckets() -> None:
    m = TcbMsg.parse(ETL_BCK, sdk_bck_value(**{"latest-ver": True, "force": True}))
    assert m.latest and m.force


@pytest.mark.parametrize("kind,extra", [(ETL_BCK, {}), (COPY_BCK, {}), (ETL_LISTRANGE, {"template": "o-{0..3}"}),
                                        (ETL_LISTRANGE, {"prefix": "a/"})])
def test_synchronize_is_refused_where_aistore_would_prune(kind: str, extra: dict[str, object]) -> None:
    with pytest.raises(InvalidMsg, match="synchronize is not supported"):
        TcbMsg.parse(kind, sdk_bck_value(synchronize=True, **extra))


def test_synchronize_with_an_object_list_is_ignored_as_aistore_does() -> None:
    m = TcbMsg.parse(ETL_LISTRANGE, sdk_bck_value(synchronize=True, objnames=["a", "b"]))
    assert m.sync is False and m.obj_names == ["a", "b"]


def test_request_timeout_is_parsed_and_bounds_the_per_object_timeout() -> None:
    m = TcbMsg.parse(ETL_BCK, sdk_bck_value(request_timeout="1m30s"))
    assert m.request_timeout_s == 90.0
    assert m.obj_timeout_s(45.0) == 45.0, "the shorter of the two"
    assert m.obj_timeout_s(120.0) == 90.0
    assert TcbMsg.parse(ETL_BCK, sdk_bck_value(request_timeout="")).obj_timeout_s(45.0) == 45.0
    assert TcbMsg.parse(ETL_BCK, sdk_bck_value(request_timeout="250ms")).to_wire()["request_timeout"] == "250ms"
    for bad in ("soon", "5 minutes", 300, True):
        with pytest.raises(InvalidMsg):
            TcbMsg.parse(ETL_BCK, sdk_bck_value(request_timeout=bad))


def test_etl_args_str_dict_and_invalid() -> None:
    assert TcbMsg.parse(ETL_BCK, sdk_bck_value(etl_args="resize=64")).etl_args == "resize=64"
    m = TcbMsg.parse(ETL_BCK, sdk_bck_value(etl_args={"format": "jpeg", "size": 64}))
    assert m.etl_args == '{"format":"jpeg","size":64}' and json.loads(m.etl_args)["size"] == 64
    assert m.to_wire()["etl_args"] == m.etl_args
    assert TcbMsg.parse(ETL_BCK, m.to_wire()).etl_args == m.etl_args
    with pytest.raises(InvalidMsg, match="etl_args"):
        TcbMsg.parse(ETL_BCK, sdk_bck_value(etl_args=42))


@pytest.mark.parametrize("tmpl", ["o-{5..1}", "o-{0..9..0}", "o-{a..b", "{0..9999}-{0..9999}"])
def test_invalid_templates_are_refused_at_parse(tmpl: str) -> None:
    with pytest.raises(InvalidMsg):
        TcbMsg.parse(ETL_LISTRANGE, {"id": "etl-x", "template": tmpl, "tobck": {"name": "d"}})
