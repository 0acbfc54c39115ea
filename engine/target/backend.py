"""Remote backends of a target: where a remote bucket's objects really live.

AIStore's targets reach cloud buckets through one backend interface per provider
(``core/backend.go`` ``BackendProvider``: HeadBucket, ListObjects, HeadObj,
GetObj, PutObj, DeleteObj; the S3 one is ``ais/backend/aws.go``). aioetl keeps the
same split: :class:`Backend` is the interface the target uses, and
:class:`S3Backend` implements it for ``aws://`` (alias ``s3://``) buckets on any
S3-compatible endpoint, through obstore (Rust ``object_store``: SigV4, the XML
listings, retries with backoff); GCS or Azure would be two more implementations.

Configuration, in AIStore's order of precedence (``ais/backend/aws.go``
``newSession``/``sessConf``):

1. the bucket's props, ``extra.aws.endpoint`` and ``extra.aws.profile``
   (set with ``PATCH /v1/buckets/<b>?provider=aws`` ``set-bprops``);
2. the standard AWS environment and config files, resolved by boto3:
   ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
   ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``
   (and ``AWS_ENDPOINT_URL_S3``), ``~/.aws/credentials`` and ``~/.aws/config``
   (``region``, ``endpoint_url``).

A custom endpoint is addressed path-style (``http://host:port/bucket/key``), as
S3-compatible servers expect; plain ``http://`` is allowed only for such an
endpoint. Retries: 5xx, 429, connection errors and timeouts are retried
``AIOETL_S3_MAX_RETRIES`` times (default 3) with exponential backoff from
100 ms, within ``AIOETL_S3_RETRY_TIMEOUT_S`` (default 15 s) per call; what still
fails becomes :class:`~aioetl.errors.RemoteUnavailable` (503) naming the
remote's status, a 403 :class:`~aioetl.errors.Forbidden`, a 404
:class:`~aioetl.errors.NotFound`, anything else :class:`~aioetl.errors.RemoteError`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import obstore
import obstore.exceptions as obx
from obstore.store import S3Store

from aioetl.engine.core.names import AWS, bck_uri
from aioetl.errors import AioetlError, Forbidden, NotFound, RemoteError, RemoteUnavailable

__all__ = ["Backend", "Backends", "RemoteEntry", "RemoteMD", "S3Backend", "remote_props"]

CHUNK = 1 << 20
_STATUS_RE = re.compile(r"(?:status(?: code)?:?|returned non-2xx status code:)\s*(\d{3})", re.I)
_CODE_RE = re.compile(r"<Code>([^<]+)</Code>")
_MSG_RE = re.compile(r"<Message>([^<]+)</Message>")


@dataclass(frozen=True)
class RemoteMD:
    """What the remote says about one object.

    Attributes:
        size: bytes.
        etag: the remote's ETag without quotes ("" when it has none).
        version: the remote's version id ("" for an unversioned bucket).
        mtime_ns: last modified, ns since the epoch.
    """

    size: int
    etag: str
    version: str
    mtime_ns: int

    def custom(self, provider: str = AWS) -> dict[str, str]:
        """The custom metadata a cached copy keeps (AIStore's ``cmn.SourceObjMD``,
        ``cmn.ETag``, ``cmn.LastModified``, ``cmn.VersionObjMD`` keys)."""
        out = {"source": provider, "ETag": self.etag, "LastModified": str(self.mtime_ns)}
        if self.version:
            out["version"] = self.version
        return out

    def same_as(self, custom: dict[str, str]) -> bool:
        """True when a cached copy with ``custom`` metadata is this remote version
        (version id when both have one, else ETag; AIStore ``core/lom.go`` CheckRemoteMD)."""
        if self.version and custom.get("version"):
            return self.version == custom["version"]
        return bool(self.etag) and self.etag == custom.get("ETag")


@dataclass(frozen=True)
class RemoteEntry:
    """One object of a remote listing: ``name``, ``size`` (bytes), ``etag``, ``mtime_ns``."""

    name: str
    size: int
    etag: str
    mtime_ns: int


def remote_props(props: dict[str, Any] | None) -> tuple[str, str]:
    """``(endpoint, profile)`` from a bucket's props (``extra.aws``), "" where unset."""
    aws = ((props or {}).get("extra") or {}).get("aws") or {}
    return str(aws.get("endpoint") or ""), str(aws.get("profile") or "")


