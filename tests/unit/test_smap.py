"""Pure tests of the cluster map and HRW placement (aioetl.engine.core.smap) against the aistore SDK.

The SDK computes the owner of an object client side (``Smap.get_target_for_object``)
for ``direct=True`` reads, so our HRW must pick the same target for every name.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from aistore.sdk.types import Smap as SdkSmap
from aistore.sdk.utils import get_digest

from aioetl.engine.core.names import make_uname
from aioetl.engine.core.smap import Smap, Snode, digest, hrw_pick
from aioetl.errors import NodeUnavailable

MAINTENANCE = 1 << 2
DECOMMISSION = 1 << 3

# letters, digits, punctuation, and a spread of non-ASCII code points (2-, 3- and 4-byte UTF-8)
_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./ %+@#"
    "éüßøñçàλΩжЯ中文名前ファイル한국어🙂🚀𝄞"
)


def random_names(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return ["".join(rnd.choices(_ALPHABET, k=rnd.randint(1, 40))) for _ in range(n)]


def make_smap(n_targets: int, seed: int = 0, flags: dict[int, int] | None = None) -> Smap:
    rnd = random.Random(seed)
    proxy = Snode("p-" + rnd.randbytes(3).hex(), "proxy", "http://127.0.0.1:8080")
    targets = {}
    for i in range(n_targets):
        tid = "t-" + rnd.randbytes(3).hex()
        targets[tid] = Snode(tid, "target", f"http://127.0.0.1:{9000 + i}", flags=(flags or {}).get(i, 0))
    return Smap(proxy=proxy, targets=targets, version=7, uuid="abcde12345")


def test_digest_matches_sdk_for_node_ids_and_unames() -> None:
    for s in ["t-abc123", "p-000000", "ais/@#/b/o", "ais/@#/bck/ünï/名前/🙂", ""]:
        assert digest(s) == get_digest(s)
    smap = make_smap(5, seed=1)
    sdk = SdkSmap.model_validate(smap.to_json())
    for tid, t in sdk.tmap.items():
        assert t.id_digest == get_digest(tid) == smap.targets[tid].id_digest


@pytest.mark.parametrize("n_targets,seed", [(1, 1), (2, 2), (3, 3), (5, 4), (10, 5)])
def test_hrw_agrees_with_sdk_for_thousands_of_names(n_targets: int, seed: int) -> None:
    smap = make_smap(n_targets, seed=seed)
    sdk = SdkSmap.model_validate(smap.to_json())
    names = random_names(2000, seed=100 + seed)
    assert any(not n.isascii() for n in names), "the sample must include non-ASCII names"
    mismatches = []
    for obj in names:
        uname = make_uname("bck-" + str(seed), obj)
        ours = smap.hrw_target(uname).daemon_id
        theirs = sdk.get_target_for_object(uname).daemon_id
        if ours != theirs:
            mismatches.append((obj, ours, theirs))
    assert not mismatches, f"{len(mismatches)} of {len(names)} names placed differently, e.g. {mismatches[:3]}"


def _spread(n_targets: int, n_names: int, seed: int) -> Counter[str]:
    smap = make_smap(n_targets, seed=seed)
    return Counter(smap.hrw_target(make_uname("b", f"obj-{i:06d}")).daemon_id for i in range(n_names))


def test_spread_over_3_targets_is_balanced() -> None:
    n = 15000
    c = _spread(3, n, seed=11)
    assert len(c) == 3
    # expected 5000 each, binomial sd ~58; 6% (300) is > 5 sd
    for tid, k in c.items():
        assert abs(k - n / 3) < 0.06 * n / 3, f"{tid} got {k} of {n}: {dict(c)}"


def test_spread_over_10_targets_is_balanced() -> None:
    n = 20000
    c = _spread(10, n, seed=12)
    assert len(c) == 10
    # expected 2000 each, binomial sd ~42; 12% (240) is > 5 sd
    for tid, k in c.items():
        assert abs(k - n / 10) < 0.12 * n / 10, f"{tid} got {k} of {n}: {dict(c)}"


def test_removing_a_target_moves_only_its_objects() -> None:
    smap = make_smap(4, seed=21)
    names = [make_uname("b", f"o{i}") for i in range(3000)]
    before = {u: smap.hrw_target(u).daemon_id for u in names}
    gone = sorted(smap.targets)[1]
    del smap.targets[gone]
    moved = [u for u in names if smap.hrw_target(u).daemon_id != before[u]]
    assert moved and all(before[u] == gone for u in moved)
    assert len(moved) == sum(1 for v in before.values() if v == gone)


@pytest.mark.parametrize("flag", [MAINTENANCE, DECOMMISSION, MAINTENANCE | DECOMMISSION])
def test_maintenance_or_decommission_flagged_target_gets_nothing(flag: int) -> None:
    smap = make_smap(3, seed=31, flags={1: flag})
    flagged = list(smap.targets)[1]
    sdk = SdkSmap.model_validate(smap.to_json())
    assert sdk.tmap[flagged].in_maint_or_decomm()
    owners: Counter[str] = Counter()
    for obj in random_names(3000, seed=32):
        uname = make_uname("b", obj)
        tid = smap.hrw_target(uname).daemon_id
        assert tid == sdk.get_target_for_object(uname).daemon_id
        owners[tid] += 1
    assert flagged not in owners
    assert len(owners) == 2 and min(owners.values()) > 1000
    assert [t.daemon_id for t in smap.active_targets()] == sorted(set(smap.targets) - {flagged})


def test_other_flags_do_not_exclude_a_target() -> None:
    smap = make_smap(2, seed=41, flags={0: 1 << 0, 1: 1 << 4})
    owners = {smap.hrw_target(make_uname("b", f"o{i}")).daemon_id for i in range(200)}
    assert owners == set(smap.targets)


def test_no_active_target_raises_node_unavailable() -> None:
    smap = make_smap(2, seed=51, flags={0: MAINTENANCE, 1: DECOMMISSION})
    with pytest.raises(NodeUnavailable) as ei:
        smap.hrw_target("ais/@#/b/o")
    assert ei.value.status == 503
    with pytest.raises(NodeUnavailable):
        make_smap(0).hrw_target("ais/@#/b/o")
    with pytest.raises(NodeUnavailable):
        hrw_pick(1, [])


def test_to_json_validates_with_sdk_model_and_round_trips() -> None:
    smap = make_smap(3, seed=61, flags={2: MAINTENANCE})
    doc = smap.to_json()
    sdk = SdkSmap.model_validate(doc)
    assert set(sdk.tmap) == set(smap.targets)
    assert list(sdk.pmap) == [smap.proxy.daemon_id]
    assert sdk.proxy_si.daemon_id == smap.proxy.daemon_id and sdk.proxy_si.daemon_type == "proxy"
    assert sdk.version == 7 and sdk.uuid == "abcde12345"
    for tid, t in sdk.tmap.items():
        assert t.daemon_type == "target"
        assert t.public_net is not None and t.public_net.direct_url == smap.targets[tid].url
        assert t.public_net.node_hostname == "127.0.0.1"
        assert t.flags == smap.targets[tid].flags
    back = Smap.from_json(doc)
    assert back.to_json() == doc
    assert back.hrw_target("ais/@#/b/x").daemon_id == smap.hrw_target("ais/@#/b/x").daemon_id
