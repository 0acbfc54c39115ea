"""EtlStage and its transition table (engine/core/etl.py), pure."""

from __future__ import annotations

import itertools
import json

import msgspec
import pytest

from aioetl.engine.core import etl
from aioetl.engine.core.etl import (
    STAGE_ABORTED,
    STAGE_INITIALIZING,
    STAGE_RUNNING,
    TRANSITIONS,
    EtlEvent,
    EtlStage,
    IllegalStageTransition,
    check_transition,
    next_stage,
)
from aioetl.errors import Conflict

INI, R, A = EtlStage.INITIALIZING, EtlStage.RUNNING, EtlStage.ABORTED

# every legal move, written out: (from, event) -> to
LEGAL = {
    (None, "init"): INI,
    (INI, "init"): INI,
    (A, "init"): INI,
    (INI, "ready"): R,
    (INI, "join"): INI,
    (R, "join"): INI,
    (INI, "fail"): A,
    (R, "fail"): A,
    (INI, "stop"): A,
    (R, "stop"): A,
    (A, "stop"): A,
}


def test_wire_strings_are_aistores() -> None:
    # aistore/sdk/etl/etl_const.py ETL_STAGE_INIT/RUNNING/ABORTED
    assert [s.value for s in EtlStage] == ["Initializing", "Running", "Aborted"]


def test_old_names_are_the_members() -> None:
    assert STAGE_INITIALIZING is INI and STAGE_RUNNING is R and STAGE_ABORTED is A
    assert STAGE_RUNNING == "Running" and "Running" in {STAGE_RUNNING}  # both directions
    assert {"Running": 1}[STAGE_RUNNING] == 1  # hashes as the string
    assert f"{STAGE_ABORTED}" == str(STAGE_ABORTED) == "Aborted"


def test_json_round_trip_keeps_the_etlmd_format() -> None:
    md = {"e1": {"stage": STAGE_RUNNING, "error": ""}}
    text = json.dumps(md)
    assert text == '{"e1": {"stage": "Running", "error": ""}}'
    back = json.loads(text)
    assert back["e1"]["stage"] == STAGE_RUNNING
    assert EtlStage(back["e1"]["stage"]) is R
    assert msgspec.json.encode(md) == b'{"e1":{"stage":"Running","error":""}}'


def test_table_is_exactly_the_legal_moves() -> None:
    assert {(f, e.value): t for (f, e), t in TRANSITIONS.items()} == LEGAL


@pytest.mark.parametrize(("frm", "event"), list(LEGAL), ids=[f"{f}-{e}" for f, e in LEGAL])
def test_legal_moves(frm: EtlStage | None, event: str) -> None:
    assert next_stage(frm, event) is LEGAL[(frm, event)]
    assert next_stage(frm, EtlEvent(event)) is LEGAL[(frm, event)]
    if frm is not None:  # a plain wire string (read back from etlMD) works too
        assert next_stage(frm.value, event) is LEGAL[(frm, event)]
    assert check_transition(frm, LEGAL[(frm, event)]) is LEGAL[(frm, event)]


ILLEGAL = [(f, e) for f, e in itertools.product([None, INI, R, A], [e.value for e in EtlEvent]) if (f, e) not in LEGAL]


@pytest.mark.parametrize(("frm", "event"), ILLEGAL, ids=[f"{f}-{e}" for f, e in ILLEGAL])
def test_illegal_moves_raise(frm: EtlStage | None, event: str) -> None:
    with pytest.raises(IllegalStageTransition):
        next_stage(frm, event)


def test_illegal_moves_by_target_stage() -> None:
    pairs = {(f, t) for (f, _e), t in LEGAL.items()}
    for frm, to in itertools.product([None, INI, R, A], [INI, R, A]):
        if (frm, to) in pairs:
            assert check_transition(frm, to.value) is to
        else:
            with pytest.raises(IllegalStageTransition):
                check_transition(frm, to)


def test_the_moves_users_care_about() -> None:
    with pytest.raises(IllegalStageTransition, match="Running does not allow init"):
        next_stage(R, EtlEvent.INIT)  # start of a running ETL
    with pytest.raises(IllegalStageTransition):
        check_transition(A, R)  # an aborted ETL is never Running without an init
    with pytest.raises(IllegalStageTransition):
        check_transition(None, R)
    assert next_stage(A, EtlEvent.STOP) is A  # stop is idempotent


def test_unknown_stage_or_event_raises() -> None:
    with pytest.raises(IllegalStageTransition, match="unknown ETL stage"):
        next_stage("Paused", EtlEvent.INIT)
    with pytest.raises(IllegalStageTransition, match="unknown ETL event"):
        next_stage(R, "explode")
    with pytest.raises(IllegalStageTransition, match="unknown ETL stage"):
        check_transition(R, "running")  # case matters on the wire


def test_illegal_transition_is_a_409() -> None:
    e = IllegalStageTransition("x")
    assert isinstance(e, Conflict) and e.status == 409


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        etl.TRANSITIONS[(R, EtlEvent.INIT)] = R  # type: ignore[index]
