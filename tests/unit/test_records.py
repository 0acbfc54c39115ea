"""Pure tests of job records (``aioetl.xactions.records``): atomic writes, load, restart marking."""

from __future__ import annotations

import json
import os

import pytest

from aioetl.xactions.records import JobRecords, atomic_write_json, mark_restarted, restart_reason, snap_running
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
    assert json.loads(open(path).read()) == {"v": 1}
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