class Backend(Protocol):
    """One provider's remote storage, as a target uses it (AIStore ``core/backend.go``).

    ``bck`` is the bucket key (``aws:b``), ``props`` the bucket's BMD props. Every
    method raises NotFound, Forbidden, RemoteError or RemoteUnavailable (module docstring).
    """

    provider: str

    async def head_bucket(self, bck: str, props: dict[str, Any] | None) -> None:
        """Check that the bucket exists and the credentials may read it."""
        ...

    async def list_page(self, bck: str, props: dict[str, Any] | None, prefix: str, start_after: str,
                        limit: int) -> tuple[list[RemoteEntry], bool]:
        """Up to ``limit`` objects after ``start_after`` in name order; ``(entries, more)``."""
        ...

    def list_all(self, bck: str, props: dict[str, Any] | None, prefix: str) -> AsyncIterator[list[RemoteEntry]]:
        """Every object under ``prefix``, in batches, in name order."""
        ...

    async def head_object(self, bck: str, props: dict[str, Any] | None, obj: str) -> RemoteMD:
        """The remote's metadata of one object."""
        ...

    async def get_object(self, bck: str, props: dict[str, Any] | None, obj: str,
                         write: Callable[[bytes], Any]) -> RemoteMD:
        """Stream the object into ``write`` (chunks of at most 1 MiB); its metadata.

        Raises (besides the module's): RemoteError when the body ends short of its size.
        """
        ...

    async def put_object(self, bck: str, props: dict[str, Any] | None, obj: str, src: str | bytes) -> RemoteMD:
        """Upload a file (path) or bytes; the new object's metadata."""
        ...

    async def delete_object(self, bck: str, props: dict[str, Any] | None, obj: str) -> None:
        """Delete one object (absent is not an error, as S3 DeleteObject)."""
        ...


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


