"""Name validation and the uname/FQN encodings (sans-I/O).

Sources: AIStore ``cmn/bck.go`` (bucket names: letters, digits, ``-``, ``_``,
``.``; at most 64), ``cmn/bck.go`` MakeUname (``ais/@#/bck/obj``) and
``fs/fs.go`` (FQN ``<mountpath>/@ais/<bck>/%ob/<obj>``). Object names are
stricter than AIStore's in one respect: they must map to a path *inside* the
bucket directory, so ``..`` and ``.`` segments, empty segments, a leading
``/`` and NUL bytes are refused instead of being normalized.

Bucket keys: inside aioetl a bucket is named by one string, its *key*: the bare
name for an ``ais://`` bucket (so every existing path, BMD entry and message
stays as it was) and ``aws:<name>`` for a remote S3 bucket (``aws://``, alias
``s3://``, AIStore ``api/apc/provider.go``). ``:`` is not allowed in a bucket
name, so the two never collide. :func:`bck_key` builds a key from what the
wire carries (``?provider=`` and the name), :func:`split_bck_key` goes back,
:func:`bck_uri` gives the ``aws://name`` form that messages use.
"""

from __future__ import annotations

import re

from aioetl.errors import InvalidName

__all__ = [
    "AIS",
    "AWS",
    "MAX_BCK_NAME_LEN",
    "MAX_OBJ_NAME_BYTES",
    "REMOTE_PROVIDERS",
    "bck_key",
    "bck_uri",
    "is_remote",
    "make_uname",
    "normalize_provider",
    "parse_uname",
    "split_bck_key",
    "uname_key",
    "validate_bck_name",
    "validate_obj_name",
]

MAX_BCK_NAME_LEN = 64
MAX_OBJ_NAME_BYTES = 1024

_BCK_RE = re.compile(r"[A-Za-z0-9_.\-]+")

AIS = "ais"
AWS = "aws"
REMOTE_PROVIDERS = (AWS,)
_PROVIDER_ALIASES = {"": AIS, AIS: AIS, AWS: AWS, "s3": AWS}


def normalize_provider(provider: str) -> str:
    """``""``/``ais`` -> ``ais``; ``aws``/``s3`` -> ``aws`` (AIStore ``apc.NormalizeProvider``).

    Raises:
        BadRequest: a provider aioetl has no backend for (``gcp``, ``azure``, ``oci``, ``ht``...).
    """
    p = _PROVIDER_ALIASES.get(provider.lower())
    if p is None:
        from aioetl.errors import BadRequest

        raise BadRequest(f'provider "{provider}" is not supported: aioetl serves ais:// buckets and '
                         "aws:// (s3://) remote buckets")
    return p


def bck_key(provider: str, name: str) -> str:
    """The internal key of bucket ``name`` of ``provider`` (module docstring).

    Raises:
        InvalidName: an invalid bucket name.
        BadRequest: an unsupported provider.
    """
    validate_bck_name(name)
    p = normalize_provider(provider)
    return name if p == AIS else f"{p}:{name}"


def split_bck_key(key: str) -> tuple[str, str]:
    """``(provider, name)`` of a bucket key: ``"b"`` -> ``("ais", "b")``, ``"aws:b"`` -> ``("aws", "b")``."""
    p, sep, name = key.partition(":")
    return (p, name) if sep else (AIS, key)


def is_remote(key: str) -> bool:
    """True for the key of a remote (cloud) bucket."""
    return ":" in key


def bck_uri(key: str, obj: str = "") -> str:
    """``ais://b`` / ``aws://b`` (and ``/obj`` when given): the name that messages use."""
    p, name = split_bck_key(key)
    return f"{p}://{name}/{obj}" if obj else f"{p}://{name}"


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


def make_uname(bck: str, obj: str) -> str:
    """Unique name of an object in the global namespace: ``ais/@#/bck/obj``
    (``aws/@#/bck/obj`` for the key ``aws:bck``).

    This is the string HRW hashes (the SDK's ``bck.get_path() + obj``).
    """
    p, name = split_bck_key(bck)
    return f"{p}/@#/{name}/{obj}"


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


def uname_key(uname: str) -> tuple[str, str]:
    """``(bucket key, object)`` of a uname: ``aws/@#/b/o`` -> ``("aws:b", "o")``.

    Raises:
        InvalidName: not a uname, or an invalid bucket name.
        BadRequest: an unsupported provider.
    """
    provider, bck, obj = parse_uname(uname)
    return bck_key(provider, bck), obj
