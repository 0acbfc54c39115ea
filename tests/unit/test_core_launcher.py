"""The launcher's files as typed records: cluster.json and the ready files (no processes started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aioetl.engine.node import launcher
from aioetl.engine.node.launcher import ClusterError, ClusterLayout, LocalCluster, ReadyFile, running_nodes

# cluster.json as the dict-based launcher wrote it (json.dump, indent=1)
LAYOUT_V1 = """{
 "gateway": {
  "id": "p-aaaaaa"
 },
 "targets": [
  {
   "id": "t-bbbbbb",
   "mountpaths": [
    "targets/t-bbbbbb/mp0",
    "targets/t-bbbbbb/mp1"
   ]
  },
  {
   "id": "t-cccccc",
   "mountpaths": [
    "targets/t-cccccc/mp0",
    "targets/t-cccccc/mp1"
   ]
  }
 ]
}"""


def test_an_existing_layout_is_read(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(LAYOUT_V1)
    c = LocalCluster(data_dir=str(tmp_path))
    assert c.target_mountpaths() == {
        "t-bbbbbb": [str(tmp_path / "targets/t-bbbbbb/mp0"), str(tmp_path / "targets/t-bbbbbb/mp1")],
        "t-cccccc": [str(tmp_path / "targets/t-cccccc/mp0"), str(tmp_path / "targets/t-cccccc/mp1")],
    }
    layout = c._layout()
    assert isinstance(layout, ClusterLayout) and layout.gateway.id == "p-aaaaaa"
    with pytest.raises(ClusterError, match="holds a cluster of 2 targets; asked for 3"):
        LocalCluster(targets=3, data_dir=str(tmp_path))._layout()


def test_a_new_layout_is_written_in_the_old_format(tmp_path: Path) -> None:
    LocalCluster(targets=2, data_dir=str(tmp_path), mountpaths_per_target=2)._layout()
    text = (tmp_path / "cluster.json").read_text()
    doc = json.loads(text)
    assert list(doc) == ["gateway", "targets"] and list(doc["gateway"]) == ["id"]
    assert [list(t) for t in doc["targets"]] == [["id", "mountpaths"]] * 2
    # same ids in the V1 text: byte for byte what json.dump(dict, indent=1) wrote
    gid, (t1, t2) = doc["gateway"]["id"], [t["id"] for t in doc["targets"]]
    assert text == LAYOUT_V1.replace("p-aaaaaa", gid).replace("t-bbbbbb", t1).replace("t-cccccc", t2)


@pytest.mark.parametrize("text", ["", "[]", '{"gateway": {}}', '{"gateway": {"id": "p"}, "targets": [{"id": 1}]}'])
def test_a_broken_layout_is_a_cluster_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "cluster.json").write_text(text)
    with pytest.raises(ClusterError, match="is not a cluster layout"):
        LocalCluster(data_dir=str(tmp_path))._layout()


def test_ready_files(tmp_path: Path) -> None:
    good = tmp_path / "t-1.json"
    good.write_text('{"pid": 42, "url": "http://127.0.0.1:1", "node_id": "t-1"}')
    assert launcher._read_ready(str(good)) == ReadyFile(pid=42, url="http://127.0.0.1:1", node_id="t-1")
    for i, bad in enumerate(['{"pid": "x", "url": ""}', '{"url": "u"}', "[1]", '{"pid": 1', ""]):
        p = tmp_path / f"bad{i}.json"
        p.write_text(bad)
        assert launcher._read_ready(str(p)) is None, bad
    assert launcher._read_ready(str(tmp_path / "missing.json")) is None


def test_running_nodes_skips_garbage_instead_of_raising(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "p-1.json").write_text('{"url": "no pid"}')
    (run / "t-1.json").write_text("[]")
    (run / "t-2.json").write_text('{"pid": 0, "url": "u"}')  # never kill(0, ...): the process group
    (run / "t-3.json").write_text('{"pid": 1, "url": "u"}')  # alive, but not an aioetl node
    assert running_nodes(str(tmp_path)) == []
