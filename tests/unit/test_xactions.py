"""Pure tests of xactions: state machine, capped errors, byte queue, TCB messages, job status."""

from __future__ import annotations

import asyncio
import json

import pytest

from aioetl.engine.gateway.jobs import aggregate_status
from aioetl.engine.scheduler.offline import resolve_num_workers
from aioetl.xactions.errs import MAX_OBJ_ERRS, InvalidMsg, ObjErrs
from aioetl.xactions.queue import ByteQueue, QueueClosed
from aioetl.xactions.tcb import ETL_BCK, ETL_LISTRANGE, TcbMsg, expand_template
from aioetl.xactions.xact import GO_ZERO_TIME, IllegalTransition, State, Xaction


def mk(tmp_path=None) -> Xaction:  # type: ignore[no-untyped-def]
    rp = str(tmp_path / "r.jsonl") if tmp_path else None
    return Xaction(xid="abc", kind=ETL_BCK, node_id="t1", src_bck="s", dst_bck="d", report_path=rp)


def test_state_machine_legal_and_illegal_moves() -> None:
    x = mk()
    with pytest.raises(IllegalTransition):
        x.transition(State.FINISHED)  # CREATED -> FINISHED skips RUNNING/DRAINING
    x.transition(State.RUNNING)
    assert x.running and x.snap()["end-time"] == GO_ZERO_TIME
    x.transition(State.DRAINING)
    assert x.running, "no more work is not the same as all results delivered"
    x.transition(State.FINISHED)
    assert not x.running and x.end_ns > 0 and x.snap()["is_idle"] is True
    assert x.abort("late") is False, "a finished xaction cannot be aborted"
    with pytest.raises(IllegalTransition):
        x.transition(State.RUNNING)


def test_abort_sets_err_and_done_callbacks() -> None:
    x = mk()
    seen = []
    x.on_done(lambda xx: seen.append(xx.state))
    x.transition(State.RUNNING)
    assert x.abort("boom") is True
    snap = x.snap()
    assert snap["aborted"] is True and snap["abort-err"] == "boom" and snap["err"] == "boom"
    assert seen == [State.ABORTED]


def test_snap_wire_shape_matches_aistore() -> None:
    x = mk()
    x.njoggers, x.nworkers = 2, 10
    x.stats.loc_objs, x.stats.out_bytes = 3, 1024
    s = x.snap()
    assert s["stats"]["loc-objs"] == "3" and s["stats"]["out-bytes"] == "1024"
    assert all(isinstance(v, str) for v in s["stats"].values()), "Go encodes counters as strings"
    assert int(s["glob.id"]) >> 10 == 10 and int(s["glob.id"]) & 0x3FF == 2
    json.dumps(s)


def test_obj_errs_cap_dedup_and_full_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = mk(tmp_path)
    x.transition(State.RUNNING)
    for i in range(300):
        x.add_obj_err(f"ais://s/o{i}", f"transform failed for o{i}", 500)
    x.add_obj_err("ais://s/o1", "transform failed for o1", 500)  # duplicate message
    assert len(x.obj_errs) == MAX_OBJ_ERRS
    assert x.err_total == 301
    assert "301 object error(s)" in x.err
    x.transition(State.DRAINING)
    x.transition(State.FINISHED)
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 301, "the full report keeps every failure, past the cap"
    assert json.loads(lines[0])["obj_name"] == "ais://s/o0"


def test_obj_errs_dedup_by_message_that_names_the_object() -> None:
    e = ObjErrs(cap=5)
    assert e.add("ais://b/a", "same", 500) is True
    assert e.add("ais://b/a", "same", 500) is False, "a repeat of one object's error is dropped"
    assert e.add("ais://b/b", "same", 500) is True, "the same text for another object is kept"
    assert [d["obj_name"] for d in e.to_list()] == ["ais://b/a", "ais://b/b"] and e.total == 3
    assert e.to_list()[0]["msg"] == "ais://b/a: same"


async def _drain(q: ByteQueue[int], out: list[int]) -> None:
    while True:
        try:
            item, _ = await q.get()
        except QueueClosed:
            return
        out.append(item)


def test_byte_queue_pauses_at_high_and_resumes_at_low() -> None:
    async def main() -> None:
        q: ByteQueue[int] = ByteQueue(high_items=100, high_bytes=1000, low_items=50, low_bytes=200)
        for i in range(4):
            await q.put(i, 250)  # 1000 bytes: at the high watermark
        producer = asyncio.ensure_future(q.put(99, 250))
        await asyncio.sleep(0)
        assert not producer.done(), "the producer pauses at the high watermark"
        await q.get()  # 750 bytes: still above low (200)
        await asyncio.sleep(0)
        assert not producer.done(), "hysteresis: no resume until the low watermark"
        await q.get()
        await q.get()  # 250 bytes
        await asyncio.sleep(0)
        assert not producer.done()
        await q.get()  # 0 bytes -> resume
        await asyncio.wait_for(producer, 1)
        assert q.statistics().pauses == 1 and q.statistics().peak_bytes == 1000

    asyncio.run(main())


def test_byte_queue_admits_an_oversized_item_into_an_empty_queue() -> None:
    async def main() -> None:
        q: ByteQueue[int] = ByteQueue(high_items=4, high_bytes=10)
        await asyncio.wait_for(q.put(1, 10**9), 1)  # never deadlocks on one huge object
        out: list[int] = []
        consumer = asyncio.ensure_future(_drain(q, out))
        for i in range(2, 50):
            await asyncio.wait_for(q.put(i, 7), 1)
        q.close()
        await asyncio.wait_for(consumer, 1)
        assert out == list(range(1, 50))

    asyncio.run(main())


