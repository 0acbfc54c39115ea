"""The gateway's shared services: task ownership, the cluster map, a joined target's readiness.

Pure where it can be (ClusterMap), loopback otherwise (a fake target on 127.0.0.1:0
that answers ``what=smap`` with 404 until it "applied" its join, and records when
an ETL init reaches it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aioetl.engine.core.etl import STAGE_RUNNING
from aioetl.engine.core.smap import Snode
from aioetl.engine.gateway.cluster import ClusterMap, PeerClient
from aioetl.engine.gateway.etl import GatewayEtl
from aioetl.engine.gateway.metadata import EtlEntry, EtlMd
from aioetl.engine.gateway.tasks import TaskOwner

# -- TaskOwner ---------------------------------------------------------------------------


def test_task_owner_cancels_and_awaits_every_task_on_close() -> None:
    async def main() -> None:
        owner = TaskOwner("t")
        started, cleaned = asyncio.Event(), []

        async def forever() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0)  # cleanup that itself awaits
                cleaned.append(1)

        task = owner.spawn(forever(), name="forever")
        await started.wait()
        assert owner.statistics() == {"running": 1, "failed": 0}
        await owner.aclose()
        assert task.cancelled() and cleaned == [1]
        assert owner.statistics()["running"] == 0
        coro = forever()
        with pytest.raises(RuntimeError, match="shutting down"):
            owner.spawn(coro, name="late")  # refused (and the coroutine closed, so no warning)

    asyncio.run(main())


def test_task_owner_counts_failures_and_forgets_ended_tasks() -> None:
    async def main() -> None:
        owner = TaskOwner("t")

        async def boom() -> None:
            raise ValueError("boom")

        async def fine() -> None:
            return None

        t1, t2 = owner.spawn(boom(), name="boom"), owner.spawn(fine(), name="fine")
        await asyncio.wait([t1, t2])
        await asyncio.sleep(0)
        assert owner.statistics() == {"running": 0, "failed": 1}
        await owner.aclose()

    asyncio.run(main())


def test_cancelling_aclose_propagates() -> None:
    """aclose() must not swallow its own cancellation (a stuck cleanup stays cancellable)."""

    async def main() -> None:
        owner = TaskOwner("t")
        release = asyncio.Event()

        async def stubborn() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.shield(release.wait())  # slow cleanup

        owner.spawn(stubborn(), name="stubborn")
        await asyncio.sleep(0)
        closing = asyncio.get_running_loop().create_task(owner.aclose())
        await asyncio.sleep(0.01)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        release.set()
        await owner.aclose()

    asyncio.run(main())


# -- ClusterMap ----------------------------------------------------------------------------


def test_cluster_map_records_the_version_of_each_join(tmp_path: Any) -> None:
    cj = tmp_path / "cluster.json"
    cm = ClusterMap(proxy_id="p-1", uuid="u", cluster_json=str(cj))
    assert cm.expected_joined()  # no file: nothing to wait for
    cj.write_text(json.dumps({"targets": [{"id": "t1"}, {"id": "t2"}]}))
    v1 = cm.add_target(Snode("t1", "target", "http://a"))
    assert not cm.expected_joined()
    v2 = cm.add_target(Snode("t2", "target", "http://b"))
    assert cm.expected_joined() and v2 == v1 + 1 == cm.version
    v3 = cm.add_target(Snode("t1", "target", "http://a2"))  # rejoined after a restart, new URL
    assert cm.joined_version("t1") == v3 and cm.joined_version("t2") == v2 and cm.joined_version("x") == 0
    assert [t.url for t in cm.targets()] == ["http://a2", "http://b"]
    cm.set_proxy_url("http://gw")
    assert cm.proxy.url == "http://gw" and cm.proxy.daemon_id == "p-1"


# -- readiness (loopback) --------------------------------------------------------------------


class FakeTarget:
    """Answers ``what=smap`` with 404 until :meth:`apply` (as a target before its join reply)."""

    def __init__(self, tid: str) -> None:
        self.tid = tid
        self.url = ""
        self.smap: dict[str, Any] | None = None
        self.events: list[tuple[str, float]] = []

    def apply(self, smap: dict[str, Any]) -> None:
        self.smap = smap
        self.events.append(("applied", time.monotonic()))

    async def daemon(self, request: web.Request) -> web.StreamResponse:
        if self.smap is None:
            return web.json_response({"message": "no cluster map yet"}, status=404)
        return web.json_response(self.smap)

    async def init(self, request: web.Request) -> web.StreamResponse:
        self.events.append(("init", time.monotonic()))
        return web.json_response({"pod": "ok"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/daemon", self.daemon)
        app.router.add_post("/v1/etl/_init", self.init)
        return app


@asynccontextmanager
async def serving(target: FakeTarget) -> AsyncIterator[None]:
    runner = web.AppRunner(target.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    target.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield
    finally:
        await runner.cleanup()


def _run(body: Callable[[ClusterMap, PeerClient, FakeTarget], Awaitable[None]]) -> None:
    async def main() -> None:
        t = FakeTarget("t1")
        async with serving(t), aiohttp.ClientSession() as session:
            cm = ClusterMap(proxy_id="p-1", uuid="u")
            await body(cm, PeerClient(cm, session), t)

    asyncio.run(main())


def test_wait_ready_returns_once_the_target_applied_its_join() -> None:
    async def body(cm: ClusterMap, peers: PeerClient, t: FakeTarget) -> None:
        cm.add_target(Snode("t1", "target", t.url))
        loop = asyncio.get_running_loop()
        loop.call_later(0.15, t.apply, cm.smap.to_json())
        t0 = time.monotonic()
        assert await peers.wait_ready("t1", timeout_s=5)
        assert 0.1 < time.monotonic() - t0 < 2

    _run(body)


def test_wait_ready_wants_the_join_version_and_gives_up_after_the_timeout() -> None:
    async def body(cm: ClusterMap, peers: PeerClient, t: FakeTarget) -> None:
        cm.add_target(Snode("t1", "target", t.url))
        t.apply(cm.smap.to_json())
        cm.add_target(Snode("t1", "target", t.url))  # rejoined: the old map is not enough
        t0 = time.monotonic()
        assert not await peers.wait_ready("t1", timeout_s=0.3)
        assert time.monotonic() - t0 < 2
        assert not await peers.wait_ready("gone", timeout_s=5)  # not in the map: no wait

    _run(body)


@pytest.mark.parametrize("restarted_cluster", [False, True])
def test_joined_target_gets_its_etl_init_only_after_it_is_ready(tmp_path: Any, restarted_cluster: bool) -> None:
    """The ETL service starts a Running ETL's pod on a (re)joined target once the target
    applied its join (no fixed sleep), as a task of the owner it was given; and so does
    the restart of a restarted cluster's ETLs (once every expected target is ready)."""

    async def body(cm: ClusterMap, peers: PeerClient, t: FakeTarget) -> None:
        md = EtlMd(str(tmp_path / "etlmd.json"))
        entry = EtlEntry(msg={"name": "etl-one", "runtime": {"image": "x"}}, stage=STAGE_RUNNING, secret="s",
                         xid="etl-1", error="", pods={})
        if restarted_cluster:  # etlMD says Running when the gateway starts
            md.md["etl-one"] = entry
        owner = TaskOwner("t")
        stopped: list[tuple[str, str]] = []

        async def on_stopped(name: str, reason: str) -> None:
            stopped.append((name, reason))

        etl = GatewayEtl(etlmd=md, cluster=cm, peers=peers, tasks=owner, on_stopped=on_stopped)
        assert etl.restart_pending == restarted_cluster
        if not restarted_cluster:
            md.md["etl-one"] = entry
        node = Snode("t1", "target", t.url)
        cm.add_target(node)
        etl.on_target_joined(node)
        await asyncio.sleep(0.2)
        assert [e for e, _ in t.events] == []  # not ready: no init yet
        t.apply(cm.smap.to_json())
        e = md.md["etl-one"]
        for _ in range(200):
            if e.stage == STAGE_RUNNING and e.pods:
                break
            await asyncio.sleep(0.02)
        assert [ev for ev, _ in t.events] == ["applied", "init"], t.events
        assert e.pods == {"t1": {"pod": "ok"}} and not stopped and not etl.restart_pending
        assert owner.statistics()["failed"] == 0
        await owner.aclose()

    _run(body)
