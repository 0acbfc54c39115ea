"""The gateway's BMD and etlMD as typed structs keep the JSON they had as dicts.

Pure tier: literal files in the format the dict-based gateway wrote (``json.dump``
with ``indent=1`` through :func:`write_private_json`), read and written back byte for
byte; the BMD pushed to targets (metasync, join reply) is the same document.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from aioetl.engine.core.etl import EtlEvent, EtlStage, next_stage
from aioetl.engine.core.smap import Snode
from aioetl.engine.gateway.cluster import ClusterMap, PeerClient
from aioetl.engine.gateway.metadata import Bmd, ClusterMeta, EtlEntry, EtlMd, load_bmd, write_private_json

# What the dict-based gateway wrote: one ETL that ran (pods) and one that never did (no "pods").
ETLMD_TEXT = """{
 "etl-one": {
  "msg": {
   "name": "etl-one",
   "communication": "hpush://",
   "runtime": {
    "image": "x",
    "env": [
     {
      "name": "A",
      "value": "\\u00e9"
     }
    ]
   }
  },
  "stage": "Running",
  "secret": "AbCdEfGhIj",
  "xid": "etl-0123456789",
  "error": "",
  "pods": {
   "t1": {
    "pid": 4242,
    "url": "http://127.0.0.1:1234"
   }
  }
 },
 "etl-two": {
  "msg": {
   "name": "etl-two",
   "runtime": {
    "image": "y"
   }
  },
  "stage": "Aborted",
  "secret": "",
  "xid": "",
  "error": "init failed: boom"
 }
}"""

BMD_TEXT = """{
 "version": 3,
 "buckets": {
  "src": {
   "provider": "ais",
   "created": 1764680000123456789,
   "bid": 201326592123
  },
  "dst": {
   "provider": "ais",
   "created": 1764680000987654321,
   "bid": 42,
   "extra": [
    1.5,
    null,
    true
   ]
  }
 },
 "cluster_uuid": "0a1b2c3d4e"
}"""


def test_etlmd_file_round_trips_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "etlmd.json"
    path.write_text(ETLMD_TEXT)
    md = EtlMd(str(path))
    one, two = md.require("etl-one"), md.require("etl-two")
    assert one.stage is EtlStage.RUNNING and one.xid == "etl-0123456789" and one.secret == "AbCdEfGhIj"
    assert one.pods == {"t1": {"pid": 4242, "url": "http://127.0.0.1:1234"}}
    assert two.stage is EtlStage.ABORTED and two.pods is msgspec.UNSET and two.error == "init failed: boom"
    path.unlink()
    md.save()
    assert path.read_text() == ETLMD_TEXT


def test_bmd_file_round_trips_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "bmd.json"
    path.write_text(BMD_TEXT)
    bmd = load_bmd(str(path))
    assert bmd.version == 3 and bmd.uuid == "0a1b2c3d4e" and list(bmd.buckets) == ["src", "dst"]
    path.unlink()
    write_private_json(str(path), bmd.to_json())
    assert path.read_text() == BMD_TEXT


def test_bmd_without_cluster_uuid_stays_without() -> None:
    doc: dict[str, Any] = {"version": 1, "buckets": {"b": {"provider": "ais"}}}
    bmd = Bmd.from_json(doc)
    assert bmd.uuid == "" and bmd.to_json() == doc and json.dumps(bmd.to_json()) == json.dumps(doc)


def test_files_written_by_the_dict_based_code_load(tmp_path: Path) -> None:
    """The old gateway's own steps, on dicts, through the unchanged writer."""
    md_path, bmd_path = tmp_path / "etlmd.json", tmp_path / "bmd.json"
    old_md: dict[str, Any] = {"e": {"msg": {"name": "e"}, "stage": next_stage(None, EtlEvent.INIT), "secret": "",
                                    "xid": "", "error": ""}}
    old_md["e"]["secret"], old_md["e"]["xid"] = "s", "etl-1"
    old_md["e"]["stage"] = next_stage(old_md["e"]["stage"], EtlEvent.READY)
    old_md["e"].setdefault("pods", {})["t1"] = {"pod": "ok"}
    write_private_json(str(md_path), old_md)
    old_bmd: dict[str, Any] = {"version": 0, "buckets": {}, "cluster_uuid": "u"}
    old_bmd["buckets"].setdefault("b", {"provider": "ais", "created": 1, "bid": 2})
    old_bmd["version"] += 1
    write_private_json(str(bmd_path), old_bmd)
    before_md, before_bmd = md_path.read_bytes(), bmd_path.read_bytes()

    md = EtlMd(str(md_path))
    assert md.md == {"e": EtlEntry(msg={"name": "e"}, stage=EtlStage.RUNNING, secret="s", xid="etl-1",
                                   pods={"t1": {"pod": "ok"}})}
    md.save()
    assert md_path.read_bytes() == before_md
    bmd = load_bmd(str(bmd_path))
    assert bmd == Bmd(version=1, buckets={"b": {"provider": "ais", "created": 1, "bid": 2}}, cluster_uuid="u")
    write_private_json(str(bmd_path), bmd.to_json())
    assert bmd_path.read_bytes() == before_bmd