def test_byte_queue_close_wakes_paused_producer() -> None:
    async def main() -> None:
        q: ByteQueue[int] = ByteQueue(high_items=1, high_bytes=100)
        await q.put(1, 1)
        p = asyncio.ensure_future(q.put(2, 1))
        await asyncio.sleep(0)
        q.close()
        with pytest.raises(QueueClosed):
            await asyncio.wait_for(p, 1)

    asyncio.run(main())


def test_tcb_to_name_ext_then_prepend() -> None:
    m = TcbMsg.parse(ETL_BCK, {"id": "etl-x", "ext": {"jpg": ".txt"}, "prepend": "out/"})
    assert m.to_name("a/b.jpg") == "out/a/b.txt"
    assert m.to_name("a/b.png") == "out/a/b.png"
    assert m.to_name("dir.jpg/noext") == "out/dir.jpg/noext"


def test_tcb_parse_errors() -> None:
    with pytest.raises(InvalidMsg):
        TcbMsg.parse(ETL_BCK, {"prefix": "x"})  # no ETL id
    with pytest.raises(InvalidMsg):
        TcbMsg.parse(ETL_BCK, {"id": "e", "num-workers": -5})
    with pytest.raises(InvalidMsg):
        TcbMsg.parse(ETL_BCK, {"id": "e", "synchronize": True, "prepend": "p"})
    with pytest.raises(InvalidMsg):
        TcbMsg.parse(ETL_LISTRANGE, {"id": "e", "objnames": "notalist"})
    m = TcbMsg.parse(ETL_BCK, {"id": "e", "prefix": "a/b*", "coer": True, "num-workers": 4})
    assert (m.prefix, m.coer, m.num_workers) == ("a/b", True, 4)


def test_expand_template() -> None:
    assert list(expand_template("o-{0..2}.txt")) == ["o-0.txt", "o-1.txt", "o-2.txt"]
    assert list(expand_template("x{08..12..2}")) == ["x08", "x10", "x12"]
    assert list(expand_template("{0..1}-{0..1}")) == ["0-0", "0-1", "1-0", "1-1"]
    assert list(expand_template("plain")) == ["plain"]
    with pytest.raises(InvalidMsg):
        list(expand_template("o-{5..1}"))


def test_num_workers_resolution() -> None:
    assert resolve_num_workers(-1, 2) == 1
    assert resolve_num_workers(10, 2) == 10
    auto = resolve_num_workers(0, 1, cpus=2)
    assert 4 <= auto <= 64


def test_aggregate_status() -> None:
    run = {"kind": ETL_BCK, "is_idle": False, "aborted": False, "err": "", "abort-err": ""}
    done = {**run, "is_idle": True}
    st = aggregate_status("j", "", {"t1": [run], "t2": [done]}, [])
    assert st["end_time"] == 0 and st["kind"] == ETL_BCK
    st = aggregate_status("j", "", {"t1": [done], "t2": [{**done, "err": "3 object error(s)"}]}, [])
    assert st["end_time"] > 0 and st["err"] == "3 object error(s)" and not st["aborted"]
    st = aggregate_status("j", ETL_BCK, {"t1": [run]}, ["t2"])
    assert st["aborted"] and "t2" in st["err"] and st["end_time"] > 0


def _snap_as_dict_built(x: Xaction) -> dict[str, object]:
    """The snapshot as Xaction.snap() built it before XactSnap, literally (the wire format)."""
    from aioetl.xactions.xact import rfc3339

    bck = {"name": x.src_bck, "provider": "ais", "namespace": {"uuid": "", "name": ""}}
    return {
        "id": x.xid, "kind": x.kind, "start-time": rfc3339(x.start_ns), "end-time": rfc3339(x.end_ns),
        "bck": bck, "src-bck": dict(bck),
        "dst-bck": {"name": x.dst_bck, "provider": "ais", "namespace": {"uuid": "", "name": ""}},
        "ctlmsg": x.ctlmsg, "abort-err": x.abort_err, "err": x.err,
        "glob.id": str(x.njoggers | (x.nworkers << 10)), "stats": x.stats.to_wire(),
        "aborted": x.aborted, "is_idle": not x.running,
        "total-objs": str(x.total_objs), "total-bytes": str(x.total_bytes), "done-objs": str(x.done_objs),
        "done-bytes": str(x.done_bytes), "err-total": str(x.err_total), "obj-errs": list(x.errs),
        "state": x.state.value, "node": x.node_id,
    }


def test_snap_struct_keeps_the_wire_json() -> None:
    import msgspec

    from aioetl.xactions.xact import XactSnap

    x = Xaction(xid="abc", kind=ETL_BCK, node_id="t1", src_bck="s", dst_bck="d", ctlmsg="etl e")
    x.njoggers, x.nworkers, x.total_objs, x.stats.loc_objs = 2, 3, 10, 4
    for step in (None, State.RUNNING, State.DRAINING):
        if step is not None:
            x.transition(step)
        want = _snap_as_dict_built(x)
        got = x.snap()
        assert got == want and list(got) == list(want)  # same keys, same order
        assert json.dumps(got) == json.dumps(want)
        back = msgspec.json.decode(json.dumps(want), type=XactSnap)  # a peer's snapshot decodes
        assert back == x.snap_struct() and msgspec.to_builtins(back) == want
    x.add_obj_err("ais://s/o", "boom", 500)
    x.abort("stop")
    assert x.snap() == _snap_as_dict_built(x)
    assert x.snap()["glob.id"] == str(2 | 3 << 10) and x.snap()["obj-errs"] == ["ais://s/o: boom"]
