"""A target that was down while buckets changed does not bring old objects back.

The target keeps a copy of its last BMD on its mountpaths (as AIStore does); the
gateway's BMD in the join answer is compared with it, whatever its version.
Real files in a temp directory; the Target object is built without serving.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aioetl.engine.target.target import Target, TargetConfig


def _target(tmp_path: Path) -> Target:
    cfg = TargetConfig(node_id="t1", mountpaths=[str(tmp_path / "mp1"), str(tmp_path / "mp2")],
                       gateway_url="http://127.0.0.1:9", data_dir=str(tmp_path), cluster_secret="s" * 32)
    return Target(cfg)


def _bmd(version: int, **bids: int) -> dict:
    return {"version": version, "buckets": {b: {"bid": bid} for b, bid in bids.items()}}


def test_rejoin_destroys_buckets_recreated_or_dropped_meanwhile(tmp_path: Path) -> None:
    async def run() -> None:
        t = _target(tmp_path)
        t.apply_meta({"bmd": _bmd(3, keep=1, recreated=2, dropped=3)})
        for b in ("keep", "recreated", "dropped", "stray"):
            t.store.put_bytes(b, "o", b"old " + b.encode())
        # the target goes down; meanwhile "recreated" gets a new bid, "dropped" goes,
        # and the gateway's metadata restarted its versions (a lower version than ours)
        t2 = _target(tmp_path)
        assert t2.bmd["version"] == 3  # the copy on the mountpaths
        t2.apply_meta({"bmd": _bmd(1, keep=1, recreated=9)}, joining=True)
        await asyncio.wait_for(asyncio.gather(*t2._tasks), 30)  # the trash removal (rm -rf child)
        assert t2.store.read_bytes("keep", "o") == b"old keep"
        assert "recreated" not in t2.store.bucket_names_on_disk()
        assert "dropped" not in t2.store.bucket_names_on_disk()
        assert "stray" not in t2.store.bucket_names_on_disk()  # no BMD knows it
        assert t2.bmd == _bmd(1, keep=1, recreated=9)
        # an ordinary metasync with an older version is still ignored
        t2.apply_meta({"bmd": _bmd(0)})
        assert "keep" in t2.bmd["buckets"]

    asyncio.run(run())


def test_no_copy_means_an_empty_bmd(tmp_path: Path) -> None:
    t = _target(tmp_path)
    assert t.bmd == {"version": 0, "buckets": {}}
    (tmp_path / "mp1" / ".aioetl.bmd.json").write_text("{not json")
    assert _target(tmp_path).bmd == {"version": 0, "buckets": {}}
