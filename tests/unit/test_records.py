"""Pure tests of job records (``aioetl.xactions.records``): atomic writes, load, restart marking."""

from __future__ import annotations

import json
import os

import msgspec
import pytest

from aioetl.xactions.records import (
    JobRecord,
    JobRecords,
    RecordFile,
    atomic_write_json,
    mark_restarted,
    restart_reason,
    snap_running,
)
from aioetl.xactions.tcb import ETL_BCK, TcbMsg
from aioetl.xactions.xact import GO_ZERO_TIME, State, Xaction


def xaction(xid: str = "job1", node: str = "t-aaa") -> Xaction:
    return Xaction(xid=xid, kind=ETL_BCK, node_id=node, src_bck="src", dst_bck="dst")


def test_save_writes_the_documented_path_and_shape(tmp_path) -> None:  # type: ignore[no-untyped-def]
    recs = JobRecords(str(tmp_path), "t-aaa", fsync=False)
    x = xaction()
    x.transition(State.RUNNING)
    msg = TcbMsg.parse(ETL_BCK, {"id": "e", "prefix": "p/"}).to_wire()
    recs.save(x.snap(), msg)
    path = tmp_path / "jobs" / "job1" / "t-aaa.json"
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["xid"] == "job1" and doc["node"] == "t-aaa"
    assert doc["msg"]["id"] == "e" and doc["msg"]["prefix"] == "p/"
    assert doc["snap"]["id"] == "job1" and doc["snap"]["state"] == "running"
    assert [p.name for p in path.parent.iterdir()] == ["t-aaa.json"], "no temp file left behind"


def test_load_all_marks_running_records_aborted_and_keeps_finished_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    recs = JobRecords(str(tmp_path), "t-aaa", fsync=False)
    running = xaction("run1")
    running.transition(State.RUNNING)
    running.stats.loc_objs = 7
    recs.save(running.snap(), {"id": "e"})
    done = xaction("done1")
    done.transition(State.RUNNING)
    done.add_obj_err("ais://src/a", "boom", 500)
    done.transition(State.DRAINING)
    done.transition(State.FINISHED)
    recs.save(done.snap(), {"id": "e"})

    # a new process: a fresh store over the same directory
    loaded = JobRecords(str(tmp_path), "t-aaa", fsync=False).load_all()
    assert set(loaded) == {"run1", "done1"}
    r = loaded["run1"]
    assert r.restarted and r.snap["aborted"] is True and r.snap["is_idle"] is True
    assert r.snap["abort-err"] == "target t-aaa restarted while the job was running" == restart_reason("t-aaa")
    assert r.snap["err"] == r.snap["abort-err"] and r.snap["end-time"] != GO_ZERO_TIME
    assert r.snap["stats"]["loc-objs"] == "7", "stats are kept as last saved"
    d = loaded["done1"]
    assert not d.restarted and d.snap["aborted"] is False and d.snap["state"] == "finished"
    assert d.snap["err"].startswith("1 object error(s)")
    # the marking is on disk: a second restart keeps the reason and does not re-mark
    again = JobRecords(str(tmp_path), "t-aaa", fsync=False).load_all()
    assert again["run1"].snap["abort-err"] == r.snap["abort-err"] and not again["run1"].restarted


def test_load_all_skips_other_nodes_torn_files_and_error_reports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mine = JobRecords(str(tmp_path), "t-aaa", fsync=False)
    other = JobRecords(str(tmp_path), "t-bbb", fsync=False)
    x = xaction("j")
    x.transition(State.RUNNING)
    mine.save(x.snap(), {})
    other.save(x.snap(), {})
    d = tmp_path / "jobs" / "j"
    (d / "t-aaa.errors.jsonl").write_text('{"obj_name": "x"}\n')
    (d / ".t-aaa.json.123.456.tmp").write_text('{"torn')
    (tmp_path / "jobs" / "torn").mkdir()
    (tmp_path / "jobs" / "torn" / "t-aaa.json").write_text('{"snap": ')
    loaded = mine.load_all()
    assert set(loaded) == {"j"}
    assert not (d / ".t-aaa.json.123.456.tmp").exists(), "this node's leftover temp file is removed"
    assert json.loads((d / "t-bbb.json").read_text())["snap"]["state"] == "running", "other nodes' records untouched"


def test_load_all_without_a_jobs_directory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert JobRecords(str(tmp_path / "nothing"), "t-aaa").load_all() == {}


def test_invalid_job_ids_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    recs = JobRecords(str(tmp_path), "t-aaa", fsync=False)
    for bad in ("", "..", "a/b", "x\0y"):
        with pytest.raises(ValueError):
            recs.path(bad)
    with pytest.raises(ValueError):
        recs.save({"id": "../escape"}, {})
    assert not (tmp_path / "escape").exists()


