"""Name validation and the uname/FQN encodings (sans-I/O).

Sources: AIStore ``cmn/bck.go`` (bucket names: letters, digits, ``-``, ``_``,
``.``; at most 64), ``cmn/bck.go`` MakeUname (``ais/@#/bck/obj``) and
``fs/fs.go`` (FQN ``<mountpath>/@ais/<bck>/%ob/<obj>``). Object names are
stricter than AIStore's in one respect: they must map to a path *inside* the
bucket directory, so ``..`` and ``.`` segments, empty segments, a leading
``/`` and NUL bytes are refused instead of being normalized.
"""

from __future__ import annotations

import re

from aioetl.errors import InvalidName

__all__ = [
    "MAX_BCK_NAME_LEN",
    "MAX_OBJ_NAME_BYTES",
    "make_uname",
    "parse_uname",
    "validate_bck_name",
    "validate_obj_name",
]

MAX_BCK_NAME_LEN = 64
MAX_OBJ_NAME_BYTES = 1024

_BCK_RE = re.compile(r"[A-Za-z0-9_.\-]+")


def validate_bck_name(name: str) -> str:
    """Check a bucket name as AIStore does.

    Returns:
        the name unchanged.

    Raises:
        InvalidName: empty, longer than 64, characters outside ``[A-Za-z0-9_.-]``,
            or ``.``/``..``.
    """
    if not name:
        raise InvalidName("bucket name is empty")
    if len(name) > MAX_BCK_NAME_LEN:
        raise InvalidName(f'bucket name "{name[:80]}" is too long: {len(name)} > {MAX_BCK_NAME_LEN}')
    if not _BCK_RE.fullmatch(name) or name in (".", "..") or ".." in name:
        raise InvalidName(
            f'bucket name "{name}" is invalid: may only contain letters, numbers, '
            "dashes (-), underscores (_), and dots (.)"
        )
    return name


def validate_obj_name(name: str) -> str:
    """Check that an object name is safe to map to ``<bucket dir>/%ob/<name>``.

    Returns:
        the name unchanged.

    Raises:
        InvalidName: empty, over 1024 UTF-8 bytes, NUL byte, leading ``/``
            (absolute), trailing ``/``, or a ``.``/``..``/empty path segment.
    """
    if not name:
        raise InvalidName("object name is empty")
    if "\x00" in name:
        raise InvalidName("object name contains a NUL byte")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_OBJ_NAME_BYTES:
        raise InvalidName(f"object name is too long: more than {MAX_OBJ_NAME_BYTES} bytes")
    if name.startswith("/"):
        raise InvalidName(f'object name "{name[:200]}" is an absolute path')
    if name.endswith("/"):
        raise InvalidName(f'object name "{name[:200]}" ends with "/"')
    for seg in name.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidName(f'object name "{name[:200]}" has an invalid path segment "{seg}"')
        if len(seg.encode("utf-8", "surrogatepass")) > 255:
            raise InvalidName(f'object name "{name[:200]}" has a path segment over 255 bytes')
    return name


def make_uname(bck: str, obj: str, provider: str = "ais") -> str:
    """Unique name of an object in the global namespace: ``ais/@#/bck/obj``.

    This is the string HRW hashes (the SDK's ``bck.get_path() + obj``).
    """
    return f"{provider}/@#/{bck}/{obj}"


def parse_uname(uname: str) -> tuple[str, str, str]:
    """Inverse of :func:`make_uname`.

    Returns:
        ``(provider, bucket, object)``; ``object`` may be empty for a bucket uname.

    Raises:
        InvalidName: not of the form ``<provider>/@#/<bck>[/<obj>]``.
    """
    parts = uname.split("/", 3)
    if len(parts) < 3 or not parts[1].startswith("@"):
        raise InvalidName(f'invalid uname "{uname[:200]}"')
    provider, _ns, bck = parts[0], parts[1], parts[2]
    obj = parts[3] if len(parts) > 3 else ""
    return provider, bck, obj
