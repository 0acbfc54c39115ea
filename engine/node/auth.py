"""Node-to-node authentication: one cluster secret, checked on every intra-cluster route.

Trust model (issue #11): the public API (what the aistore SDK sends) stays open and
unchanged; the routes nodes call on each other (join, metasync, xaction start/abort/
settle/snapshots/errors, target-side ETL init/stop/details/logs, target-side listing
pages, and the gateway's callbacks from targets) answer only a caller holding the
cluster secret. A pod (user code) is never given it, so a transform cannot wipe a
target with an empty BMD or register an impostor target.

- The secret is made once per data root (:func:`load_or_create_secret`,
  ``<data>/cluster.secret``, mode 0600) and reused on every restart.
- A node reads it at its entry point (:func:`read_secret`): ``--secret-file PATH`` or
  ``AIOETL_CLUSTER_SECRET`` (for nodes on other machines that share it).
- Callers send it in the :data:`HEADER` header, set once as a default header of each
  node's intra-cluster ``aiohttp.ClientSession`` (:func:`auth_headers`); the session
  that talks to pods never carries it.
- Servers check it in one middleware (:func:`cluster_auth_middleware`), keyed on the
  matched route (method + route template, so a path spelled differently still hits
  the same check), in constant time (:func:`hmac.compare_digest`). No header: 401;
  a wrong one: 403; nothing runs either way.

AIStore keeps intra-cluster traffic on its own control and data networks and, with
AuthN enabled, checks HMAC-SHA256 signed tokens (``docs/authn.md``); aioetl runs every
node and every pod on one loopback interface, so one shared secret in a header takes
the place of the separate network.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

__all__ = [
    "ENV_SECRET",
    "GATEWAY_INTERNAL",
    "HEADER",
    "SECRET_FILE",
    "TARGET_INTERNAL",
    "auth_headers",
    "check_credential",
    "cluster_auth_middleware",
    "is_internal",
    "load_or_create_secret",
    "read_secret",
]

HEADER = "Aioetl-Cluster-Auth"
ENV_SECRET = "AIOETL_CLUSTER_SECRET"
SECRET_FILE = "cluster.secret"
_MIN_SECRET_LEN = 16

# (method, route template) of every intra-cluster route, as registered with aiohttp.
GATEWAY_INTERNAL: frozenset[tuple[str, str]] = frozenset({
    ("POST", "/v1/cluster/join"),
    ("POST", "/v1/jobs/{id}/_abort"),
    ("POST", "/v1/etl/{name}/_aborted"),
})
TARGET_INTERNAL: frozenset[tuple[str, str]] = frozenset({
    ("PUT", "/v1/metasync"),
    ("GET", "/v1/buckets/{bck}"),  # lsopage / summary / remote-page / present / remote-head for the gateway
    ("POST", "/v1/etl/_init"),
    # GET /v1/etl (stage and counts per ETL) stays open: read-only, the same facts the
    # gateway's public GET /v1/etl gives, and tests ask each target what it runs
    ("DELETE", "/v1/etl/{name}"),
    ("GET", "/v1/etl/{name}/details"),
    ("GET", "/v1/etl/{name}/logs"),
    ("GET", "/v1/etl/{name}/health"),
    ("GET", "/v1/etl/{name}/metrics"),
    ("POST", "/v1/xactions/_start"),
    ("POST", "/v1/xactions/_abort"),
    ("POST", "/v1/xactions/_settle"),
    ("GET", "/v1/xactions"),
    ("GET", "/v1/xactions/{id}/errors"),
})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def load_or_create_secret(data_dir: str) -> str:
    """The cluster secret of ``data_dir``: read ``<data_dir>/cluster.secret``, or create it.

    A new secret is 32 random bytes, hex-encoded (64 characters), written to a file
    created with ``O_EXCL`` and mode 0600 (so it is never readable by others, not even
    for a moment); a file left with looser permissions is tightened to 0600.

    Returns:
        The secret (str, no trailing newline).

    Raises:
        OSError: the data root cannot be created or the file cannot be read/written.
        ValueError: the file exists but holds a secret shorter than 16 characters.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, SECRET_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        return _read_secret_file(path)
    with os.fdopen(fd, "w") as f:
        secret = secrets.token_hex(32)
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    return secret