class S3Backend:
    """:class:`Backend` for ``aws://`` buckets on any S3-compatible endpoint (module docstring).

    One obstore ``S3Store`` per (bucket, endpoint, profile), made on first use.
    """

    provider = AWS

    def __init__(self) -> None:
        self._stores: dict[tuple[str, str, str], S3Store] = {}
        self._lock = asyncio.Lock()

    # -- configuration -------------------------------------------------------
    def _make_store(self, name: str, endpoint: str, profile: str) -> S3Store:
        import boto3  # resolves env, config files and profiles as every AWS tool does
        import botocore.exceptions

        try:
            session = boto3.Session(profile_name=profile or None)
        except botocore.exceptions.ProfileNotFound as e:
            raise Forbidden(f'bucket "aws://{name}": {e}') from None
        cfg: dict[str, Any] = {}
        scoped = session._session.get_scoped_config()  # the profile's own keys (endpoint_url)
        endpoint = (endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                    or str(scoped.get("endpoint_url") or ""))
        region = session.region_name or "us-east-1"
        cfg["region"] = region
        if endpoint:
            cfg["endpoint"] = endpoint
            cfg["virtual_hosted_style_request"] = False
        creds = session.get_credentials()
        kwargs: dict[str, Any] = {}
        if creds is None:
            cfg["skip_signature"] = True  # anonymous (public buckets), as the AWS CLI's --no-sign-request
        else:
            frozen = creds.get_frozen_credentials()
            cfg["access_key_id"] = frozen.access_key
            cfg["secret_access_key"] = frozen.secret_key
            if frozen.token:
                cfg["token"] = frozen.token
        retry = {"max_retries": _env_int("AIOETL_S3_MAX_RETRIES", 3),
                 "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2),
                             "base": 2},
                 "retry_timeout": timedelta(seconds=_env_int("AIOETL_S3_RETRY_TIMEOUT_S", 15))}
        client = {"allow_http": endpoint.startswith("http://"), "connect_timeout": "5s", "timeout": "120s",
                  "pool_idle_timeout": "30s"}
        return S3Store(name, config=cfg, client_options=client, retry_config=retry, **kwargs)  # type: ignore[arg-type]

    def _store(self, bck: str, props: dict[str, Any] | None) -> tuple[S3Store, str]:
        name = bck.partition(":")[2] or bck
        endpoint, profile = remote_props(props)
        key = (name, endpoint, profile)
        st = self._stores.get(key)
        if st is None:
            st = self._stores[key] = self._make_store(name, endpoint, profile)
        return st, name

    # -- errors --------------------------------------------------------------
    @staticmethod
    def _error(e: Exception, bck: str, obj: str = "", *, op: str) -> AioetlError:
        """Map an obstore error to aioetl's tree, keeping the remote's status and reason."""
        text = str(e)
        what = bck_uri(bck, obj) if obj else bck_uri(bck)
        status = 0
        m = _STATUS_RE.search(text)
        if m:
            status = int(m[1])
        code = _CODE_RE.search(text)
        msg = _MSG_RE.search(text)
        reason = " ".join(x for x in ((code[1] if code else ""), (msg[1] if msg else "")) if x)
        if not reason:
            reason = str(status) if status else (text.splitlines()[0][:300] if text else type(e).__name__)
        if isinstance(e, obx.NotFoundError) or status == 404:
            if obj:
                return NotFound(f'object "{what}" does not exist (remote: {reason})')
            return NotFound(f'bucket "{what}" does not exist (remote: {reason})')
        if isinstance(e, (obx.PermissionDeniedError, obx.UnauthenticatedError)) or status in (401, 403):
            return Forbidden(f"{op} {what}: remote refused the credentials: {status or 403} {reason}")
        if status >= 500 or status == 429 or status == 0:
            where = f"remote answered {status}" if status else "remote unreachable"
            return RemoteUnavailable(f"{op} {what}: {where} after retries: {reason}")
        return RemoteError(f"{op} {what}: remote answered {status}: {reason}")

    # -- Backend -------------------------------------------------------------
    async def head_bucket(self, bck: str, props: dict[str, Any] | None) -> None:
        st, _ = self._store(bck, props)
        try:
            stream = obstore.list(st, chunk_size=1)
            async for _batch in stream:
                break
        except Exception as e:
            raise self._error(e, bck, op="HEAD bucket") from None

    async def list_page(self, bck: str, props: dict[str, Any] | None, prefix: str, start_after: str,
                        limit: int) -> tuple[list[RemoteEntry], bool]:
        st, _ = self._store(bck, props)
        out: list[RemoteEntry] = []
        dirp, off = _list_args(prefix, start_after)
        try:  # one entry past the page says whether another page follows
            stream = obstore.list(st, prefix=dirp, offset=off, chunk_size=min(limit + 1, 1000))
            async for batch in stream:
                for m in batch:
                    name = str(m["path"])
                    if not name.startswith(prefix):
                        if name > prefix:
                            return out, False  # past the prefix: names are in order
                        continue
                    out.append(_entry(m))
                    if len(out) > limit:
                        return out[:limit], True
        except Exception as e:
            raise self._error(e, bck, op="list") from None
        return out, False

    async def list_all(self, bck: str, props: dict[str, Any] | None,
                       prefix: str) -> AsyncIterator[list[RemoteEntry]]:
        st, _ = self._store(bck, props)
        dirp, off = _list_args(prefix, "")
        try:
            stream = obstore.list(st, prefix=dirp, offset=off, chunk_size=1000)
            async for batch in stream:
                got = [_entry(m) for m in batch]
                if prefix:
                    if got and got[-1].name > prefix and not got[-1].name.startswith(prefix):
                        yield [e for e in got if e.name.startswith(prefix)]
                        return
                    got = [e for e in got if e.name.startswith(prefix)]
                yield got
        except Exception as e:
            raise self._error(e, bck, op="list") from None

    async def head_object(self, bck: str, props: dict[str, Any] | None, obj: str) -> RemoteMD:
        st, _ = self._store(bck, props)
        try:
            m = await obstore.head_async(st, obj)
        except Exception as e:
            raise self._error(e, bck, obj, op="HEAD") from None
        return _md(m)

    async def get_object(self, bck: str, props: dict[str, Any] | None, obj: str,
                         write: Callable[[bytes], Any]) -> RemoteMD:
        st, _ = self._store(bck, props)
        try:
            r = await obstore.get_async(st, obj)
            md = _md(r.meta)
            if md.size <= CHUNK:  # one await for a small object instead of a stream's several
                b = bytes(await r.bytes_async())
                got = len(b)
                write(b)
            else:
                got = 0
                async for chunk in r.stream(min_chunk_size=CHUNK):
                    b = bytes(chunk)
                    got += len(b)
                    write(b)
        except Exception as e:
            raise self._error(e, bck, obj, op="GET") from None
        if got != md.size:
            raise RemoteUnavailable(f"GET {bck_uri(bck, obj)}: remote body ended at {got} of {md.size} bytes")
        return md

    async def put_object(self, bck: str, props: dict[str, Any] | None, obj: str, src: str | bytes) -> RemoteMD:
        st, _ = self._store(bck, props)
        try:
            if isinstance(src, str):
                from pathlib import Path

                size = os.stat(src).st_size
                r = await obstore.put_async(st, obj, Path(src))
            else:
                size = len(src)
                r = await obstore.put_async(st, obj, src)
        except Exception as e:
            raise self._error(e, bck, obj, op="PUT") from None
        import time

        return RemoteMD(size=size, etag=(r.get("e_tag") or "").strip('"'), version=r.get("version") or "",
                        mtime_ns=time.time_ns())

    async def delete_object(self, bck: str, props: dict[str, Any] | None, obj: str) -> None:
        st, _ = self._store(bck, props)
        try:
            await obstore.delete_async(st, obj)
        except Exception as e:
            raise self._error(e, bck, obj, op="DELETE") from None