def test_a_new_entry_is_written_as_the_dict_was(tmp_path: Path) -> None:
    md = EtlMd(str(tmp_path / "etlmd.json"))
    md.md["e"] = EtlEntry(msg={"name": "e"}, stage=next_stage(None, EtlEvent.INIT))
    assert json.dumps(md.to_json()) == ('{"e": {"msg": {"name": "e"}, "stage": "Initializing", "secret": "", '
                                        '"xid": "", "error": ""}}')


def test_a_file_that_is_no_etlmd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "etlmd.json"
    path.write_text('{"e": {"msg": {}, "stage": "Sleeping"}}')
    with pytest.raises(msgspec.ValidationError, match=r"stage"):
        EtlMd(str(path))


def test_missing_bmd_is_new_and_empty(tmp_path: Path) -> None:
    bmd = load_bmd(str(tmp_path / "nope.json"))
    assert bmd.version == 0 and bmd.buckets == {} and len(bmd.uuid) == 10
    assert list(bmd.to_json()) == ["version", "buckets", "cluster_uuid"]


class _Peers:
    """Records what a metasync would push (as JSON, as aiohttp's ``json=`` sends it)."""

    def __init__(self) -> None:
        self.pushed: list[tuple[str, str]] = []

    async def metasync(self, meta: dict[str, Any], skip: str = "") -> None:
        self.pushed.append((json.dumps(meta), skip))


def test_bmd_travels_to_targets_as_the_file_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "bmd.json"
    path.write_text(BMD_TEXT)
    peers = _Peers()
    cm = ClusterMap(proxy_id="p1", uuid="0a1b2c3d4e")
    meta = ClusterMeta(bmd=load_bmd(str(path)), path=str(path), cluster=cm, peers=cast(PeerClient, peers))
    assert meta.meta()["bmd"] == json.loads(BMD_TEXT)

    async def main() -> None:
        joined = await meta.join(Snode("t1", "target", "http://127.0.0.1:1"))
        assert json.dumps(joined["bmd"]) == json.dumps(json.loads(BMD_TEXT))
        await meta.create_bucket("new", like="src")

    asyncio.run(main())
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == 4 and list(on_disk) == ["version", "buckets", "cluster_uuid"]
    assert list(on_disk["buckets"]) == ["src", "dst", "new"] and on_disk["buckets"]["new"]["provider"] == "ais"
    body, skip = peers.pushed[-1]
    assert json.loads(body)["bmd"] == on_disk and skip == ""
    assert body.split('"bmd": ', 1)[1][:-1] == json.dumps(on_disk)  # same keys in the same order
