"""Real datasets built from Debian packages, cached per machine (never in the repo).

:class:`Dataset` fetches three Debian packages with ``apt-get download`` (no
root, nothing installed system-wide) and unpacks them with ``dpkg-deb -x``::

    openclipart-png          ~6,900 distinct clip-art PNGs (plus ~1,200 symlinked duplicates,
                             which are skipped), public domain; 16 of them exceed Pillow's
                             MAX_IMAGE_PIXELS (105 to 623 megapixels): decompression bombs
    fortunes, fortunes-min   ~15,000 quotations, one per ``%``-separated block

Cache layout (default ``~/.cache/aioetl/datasets``; ``$AIOETL_DATASETS_DIR`` or
``cache_dir=`` override it)::

    <cache>/debian/debs/*.deb       the downloaded packages
    <cache>/debian/root/usr/...     the unpacked trees
    <cache>/debian/.complete        written last: its presence means "ready"

The first :meth:`Dataset.ensure` downloads and unpacks (about 10 s, 132 MB);
later calls, in this or any other process, only check the marker. Two processes
building at once serialize on a lock file. ``apt-get update -q`` runs only when
the download fails for want of package lists.

Typical use::

    ds = Dataset()
    pngs = ds.images(5000)                  # [Path, ...], sorted by name below png/
    quotes = ds.texts(10000)                # [("fortunes/cookie/00042.txt", b"..."), ...]
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "DEBIAN_PACKAGES",
    "Dataset",
    "DatasetError",
    "default_cache_dir",
    "images",
    "png_size",
    "split_fortunes",
    "texts",
]

DEBIAN_PACKAGES = ("openclipart-png", "fortunes", "fortunes-min")
PNG_SUBDIR = Path("usr/share/openclipart/png")
FORTUNES_SUBDIR = Path("usr/share/games/fortunes")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SEPARATOR = re.compile(rb"^%[ \t\r]*$")
#: ``apt-get download`` messages that mean "no (or stale) package lists": worth one ``apt-get update``
_NEEDS_UPDATE = re.compile(
    r"Unable to locate package|has no installation candidate|Can't select candidate|No packages found"
    r"|Failed to fetch|404\s+Not Found",
    re.IGNORECASE,
)

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class DatasetError(RuntimeError):
    """The dataset could not be built or does not hold what was asked for."""


def default_cache_dir() -> Path:
    """``$AIOETL_DATASETS_DIR``, else ``$XDG_CACHE_HOME/aioetl/datasets``, else ``~/.cache/aioetl/datasets``."""
    env = os.environ.get("AIOETL_DATASETS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aioetl" / "datasets"


def split_fortunes(data: bytes) -> list[bytes]:
    """Split a fortune file into quotations.

    A quotation is the run of lines between two lines holding only ``%``
    (trailing blanks allowed), as ``strfile`` splits them. Each quotation keeps
    its lines with their ``\\n`` endings; quotations that are empty or only
    whitespace are dropped.

    Args:
        data: the raw file (any encoding; the split is on bytes).

    Returns:
        The quotations, in file order.
    """
    out: list[bytes] = []
    cur: list[bytes] = []
    for line in data.splitlines(keepends=True):
        if _SEPARATOR.match(line.rstrip(b"\n")):
            if b"".join(cur).strip():
                out.append(b"".join(cur))
            cur = []
        else:
            cur.append(line if line.endswith(b"\n") else line + b"\n")
    if b"".join(cur).strip():
        out.append(b"".join(cur))
    return out


def png_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of a PNG from its IHDR chunk (reads 24 bytes, decodes nothing).

    Raises:
        DatasetError: not a PNG.
    """
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_MAGIC or head[12:16] != b"IHDR":
        raise DatasetError(f"{path}: not a PNG file")
    w, h = struct.unpack(">II", head[16:24])
    return int(w), int(h)


