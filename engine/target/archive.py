"""Shards: reading, matching and writing tar, tgz, zip and tar.lz4 archives, as AIStore does.

A *shard* is an object whose content is an archive of many files (*members*), e.g. a
WebDataset ``train-0001.tar``. This module is the target's archive layer, with no
HTTP in it: the GET, HEAD and list routes and the archive job call it.

::

    detect_format(name, mime=, path=)  ->  ".tar" | ".tgz" | ".tar.gz" | ".zip" | ".tar.lz4"
    list_members(path, fmt)            ->  [Member(name, size), ...]    (sorted, no directories)
    open_member(path, fmt, archpath)   ->  MemberReader                 (one member, streamed)
    tar_of_matches(path, fmt, regex, mode)  ->  TarOfMatches            (a TAR stream of the matches)
    new_writer(fmt, sink) / append_tar(path)  ->  ShardWriter           (build or extend a shard)
    aiter_chunks(source)               ->  async iterator of bytes       (any of the above, off the loop)

Formats are named as AIStore names them: the file extension, which AIStore calls the
"mime" (``cmn/archive/mime.go``: ``ExtTar``, ``ExtTgz``, ``ExtTarGz``, ``ExtZip``,
``ExtTarLz4``); ``.tgz`` and ``.tar.gz`` are the same format.

Errors (from :mod:`aioetl.errors`): a member that is not there is :class:`NotFound`
(text ``<archpath> in <shard> does not exist``, as ``core/lfile.go``
``NewArchpathReader``); an unknown format, a bad match mode, a bad regular
expression, a bad ``archpath`` and a corrupt, truncated or unsupported archive are
:class:`BadRequest`; a failing read of the shard file itself is :class:`StorageError`.

Nothing here holds a shard whole: members are read and written in chunks of at most
``chunk_bytes`` (256 KiB by default), and a plain tar is skipped through by seeking.
The functions are synchronous and block on disk and decompression; an event loop
runs them through :func:`aiter_chunks` (one worker thread at a time per stream).

Sources followed: ``cmn/archive/read.go`` (readers, ``MatchMode``, name equality),
``cmn/archive/list.go`` (listing, ``SplitAtExtension``), ``cmn/archive/mime.go``
(extensions, magic bytes, content types), ``cmn/archive/write.go`` (writers),
``cmn/archive/copy.go`` and ``fast.go`` (copy and append), ``cmn/cos/basename.go``
(``WdsKey``), ``cmn/cos/err.go`` (``ValidateArchpath``), ``api/apc/lsmsg.go`` (list
flags), ``xact/xs/lso.go`` (list entries of a shard), ``ais/tgtobj.go`` (``_txarch``).
"""

from __future__ import annotations

import asyncio
import calendar
import copy
import functools
import gzip
import io
import os
import posixpath
import re
import tarfile
import time
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TYPE_CHECKING, Protocol

import lz4.frame  # type: ignore[import-untyped,unused-ignore]  # no stubs; used as Any

from aioetl.errors import AioetlError, BadRequest, NotFound, StorageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "CHUNK_BYTES",
    "ENTRY_IN_ARCH",
    "ENTRY_IS_ARCHIVE",
    "EXT_TAR",
    "EXT_TAR_GZ",
    "EXT_TAR_LZ4",
    "EXT_TGZ",
    "EXT_ZIP",
    "FILE_EXTENSIONS",
    "LS_ARCH_DIR",
    "MATCH_MODES",
    "ChunkSource",
    "Matcher",
    "Member",
    "MemberReader",
    "ShardWriter",
    "TarOfMatches",
    "aiter_chunks",
    "append_tar",
    "content_type",
    "detect_format",
    "detect_magic",
    "format_by_ext",
    "format_from_content_type",
    "list_members",
    "lso_entry_name",
    "new_writer",
    "normalize_mime",
    "open_member",
    "relative_archpath",
    "same_format",
    "split_at_extension",
    "tar_of_matches",
    "validate_archpath",
    "validate_match_mode",
    "validate_member_name",
    "wds_key",
]

# -- formats (cmn/archive/mime.go) -------------------------------------------------

EXT_TAR = ".tar"
EXT_TGZ = ".tgz"
EXT_TAR_GZ = ".tar.gz"
EXT_ZIP = ".zip"
EXT_TAR_LZ4 = ".tar.lz4"

#: In AIStore's order, which :func:`format_by_ext` and :func:`split_at_extension` keep.
FILE_EXTENSIONS: tuple[str, ...] = (EXT_TAR, EXT_TGZ, EXT_TAR_GZ, EXT_ZIP, EXT_TAR_LZ4)

# -- list-objects wire constants (api/apc/lsmsg.go) --------------------------------

#: LsoMsg ``flags`` bit asking to list shards' members (SDK ``ListObjectFlag.ARCH_DIR`` = bit 3).
LS_ARCH_DIR = 1 << 3
#: Entry flag on a member of a shard (``apc.EntryInArch``, 1 << (5 + 2)).
ENTRY_IN_ARCH = 1 << 7
#: Entry flag on the shard itself when its members are listed (``apc.EntryIsArchive``, 1 << (5 + 4)).
ENTRY_IS_ARCHIVE = 1 << 9

#: Default chunk size for member reads and the TAR stream of matches (bytes).
CHUNK_BYTES = 256 * 1024

