"""Tests of shard reading, matching and writing (aioetl.engine.target.archive) on real files.

Shards are built in a directory on /dev/shm where there is one (else pytest's tmp_path),
by our writers and by the standard library's, and read back both ways.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import threading
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import lz4.frame
import pytest

from aioetl.engine.target import archive as ar
from aioetl.engine.target.archive import (
    EXT_TAR,
    EXT_TAR_GZ,
    EXT_TAR_LZ4,
    EXT_TGZ,
    EXT_ZIP,
    FILE_EXTENSIONS,
    Matcher,
    Member,
    aiter_chunks,
    append_tar,
    detect_format,
    list_members,
    lso_entry_name,
    new_writer,
    open_member,
    relative_archpath,
    split_at_extension,
    tar_of_matches,
    validate_archpath,
    wds_key,
)
from aioetl.errors import BadRequest, NotFound

MiB = 1 << 20
FORMATS = [EXT_TAR, EXT_TGZ, EXT_TAR_GZ, EXT_ZIP, EXT_TAR_LZ4]

# names as in AIStore's test_get_archregex plus WebDataset-style samples, in shard order
SAMPLES: dict[str, bytes] = {
    "file1.txt": b"Content of file one",
    "file2.txt": b"Content of file two",
    "file3.txt": b"Content of file three",
    "file1.cls": b"1",
    "file2.cls": b"2",
    "file3.cls": b"3",
    "subdir/aaa.jpg": os.urandom(70_000),
    "subdir/aaa.json": b'{"k": 1}',
    "subdir/aaab.jpg": b"",
    "subdir/b.c/x.tar.gz": b"nested name with dots",
    "d\u00e9j\u00e0/\u65e5\u672c.txt": b"unicode",
    "long/" + "n" * 150 + ".bin": b"pax header for a long name",
}


@pytest.fixture
def shm() -> Iterator[Path]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(prefix="aioetl-archive-", dir=base)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def build(path: Path, fmt: str, members: dict[str, bytes]) -> Path:
    with open(path, "wb") as f, new_writer(fmt, f) as w:
        for name, data in members.items():
            w.add(name, data, len(data), mtime_s=1_700_000_000)
    return path


def read_member(path: Path, fmt: str, name: str) -> bytes:
    with open_member(path, fmt, name) as r:
        return r.read()


def tar_names_and_data(stream: bytes) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tf:
        for ti in tf:
            f = tf.extractfile(ti)
            out.append((ti.name, f.read() if f else b""))
    return out


def stdlib_members(path: Path, fmt: str) -> dict[str, bytes]:
    """Read a shard with the standard library (and lz4.frame) only, independently of the module."""
    if fmt == EXT_ZIP:
        with zipfile.ZipFile(path) as zf:
            return {zi.filename: zf.read(zi) for zi in zf.infolist() if not zi.is_dir()}
    opener = {EXT_TAR_LZ4: lambda: lz4.frame.open(path, "rb"), EXT_TGZ: None, EXT_TAR_GZ: None, EXT_TAR: None}[fmt]
    fileobj = opener() if opener else None
    mode = {EXT_TAR: "r:", EXT_TGZ: "r:gz", EXT_TAR_GZ: "r:gz", EXT_TAR_LZ4: "r|"}[fmt]
    with tarfile.open(path if fileobj is None else None, mode=mode, fileobj=fileobj) as tf:
        out = {}
        for ti in tf:
            f = tf.extractfile(ti)
            out[ti.name] = f.read() if f else b""
    if fileobj is not None:
        fileobj.close()
    return out


# -- formats --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_through_our_writer_and_reader(shm: Path, fmt: str) -> None:
    path = build(shm / f"shard{fmt}", fmt, SAMPLES)
    assert detect_format(path.name) == fmt
    assert list_members(path, fmt) == sorted(Member(n, len(d)) for n, d in SAMPLES.items())
    assert [m.name for m in list_members(path, fmt, sort=False)] == list(SAMPLES)
    for name, data in SAMPLES.items():
        assert read_member(path, fmt, name) == data
    assert stdlib_members(path, fmt) == SAMPLES  # other readers see the same members


@pytest.mark.parametrize("fmt", FORMATS)
def test_shards_made_by_the_standard_library_are_read(shm: Path, fmt: str) -> None:
    path = shm / f"std{fmt}"
    if fmt == EXT_ZIP:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("dir/", b"")  # a directory entry: not a member
            for name, data in SAMPLES.items():
                zf.writestr(name, data)
    else:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
            d = tarfile.TarInfo("subdir")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
            link = tarfile.TarInfo("link-to-aaa")
            link.type, link.linkname = tarfile.SYMTYPE, "subdir/aaa.jpg"
            tf.addfile(link)
            for name, data in SAMPLES.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        body = raw.getvalue()
        if fmt in (EXT_TGZ, EXT_TAR_GZ):
            import gzip

            body = gzip.compress(body)
        elif fmt == EXT_TAR_LZ4:
            body = lz4.frame.compress(body)
        path.write_bytes(body)
    names = {m.name: m.size for m in list_members(path, fmt)}
    expected = {n: len(d) for n, d in SAMPLES.items()}
    if fmt != EXT_ZIP:
        expected["link-to-aaa"] = 0  # links are members of size 0, as in AIStore; directories are not
    assert names == expected
    for name, data in SAMPLES.items():
        assert read_member(path, fmt, name) == data
    if fmt != EXT_ZIP:
        assert read_member(path, fmt, "link-to-aaa") == b""
        with pytest.raises(NotFound):
            open_member(path, fmt, "subdir")


def test_format_detection_by_extension_mime_and_magic(shm: Path) -> None:
    assert detect_format("a/b.tar") == EXT_TAR
    assert detect_format("x.tgz") == EXT_TGZ and detect_format("x.tar.gz") == EXT_TAR_GZ
    assert detect_format("x.zip") == EXT_ZIP and detect_format("x.tar.lz4") == EXT_TAR_LZ4
    assert detect_format("x.bin", mime="application/zip") == EXT_ZIP
    assert detect_format("x.tar", mime="tar.gz") == EXT_TAR_GZ  # a given mime wins
    assert detect_format("x", mime=".tar.lz4") == EXT_TAR_LZ4
    with pytest.raises(BadRequest, match='unknown mime type "application/json"'):
        detect_format("x.tar", mime="application/json")
    with pytest.raises(BadRequest, match="not reading file magic"):
        detect_format("noext")  # listing: by extension only
    for fmt in FORMATS:
        p = build(shm / f"magic{fmt}", fmt, {"a": b"x" * 10})
        bare = shm / f"bare-{fmt.replace('.', '_')}"
        p.rename(bare)
        expected = EXT_TAR_GZ if fmt == EXT_TGZ else fmt  # gzip magic means .tar.gz
        assert detect_format(bare.name, path=bare) == expected
        assert read_member(bare, expected, "a") == b"x" * 10
    junk = shm / "junk"
    junk.write_bytes(b"hello world" * 100)
    with pytest.raises(BadRequest, match="unrecognized or unsupported"):
        detect_format("junk", path=junk)
    assert ar.content_type(EXT_TAR) == "application/x-tar" and ar.content_type(EXT_ZIP) == "application/zip"
    assert ar.format_from_content_type("application/x-tar; charset=binary") == EXT_TAR
    assert ar.same_format(EXT_TGZ, EXT_TAR_GZ) and not ar.same_format(EXT_TAR, EXT_ZIP)


def test_split_and_entry_names_follow_aistore() -> None:
    assert split_at_extension("a/b/shard.tar/dir/f.bin") == ("a/b/shard.tar", "dir/f.bin")
    assert split_at_extension("plain/object") == ("plain/object", "")
    assert split_at_extension("s.tar.gz/x") == ("s.tar.gz", "x")
    assert lso_entry_name("s.tar", "dir/a.jpg") == "s.tar/dir/a.jpg"
    assert lso_entry_name("s.tar", "./a") == "s.tar/a"
    assert lso_entry_name("s.tar", "/abs/a") == "s.tar/abs/a"
    assert lso_entry_name("s.tar", "a/../b") == "s.tar/b"
    for bad in ("../x", "a/../../x", "..", "/", ""):
        with pytest.raises(BadRequest, match="leaves the shard"):
            lso_entry_name("s.tar", bad)
    assert (ar.LS_ARCH_DIR, ar.ENTRY_IN_ARCH, ar.ENTRY_IS_ARCHIVE) == (8, 128, 512)


# -- archpath and names ----------------------------------------------------------------


def test_archpath_validation_refuses_traversal() -> None:
    assert validate_archpath("/a/b.txt") == "a/b.txt"
    assert validate_archpath("a/.b/c..d") == "a/.b/c..d"
    for bad in ("", "/", "../x", "a/../x", "./x", "a/./x", "a/", "~/x", "a/.."):
        with pytest.raises(BadRequest, match="invalid archpath"):
            validate_archpath(bad)
    assert relative_archpath("dir/s.tar", "dir/s.tar/a/b") == "a/b"
    assert relative_archpath("dir/s.tar", "a/b") == "a/b"


@pytest.mark.parametrize("fmt", [EXT_TAR, EXT_ZIP, EXT_TAR_LZ4])
def test_bad_archpath_missing_member_and_missing_shard(shm: Path, fmt: str) -> None:
    path = build(shm / f"s{fmt}", fmt, SAMPLES)
    for bad in ("../file1.txt", "/../x", "subdir/../file1.txt"):
        with pytest.raises(BadRequest):
            open_member(path, fmt, bad)
    assert read_member(path, fmt, "/file1.txt") == SAMPLES["file1.txt"]  # leading "/" ignored
    with pytest.raises(NotFound, match=r"nope\.txt in ais://b/s\S* does not exist") as ei:
        open_member(path, fmt, "nope.txt", label=f"ais://b/s{fmt}")
    assert ei.value.status == 404
    with pytest.raises(NotFound):
        open_member(shm / "absent.tar", EXT_TAR, "a")
    with pytest.raises(BadRequest, match="unsupported archive format"):
        list_members(path, ".rar")


def test_members_stored_with_absolute_or_dotted_names_are_read_but_not_listed_outside(shm: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for name in ("/abs/x", "../evil", "ok"):
            ti = tarfile.TarInfo(name)
            ti.size = len(name)
            tf.addfile(ti, io.BytesIO(name.encode()))
    path = shm / "odd.tar"
    path.write_bytes(raw.getvalue())
    names = [m.name for m in list_members(path, EXT_TAR)]
    assert names == ["../evil", "/abs/x", "ok"]  # listed as stored, like AIStore
    assert read_member(path, EXT_TAR, "abs/x") == b"/abs/x"  # tar --absolute-names: "/" ignored
    with pytest.raises(BadRequest):
        open_member(path, EXT_TAR, "../evil")  # never addressable
    with pytest.raises(BadRequest, match="leaves the shard"):
        [lso_entry_name("odd.tar", n) for n in names]


@pytest.mark.parametrize("fmt", FORMATS)
def test_writers_refuse_traversal_names_and_short_sources(shm: Path, fmt: str) -> None:
    with open(shm / f"w{fmt}", "wb") as f:
        w = new_writer(fmt, f)
        for bad in ("../x", "/abs", "a/../b", "a/", "", "a//b", "./a"):
            with pytest.raises(BadRequest, match="invalid archived name"):
                w.add(bad, b"x", 1)
        with pytest.raises(BadRequest):
            w.add("a", b"xy", 3)
        with pytest.raises(BadRequest):
            w.add("short", io.BytesIO(b"12"), 5)


# -- match modes -------------------------------------------------------------------------

MATCH_CASES: list[tuple[str, str, list[str]]] = [
    ("file2", "prefix", ["file2.txt", "file2.cls"]),
    ("file3", "wdskey", ["file3.txt", "file3.cls"]),
    ("subdir/aaa", "wdskey", ["subdir/aaa.jpg", "subdir/aaa.json"]),
    ("subdir/aaa", "prefix", ["subdir/aaa.jpg", "subdir/aaa.json", "subdir/aaab.jpg"]),
    (".cls", "suffix", ["file1.cls", "file2.cls", "file3.cls"]),
    ("aa", "substr", ["subdir/aaa.jpg", "subdir/aaa.json", "subdir/aaab.jpg"]),
    (r"file[13]\.(txt|cls)$", "regexp", ["file1.txt", "file3.txt", "file1.cls", "file3.cls"]),
    ("b\\.c", "regexp", ["subdir/b.c/x.tar.gz"]),  # search, not full match
    ("subdir/b.c/x.tar", "wdskey", ["subdir/b.c/x.tar.gz"]),  # last extension only
    ("", "regexp", list(SAMPLES)),  # empty matches all, in every mode
    ("*", "suffix", list(SAMPLES)),
    ("", "", list(SAMPLES)),  # empty mode is prefix
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_match_modes_return_exactly_the_matching_members_in_shard_order(shm: Path, fmt: str) -> None:
    path = build(shm / f"m{fmt}", fmt, SAMPLES)
    for regex, mode, expected in MATCH_CASES:
        with tar_of_matches(path, fmt, regex, mode, chunk_bytes=4096) as stream:
            body = b"".join(stream)
            assert stream.matched == len(expected) and stream.bytes_out == len(body)
        got = tar_names_and_data(body)
        assert [n for n, _ in got] == expected, (regex, mode)
        assert all(data == SAMPLES[n] for n, data in got)
        assert len(body) % 512 == 0 and body.endswith(b"\0" * 1024)
    with pytest.raises(NotFound, match=r"\(archregx=zzz, archmode=prefix\) in .* does not exist"):
        tar_of_matches(path, fmt, "zzz", "prefix")


def test_matcher_modes_and_errors() -> None:
    assert ar.MATCH_MODES == ("regexp", "prefix", "suffix", "substr", "wdskey")  # the SDK's ArchiveMode
    m = Matcher.new("^a.c", "regexp")
    assert m("abc") and m("abcd") and not m("xabc")
    with pytest.raises(BadRequest, match='invalid matching mode "wildcard"'):
        Matcher.new("*.jpg", "wildcard")
    with pytest.raises(BadRequest, match="invalid archregx"):
        Matcher.new("a(", "regexp")
    assert ar.validate_match_mode("*") == "prefix"
    assert wds_key("a/b.c/x.jpg") == "a/b.c/x"
    assert wds_key("/a/x.tar.gz") == "a/x.tar"
    assert wds_key("a/noext") == "a/noext" and wds_key("a/.hidden") == "a/"


def test_tar_of_matches_carries_zip_members_and_tar_headers(shm: Path) -> None:
    tpath = build(shm / "h.tar", EXT_TAR, {"a.jpg": b"A" * 1000})
    with tar_of_matches(tpath, EXT_TAR, "a", "wdskey") as s, tarfile.open(fileobj=io.BytesIO(b"".join(s))) as tf:
        ti = tf.getmember("a.jpg")
        assert (ti.mtime, ti.mode, ti.size) == (1_700_000_000, 0o644, 1000)
    zpath = build(shm / "h.zip", EXT_ZIP, {"a.jpg": b"A" * 1000})
    with tar_of_matches(zpath, EXT_ZIP, "a", "wdskey") as s, tarfile.open(fileobj=io.BytesIO(b"".join(s))) as tf:
        ti = tf.getmember("a.jpg")
        assert ti.size == 1000 and ti.mode == 0o644 and abs(ti.mtime - 1_700_000_000) <= 2


# -- corrupt and truncated ---------------------------------------------------------------


def read_everything(path: Path, fmt: str) -> None:
    for m in list_members(path, fmt):
        with open_member(path, fmt, m.name) as r:
            while r.read_chunk():
                pass
    with tar_of_matches(path, fmt, "", "prefix") as s:
        for _ in s:
            pass


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cut", [0.5, 0.9, 0.97])
def test_truncated_shards_give_bad_request(shm: Path, fmt: str, cut: float) -> None:
    # cut within the content, not within a tar's zero padding (0.97 lands in the last member's data)
    members = {f"m{i}.bin": os.urandom(30_000) for i in range(7)}
    path = build(shm / f"t{fmt}", fmt, members)
    body = path.read_bytes()
    path.write_bytes(body[: int(len(body.rstrip(b"\0")) * cut)])
    with pytest.raises(BadRequest, match="corrupt or unsupported archive"):
        read_everything(path, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_shards_give_bad_request(shm: Path, fmt: str) -> None:
    path = shm / f"g{fmt}"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(BadRequest, match="corrupt or unsupported archive") as ei:
        read_everything(path, fmt)
    assert ei.value.status == 400


def test_empty_tar_has_no_members_and_corrupt_bytes_inside_a_member_are_caught(shm: Path) -> None:
    empty = shm / "empty.tar"
    empty.write_bytes(b"")
    assert list_members(empty, EXT_TAR) == []
    (shm / "zeros.tar").write_bytes(b"\0" * 10240)
    assert list_members(shm / "zeros.tar", EXT_TAR) == []
    with pytest.raises(NotFound):
        tar_of_matches(empty, EXT_TAR, "", "")
    for fmt in (EXT_TAR, EXT_TGZ):  # a damaged second header: bad checksum
        path = build(shm / f"c{fmt}", EXT_TAR, {"a": b"a" * 1000, "b": b"b"})
        body = bytearray(path.read_bytes())
        body[1536 + 148 : 1536 + 156] = b"9999999\0"  # "b"'s header checksum field
        if fmt == EXT_TGZ:
            import gzip

            body = bytearray(gzip.compress(bytes(body)))
        path.write_bytes(bytes(body))
        assert read_member(path, fmt, "a") == b"a" * 1000  # before the damage
        with pytest.raises(BadRequest, match="corrupt or unsupported archive"):
            list_members(path, fmt)
        with pytest.raises(BadRequest, match="corrupt or unsupported archive"):
            open_member(path, fmt, "b")


# -- streaming a large member ------------------------------------------------------------


class PatternSource(io.RawIOBase):
    """``size`` bytes of a repeating pseudo-random pattern, produced on demand (never held whole)."""

    def __init__(self, size: int, block: bytes) -> None:
        self.left, self.block, self.pos = size, block, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self.left)
        out = bytearray()
        while len(out) < n:
            off = self.pos % len(self.block)
            take = min(n - len(out), len(self.block) - off)
            out += self.block[off : off + take]
            self.pos += take
        b[:n] = out
        self.left -= n
        return n


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS[:1] + FORMATS[2:])
def test_a_64_MiB_member_is_written_and_read_in_bounded_memory(shm: Path, fmt: str) -> None:
    size = 64 * MiB
    block = os.urandom(MiB + 17)  # incompressible, and not aligned with any chunk size
    expected = hashlib.sha256()
    src = PatternSource(size, block)
    while chunk := src.read(MiB):
        expected.update(chunk)
    path = shm / f"big{fmt}"
    tracemalloc.start()
    try:
        with open(path, "wb") as f, new_writer(fmt, f) as w:
            w.add("small-first.txt", b"hello", 5)
            w.add("big.bin", PatternSource(size, block), size)
            w.add("small-last.txt", b"bye", 3)
        _, peak_write = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert list_members(path, fmt, sort=False)[1] == Member("big.bin", size)
        got = hashlib.sha256()
        with open_member(path, fmt, "big.bin") as r:
            assert r.size == size
            while chunk := r.read_chunk():
                assert len(chunk) <= ar.CHUNK_BYTES
                got.update(chunk)
        _, peak_read = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        streamed = hashlib.sha256()
        with tar_of_matches(path, fmt, "big", "prefix") as s:
            header = next(s)
            n = 0
            for chunk in s:
                if n < size:
                    streamed.update(chunk[: size - n])
                n += len(chunk)
        _, peak_match = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.digest() == expected.digest() == streamed.digest()
    assert header[:7] == b"big.bin" and n == size + 1024
    for peak in (peak_write, peak_read, peak_match):
        assert peak < 8 * MiB, (fmt, peak_write, peak_read, peak_match)


# -- writing: append and copy --------------------------------------------------------------


def test_append_to_tar_in_place(shm: Path) -> None:
    path = build(shm / "a.tar", EXT_TAR, {"one": b"1" * 700, "two": b"2"})
    size_before = path.stat().st_size
    with append_tar(path) as w:
        w.add("three", b"333", 3)
        w.add_file("four", path.with_name("a.tar"))  # any local file: here, a copy of itself
    names = [m.name for m in list_members(path, EXT_TAR, sort=False)]
    assert names == ["one", "two", "three", "four"]
    assert read_member(path, EXT_TAR, "one") == b"1" * 700 and read_member(path, EXT_TAR, "three") == b"333"
    assert len(read_member(path, EXT_TAR, "four")) == size_before
    assert stdlib_members(path, EXT_TAR)["two"] == b"2"
    empty = shm / "new.tar"
    empty.write_bytes(b"")
    with append_tar(empty) as w:
        w.add("x", b"x", 1)
    assert stdlib_members(empty, EXT_TAR) == {"x": b"x"}
    junk = shm / "junk.tar"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(BadRequest):
        append_tar(junk)
    cut = shm / "cut.tar"
    cut.write_bytes(path.read_bytes()[:1000])  # "one" is cut in its data
    with pytest.raises(BadRequest):
        append_tar(cut)
    assert cut.stat().st_size == 1000  # not written to
    with pytest.raises(NotFound):
        append_tar(shm / "absent.tar")


@pytest.mark.parametrize(("src_fmt", "dst_fmt"), [(EXT_TGZ, EXT_TGZ), (EXT_TAR, EXT_TAR_LZ4), (EXT_ZIP, EXT_ZIP)])
def test_copy_then_append_for_formats_that_cannot_append_in_place(shm: Path, src_fmt: str, dst_fmt: str) -> None:
    old = build(shm / f"old{src_fmt}", src_fmt, SAMPLES)
    new = shm / f"new{dst_fmt}"
    with open(new, "wb") as f, new_writer(dst_fmt, f) as w:
        assert w.copy_from(old, src_fmt) == len(SAMPLES)
        w.add("appended", b"tail", 4)
        assert w.members == len(SAMPLES) + 1
    assert stdlib_members(new, dst_fmt) == {**SAMPLES, "appended": b"tail"}
    with open(shm / "x.zip", "wb") as f, new_writer(EXT_ZIP, f) as w, pytest.raises(BadRequest):
        w.copy_from(build(shm / "y.tar", EXT_TAR, {"a": b""}), EXT_TAR)


def test_zip_into_a_sink_that_cannot_seek(shm: Path) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.buf = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[no-untyped-def]
            self.buf += b
            return len(b)

    pipe = Pipe()
    with new_writer(EXT_ZIP, pipe) as w:  # type: ignore[arg-type]
        for name, data in SAMPLES.items():
            w.add(name, data, len(data))
    path = shm / "piped.zip"
    path.write_bytes(bytes(pipe.buf))
    assert {n: read_member(path, EXT_ZIP, n) for n in SAMPLES} == SAMPLES


# -- async ------------------------------------------------------------------------------------


def test_aiter_chunks_streams_a_member_off_the_loop(shm: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    path = build(shm / "as.tar.lz4", EXT_TAR_LZ4, {"a": data})

    async def main() -> bytes:
        reader = open_member(path, EXT_TAR_LZ4, "a", chunk_bytes=64 * 1024)
        out = [c async for c in aiter_chunks(reader)]
        assert reader.closed and max(map(len, out)) == 64 * 1024
        return b"".join(out)

    assert asyncio.run(main()) == data


def test_aiter_chunks_cancelled_mid_read_waits_for_the_read_then_closes() -> None:
    class Slow:
        def __init__(self) -> None:
            self.started, self.release = threading.Event(), threading.Event()
            self.reading = False
            self.closed_while_reading: bool | None = None
            self.reads = 0

        def read_chunk(self) -> bytes:
            self.reads += 1
            if self.reads == 2:
                self.reading = True
                self.started.set()
                self.release.wait(10)
                self.reading = False
            return b"x"

        def close(self) -> None:
            self.closed_while_reading = self.reading

    src = Slow()

    async def main() -> None:
        got: list[bytes] = []

        async def consume() -> None:
            async for c in aiter_chunks(src):
                got.append(c)

        task = asyncio.create_task(consume())
        await asyncio.get_running_loop().run_in_executor(None, src.started.wait, 10)
        task.cancel()
        await asyncio.sleep(0)  # the cancel lands while the read is still running
        src.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert got == [b"x"]

    asyncio.run(main())
    assert src.closed_while_reading is False  # closed after the in-flight read, never during it


def test_exports_are_honest() -> None:
    assert len(set(ar.__all__)) == len(ar.__all__)
    for name in ar.__all__:
        assert hasattr(ar, name), name
    assert set(FILE_EXTENSIONS) == set(FORMATS)