class Dataset:
    """The Debian-package dataset, built once per machine into ``cache_dir``.

    Args:
        cache_dir: where to keep it (default :func:`default_cache_dir`).
        runner: ``subprocess.run``-compatible callable (tests pass a fake).
        which: ``shutil.which``-compatible callable (tests pass a fake).
        log: called with one line of progress text (default: silent).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        runner: Runner = subprocess.run,
        which: Callable[[str], str | None] = shutil.which,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.base = self.cache_dir / "debian"
        self.root = self.base / "root"
        self._run = runner
        self._which = which
        self._log = log or (lambda _msg: None)
        self._images: list[Path] | None = None
        self._texts: list[tuple[str, bytes]] | None = None

    # -- building ----------------------------------------------------------------
    @property
    def png_root(self) -> Path:
        """The directory whose subtree holds the PNGs (names are relative to it)."""
        return self.root / PNG_SUBDIR

    @property
    def fortunes_root(self) -> Path:
        return self.root / FORTUNES_SUBDIR

    def is_ready(self) -> bool:
        """True when a complete build is cached (no download needed)."""
        return (self.base / ".complete").is_file()

    def ensure(self) -> Path:
        """Download and unpack the packages unless already cached. Idempotent.

        Returns:
            The unpacked root (``<cache>/debian/root``).

        Raises:
            DatasetError: ``apt-get`` or ``dpkg-deb`` missing, download or
                unpack failed (the message carries apt's own text).
        """
        if self.is_ready():
            return self.root
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not self.is_ready():  # another process may have built it meanwhile
                    self._build()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return self.root

    def _tool(self, name: str) -> str:
        path = self._which(name)
        if not path:
            raise DatasetError(
                f"{name} not found: this dataset is built from Debian packages "
                f"({', '.join(DEBIAN_PACKAGES)}) with apt-get download and dpkg-deb -x; "
                "run on a Debian or Ubuntu machine, or copy a built cache "
                f"({self.base}) from one and point $AIOETL_DATASETS_DIR at it"
            )
        return path

    def _build(self) -> None:
        apt, dpkg = self._tool("apt-get"), self._tool("dpkg-deb")
        debs = self.base / "debs"
        tmp_root = self.base / "root.tmp"
        shutil.rmtree(debs, ignore_errors=True)
        shutil.rmtree(tmp_root, ignore_errors=True)
        debs.mkdir(parents=True)
        self._log(f"downloading {', '.join(DEBIAN_PACKAGES)} (~132 MB) into {debs}")
        res = self._run([apt, "download", *DEBIAN_PACKAGES], cwd=debs, capture_output=True, text=True)
        if res.returncode != 0 and _NEEDS_UPDATE.search(res.stderr + res.stdout):
            self._log("package lists missing or stale: apt-get update -q")
            upd = self._run([apt, "update", "-q"], capture_output=True, text=True)
            if upd.returncode != 0:
                raise DatasetError(f"apt-get update -q failed (exit {upd.returncode}; updating package lists "
                                   f"usually needs root):\n{_tail(upd.stderr or upd.stdout)}")
            res = self._run([apt, "download", *DEBIAN_PACKAGES], cwd=debs, capture_output=True, text=True)
        if res.returncode != 0:
            raise DatasetError(f"apt-get download {' '.join(DEBIAN_PACKAGES)} failed (exit {res.returncode}):\n"
                               f"{_tail(res.stderr or res.stdout)}")
        files = sorted(debs.glob("*.deb"))
        missing = [p for p in DEBIAN_PACKAGES if not any(f.name.startswith(p + "_") for f in files)]
        if missing:
            raise DatasetError(f"apt-get download left no .deb for {', '.join(missing)} in {debs}")
        self._log(f"unpacking {len(files)} packages")
        tmp_root.mkdir(parents=True)
        for deb in files:
            r = self._run([dpkg, "-x", str(deb), str(tmp_root)], capture_output=True, text=True)
            if r.returncode != 0:
                raise DatasetError(f"dpkg-deb -x {deb.name} failed (exit {r.returncode}):\n{_tail(r.stderr)}")
        shutil.rmtree(self.root, ignore_errors=True)
        os.replace(tmp_root, self.root)
        (self.base / ".complete").write_text("\n".join(f.name for f in files) + "\n")

    # -- views ---------------------------------------------------------------------
    def all_images(self) -> list[Path]:
        """Every distinct PNG (symlinked duplicates skipped), sorted by name below :attr:`png_root`."""
        if self._images is None:
            self.ensure()
            found = []
            for dirpath, _dirs, fnames in os.walk(self.png_root):
                for f in fnames:
                    p = Path(dirpath) / f
                    if f.lower().endswith(".png") and not p.is_symlink() and p.is_file():
                        found.append(p)
            self._images = sorted(found, key=lambda p: p.relative_to(self.png_root).as_posix())
        return self._images

    def images(self, n: int | None = None) -> list[Path]:
        """The first ``n`` PNGs in a stable order (all of them when ``n`` is None).

        Raises:
            DatasetError: fewer than ``n`` available.
        """
        return _first(self.all_images(), n, "images")

    def image_name(self, path: Path) -> str:
        """Object name of an image: its path below :attr:`png_root`, e.g. ``food/fruit/apple.png``."""
        return path.relative_to(self.png_root).as_posix()

    def all_texts(self) -> list[tuple[str, bytes]]:
        """Every non-empty quotation as ``(name, bytes)``; ``name`` is ``fortunes/<file>/<nnnnn>.txt``.

        Files are taken in name order (``.dat`` indexes and ``.u8`` symlinks skipped),
        quotations in file order, numbered from 0 per file.
        """
        if self._texts is None:
            self.ensure()
            out: list[tuple[str, bytes]] = []
            for p in sorted(self.fortunes_root.iterdir()):
                if p.is_symlink() or not p.is_file() or p.suffix in (".dat", ".u8"):
                    continue
                for i, q in enumerate(split_fortunes(p.read_bytes())):
                    out.append((f"fortunes/{p.name}/{i:05d}.txt", q))
            self._texts = out
        return self._texts

    def texts(self, n: int | None = None) -> list[tuple[str, bytes]]:
        """The first ``n`` quotations (all when ``n`` is None), see :meth:`all_texts`.

        Raises:
            DatasetError: fewer than ``n`` available.
        """
        return _first(self.all_texts(), n, "texts")

    def oversized(self, paths: Sequence[Path], max_pixels: int) -> list[Path]:
        """Those of ``paths`` whose pixel count (from the PNG header) exceeds ``max_pixels``."""
        out = []
        for p in paths:
            w, h = png_size(p)
            if w * h > max_pixels:
                out.append(p)
        return out


def _first(items: list, n: int | None, what: str) -> list:  # type: ignore[type-arg]
    if n is None:
        return list(items)
    if n < 0:
        raise DatasetError(f"cannot take {n} {what}")
    if n > len(items):
        raise DatasetError(f"asked for {n} {what}; the dataset has {len(items)}")
    return items[:n]


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def images(n: int | None = None, cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The first ``n`` PNG paths of the (cached) dataset; see :meth:`Dataset.images`."""
    return Dataset(cache_dir).images(n)


def texts(n: int | None = None, cache_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, bytes]]:
    """The first ``n`` ``(name, bytes)`` quotations of the (cached) dataset; see :meth:`Dataset.texts`."""
    return Dataset(cache_dir).texts(n)
