"""Misbehaving pods, object by object: every comm type, both pod flavours, inline and
offline, 1 and 3 targets, direct put on and off.

A case = (pod, comm type, misbehaviour, direct put, targets, phases):

- ``raw``: :mod:`tests.faults.faultpod`, a pod that breaks the wire itself (AIStore's
  order-based ws protocol, hand-written HTTP); its inline hpull phase is left out
  because after the 307 the client talks to the pod directly (no target in the path).
- ``ours``: :class:`communicators.AiohttpServer` subclass, transform-level faults.
- ``ais``: ``aistore[etl]``'s ``FastAPIServer`` subclass, run as written, same faults.

Each phase must leave every object correct or missing with an error that names it;
never misattributed, corrupt, partial, silently missing, or present although it
failed (checked again ``HANG_S + 2`` s after the job for the late-answer modes).
Good objects must all be correct, except next to pods whose broken replies the
target can only answer by failing everything in flight on that connection (raw
pods, and ``aistore[etl]`` pods on ws). Job-level: success exactly when every
object is correct; a cont_on_err job is not aborted (except when the pod died).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from .faultlib import AisFaultServer, OurFaultServer
from .harness import (
    HANG_S,
    Tally,
    delete_bucket,
    delete_etl,
    init_class_etl,
    init_raw_etl,
    make_objects,
    run_inline,
    run_offline,
    uid,
    upload,
)

pytestmark = [pytest.mark.timeout(300)]

HTTP_MODES = ["none", "two", "garbage", "short", "long", "cut", "nolen", "die", "hang", "t503", "nodp204"]
WS_MODES = ["none", "two", "text", "ack0", "garbage", "die", "hang"]
MIXED = ["none", "str", "raise"]  # transform-level faults that do not stall a connection
BOTH = ("inline", "offline")
OFF = ("offline",)


class Case(NamedTuple):
    pod: str
    comm: str
    mode: str
    direct_put: bool
    targets: int
    phases: tuple[str, ...] = BOTH

    @property
    def id(self) -> str:
        return f"{self.pod}-{self.comm}-{self.mode}-dp{int(self.direct_put)}-t{self.targets}-{'+'.join(self.phases)}"


def _cases() -> list[Case]:
    c: list[Case] = []
    # 3 targets, direct put on: every misbehaviour on every comm type
    for m in HTTP_MODES:
        c.append(Case("raw", "hpush", m, True, 3))
        c.append(Case("raw", "hpull", m, True, 3, OFF))
    for m in WS_MODES:
        c.append(Case("raw", "ws", m, True, 3))
    # 3 targets, direct put off: the modes where who writes the output matters
    for m in ["nolen", "nodp204", "long", "t503"]:
        c.append(Case("raw", "hpush", m, False, 3, OFF))
    # 1 target (every destination is local; ws always has direct put on)
    for m in ["two", "short", "cut", "nolen", "nodp204", "hang"]:
        c.append(Case("raw", "hpush", m, False, 1))
    for m in ["nolen", "nodp204"]:
        c.append(Case("raw", "hpull", m, False, 1, OFF))
    for m in ["two", "ack0", "hang"]:
        c.append(Case("raw", "ws", m, True, 1))
    # transform-level faults with our pods and with aistore[etl]'s FastAPIServer
    for pod in ("ours", "ais"):
        for comm in ("hpush", "hpull", "ws"):
            c.append(Case(pod, comm, "mixed", True, 3))
            c.append(Case(pod, comm, "mixed", comm == "ws", 1))
            # a transform that outlives obj_timeout (inline: our ws pods; the rest offline only)
            c.append(Case(pod, comm, "sleep", True, 3, BOTH if (pod, comm) == ("ours", "ws") else OFF))
    return c


CASES = _cases()


def _init(client: Any, case: Case, name: str) -> None:
    if case.pod == "raw":
        init_raw_etl(client, name, case.comm, case.direct_put)
    else:
        cls = OurFaultServer if case.pod == "ours" else AisFaultServer
        init_class_etl(client, name, cls, case.comm, case.direct_put)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault_case(clusters: Any, case: Case) -> None:
    cluster, client = clusters.get(case.targets)
    slow = case.mode in ("hang", "sleep")  # two late objects are enough, each costs HANG_S
    objs = make_objects(MIXED if case.mode == "mixed" else [case.mode], bad_every=10 if slow else 5)
    src_name = f"fsrc-{uid()}"
    src = upload(client, src_name, objs)
    # strict: a protocol that carries a status per reply (HTTP; our ws pods) has no excuse
    # to fail a good object; raw pods break framing and aistore[etl] ws pods answer by order
    # A transform that hangs (sleep, hang) may stall the whole pod (aistore[etl]'s server runs
    # it on its event loop; ours does too until its offload policy has measured it), so good
    # objects queued behind it may time out: honest errors, counted as collateral, not failed.
    strict = (case.pod == "ours" or (case.pod == "ais" and case.comm != "ws")) and case.mode not in ("sleep", "hang")
    abort_ok = case.mode == "die"
    settle = HANG_S + 1.5 if slow else 0.0
    # an extra reply on a kept-alive HTTP connection harms the next request on it: one at a
    # time, so that the next request surely reuses that connection (deterministic, not lucky)
    serial = case.mode == "two" and case.comm != "ws"
    failures: list[str] = []
    names: list[str] = []

    def fresh_etl() -> str:
        if names:
            delete_etl(client, names[-1])
        names.append(f"f{case.pod[0]}{case.comm}-{uid()}")
        _init(client, case, names[-1])
        return names[-1]

    try:
        etl = fresh_etl()
        if "inline" in case.phases:
            t = Tally(f"inline  {case.id}")
            run_inline(t, cluster.endpoint, src_name, etl, objs, threads=1 if serial else 8)
            v = t.violations(strict=strict, abort_ok=abort_ok)
            t.record(v)
            if v:
                failures.append(f"inline: {'; '.join(v)}; e.g. {t.examples[:4]}")
            if case.mode in ("die", "hang", "sleep"):
                etl = fresh_etl()  # a dead pod, or one still busy with late answers
        if "offline" in case.phases:
            t = Tally(f"offline {case.id}")
            problems = run_offline(t, client, cluster.endpoint, etl, src, objs, settle_s=settle,
                                   num_workers=1 if serial else 0)
            v = t.violations(strict=strict, abort_ok=abort_ok) + problems
            t.record(v)
            if v:
                failures.append(f"offline: {'; '.join(v)}; e.g. {t.examples[:4]}; job {t.job}")
    finally:
        if names:
            delete_etl(client, names[-1])
        delete_bucket(client, src_name)
    assert not failures, "\n".join(failures)
