"""aioetl.engine.target.storage.FqnLender: what a confined pod is shown of a mountpath (real files, no pod)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from aioetl.engine.target.storage import LEND_DIR, FqnLender, Store
from aioetl.errors import NotFound


def _store(tmp_path: Any) -> Store:
    st = Store([str(tmp_path / "mp0"), str(tmp_path / "mp1")])
    for i in range(8):
        st.put_bytes("b", f"dir/obj-{i}.jpg", b"x%d" % i)
    st.put_bytes("other", "secret.txt", b"not lent")
    return st


def test_lent_link_has_base_name_and_bytes_and_lives_only_in_the_lend_dir(tmp_path: Any) -> None:
    st = _store(tmp_path)
    lender = FqnLender([mp.path for mp in st.mountpaths], "etl-a")
    fqn = st.fqn("b", "dir/obj-3.jpg")
    path = lender.lend(fqn)
    assert os.path.basename(path) == "obj-3.jpg"
    assert any(path.startswith(d + "/") for d in lender.dirs)
    assert all(LEND_DIR in d and d.endswith("/etl-a") for d in lender.dirs)
    with open(path, "rb") as f:
        assert f.read() == b"x3"
    lender.give_back(path)
    assert not os.path.exists(path)
    assert os.path.exists(fqn)  # the object itself is untouched


def test_same_base_name_in_flight_twice_gets_two_slots_and_slots_are_reused(tmp_path: Any) -> None:
    st = Store([str(tmp_path / "mp0")])
    st.put_bytes("b", "dir/obj.jpg", b"first")
    st.put_bytes("b2", "obj.jpg", b"same base name, other bucket")
    lender = FqnLender([st.mountpaths[0].path], "etl-a")
    p1, p2 = lender.lend(st.fqn("b", "dir/obj.jpg")), lender.lend(st.fqn("b2", "obj.jpg"))
    assert p1 != p2 and os.path.basename(p1) == os.path.basename(p2) == "obj.jpg"
    assert Path(p1).read_bytes() == b"first" and Path(p2).read_bytes() == b"same base name, other bucket"
    lender.give_back(p1)
    lender.give_back(p2)
    slots = {os.path.dirname(p1), os.path.dirname(p2)}
    again = {os.path.dirname(lender.lend(st.fqn("b", "dir/obj.jpg"))) for _ in range(2)}
    assert again == slots  # freed slots are taken again; no new directory per object
    assert len(os.listdir(lender.dirs[0])) == 2


def test_a_lent_link_pins_the_bytes_of_its_request(tmp_path: Any) -> None:
    st = _store(tmp_path)
    lender = FqnLender([mp.path for mp in st.mountpaths], "etl-a")
    path = lender.lend(st.fqn("b", "dir/obj-1.jpg"))
    st.put_bytes("b", "dir/obj-1.jpg", b"overwritten")
    assert Path(path).read_bytes() == b"x1"
    assert Path(st.fqn("b", "dir/obj-1.jpg")).read_bytes() == b"overwritten"


def test_gone_object_is_not_found_and_foreign_path_refused(tmp_path: Any) -> None:
    st = _store(tmp_path)
    lender = FqnLender([mp.path for mp in st.mountpaths], "etl-a")
    fqn = st.fqn("b", "dir/obj-2.jpg")
    os.unlink(fqn)
    with pytest.raises(NotFound, match=re.escape('"ais://b/dir/obj-2.jpg" does not exist')):
        lender.lend(fqn)
    with pytest.raises(ValueError):
        lender.lend(str(tmp_path / "elsewhere" / "f"))


def test_close_and_restart_clear_leftovers(tmp_path: Any) -> None:
    st = _store(tmp_path)
    lender = FqnLender([mp.path for mp in st.mountpaths], "etl-a")
    path = lender.lend(st.fqn("b", "dir/obj-0.jpg"))
    again = FqnLender([mp.path for mp in st.mountpaths], "etl-a")  # a new pod of the same ETL
    assert not os.path.exists(path)
    again.close()
    assert not any(os.path.exists(d) for d in again.dirs)
    assert os.path.exists(st.fqn("b", "dir/obj-0.jpg"))