def _list_args(prefix: str, start_after: str) -> tuple[str | None, str | None]:
    """``(prefix, offset)`` for obstore's list of a plain key ``prefix`` (S3's meaning).

    object_store lists by whole path segments (``prefix="a/b"`` means ``a/b/...``), so
    the segment part goes as its prefix, and the listing starts just before ``prefix``
    (S3 ``StartAfter``, keys in order); the caller keeps the keys that start with it.
    """
    dirp = prefix.rpartition("/")[0] if prefix else ""
    off = start_after
    if prefix and (not off or off < prefix):
        last = ord(prefix[-1])
        off = prefix[:-1] + (chr(last - 1) + "\U0010ffff" if last > 1 else "")
    return dirp or None, off or None


def _md(m: Any) -> RemoteMD:
    lm = m.get("last_modified")
    return RemoteMD(size=int(m["size"]), etag=str(m.get("e_tag") or "").strip('"'),
                    version=str(m.get("version") or ""),
                    mtime_ns=int(lm.timestamp() * 1e9) if lm is not None else 0)


def _entry(m: Any) -> RemoteEntry:
    lm = m.get("last_modified")
    return RemoteEntry(name=str(m["path"]), size=int(m["size"]), etag=str(m.get("e_tag") or "").strip('"'),
                       mtime_ns=int(lm.timestamp() * 1e9) if lm is not None else 0)


class Backends:
    """The backends a target has, by provider (AIStore ``ais/tgtbck.go`` ``t.Backend(bck)``)."""

    def __init__(self) -> None:
        self._by_provider: dict[str, Backend] = {}

    def get(self, provider: str) -> Backend:
        """The backend of ``provider`` (made on first use).

        Raises:
            BadRequest: no backend for it.
        """
        b = self._by_provider.get(provider)
        if b is None:
            if provider != AWS:
                from aioetl.errors import BadRequest

                raise BadRequest(f'provider "{provider}" has no backend in aioetl')
            b = self._by_provider[provider] = S3Backend()
        return b

    def set(self, provider: str, backend: Backend) -> None:
        """Use ``backend`` for ``provider`` (tests, embedding)."""
        self._by_provider[provider] = backend
