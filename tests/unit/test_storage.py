"""Tests of a target's local storage (aioetl.engine.target.storage) on real files under pytest's tmp_path.

No sockets and no fakes, except one: the disk-full test replaces ``os.write`` so that it
raises ENOSPC for the work file (filling a real disk in a unit test is not an option).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import xxhash

from aioetl.engine.target.storage import CKSUM_TYPE, Store, WorkFile, remove_trash, remove_trash_async
from aioetl.errors import Conflict, InsufficientStorage, NotFound


def xxh(data: bytes) -> str:
    return xxhash.xxh64(data).hexdigest()


def files_under(root: Path) -> set[str]:
    """Every regular file below ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def work_files(store: Store, bck: str) -> list[str]:
    out = []
    for mp in store.mountpaths:
        wdir = os.path.join(mp.bck_dir(bck), "%wk")
        if os.path.isdir(wdir):
            out += [os.path.join(wdir, f) for f in os.listdir(wdir)]
    return out


def read_fd(fd: int) -> bytes:
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store([str(tmp_path / "mp0")])


def test_put_open_round_trip_with_xxhash64_checksum(store: Store) -> None:
    data = os.urandom(100_000) + b"tail"
    md = store.put_bytes("b", "dir/obj.bin", data, custom={"k": "v"})
    assert CKSUM_TYPE == "xxhash"
    assert md.size == len(data) and md.cksum == xxh(data) and len(md.cksum) == 16 and md.version == 1
    fd, md2, fqn = store.open_object("b", "dir/obj.bin")
    assert read_fd(fd) == data
    assert (md2.size, md2.cksum, md2.version, md2.custom) == (len(data), xxh(data), 1, {"k": "v"})
    assert md2.atime_ns > 0
    assert fqn == store.fqn("b", "dir/obj.bin") and os.path.isfile(fqn)
    assert store.read_bytes("b", "dir/obj.bin") == data
    assert store.head("b", "dir/obj.bin").cksum == xxh(data)


def test_empty_object(store: Store) -> None:
    md = store.put_bytes("b", "empty", b"")
    assert md.size == 0 and md.cksum == xxh(b"")
    assert store.read_bytes("b", "empty") == b""


def test_version_increments_on_overwrite(store: Store) -> None:
    for i in range(1, 5):
        body = f"v{i}".encode() * i
        md = store.put_bytes("b", "o", body)
        assert md.version == i
        h = store.head("b", "o")
        assert (h.version, h.size, h.cksum) == (i, len(body), xxh(body))
        assert store.read_bytes("b", "o") == body
    assert work_files(store, "b") == []


def test_abort_leaves_no_work_file_and_no_object(store: Store) -> None:
    wf = store.open_work("b", "x/y")
    wf.write(b"a" * 4096)
    assert os.path.exists(wf.path) and work_files(store, "b") == [wf.path]
    wf.abort()
    wf.abort()  # idempotent
    assert work_files(store, "b") == []
    assert not os.path.exists(wf.fqn)
    with pytest.raises(NotFound, match=r'"ais://b/x/y" does not exist'):
        store.open_object("b", "x/y")
    assert list(store.iter_names("b")) == []


def test_unfinalized_work_file_is_invisible(store: Store) -> None:
    store.put_bytes("b", "keep", b"old")
    wf_new = store.open_work("b", "new")
    wf_new.write(b"not yet")
    wf_over = store.open_work("b", "keep")
    wf_over.write(b"replacement in progress")
    try:
        with pytest.raises(NotFound):
            store.open_object("b", "new")
        assert store.read_bytes("b", "keep") == b"old"
        assert store.head("b", "keep").version == 1
        assert sorted(n for n, _ in store.iter_names("b")) == ["keep"]
        assert len(work_files(store, "b")) == 2
    finally:
        wf_new.abort()
    md = wf_over.finalize()
    assert md.version == 2 and store.read_bytes("b", "keep") == b"replacement in progress"
    assert work_files(store, "b") == []


def test_abort_after_finalize_keeps_the_object(store: Store) -> None:
    """A finalized work file is gone from %wk; a late abort() (cleanup paths) is harmless."""
    wf = store.open_work("b", "o")
    wf.write(b"123")
    wf.finalize()
    wf.abort()
    assert store.read_bytes("b", "o") == b"123" and work_files(store, "b") == []


NAMES = ["ab", "a/b", "a/c/d", "a/cd", "a/c/e/f", "abc/d", "b/x", "b/x2/y", "z"]