def _read_secret_file(path: str) -> str:
    with open(path) as f:
        secret = f.read().strip()
    if len(secret) < _MIN_SECRET_LEN:
        raise ValueError(f"cluster secret in {path} is too short (under {_MIN_SECRET_LEN} characters)")
    return secret


def read_secret(secret_file: str | None, environ: Mapping[str, str]) -> str:
    """A node's cluster secret, read once at its entry point.

    Args:
        secret_file: ``--secret-file PATH``; takes precedence when given.
        environ: the process environment (``AIOETL_CLUSTER_SECRET`` is read from it).

    Returns:
        The secret.

    Raises:
        ValueError: neither source gives one, or it is shorter than 16 characters.
        OSError: ``secret_file`` cannot be read.
    """
    if secret_file:
        return _read_secret_file(secret_file)
    secret = environ.get(ENV_SECRET, "").strip()
    if not secret:
        raise ValueError(f"no cluster secret: pass --secret-file PATH or set {ENV_SECRET}")
    if len(secret) < _MIN_SECRET_LEN:
        raise ValueError(f"{ENV_SECRET} is too short (under {_MIN_SECRET_LEN} characters)")
    return secret


def auth_headers(secret: str) -> dict[str, str]:
    """Default headers of a node's intra-cluster session: ``{HEADER: secret}``.

    Never give these to a session that talks to pods, or put them in a URL a pod sees.
    """
    return {HEADER: secret}


def is_internal(method: str, template: str, internal: frozenset[tuple[str, str]]) -> bool:
    """True if the route registered as ``(method, template)`` is in the ``internal`` set.

    ``method`` is the route's registered method (``"*"`` for any-method routes, which
    are never internal here), ``template`` its canonical path (``/v1/xactions/{id}/errors``).
    """
    return (method.upper(), template) in internal


def check_credential(presented: str | None, secret: str) -> int:
    """Judge a presented credential: 0 if it is the secret, 401 if absent, 403 if wrong.

    The comparison is constant-time in the secret's content (:func:`hmac.compare_digest`
    on bytes), so the reply time does not reveal a matching prefix.
    """
    if not presented:
        return 401
    ok = hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), secret.encode("utf-8"))
    return 0 if ok else 403


def cluster_auth_middleware(secret: str, internal: frozenset[tuple[str, str]], node_id: str) -> Any:
    """aiohttp middleware: the routes in ``internal`` require the cluster secret.

    The route is the one aiohttp matched (its method and canonical template), so an
    internal route cannot be reached unchecked through another spelling of its path.
    Unmatched requests (404/405) and public routes pass through untouched.

    Args:
        secret: the cluster secret (non-empty).
        internal: :data:`GATEWAY_INTERNAL` or :data:`TARGET_INTERNAL`.
        node_id: for the AIStore-shaped error body.

    Returns:
        The middleware; on a missing credential it answers 401, on a wrong one 403,
        and the handler does not run.
    """
    if not secret:
        raise ValueError("cluster_auth_middleware needs a non-empty secret")
    from aioetl.engine.node.httpd import error_response

    @web.middleware
    async def mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        info = route.resource.canonical if route.resource is not None else ""
        if is_internal(route.method, info, internal):
            status = check_credential(request.headers.get(HEADER), secret)
            if status:
                what = "missing" if status == 401 else "invalid"
                return error_response(request, status, f"{what} cluster credential for intra-cluster route "
                                      f"{request.method} {info}", node_id)
        return await handler(request)

    return mw