_SIZE_DETECT = 512  # bytes read to detect a format by magic (mime.go sizeDetectMime)
_MAGICS: tuple[tuple[int, bytes, str], ...] = (  # (offset, signature, format), in mime.go's order
    (257, b"ustar", EXT_TAR),
    (0, b"\x1f\x8b", EXT_TAR_GZ),
    (0, b"PK", EXT_ZIP),
    (0, b"\x04\x22\x4d\x18", EXT_TAR_LZ4),
)
_TAR_FAMILY = frozenset({EXT_TAR, EXT_TGZ, EXT_TAR_GZ, EXT_TAR_LZ4})


def _check_format(fmt: str) -> str:
    if fmt not in FILE_EXTENSIONS:
        raise BadRequest(f"unsupported archive format {fmt!r}, expecting one of: {list(FILE_EXTENSIONS)}")
    return fmt


def same_format(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` name one format (``.tgz`` is ``.tar.gz``; ``archive.EqExt``)."""
    gz = {EXT_TGZ, EXT_TAR_GZ}
    return a == b or (a in gz and b in gz)


def normalize_mime(mime: str) -> str:
    """Map a user-given format (``"application/zip"``, ``"tar.gz"``, ``".tgz"``) to an extension.

    Follows ``mime.go`` ``normalize``: the first extension (without its dot) found in
    ``mime`` wins, ``tar.gz`` and ``tar.lz4`` checked before ``tar``.

    Raises:
        BadRequest: ``unknown mime type "<mime>"``.
    """
    if EXT_TAR_GZ[1:] in mime:
        return EXT_TAR_GZ
    if EXT_TAR_LZ4[1:] in mime:
        return EXT_TAR_LZ4
    for ext in FILE_EXTENSIONS:
        if ext[1:] in mime:
            return ext
    raise BadRequest(f'unknown mime type "{mime}"')


def format_by_ext(name: str) -> str | None:
    """The format that ``name`` (an object name or a path) ends with, or None (``mime.go`` ``byExt``)."""
    for ext in FILE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return None


def detect_magic(head: bytes) -> str | None:
    """The format whose signature ``head`` (the first 512 bytes, or fewer) carries, or None.

    Tar: ``ustar`` at offset 257; gzip ``1f 8b`` (taken as ``.tar.gz``); zip ``PK``;
    LZ4 frame ``04 22 4d 18`` (taken as ``.tar.lz4``) (``mime.go`` ``allMagics``).

    >>> detect_magic(b"PK\\x03\\x04")
    '.zip'
    """
    for offset, sig, fmt in _MAGICS:
        if len(head) > offset and head[offset : offset + len(sig)] == sig:
            return fmt
    return None


def detect_format(name: str, *, mime: str = "", path: str | os.PathLike[str] | None = None) -> str:
    """The format of a shard: from ``mime`` if given, else the name's extension, else its magic.

    As ``mime.go`` ``MimeFile``: a given ``mime`` (the ``archmime`` query parameter)
    wins and must be known; magic bytes are read (512 of them, from ``path``) only
    when the extension says nothing. Listing (``LsArchDir``) passes no ``path``:
    AIStore lists by extension only and skips other objects.

    Args:
        name: object name (or file name) of the shard.
        mime: the requested format, e.g. ``"application/zip"`` or ``".tar"``; ``""`` for none.
        path: the shard's file, to read its magic; None not to read it.

    Raises:
        BadRequest: unknown ``mime``, or no known extension and no known magic.
        StorageError: the file could not be read.
    """
    if mime:
        return normalize_mime(mime)
    fmt = format_by_ext(name)
    if fmt is not None:
        return fmt
    if path is None:
        raise BadRequest(f"unknown filename extension ({name!r}, {_ext(name)!r}) - not reading file magic")
    try:
        with open(path, "rb") as f:
            head = f.read(_SIZE_DETECT)
    except FileNotFoundError as e:
        raise NotFound(f"{name} does not exist") from e
    except OSError as e:
        raise StorageError(f"failed to read {name}: {e}") from e
    fmt = detect_magic(head)
    if fmt is None:
        raise BadRequest(f"unrecognized or unsupported file format: {name!r}")
    return fmt


def _ext(name: str) -> str:
    """``cos.Ext``: from the first dot of the last path element, e.g. ``.tar.gz``."""
    base = name.rsplit("/", 1)[-1]
    i = base.find(".")
    return base[i:] if i >= 0 else ""


def content_type(fmt: str) -> str:
    """The HTTP Content-Type of a shard of ``fmt`` (``mime.go`` ``ContentTypeFromExt``)."""
    if fmt in ("", EXT_TAR):
        return "application/x-tar"
    if fmt in (EXT_TGZ, EXT_TAR_GZ):
        return "application/gzip"
    if fmt == EXT_TAR_LZ4:
        return "application/x-lz4"
    if fmt == EXT_ZIP:
        return "application/zip"
    return "application/octet-stream"


def format_from_content_type(ct: str) -> str | None:
    """The format a Content-Type names, or None (``mime.go`` ``ExtFromContentType``)."""
    ct = ct.strip().lower().split(";", 1)[0]
    if ct.startswith(("application/tar", "application/x-tar")):
        return EXT_TAR
    if ct.startswith(("application/gzip", "application/x-gzip")):
        return EXT_TGZ
    if ct.startswith(("application/x-lz4", "application/lz4")):
        return EXT_TAR_LZ4
    if ct.startswith("application/zip"):
        return EXT_ZIP
    return None


# -- names --------------------------------------------------------------------------


def _invalid_path(what: str, path: str) -> BadRequest:
    return BadRequest(f'invalid {what} "{path}"')


def validate_archpath(archpath: str) -> str:
    """Check the ``archpath`` of a request and return it without one leading ``/``.

    As ``ais/dpq.go`` and ``cos.ValidateArchpath``: refused when empty, ending in
    ``/``, starting with ``~/``, or holding a ``.`` or ``..`` path element (so
    ``../x`` and ``a/../../x`` are refused; ``/abs/x`` becomes ``abs/x``).

    Raises:
        BadRequest: ``invalid archpath "<archpath>"``.
    """
    path = archpath[1:] if archpath.startswith("/") else archpath
    if not path or path.endswith("/") or path.startswith("~/"):
        raise _invalid_path("archpath", archpath)
    if any(part in (".", "..") for part in path.split("/")):
        raise _invalid_path("archpath", archpath)
    return path


def relative_archpath(obj_name: str, archpath: str) -> str:
    """``shard.tar/a/b.jpg`` -> ``a/b.jpg`` when the archpath repeats the shard's name.

    AIStore accepts an archpath prefixed with the object name (``ais/target.go``,
    ``filepath.Rel``); the CLI sends it that way. Other archpaths come back as given.
    """
    if obj_name and archpath.startswith(obj_name + "/"):
        return archpath[len(obj_name) + 1 :]
    return archpath


def validate_member_name(name: str) -> str:
    """Check a name to be written into a shard: relative, no ``.``/``..`` elements, no trailing ``/``.

    Not an AIStore rule (its writers take any name); aioetl refuses to build shards
    that would write outside the extraction directory of a naive ``tar -x``.

    Raises:
        BadRequest: ``invalid archived name "<name>"``.
    """
    if not name or name.startswith("/") or name.endswith("/") or "\0" in name:
        raise _invalid_path("archived name", name)
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise _invalid_path("archived name", name)
    return name


def lso_entry_name(shard_name: str, member_name: str) -> str:
    """The list-objects entry name of a member: ``shard.tar/dir/a.jpg``.

    AIStore joins and cleans (Go ``path.Join``, ``xact/xs/lso.go``), so ``./a`` and
    ``/a`` both list as ``shard.tar/a``. A member whose cleaned name climbs out of
    the shard (``../x``, ``a/../../x``) would list as another object's name; it is
    refused here rather than listed under a name that is not inside the shard.

    Raises:
        BadRequest: the member name leaves the shard.
    """
    rel = posixpath.normpath(member_name.lstrip("/")) if member_name.lstrip("/") else "."
    if rel == "." or rel == ".." or rel.startswith("../"):
        raise BadRequest(f"archived name {member_name!r} in {shard_name} leaves the shard")
    return f"{shard_name}/{rel}"


def split_at_extension(path: str) -> tuple[str, str]:
    """``a/shard.tar/dir/f.bin`` -> (``a/shard.tar``, ``dir/f.bin``); no shard -> (``path``, ``""``).

    The first ``<ext>/`` found, extensions tried in :data:`FILE_EXTENSIONS` order
    (``list.go`` ``SplitAtExtension``), so a list entry name goes back to shard and member.
    """
    for ext in FILE_EXTENSIONS:
        i = path.find(ext + "/")
        if i >= 0:
            return path[: i + len(ext)], path[i + len(ext) + 1 :]
    return path, ""


def _names_eq(stored: str, wanted: str) -> bool:
    """Member name equality, ignoring one leading ``/`` on either (``read.go`` ``namesEq``)."""
    return stored == wanted or stored.removeprefix("/") == wanted.removeprefix("/")


# -- matching (cmn/archive/read.go MatchMode) -----------------------------------------

#: The match modes, as the SDK's ``ArchiveMode`` sends them in ``archmode``.
MATCH_MODES: tuple[str, ...] = ("regexp", "prefix", "suffix", "substr", "wdskey")


def validate_match_mode(mode: str) -> str:
    """Check an ``archmode`` value; ``""`` and ``"*"`` mean ``prefix`` (``ValidateMatchMode``).

    Raises:
        BadRequest: ``invalid matching mode "<mode>", expecting one of: [...]``.
    """
    if mode in ("", "*"):
        return "prefix"
    if mode not in MATCH_MODES:
        raise BadRequest(f'invalid matching mode "{mode}", expecting one of: [{" ".join(MATCH_MODES)}]')
    return mode


def wds_key(name: str) -> str:
    """The WebDataset key of a member: the name without its last extension and leading ``/``.

    As ``cos.WdsKey`` (Go ``filepath.Ext`` semantics): ``a/b.c/x.jpg`` -> ``a/b.c/x``,
    ``a/x.tar.gz`` -> ``a/x.tar``, ``a/.hidden`` -> ``a/``, ``a/noext`` -> ``a/noext``.
    """
    slash = name.rfind("/")
    dot = name.rfind(".")
    key = name[:dot] if dot > slash else name
    return key.removeprefix("/")


@dataclass(frozen=True, slots=True)
class Matcher:
    """Which member names an ``archregx``/``archmode`` pair selects.

    Build with :meth:`new`. Modes (``read.go`` ``matcher.do``): ``regexp`` searches
    anywhere in the name (Go ``MatchString``; Python ``re`` syntax, which is close to
    RE2 for ordinary patterns); ``prefix``, ``suffix`` and ``substr`` compare strings;
    ``wdskey`` selects the members whose :func:`wds_key` equals the pattern
    (``subdir/aaa`` selects ``subdir/aaa.jpg`` and ``subdir/aaa.json``). An empty
    pattern, or ``*``, selects every member in every mode.

    Attributes:
        pattern: the ``archregx`` value.
        mode: one of :data:`MATCH_MODES`.
    """

    pattern: str
    mode: str
    _re: re.Pattern[str] | None = None

    @classmethod
    def new(cls, pattern: str, mode: str) -> Matcher:
        """Validate ``mode`` and compile ``pattern`` for ``regexp``.

        Raises:
            BadRequest: a bad mode, or a pattern that does not compile.
        """
        mode = validate_match_mode(mode)
        if pattern in ("", "*"):
            return cls("", "prefix")
        if mode != "regexp":
            return cls(pattern, mode)
        try:
            return cls(pattern, mode, re.compile(pattern))
        except re.error as e:
            raise BadRequest(f"invalid archregx {pattern!r}: {e}") from e

    def __call__(self, name: str) -> bool:
        if not self.pattern:
            return True
        if self._re is not None:
            return self._re.search(name) is not None
        if self.mode == "prefix":
            return name.startswith(self.pattern)
        if self.mode == "suffix":
            return name.endswith(self.pattern)
        if self.mode == "substr":
            return self.pattern in name
        return wds_key(name) == self.pattern


# -- reading --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Member:
    """One file in a shard, as listed.

    Attributes:
        name: its name in the shard, as stored (e.g. ``dir/0001.jpg``).
        size: its uncompressed size in bytes (0 for links and other non-regular entries).
    """

    name: str
    size: int


_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    gzip.BadGzipFile,
    EOFError,
    RuntimeError,  # lz4.frame: "LZ4F_decompress failed ..."; zipfile: encrypted member
    NotImplementedError,  # zipfile: compression method not supported
    ValueError,
    UnicodeDecodeError,
)


def _corrupt(what: str, e: BaseException) -> BadRequest:
    return BadRequest(f"corrupt or unsupported archive {what}: {type(e).__name__}: {e}")


class _Mapped:
    """``with _Mapped(label):`` turns archive-library failures into aioetl errors."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if e is None or isinstance(e, AioetlError):
            return
        if isinstance(e, FileNotFoundError):
            raise NotFound(f"{self.label} does not exist") from e
        if isinstance(e, _CORRUPT):
            raise _corrupt(self.label, e) from e
        if isinstance(e, OSError):
            raise StorageError(f"failed to read {self.label}: {e}") from e


def _open_raw(path: str | os.PathLike[str], label: str) -> io.BufferedReader:
    with _Mapped(label):
        return open(path, "rb")


def _tar_layer(raw: io.BufferedReader, fmt: str) -> io.BufferedIOBase:
    """The decompressed tar byte stream over ``raw`` (the layer a reader or copier reads)."""
    if fmt in (EXT_TGZ, EXT_TAR_GZ):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if fmt == EXT_TAR_LZ4:
        lzf: io.BufferedIOBase = lz4.frame.LZ4FrameFile(raw, mode="rb")
        return lzf
    return raw


# tarfile's private header errors (not in typeshed): a bad checksum or field, a partial block
_BAD_HEADER: tuple[type[Exception], ...] = (
    tarfile.InvalidHeaderError,  # type: ignore[attr-defined]
    tarfile.TruncatedHeaderError,  # type: ignore[attr-defined]
)


class _StrictTarInfo(tarfile.TarInfo):
    """A header reader that fails on a damaged header after the first, as Go's ``tar.Reader`` does.

    ``tarfile`` ends the archive silently at a bad checksum or a partial block past
    offset 0; Go returns ``ErrHeader``/``ErrUnexpectedEOF``, and so do we. A zero
    block or the file's end on a block boundary is still a clean end.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _StrictTarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except _BAD_HEADER as e:
            if tarfile_.offset == 0:
                raise  # tarfile reports these itself
            raise tarfile.ReadError(f"bad tar header at offset {tarfile_.offset}: {e}") from e


def _open_tar(raw: io.BufferedReader, fmt: str) -> tuple[tarfile.TarFile | None, io.BufferedIOBase]:
    """A tar reader over a tar-family shard; None for an empty tar (no members).

    A plain tar on a file is read in random-access mode, so skipping a member is a
    seek; compressed ones in stream mode (skipping means decompressing anyway).
    """
    layer = _tar_layer(raw, fmt)
    try:
        if fmt == EXT_TAR and raw.seekable():
            return tarfile.open(fileobj=layer, mode="r:", encoding="utf-8", tarinfo=_StrictTarInfo), layer
        return tarfile.open(fileobj=layer, mode="r|", encoding="utf-8", tarinfo=_StrictTarInfo), layer
    except tarfile.ReadError as e:
        if str(e) == "empty file":  # zero bytes, or only end-of-archive blocks: Go lists nothing
            return None, layer
        raise


def _iter_tar(tf: tarfile.TarFile | None) -> Iterator[tarfile.TarInfo]:
    """Members in shard order, without keeping them (``tf.members`` stays empty)."""
    if tf is None:
        return
    while True:
        ti = tf.next()
        if ti is None:
            return
        members: list[tarfile.TarInfo] = tf.members  # type: ignore[attr-defined]  # (not in typeshed)
        members.clear()  # next() keeps every header it reads; a shard may hold millions
        yield ti


def _zip_files(zf: zipfile.ZipFile) -> Iterator[zipfile.ZipInfo]:
    """Non-directory entries in central-directory order (``read.go`` skips directories)."""
    return (zi for zi in zf.infolist() if not zi.is_dir())


def list_members(path: str | os.PathLike[str], fmt: str, *, sort: bool = True, label: str = "") -> list[Member]:
    """The members of a shard, without directories (``cmn/archive/list.go`` ``List``).

    Args:
        path: the shard's file.
        fmt: its format (:func:`detect_format`).
        sort: sort by name, as AIStore does for list-objects paging; False keeps shard order.
        label: how errors name the shard, e.g. ``ais://b/shard.tar`` (default: ``path``).

    Returns:
        One :class:`Member` per file, link or other non-directory entry. Only headers
        are read: a plain tar is seeked through, compressed tars are decompressed once,
        a zip's central directory is read.

    Raises:
        NotFound: no such file.
        BadRequest: unknown format, or a corrupt or truncated archive.
        StorageError: the file could not be read.
    """
    fmt = _check_format(fmt)
    label = label or os.fspath(path)
    out: list[Member] = []
    raw = _open_raw(path, label)
    with raw, _Mapped(label):
        if fmt == EXT_ZIP:
            with zipfile.ZipFile(raw) as zf:
                out = [Member(zi.filename, zi.file_size) for zi in _zip_files(zf)]
        else:
            tf, layer = _open_tar(raw, fmt)
            with layer:
                out = [Member(ti.name, ti.size if ti.isreg() else 0) for ti in _iter_tar(tf) if not ti.isdir()]
    if sort:
        out.sort(key=lambda m: m.name)
    return out


class ChunkSource(Protocol):
    """Something :func:`aiter_chunks` can drain: ``read_chunk()`` returns ``b""`` at the end."""

    def read_chunk(self) -> bytes: ...

    def close(self) -> None: ...


class MemberReader(io.RawIOBase):
    """One member of a shard, streamed; a readable binary file that owns the shard's handles.

    Returned by :func:`open_member`. ``size`` is known before any byte is read (the
    route's Content-Length). Reads return at most what is asked (``read_chunk`` at most
    ``chunk_bytes``); a member that ends before ``size`` bytes raises BadRequest
    (truncated shard) instead of a short body. Close it (or use ``with``) to close the
    shard file.

    Attributes:
        name: the member's name as stored in the shard.
        size: its size in bytes.
    """

    def __init__(
        self, name: str, size: int, stream: IO[bytes] | None, closers: list[Callable[[], None]], label: str, chunk: int
    ) -> None:
        super().__init__()
        self.name = name
        self.size = size
        self._stream = stream
        self._closers = closers
        self._label = label
        self._chunk = chunk
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        view = memoryview(b).cast("B")
        want = min(len(view), self._left)
        if want <= 0 or self._stream is None:
            return 0
        with _Mapped(self._label):
            data = self._stream.read(want)
        if not data:
            raise BadRequest(f"corrupt or unsupported archive {self._label}: {self.name} ends {self._left} bytes early")
        n = len(data)
        view[:n] = data
        self._left -= n
        return n

    def read_chunk(self) -> bytes:
        """The next up to ``chunk_bytes`` bytes; ``b""`` once the member is read."""
        return self.read(min(self._chunk, self._left)) if self._left > 0 else b""

    def close(self) -> None:
        if not self.closed:
            closers, self._closers = self._closers, []
            for c in reversed(closers):
                try:
                    c()
                except Exception:  # closing a reader must not mask the read's outcome
                    pass
        super().close()


def open_member(
    path: str | os.PathLike[str], fmt: str, archpath: str, *, label: str = "", chunk_bytes: int = CHUNK_BYTES
) -> MemberReader:
    """Open one member of a shard for streaming (``read.go`` ``ReadOne``, ``core/lfile.go``).

    The shard is scanned in order up to the first member whose name equals
    ``archpath`` (a leading ``/`` on either side ignored); tar members are skipped by
    seeking (plain tar) or by decompressing past them (tgz, tar.lz4); a zip member is
    found in the central directory. Links and other non-regular tar entries read as
    0 bytes, as in AIStore. Directories are not members.

    Args:
        path: the shard's file.
        fmt: its format (:func:`detect_format`).
        archpath: the member's name; validated by :func:`validate_archpath` (pass it
            through :func:`relative_archpath` first if it may carry the shard's name).
        label: how errors name the shard, e.g. ``ais://b/shard.tar`` (default: ``path``).
        chunk_bytes: the most ``read_chunk`` returns at once.

    Returns:
        A :class:`MemberReader`; the caller closes it.

    Raises:
        BadRequest: a bad archpath, an unknown format, a corrupt or truncated archive.
        NotFound: ``<archpath> in <label> does not exist``, or no shard file.
        StorageError: the file could not be read.
    """
    fmt = _check_format(fmt)
    archpath = validate_archpath(archpath)
    label = label or os.fspath(path)
    raw = _open_raw(path, label)
    closers: list[Callable[[], None]] = [raw.close]
    try:
        with _Mapped(label):
            if fmt == EXT_ZIP:
                zf = zipfile.ZipFile(raw)
                closers.append(zf.close)
                for zi in _zip_files(zf):
                    if _names_eq(zi.filename, archpath):
                        zs = zf.open(zi)
                        closers.append(zs.close)
                        return MemberReader(zi.filename, zi.file_size, zs, closers, label, chunk_bytes)
            else:
                tf, layer = _open_tar(raw, fmt)
                if layer is not raw:
                    closers.append(layer.close)
                for ti in _iter_tar(tf):
                    if ti.isdir() or not _names_eq(ti.name, archpath):
                        continue
                    assert tf is not None
                    if not ti.isreg():
                        return MemberReader(ti.name, 0, None, closers, label, chunk_bytes)
                    ts = tf.extractfile(ti)
                    assert ts is not None
                    return MemberReader(ti.name, ti.size, ts, closers, label, chunk_bytes)
        raise NotFound(f"{archpath} in {label} does not exist")
    except BaseException:
        for c in reversed(closers):
            c()
        raise


# -- the TAR stream of matches (ais/tgtobj.go _txarch, rcbCtx) ------------------------

_BLOCK = tarfile.BLOCKSIZE


def _pad(n: int) -> bytes:
    return b"\0" * (-n % _BLOCK)


def _tar_header(ti: tarfile.TarInfo) -> bytes:
    """A member's header as written into the stream of matches (PAX where needed, as Go's default)."""
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _zip_tarinfo(zi: zipfile.ZipInfo) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(zi.filename)
    ti.size = zi.file_size
    ti.mtime = calendar.timegm((*zi.date_time, 0, 0, 0))
    perm = (zi.external_attr >> 16) & 0o7777
    ti.mode = perm or 0o644
    return ti


class TarOfMatches:
    """A TAR stream (bytes) of the members of one shard that a :class:`Matcher` selects.

    Made by :func:`tar_of_matches`, which has already found the first match, so a
    route can answer 404 before it commits headers. Iterate it (or call
    ``read_chunk``) for chunks of at most ``chunk_bytes`` (a tar header is a separate,
    short chunk); members come in shard order; the stream ends with two zero blocks
    (1 KiB, as Go's ``tar.Writer.Close``). Close it (or use ``with``) to release the
    shard file; an abandoned stream is an unterminated tar.

    Attributes:
        matched: members streamed so far (including the one in progress).
        bytes_out: bytes produced so far.
    """

    def __init__(self, gen: Iterator[bytes], closers: list[Callable[[], None]]) -> None:
        self._gen = gen
        self._closers = closers
        self.matched = 0
        self.bytes_out = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.closed:
            raise StopIteration
        chunk = next(self._gen)
        self.bytes_out += len(chunk)
        return chunk

    def read_chunk(self) -> bytes:
        """The next chunk, ``b""`` at the end of the stream."""
        return next(self, b"")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._gen.close()  # type: ignore[attr-defined]
        for c in reversed(self._closers):
            try:
                c()
            except Exception:
                pass

    def __enter__(self) -> TarOfMatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tar_of_matches(
    path: str | os.PathLike[str],
    fmt: str,
    regex: str,
    mode: str,
    *,
    label: str = "",
    chunk_bytes: int = CHUNK_BYTES,
) -> TarOfMatches:
    """Select the members that ``regex``/``mode`` match; stream them as one TAR.

    The GET with ``archregx`` and ``archmode`` (``ais/tgtobj.go`` ``_txarch``,
    ``read.go`` ``ReadUntil``). Tar members keep their headers (name, mode, times,
    owner, type; links and directories that match are passed on as headers, as Go
    does); zip members get a tar header with their name, size, time and mode.
    This call reads the shard up to the first match and no further.

    Args:
        path: the shard's file.
        fmt: its format (:func:`detect_format`).
        regex: the ``archregx`` value (see :class:`Matcher`); ``""`` matches all.
        mode: the ``archmode`` value, one of :data:`MATCH_MODES` (``""`` is ``prefix``).
        label: how errors name the shard, e.g. ``ais://b/shard.tar`` (default: ``path``).
        chunk_bytes: the most bytes of member data in one chunk.

    Returns:
        A :class:`TarOfMatches`; the caller iterates and closes it.

    Raises:
        BadRequest: a bad mode or regex, an unknown format, a corrupt archive (also
            while iterating: the stream is then cut short).
        NotFound: ``(archregx=..., archmode=...) in <label> does not exist`` when
            nothing matches.
        StorageError: the file could not be read.
    """
    fmt = _check_format(fmt)
    match = Matcher.new(regex, mode)
    label = label or os.fspath(path)
    raw = _open_raw(path, label)
    closers: list[Callable[[], None]] = [raw.close]
    box: list[TarOfMatches] = []

    def counted(items: Iterator[tuple[tarfile.TarInfo, Callable[[], IO[bytes] | None]]]) -> Iterator[bytes]:
        with _Mapped(label):
            for ti, opener in items:
                box[0].matched += 1
                yield _tar_header(ti)
                src = opener() if ti.size else None
                left = ti.size
                while left > 0 and src is not None:
                    data = src.read(min(chunk_bytes, left))
                    if not data:
                        raise BadRequest(f"corrupt or unsupported archive {label}: {ti.name} ends {left} bytes early")
                    left -= len(data)
                    yield data
                if src is not None:
                    src.close()
                if pad := _pad(ti.size):
                    yield pad
            yield b"\0" * (2 * _BLOCK)

    try:
        with _Mapped(label):
            if fmt == EXT_ZIP:
                zf = zipfile.ZipFile(raw)
                closers.append(zf.close)

                def zip_items() -> Iterator[tuple[tarfile.TarInfo, Callable[[], IO[bytes] | None]]]:
                    for zi in _zip_files(zf):
                        if match(zi.filename):
                            yield _zip_tarinfo(zi), functools.partial(zf.open, zi)

                items = zip_items()
            else:
                tf, layer = _open_tar(raw, fmt)
                if layer is not raw:
                    closers.append(layer.close)

                def tar_items() -> Iterator[tuple[tarfile.TarInfo, Callable[[], IO[bytes] | None]]]:
                    for ti in _iter_tar(tf):
                        if match(ti.name):
                            if not ti.isreg():
                                ti = copy.copy(ti)
                                ti.size = 0
                            assert tf is not None
                            yield ti, functools.partial(tf.extractfile, ti)

                items = tar_items()
            first = next(items, None)
        if first is None:
            raise NotFound(f"(archregx={regex}, archmode={match.mode}) in {label} does not exist")

        def chained() -> Iterator[tuple[tarfile.TarInfo, Callable[[], IO[bytes] | None]]]:
            assert first is not None
            yield first
            yield from items

        out = TarOfMatches(counted(chained()), closers)
        box.append(out)
        return out
    except BaseException:
        for c in reversed(closers):
            c()
        raise


# -- writing (cmn/archive/write.go, copy.go, fast.go) ---------------------------------


class ShardWriter:
    """Builds a shard member by member into a binary sink, streaming.

    Made by :func:`new_writer` (a new shard) or :func:`append_tar` (append to a tar in
    place). Member headers follow AIStore's writers (``write.go``): a regular file,
    mode 0644, the given modification time, owner 0; tars are PAX where needed (long or
    non-ASCII names, sizes >= 8 GiB) and ustar otherwise; tgz is gzip level 1 (Go's
    ``BestSpeed``); tar.lz4 is one LZ4 frame of 256 KiB blocks without checksums (Go's
    defaults); zip members are stored, not deflated (Go's zero ``Method``).
    :meth:`close` finishes the archive and leaves the sink open. After an error in
    :meth:`add` the shard is incomplete: discard it.

    Attributes:
        fmt: the shard's format.
        members: members written.
        bytes_in: member bytes written (before compression).
    """

    def __init__(
        self,
        fmt: str,
        *,
        tar: tarfile.TarFile | None = None,
        zf: zipfile.ZipFile | None = None,
        finish: Iterable[Callable[[], None]] = (),
    ) -> None:
        self.fmt = fmt
        self._tar = tar
        self._zip = zf
        self._finish = list(finish)
        self.members = 0
        self.bytes_in = 0
        self.closed = False

    def add(self, name: str, src: IO[bytes] | bytes, size: int, *, mtime_s: float | None = None) -> None:
        """Write one member: exactly ``size`` bytes read from ``src`` in chunks.

        Args:
            name: its name in the shard (checked by :func:`validate_member_name`).
            src: a readable binary file (read up to ``size`` bytes), or the bytes.
            size: its size in bytes.
            mtime_s: modification time in seconds since the epoch (default: now).

        Raises:
            BadRequest: a bad name, or ``src`` ends before ``size`` bytes.
            StorageError: the sink failed.
        """
        validate_member_name(name)
        if self.closed:
            raise ValueError("ShardWriter is closed")
        if isinstance(src, bytes | bytearray | memoryview):
            if len(src) != size:
                raise BadRequest(f"archived name {name!r}: {len(src)} bytes given, {size} expected")
            src = io.BytesIO(src)
        mtime = time.time() if mtime_s is None else mtime_s
        try:
            if self._zip is not None:
                zi = zipfile.ZipInfo(name, date_time=_zip_time(mtime))
                zi.compress_type = zipfile.ZIP_STORED
                zi.external_attr = (0o100644 & 0xFFFF) << 16
                zi.file_size = size
                with self._zip.open(zi, "w", force_zip64=size >= zipfile.ZIP64_LIMIT) as out:
                    left = size
                    while left > 0:
                        data = src.read(min(CHUNK_BYTES, left))
                        if not data:
                            raise BadRequest(f"archived name {name!r}: source ended {left} bytes early")
                        out.write(data)
                        left -= len(data)
            else:
                assert self._tar is not None
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime, ti.mode, ti.type = size, int(mtime), 0o644, tarfile.REGTYPE
                self._tar.addfile(ti, src)
        except AioetlError:
            raise
        except OSError as e:
            if str(e) == "unexpected end of data":  # tarfile.copyfileobj on a short source
                raise BadRequest(f"archived name {name!r}: source ended before {size} bytes") from e
            raise StorageError(f"failed to write {name!r} into the shard: {e}") from e
        self.members += 1
        self.bytes_in += size

    def add_file(self, name: str, path: str | os.PathLike[str], *, mtime_s: float | None = None) -> None:
        """Write a local file as one member (its size and, by default, its mtime)."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            self.add(name, f, st.st_size, mtime_s=st.st_mtime if mtime_s is None else mtime_s)

    def copy_from(self, path: str | os.PathLike[str], fmt: str) -> int:
        """Copy every member of an existing shard into this one (the first step of append).

        As ``copy.go`` (``cpTar``, ``cpZip``): tar members keep their headers (any
        type); zip directories are skipped. Formats may differ only within the tar
        family; a zip copies only into a zip.

        Returns:
            The number of members copied.

        Raises:
            BadRequest: formats that do not mix, or a corrupt source.
        """
        fmt = _check_format(fmt)
        label = os.fspath(path)
        if (fmt == EXT_ZIP) != (self._zip is not None):
            raise BadRequest(f"cannot copy a {fmt} shard into a {self.fmt} shard")
        n = 0
        raw = _open_raw(path, label)
        with raw, _Mapped(label):
            if self._zip is not None:
                with zipfile.ZipFile(raw) as zf:
                    for zi in _zip_files(zf):
                        big = zi.file_size >= zipfile.ZIP64_LIMIT
                        with zf.open(zi) as src, self._zip.open(copy.copy(zi), "w", force_zip64=big) as out:
                            while data := src.read(CHUNK_BYTES):
                                out.write(data)
                        n += 1
                        self.bytes_in += zi.file_size
            else:
                assert self._tar is not None
                tf, layer = _open_tar(raw, fmt)
                with layer:
                    for ti in _iter_tar(tf):
                        assert tf is not None
                        self._tar.addfile(ti, tf.extractfile(ti) if ti.isreg() else None)
                        n += 1
                        self.bytes_in += ti.size if ti.isreg() else 0
        self.members += n
        return n

    def close(self) -> None:
        """Finish the archive (end blocks, central directory, compressor trailer); the sink stays open."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._tar is not None:
                self._tar.close()
            if self._zip is not None:
                self._zip.close()
            for f in self._finish:
                f()
        except OSError as e:
            raise StorageError(f"failed to finish the {self.fmt} shard: {e}") from e

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _zip_time(mtime_s: float) -> tuple[int, int, int, int, int, int]:
    t = time.gmtime(max(mtime_s, 315532800))  # zip times start in 1980
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


class _NoClose(io.RawIOBase):
    """A write-only view of a sink that a closing compressor or archive cannot close."""

    def __init__(self, sink: IO[bytes]) -> None:
        super().__init__()
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._sink.write(b)
        return len(b)

    def flush(self) -> None:
        self._sink.flush()


def new_writer(fmt: str, sink: IO[bytes]) -> ShardWriter:
    """A :class:`ShardWriter` that builds a new shard of ``fmt`` into ``sink``.

    ``sink`` needs only ``write`` (a work file, a socket, a pipe); a zip written to a
    non-seekable sink carries data descriptors, as ``zipfile`` does.

    Raises:
        BadRequest: an unknown format.
    """
    fmt = _check_format(fmt)
    guarded = _NoClose(sink)
    if fmt == EXT_ZIP:
        out: IO[bytes] = sink if _seekable(sink) else guarded  # type: ignore[assignment]
        zf = zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
        return ShardWriter(fmt, zf=zf)
    if fmt == EXT_TAR:
        tar = tarfile.open(fileobj=guarded, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8")  # noqa: SIM115
        return ShardWriter(fmt, tar=tar)
    layer: io.BufferedIOBase
    if fmt == EXT_TAR_LZ4:
        layer = lz4.frame.LZ4FrameFile(
            guarded,
            mode="wb",
            block_size=lz4.frame.BLOCKSIZE_MAX256KB,
            content_checksum=False,
            block_checksum=False,
        )
    else:
        layer = gzip.GzipFile(fileobj=guarded, mode="wb", compresslevel=1, mtime=0)
    tar = tarfile.open(fileobj=layer, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8")  # noqa: SIM115
    return ShardWriter(fmt, tar=tar, finish=[layer.close])


def _seekable(f: IO[bytes]) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def append_tar(path: str | os.PathLike[str]) -> ShardWriter:
    """A :class:`ShardWriter` that appends members to the plain tar at ``path``, in place.

    The members written start where the tar's end-of-archive blocks are, which they
    overwrite (``fast.go`` ``OpenTarForAppend``): no copy of the shard is made. An
    empty (0-byte) file becomes a tar. The file is changed as written; for an atomic
    append, append to a work copy and rename it. Compressed shards and zips cannot be
    appended in place: build a new one with :func:`new_writer` and
    :meth:`ShardWriter.copy_from`.

    Raises:
        BadRequest: not a tar, or a corrupt or truncated one.
        NotFound: no such file.
        StorageError: the file could not be read or written.
    """
    label = os.fspath(path)
    with _Mapped(label):
        f = open(path, "r+b")  # noqa: SIM115  # owned by the writer, closed by its close()
    try:
        with _Mapped(label):
            size = os.fstat(f.fileno()).st_size
            if size:
                tar = tarfile.open(fileobj=f, mode="a", format=tarfile.PAX_FORMAT, encoding="utf-8")  # noqa: SIM115
            else:  # tarfile cannot open 0 bytes for append
                tar = tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8")  # noqa: SIM115
        if tar.offset > size:  # headers promise more data than the file holds
            raise BadRequest(f"corrupt or unsupported archive {label}: truncated tar")
    except BaseException:
        f.close()  # the TarFile is dropped unclosed: closing it would write end blocks
        raise
    return ShardWriter(EXT_TAR, tar=tar, finish=[f.close])


# -- async --------------------------------------------------------------------------


async def aiter_chunks(source: ChunkSource) -> AsyncIterator[bytes]:
    """Drain ``source`` (a :class:`MemberReader` or :class:`TarOfMatches`) off the event loop.

    Each ``read_chunk`` runs in the default executor, one at a time; the source is
    closed at the end, on error and on cancellation (use ``contextlib.aclosing`` so
    that an early ``break`` closes it at once rather than at garbage collection).

    Cancellation: the chunk being read in the worker thread finishes and is dropped,
    then the source is closed (shielded, so its file handles are always released);
    nothing else is lost, since nothing is buffered past the chunk in flight.
    """
    loop = asyncio.get_running_loop()
    inflight: asyncio.Future[bytes] | None = None
    try:
        while True:
            inflight = loop.run_in_executor(None, source.read_chunk)
            chunk = await asyncio.shield(inflight)
            inflight = None
            if not chunk:
                return
            yield chunk
    finally:
        pending = inflight

        async def _finish() -> None:
            if pending is not None:
                try:
                    await pending
                except BaseException:
                    pass
            await loop.run_in_executor(None, source.close)

        await asyncio.shield(_finish())
