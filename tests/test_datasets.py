"""Pure parts of the demo's dataset and workloads: no network, no download, no cluster.

- fortune splitting on literal bytes;
- the dataset builder with a fake ``apt-get``/``dpkg-deb`` (it builds once, is
  cached, runs ``apt-get update`` only when package lists are missing, and says
  clearly when the tools are absent);
- the thumbnail transform on generated Pillow images (fits 256x256, is a JPEG,
  is deterministic, refuses an image over ``MAX_IMAGE_PIXELS``);
- the zstd round trip.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image  # Pillow: in the test extra (perf.workloads needs it)

from perf.datasets import Dataset, DatasetError, default_cache_dir, png_size, split_fortunes
from perf.workloads import thumbnail_jpeg, zstd_compress, zstd_decompress

# -- fortunes --------------------------------------------------------------------------

SAMPLE = (
    b"A day for firm decisions!!!!!  Or is it?\n"
    b"%\n"
    b"A few hours grace before the madness begins again.\n"
    b"\t-- anon\n"
    b"%\n"
    b"%\n"          # an empty quotation: skipped
    b"   \n"
    b"% \n"         # blanks after % still separate; a whitespace-only quotation: skipped
    b"100% sure: a % inside a line does not split.\n"
    b"%\n"
    b"Last one, without a trailing newline"
)


def test_split_fortunes_literal() -> None:
    quotes = split_fortunes(SAMPLE)
    assert quotes == [
        b"A day for firm decisions!!!!!  Or is it?\n",
        b"A few hours grace before the madness begins again.\n\t-- anon\n",
        b"100% sure: a % inside a line does not split.\n",
        b"Last one, without a trailing newline\n",
    ]


def test_split_fortunes_edges() -> None:
    assert split_fortunes(b"") == []
    assert split_fortunes(b"%\n%\n") == []
    assert split_fortunes(b"only one\n") == [b"only one\n"]
    assert split_fortunes(b"crlf\r\n%\r\nnext\r\n") == [b"crlf\r\n", b"next\r\n"]


# -- the builder, with fake apt-get / dpkg-deb ------------------------------------------------


def _png_bytes(size: tuple[int, int], mode: str = "RGBA") -> bytes:
    im = Image.new(mode, size, (10, 200, 30, 128) if mode == "RGBA" else 90)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class FakeApt:
    """Plays ``apt-get download|update`` and ``dpkg-deb -x``; records every call."""

    def __init__(self, *, lists_missing: bool = False, update_fails: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.lists_missing = lists_missing
        self.update_fails = update_fails

    def __call__(self, cmd: list[str], cwd: Any = None, **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append([Path(cmd[0]).name, *cmd[1:]])
        tool, sub = Path(cmd[0]).name, cmd[1]
        if tool == "apt-get" and sub == "update":
            if self.update_fails:
                return subprocess.CompletedProcess(cmd, 100, "",
                                                   "E: Could not open lock file - open (13: Permission denied)")
            self.lists_missing = False
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if tool == "apt-get" and sub == "download":
            if self.lists_missing:
                return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package openclipart-png")
            for pkg in cmd[2:]:
                (Path(cwd) / f"{pkg}_1.0_all.deb").write_bytes(pkg.encode())
            return subprocess.CompletedProcess(cmd, 0, "", "")
        if tool == "dpkg-deb" and sub == "-x":
            pkg, root = Path(cmd[2]).read_text(), Path(cmd[3])
            if pkg == "openclipart-png":
                d = root / "usr/share/openclipart/png"
                (d / "b-cat").mkdir(parents=True)
                (d / "a-cat").mkdir(parents=True)
                (d / "b-cat" / "two.png").write_bytes(_png_bytes((40, 30)))
                (d / "a-cat" / "one.png").write_bytes(_png_bytes((20, 10), "L"))
                (d / "a-cat" / "dup.png").symlink_to("one.png")  # duplicates are skipped
            else:
                d = root / "usr/share/games/fortunes"
                d.mkdir(parents=True, exist_ok=True)
                (d / pkg.replace("fortunes", "quotes")).write_bytes(b"q1\n%\nq2\n%\n")
                (d / "skip.dat").write_bytes(b"\x00\x01")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        raise AssertionError(f"unexpected command {cmd}")


def _which(name: str) -> str:
    return f"/usr/bin/{name}"


def test_dataset_builds_once_then_cached(tmp_path: Path) -> None:
    fake = FakeApt()
    ds = Dataset(tmp_path, runner=fake, which=_which)
    assert not ds.is_ready()
    imgs = ds.images()
    assert [ds.image_name(p) for p in imgs] == ["a-cat/one.png", "b-cat/two.png"]
    assert png_size(imgs[1]) == (40, 30)
    assert ds.texts() == [("fortunes/quotes/00000.txt", b"q1\n"), ("fortunes/quotes/00001.txt", b"q2\n"),
                          ("fortunes/quotes-min/00000.txt", b"q1\n"), ("fortunes/quotes-min/00001.txt", b"q2\n")]
    assert ds.texts(1) == [("fortunes/quotes/00000.txt", b"q1\n")]
    assert [c[:2] for c in fake.calls] == [["apt-get", "download"]] + [["dpkg-deb", "-x"]] * 3
    assert "update" not in {c[1] for c in fake.calls}
    # a second Dataset on the same cache (another process, say) runs nothing
    again = FakeApt()
    ds2 = Dataset(tmp_path, runner=again, which=_which)
    assert ds2.is_ready() and len(ds2.images()) == 2 and len(ds2.texts()) == 4
    assert again.calls == []
    with pytest.raises(DatasetError, match="asked for 3 images; the dataset has 2"):
        ds2.images(3)


def test_dataset_updates_lists_only_when_missing(tmp_path: Path) -> None:
    fake = FakeApt(lists_missing=True)
    Dataset(tmp_path, runner=fake, which=_which).ensure()
    assert [c[1] for c in fake.calls if c[0] == "apt-get"] == ["download", "update", "download"]


def test_dataset_update_failure_is_clear(tmp_path: Path) -> None:
    fake = FakeApt(lists_missing=True, update_fails=True)
    with pytest.raises(DatasetError, match=r"(?s)apt-get update -q failed .*Permission denied"):
        Dataset(tmp_path, runner=fake, which=_which).ensure()
    assert not Dataset(tmp_path).is_ready()


def test_default_cache_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIOETL_DATASETS_DIR", str(tmp_path / "ds"))
    assert default_cache_dir() == tmp_path / "ds"
    assert Dataset().cache_dir == tmp_path / "ds"
    monkeypatch.delenv("AIOETL_DATASETS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "aioetl" / "datasets"


def test_dataset_missing_tools_is_clear(tmp_path: Path) -> None:
    def no_dpkg(name: str) -> str | None:
        return None if name == "dpkg-deb" else f"/usr/bin/{name}"

    fake = FakeApt()
    with pytest.raises(DatasetError, match="dpkg-deb not found: this dataset is built from Debian packages"):
        Dataset(tmp_path, runner=fake, which=no_dpkg).ensure()
    assert fake.calls == []


# -- workloads -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode,size", [("RGBA", (700, 300)), ("P", (120, 900)), ("L", (50, 40)), ("RGB", (256, 256))])
def test_thumbnail_fits_and_is_jpeg(mode: str, size: tuple[int, int]) -> None:
    im = Image.linear_gradient("L").resize(size)
    src = im.convert(mode) if mode != "P" else im.convert("RGB").convert("P")
    buf = io.BytesIO()
    src.save(buf, format="PNG")
    out = thumbnail_jpeg(buf.getvalue())
    assert out[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(out)) as th:
        assert th.format == "JPEG" and th.mode == "RGB"
        assert th.width <= 256 and th.height <= 256
        assert max(th.size) == min(256, max(size))  # aspect kept, never enlarged
    assert thumbnail_jpeg(buf.getvalue()) == out  # deterministic


def test_thumbnail_refuses_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png_bytes((101, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 101 * 100 - 1)  # restored after the test
    with pytest.raises(Image.DecompressionBombError, match="exceeds limit"):
        thumbnail_jpeg(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 101 * 100)  # at the limit: fine
    assert thumbnail_jpeg(data)[:3] == b"\xff\xd8\xff"


def test_thumbnail_not_an_image() -> None:
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError is an OSError
        thumbnail_jpeg(b"this is not an image")


def test_zstd_round_trip() -> None:
    body = b"The fortune cookie says: %s\n" * 200 + bytes(range(256))
    z = zstd_compress(body)
    assert z[:4] == b"\x28\xb5\x2f\xfd" and len(z) < len(body)
    assert zstd_decompress(z) == body
    assert zstd_compress(body) == z
    assert zstd_decompress(zstd_compress(b"")) == b""