def test_abort_during_a_finalize_in_a_thread_is_a_no_op(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request cancelled while its finalize runs in a thread (target shutdown) must not
    close the fd or unlink the work file under it: finalize owns both from its start."""
    import threading

    import aioetl.engine.target.storage as storage
    entered, release = threading.Event(), threading.Event()
    real_read_md = storage._read_md

    def slow_read_md(fqn: str) -> object:
        entered.set()
        release.wait(5)
        return real_read_md(fqn)

    monkeypatch.setattr(storage, "_read_md", slow_read_md)
    wf = store.open_work("b", "o")
    wf.write(b"payload")
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(wf.finalize()))
    t.start()
    assert entered.wait(5)
    wf.abort()  # what the cancelled handler does
    release.set()
    t.join(5)
    assert result and store.read_bytes("b", "o") == b"payload"


@pytest.mark.parametrize("prefix",
                         ["", "a", "a/", "a/c", "a/c/", "a/c/e", "ab", "abc/", "b/x", "b/x/", "z", "zz", "q/"])
def test_iter_names_with_prefixes_and_nested_dirs(store: Store, prefix: str) -> None:
    for n in NAMES:
        store.put_bytes("b", n, n.encode())
    store.put_bytes("other", "a/b", b"other bucket")
    got = list(store.iter_names("b", prefix))
    assert sorted(n for n, _ in got) == sorted(n for n in NAMES if n.startswith(prefix))
    for name, fqn in got:
        assert fqn == store.fqn("b", name) and Path(fqn).read_bytes() == name.encode()


def test_open_object_on_a_directory_is_not_found(store: Store) -> None:
    store.put_bytes("b", "a/b", b"x")
    with pytest.raises(NotFound):
        store.open_object("b", "a")
    with pytest.raises(NotFound):
        store.open_object("b", "a/b/c")  # a path through a file


def test_prefix_conflicts_are_409_and_keep_the_existing_object(store: Store) -> None:
    store.put_bytes("b", "a", b"file a")
    with pytest.raises(Conflict) as ei:
        store.put_bytes("b", "a/b", b"under a")
    assert ei.value.status == 409 and "ais://b/a/b" in ei.value.message
    store.put_bytes("b", "c/d", b"file c/d")
    with pytest.raises(Conflict):
        store.put_bytes("b", "c", b"over the dir")
    assert store.read_bytes("b", "a") == b"file a" and store.read_bytes("b", "c/d") == b"file c/d"
    assert work_files(store, "b") == []


def test_delete_prunes_empty_dirs_only(store: Store, tmp_path: Path) -> None:
    store.put_bytes("b", "a/b/c/d", b"1")
    store.put_bytes("b", "x/y", b"2")
    store.put_bytes("b", "x/z", b"3")
    ob = tmp_path / "mp0" / "@ais" / "b" / "%ob"
    store.delete("b", "a/b/c/d")
    assert not (ob / "a").exists(), "empty parents of a deleted object are removed"
    assert ob.is_dir(), "the bucket's %ob directory itself stays"
    store.delete("b", "x/y")
    assert (ob / "x").is_dir() and (ob / "x" / "z").is_file()
    with pytest.raises(NotFound, match=r'"ais://b/x/y" does not exist'):
        store.delete("b", "x/y")
    with pytest.raises(NotFound):
        store.delete("b", "nope")
    assert sorted(n for n, _ in store.iter_names("b")) == ["x/z"]


def test_destroy_bucket(store: Store, tmp_path: Path) -> None:
    for i in range(20):
        store.put_bytes("gone", f"d{i % 3}/o{i}", b"x" * i)
    store.put_bytes("kept", "o", b"kept")
    wf = store.open_work("gone", "half")
    wf.write(b"partial")
    trash = store.destroy_bucket("gone")
    assert trash and all("%trash" in t for t in trash)
    remove_trash(trash)
    wf.abort()
    mp = tmp_path / "mp0"
    assert not (mp / "@ais" / "gone").exists()
    assert list(store.iter_names("gone")) == []
    assert not store.bucket_exists_locally("gone") and store.bucket_exists_locally("kept")
    # nothing of "gone" is left anywhere, in %trash included; only the other bucket's object
    assert files_under(mp) == {"@ais/kept/%ob/o"}
    store.destroy_bucket("never-existed")  # no error
    store.put_bytes("gone", "o", b"new life")  # a bucket of the same name starts empty
    assert [n for n, _ in store.iter_names("gone")] == ["o"]


def test_cleanup_on_start_removes_work_files_and_trash(tmp_path: Path) -> None:
    mps = [str(tmp_path / "mp0"), str(tmp_path / "mp1")]
    crashed = Store(mps)
    crashed.put_bytes("b", "done", b"complete")
    left = []
    for i in range(6):  # a process that died mid-write: open work files, never finalized
        wf = crashed.open_work("b" if i % 2 else "c", f"w{i}")
        wf.write(b"partial" * 100)
        os.close(wf._fd)  # the crash closes the fd but leaves the file
        left.append(wf.path)
    trash = tmp_path / "mp0" / "%trash" / "old.123"
    trash.mkdir(parents=True)
    (trash / "f").write_bytes(b"trash")
    assert all(os.path.exists(p) for p in left)

    restarted = Store(mps)
    assert restarted.cleanup_on_start() == 6
    assert not any(os.path.exists(p) for p in left)
    assert work_files(restarted, "b") == [] and work_files(restarted, "c") == []
    assert not (tmp_path / "mp0" / "%trash").exists()
    assert restarted.read_bytes("b", "done") == b"complete"
    assert restarted.cleanup_on_start() == 0


def test_multiple_mountpaths_spread_objects_and_fqn_layout(tmp_path: Path) -> None:
    mps = [tmp_path / f"mp{i}" for i in range(3)]
    store = Store([str(p) for p in mps])
    names = [f"dir{i % 7}/obj-{i}" for i in range(150)]
    for n in names:
        store.put_bytes("bk", n, n.encode())
    per_mp = {str(p): 0 for p in mps}
    for n in names:
        holders = [p for p in mps if (p / "@ais" / "bk" / "%ob" / n).is_file()]
        assert len(holders) == 1, f"{n} must live on exactly one mountpath, found on {holders}"
        fqn = store.fqn("bk", n)
        assert fqn == os.path.join(str(holders[0]), "@ais", "bk", "%ob", n)
        assert store.mountpath_of("bk", n).fqn("bk", n) == fqn
        per_mp[str(holders[0])] += 1
    # 150 names over 3 mountpaths: expect 50 each (sd ~6)
    assert all(k >= 25 for k in per_mp.values()), per_mp
    assert sorted(n for n, _ in store.iter_names("bk")) == sorted(names)
    # each mountpath's jogger sees only its own share
    assert sum(len(list(store.iter_names_mp(mp, "bk"))) for mp in store.mountpaths) == len(names)
    # placement is a function of the name: a new Store over the same dirs finds everything
    again = Store([str(p) for p in reversed(mps)])
    assert all(again.read_bytes("bk", n) == n.encode() for n in names[:30])


def test_enospc_maps_to_insufficient_storage(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # FAKE: only os.write is replaced, and only for work files (/proc/self/fd/N under %wk):
    # it raises OSError(ENOSPC) as a full disk would. Everything else is real.
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if "/%wk/" in target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(InsufficientStorage) as ei:
        store.put_bytes("b", "big", b"x" * 10_000)
    assert ei.value.status == 507 and "ais://b/big" in ei.value.message
    assert work_files(store, "b") == [], "a failed write leaves no work file"
    with pytest.raises(NotFound):
        store.open_object("b", "big")

    wf = store.open_work("b", "streamed")
    assert isinstance(wf, WorkFile)
    with pytest.raises(InsufficientStorage):
        wf.write(b"chunk")
    wf.abort()
    assert work_files(store, "b") == []
    monkeypatch.undo()
    assert store.put_bytes("b", "big", b"fits now").size == 8


def test_set_custom_merge_and_replace(store: Store) -> None:
    store.put_bytes("b", "o", b"data", custom={"a": "1"})
    assert store.set_custom("b", "o", {"b": "2"}).custom == {"a": "1", "b": "2"}
    assert store.head("b", "o").custom == {"a": "1", "b": "2"}
    assert store.set_custom("b", "o", {"c": "3"}, replace=True).custom == {"c": "3"}
    h = store.head("b", "o")
    assert h.custom == {"c": "3"} and h.version == 1 and h.cksum == xxh(b"data")
    with pytest.raises(NotFound):
        store.set_custom("b", "missing", {"x": "y"})


def test_open_work_validates_the_name(store: Store, tmp_path: Path) -> None:
    from aioetl.errors import InvalidName

    before = files_under(tmp_path)
    for bad in ["../escape", "a/../../x", "/abs", "a\x00b"]:
        with pytest.raises(InvalidName):
            store.open_work("b", bad)
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("with_rm", [True, False])
def test_remove_trash_async(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_rm: bool) -> None:
    """``rm -rf`` in a child process; with no ``rm`` on PATH, the same in a thread."""
    import asyncio

    paths = []
    for i in range(2):
        d = tmp_path / f"%trash/b{i}" / "deep" / "er"
        d.mkdir(parents=True)
        for j in range(50):
            (d / f"f{j}").write_bytes(b"x")
        paths.append(str(tmp_path / f"%trash/b{i}"))
    if not with_rm:
        monkeypatch.setenv("PATH", str(tmp_path / "no-such-bin"))
    asyncio.run(remove_trash_async(paths + [str(tmp_path / "never-existed")]))
    assert not any(os.path.exists(p) for p in paths)
    assert (tmp_path / "%trash").is_dir(), "only the given paths are removed"
