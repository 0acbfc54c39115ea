"""The offline scheduler driven in-process (#12 item 3): the real store, services,
ETL registry and job runner of a target, with a fault-injecting communicator and
pod runtime in place of pod processes. No process is started and no port opened:
the runtime's work (starting processes) is covered for real by the SDK and fault
suites; here every fault is placed exactly, and the job's bookkeeping checked
object by object.

The communicator reverses each object's bytes (read by FQN, as a pod does) and
misbehaves by object name: ``err-*`` fails, ``retry-*`` asks to be sent again
twice (EtlRetry, a TransientError) then succeeds, ``broken-*`` breaks its reply
stream halfway, ``short-*`` ends its stream short of its Content-Length,
``slow-*`` takes longer than the job's per-object timeout, ``hang-*`` never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest

from aioetl.communicators.target.comm import EtlFailed, EtlRetry, Reply
from aioetl.engine.core.etl import EtlStage, parse_init_msg
from aioetl.engine.scheduler.offline import OfflineJobs
from aioetl.engine.scheduler.receipts import Receipts
from aioetl.engine.target.etl import EtlManager
from aioetl.engine.target.objects import ObjectIO
from aioetl.engine.target.peers import Peers
from aioetl.engine.target.services import ClusterView, NodeInfo
from aioetl.engine.target.storage import Store
from aioetl.errors import BadRequest
from aioetl.xactions.tcb import ETL_BCK
from aioetl.xactions.xact import State

ETL = "fault-etl"


class _FakePod:
    url = "http://127.0.0.1:9"
    pid = 0
    pid_namespace = False
    stopping = False

    async def stop(self) -> None:
        self.stopping = True

    def phase(self) -> str:
        return "Running"


class _FakeRuntime:
    """A pod runtime that starts nothing (records what it was asked)."""

    confined = False

    def __init__(self) -> None:
        self.started: list[str] = []

    async def start(self, spec: Any, *, target_id: str, target_url: str, secret: str, on_exit: Any,
                    read_dirs: Sequence[str] = ()) -> _FakePod:
        self.started.append(spec.name)
        return _FakePod()

    def forget(self, target_id: str, name: str) -> None:
        pass

    def cleanup_leftovers(self, target_id: str) -> int:
        return 0


class _Stream:
    """Stands in for an aiohttp StreamReader whose body breaks after ``good`` bytes."""

    def __init__(self, data: bytes, good: int, *, cut: bool) -> None:
        self.data, self.good, self.cut = data, good, cut

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        yield self.data[: self.good]
        if self.cut:
            raise aiohttp.ClientPayloadError("connection lost mid-body")


class _FaultComm:
    def __init__(self, etl: str, obj_timeout_s: float) -> None:
        self.etl = etl
        self.lender = None
        self.obj_timeout_s = obj_timeout_s
        self.sent: Counter[str] = Counter()
        self.closed = False

    @contextlib.asynccontextmanager
    async def send(self, bck: str, obj: str, *, fqn: str | None, etl_args: str = "", pipeline: Sequence[str] = (),
                   direct: bool = False, timeout_s: float | None = None) -> AsyncIterator[Reply]:
        self.sent[obj] += 1
        assert fqn is not None and not direct and not pipeline
        with open(fqn, "rb") as f:
            out = f.read()[::-1]
        what = f"ais://{bck}/{obj}"
        limit = timeout_s or self.obj_timeout_s
        if obj.startswith("err-"):
            raise EtlFailed(f'ETL error: etl job "{self.etl}": injected failure of {what}', status=500)
        if obj.startswith("retry-") and self.sent[obj] <= 2:
            raise EtlRetry(f'ETL error: etl job "{self.etl}": injected retry of {what}')
        if obj.startswith(("slow-", "hang-")):
            try:
                await asyncio.wait_for(asyncio.sleep(3600 if obj.startswith("hang-") else limit * 10), limit)
            except TimeoutError:
                raise BadRequest(f'etl job "{self.etl}": timeout: transform of "{obj}" took longer '
                                 f"than obj_timeout ({limit:g}s)") from None
        if obj.startswith(("broken-", "short-")):
            stream = _Stream(out, len(out) // 2, cut=obj.startswith("broken-"))
            yield Reply(self.etl, what, stream=stream, size=len(out))  # type: ignore[arg-type]
            return
        yield Reply(self.etl, what, data=out)

    def redirect_url(self, uname: str, fqn: str | None, etl_args: str) -> str | None:
        return None

    async def close(self) -> None:
        self.closed = True


class _Target:
    """The target's services, wired as Target does, with the fakes."""

    def __init__(self, tmp: Any) -> None:
        node = NodeInfo("t1", "http://127.0.0.1:9", str(tmp))
        self.cluster = ClusterView("t1", bmd={"version": 1, "buckets": {"src": {}, "dst": {}}})
        self.store = Store([str(tmp / "mp0"), str(tmp / "mp1")])
        peers = Peers(self.cluster, node.gateway_url, "secret")
        receipts = Receipts()
        self.jobs = OfflineJobs(node, self.cluster, self.store, peers, receipts)
        self.runtime = _FakeRuntime()
        self.comms: list[_FaultComm] = []

        def factory(comm_type: str, etl: str, pod_url: str, obj_timeout_s: float, session: Any, *,
                    lender: Any = None, n_conns: int = 2, conns_per_process: int = 0) -> _FaultComm:
            c = _FaultComm(etl, obj_timeout_s)
            self.comms.append(c)
            return c

        self.etls = EtlManager(node, self.cluster, self.store, ObjectIO("t1", self.store, receipts), peers,
                               self.runtime, self.jobs, make_comm=factory)  # type: ignore[arg-type]
        self.jobs.etls = self.etls

    async def init_etl(self, obj_timeout: str = "2s") -> None:
        spec = parse_init_msg({"name": ETL, "communication": "hpush://", "obj_timeout": obj_timeout,
                               "runtime": {"image": "aistorage/transformer_echo:latest"}})
        inst = await self.etls.init(spec, "etl-secret", "x-init")
        assert inst.stage is EtlStage.RUNNING and self.runtime.started == [ETL]

    def put(self, names: list[str]) -> dict[str, bytes]:
        objs = {n: os.urandom(64) + n.encode() for n in names}
        for n, v in objs.items():
            self.store.put_bytes("src", n, v)
        return objs

    async def aclose(self) -> None:
        await self.jobs.aclose()
        await self.etls.aclose()

    def outputs(self) -> dict[str, bytes]:
        return {n: self.store.read_bytes("dst", n) for n, _ in self.store.iter_names("dst", "")}