def test_atomic_write_keeps_the_old_record_when_the_write_fails(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "r.json")
    atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": object()})  # not JSON: fails mid-write
    with open(path) as f:
        assert json.load(f) == {"v": 1}
    assert os.listdir(tmp_path) == ["r.json"], "the temp file is removed"


def test_snap_running_and_mark_restarted_are_pure() -> None:
    x = xaction()
    assert snap_running(x.snap())  # created
    x.transition(State.RUNNING)
    s = x.snap()
    m = mark_restarted(s, "t-zzz", now_ns=1_700_000_000_000_000_000)
    assert s["aborted"] is False, "the input is not modified"
    assert not snap_running(m) and m["end-time"].startswith("2023-11-14T22:13:20")
    x.abort("user")
    assert not snap_running(x.snap())
    assert not snap_running({"is_idle": True})
    assert snap_running({"is_idle": False})


# A record file exactly as the dataclass version of JobRecord wrote it (json.dump,
# compact separators, keys in this order): the typed record must read it and write
# it back byte for byte.
FILE_V1 = (
    b'{"version":1,"xid":"AbCdEfGh1","node":"t-aaa","saved_ns":1732000000000000000,'
    b'"msg":{"id":"e","prefix":"p/","\\u00e9t\\u00e9":[1,2.5,null,true]},'
    b'"snap":{"id":"AbCdEfGh1","kind":"etl-bck","state":"finished","is_idle":true,"aborted":false,'
    b'"stats":{"loc-objs":"3"}}}'
)


def test_record_file_round_trips_byte_for_byte(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "jobs" / "AbCdEfGh1"
    d.mkdir(parents=True)
    (d / "t-aaa.json").write_bytes(FILE_V1)
    rec = JobRecords(str(tmp_path), "t-aaa", fsync=False).load("AbCdEfGh1")
    assert isinstance(rec, JobRecord)
    assert rec.xid == "AbCdEfGh1" and rec.node_id == "t-aaa" and rec.saved_ns == 1732000000000000000
    assert rec.msg == {"id": "e", "prefix": "p/", "\u00e9t\u00e9": [1, 2.5, None, True]}
    assert rec.snap["state"] == "finished" and not rec.restarted
    assert rec.to_json() == json.loads(FILE_V1)
    assert list(rec.to_json()) == ["version", "xid", "node", "saved_ns", "msg", "snap"]
    out = tmp_path / "again.json"
    atomic_write_json(str(out), rec.to_json(), fsync=False)
    assert out.read_bytes() == FILE_V1
    # and through the struct codec: the same document
    assert json.loads(msgspec.json.encode(rec.to_file())) == json.loads(FILE_V1)


def test_restarted_is_not_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = JobRecord("j", "t-aaa", {"id": "j"}, {}, 5, restarted=True)  # positional, as the dataclass took
    assert "restarted" not in rec.to_json()


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (b'{"snap":{"id":"j"}}', ("t-aaa", {}, 0)),  # only the snapshot: node and msg fall back
        (b'{"snap":{"id":"j"},"node":null,"msg":null,"saved_ns":null}', ("t-aaa", {}, 0)),
        (b'{"snap":{"id":"j"},"node":"t-bbb","msg":[1],"saved_ns":"12"}', ("t-bbb", {}, 12)),
        (b'{"snap":{"id":"j"},"node":"","msg":{"a":1},"saved_ns":7,"extra":1}', ("t-aaa", {"a": 1}, 7)),
    ],
)
def test_lenient_where_old_files_differ(tmp_path, text: bytes, want: tuple[str, dict[str, int], int]) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "jobs" / "j"
    d.mkdir(parents=True)
    (d / "t-aaa.json").write_bytes(text)
    rec = JobRecords(str(tmp_path), "t-aaa", fsync=False).load("j")
    assert rec is not None and (rec.node_id, rec.msg, rec.saved_ns) == want


@pytest.mark.parametrize(
    "text",
    [b"", b"[]", b"null", b'{"snap":null}', b'{"snap":[1]}', b'{"msg":{}}', b'{"snap":{},"saved_ns":"x"}',
     b'{"snap":{},"saved_ns":1.5}', b'{"snap":'],
)
def test_unusable_files_are_skipped_not_raised(tmp_path, text: bytes) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "jobs" / "j"
    d.mkdir(parents=True)
    (d / "t-aaa.json").write_bytes(text)
    recs = JobRecords(str(tmp_path), "t-aaa", fsync=False)
    assert recs.load("j") is None
    assert recs.load_all() == {}


def test_record_file_defaults() -> None:
    doc = RecordFile(snap={})
    assert doc.version == 1 and doc.to_json() == {"version": 1, "xid": "", "node": None, "saved_ns": None,
                                                  "msg": None, "snap": {}}