def _work_files(store: Store) -> list[str]:
    out = []
    for mp in store.mountpaths:
        for dirpath, _dirs, files in os.walk(mp.path):
            if os.path.basename(dirpath) == "%wk":
                out += files
    return out


def test_every_object_ends_in_exactly_one_outcome(tmp_path: Any) -> None:
    async def run() -> None:
        t = _Target(tmp_path)
        await t.init_etl()
        good = [f"ok-{i:03d}" for i in range(40)] + ["retry-a", "retry-b"]
        bad = ["err-a", "err-b", "broken-a", "short-a", "slow-a"]
        objs = t.put(good + bad)
        x = t.jobs.start("xjob00001", ETL_BCK, "src", "dst", {"id": ETL, "coer": True,
                                                               "request_timeout": "300ms"})
        x = await t.jobs.wait("xjob00001")
        assert x.state == State.FINISHED, x.abort_err
        got = t.outputs()
        assert got == {n: objs[n][::-1] for n in good}  # nothing partial, nothing for a failure
        errs = {e["obj_name"].rsplit("/", 1)[1]: e for e in x.obj_errs.to_list()}
        assert set(errs) == set(bad)
        assert errs["err-a"]["msg"].endswith("injected failure of ais://src/err-a")
        assert errs["broken-a"]["ecode"] == errs["short-a"]["ecode"] == 424  # the pod's side broke
        assert "timeout" in errs["slow-a"]["msg"]
        assert x.stats.loc_objs == len(good) and x.done_objs == len(good) + len(bad)
        comm = t.comms[0]
        assert comm.sent["retry-a"] == comm.sent["retry-b"] == 3  # two retries asked, third delivered
        assert comm.sent["err-a"] == 1 and comm.sent["ok-000"] == 1  # a failure is not retried
        assert _work_files(t.store) == []
        await t.aclose()

    asyncio.run(run())


def test_without_continue_on_error_the_first_failure_aborts_and_leaves_nothing_partial(tmp_path: Any) -> None:
    async def run() -> None:
        t = _Target(tmp_path)
        await t.init_etl()
        objs = t.put([f"ok-{i:03d}" for i in range(30)] + ["err-z"])
        t.jobs.start("xjob00002", ETL_BCK, "src", "dst", {"id": ETL})
        x = await t.jobs.wait("xjob00002")
        assert x.state == State.ABORTED and "injected failure" in x.abort_err
        for n, v in t.outputs().items():  # whatever was written is whole and right
            assert v == objs[n][::-1]
        assert "err-z" not in t.outputs()
        assert _work_files(t.store) == []
        await t.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("where", ["stop-etl", "abort-job"])
def test_cancellation_mid_job_loses_nothing_it_should_not(tmp_path: Any, where: str) -> None:
    """``hang-*`` objects hold workers in the pod call when the ETL is stopped or the job
    aborted: the job ends aborted, its communicator closed, no work file left, and every
    output present is whole."""

    async def run() -> None:
        t = _Target(tmp_path)
        await t.init_etl(obj_timeout="60s")
        objs = t.put([f"ok-{i:03d}" for i in range(20)] + [f"hang-{i}" for i in range(4)])
        t.jobs.start("xjob00003", ETL_BCK, "src", "dst", {"id": ETL, "coer": True})
        for _ in range(200):  # until every hang object is in flight
            if sum(v for k, v in t.comms[0].sent.items() if k.startswith("hang-")) == 4:
                break
            await asyncio.sleep(0.01)
        if where == "stop-etl":
            assert await t.etls.stop(ETL)
            assert t.comms[0].closed
        else:
            assert t.jobs.abort(xid="xjob00003", err="aborted by the test") == 1
        x = await asyncio.wait_for(t.jobs.wait("xjob00003"), 10)
        assert x.state == State.ABORTED
        for n, v in t.outputs().items():
            assert v == objs[n][::-1]
        assert not any(n.startswith("hang-") for n in t.outputs())
        assert _work_files(t.store) == []
        await t.aclose()

    asyncio.run(run())
