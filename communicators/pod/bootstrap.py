"""The pod entry point (what AIStore's ``aistorage/runtime_python`` image runs, §5.6)::

    python -m aioetl.communicators.pod.bootstrap --host 127.0.0.1 --port P [--builtin NAME]

Order of work:

1. ``OS_PACKAGES`` (comma-separated): every entry must be on ``PATH``
   (``shutil.which``); otherwise print ``missing OS packages: a, b`` on stderr and
   exit 3. (``PACKAGES`` is installed by the pod runtime before this runs.)
2. The class: ``--builtin NAME`` (:mod:`.transformers`) or ``ETL_CLASS_PAYLOAD``
   (base64 of a cloudpickled class, as ``Etl.init_class`` sends). It must subclass
   our :class:`.server.ETLServer` or aistore[etl]'s ``ETLServer``; else exit 2.
3. Instantiate it (``AIS_TARGET_URL`` must be set; else exit 2) and serve on
   exactly ``--host:--port``, with ``NUM_WORKERS`` processes (default
   ``min(cpu_count, 4)``):

   ====================================================  =====================================
   subclass of                                            served by
   ====================================================  =====================================
   ours: ``ETLServer``, ``AiohttpServer``                 our aiohttp server, fork + SO_REUSEPORT
   ours: ``FastAPIServer``                                uvicorn
   aistore: ``FastAPIServer``                             uvicorn, as the runtime image does
   aistore: ``FlaskServer``                               its ``start()`` (werkzeug, threaded; 1 process)
   aistore: ``HTTPMultiThreadedServer``                   its ``start()`` (1 process)
   ====================================================  =====================================

   uvicorn with several workers imports ``aioetl.communicators.pod.bootstrap:app``, which
   re-creates the server from the environment in each worker.

One line ``READY http://<host>:<port>`` goes to stdout once the server listens
(answers ``/health`` for the non-aiohttp kinds). SIGTERM ends every process with
exit code 0.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import signal
import socket
import sys
import threading
import time
from typing import Any

from aioetl.communicators.wire.const import (
    ENV_BUILTIN,
    ENV_CLASS_PAYLOAD,
    ENV_NUM_WORKERS,
    ENV_OS_PACKAGES,
    EXIT_BAD_CLASS,
    EXIT_MISSING_OS_PACKAGES,
)

__all__ = ["BootstrapError", "load_class", "main", "missing_os_packages", "num_workers", "server_kind"]


class BootstrapError(Exception):
    """The pod cannot start: bad payload, wrong class, bad environment (exit 2)."""


def missing_os_packages(value: str | None) -> list[str]:
    """Entries of a comma-separated ``OS_PACKAGES`` value that are not on ``PATH``, in order."""
    names = [p.strip() for p in (value or "").split(",") if p.strip()]
    return [n for n in names if shutil.which(n) is None]


def num_workers(value: str | None) -> int:
    """``NUM_WORKERS`` -> a process count >= 1; default ``min(os.cpu_count(), 4)``.

    Raises:
        BootstrapError: not an integer.
    """
    if value is None or not value.strip():
        return max(1, min(os.cpu_count() or 1, 4))
    try:
        return max(1, int(value))
    except ValueError:
        raise BootstrapError(f"{ENV_NUM_WORKERS}={value!r} is not an integer") from None


def _ais_bases() -> dict[str, type]:
    """aistore[etl]'s server classes, if that package is installed."""
    out: dict[str, type] = {}
    try:
        from aistore.sdk.etl.webserver.base_etl_server import ETLServer as AisBase
    except Exception:
        return out
    out["base"] = AisBase
    for key, mod, name in (("fastapi", "fastapi_server", "FastAPIServer"), ("flask", "flask_server", "FlaskServer"),
                           ("http", "http_multi_threaded_server", "HTTPMultiThreadedServer")):
        try:
            m = __import__(f"aistore.sdk.etl.webserver.{mod}", fromlist=[name])
            out[key] = getattr(m, name)
        except Exception:
            pass
    return out


def server_kind(cls: type) -> str:
    """How to serve ``cls``: ``aiohttp``, ``fastapi``, ``ais-fastapi``, ``ais-flask`` or ``ais-http``.

    Raises:
        BootstrapError: not a server class we can run.
    """
    from aioetl.communicators.pod.server import ETLServer

    if not isinstance(cls, type):
        raise BootstrapError(f"{ENV_CLASS_PAYLOAD} holds {type(cls).__name__!s} {cls!r}, not a class")
    # a subclass of our FastAPIServer was unpickled, so its module (and FastAPI) is loaded;
    # without the fastapi extra nothing imports it
    fastapi_mod = sys.modules.get("aioetl.communicators.pod.fastapi_server")
    if fastapi_mod is not None and issubclass(cls, fastapi_mod.FastAPIServer):
        return "fastapi"
    if issubclass(cls, ETLServer):
        return "aiohttp"
    ais = _ais_bases()
    for key in ("fastapi", "flask", "http"):
        if key in ais and issubclass(cls, ais[key]):
            return f"ais-{key}"
    if "base" in ais and issubclass(cls, ais["base"]):
        raise BootstrapError(f"{cls.__qualname__} subclasses aistore's ETLServer but none of its runnable servers "
                             "(FastAPIServer, FlaskServer, HTTPMultiThreadedServer)")
    raise BootstrapError(f"{cls.__qualname__} is not a subclass of ETLServer "
                         "(communicators.ETLServer or aistore.sdk.etl.webserver.base_etl_server.ETLServer)")


def load_class(environ: Any, builtin: str | None = None) -> type:
    """The server class: a built-in by name, or the class in ``ETL_CLASS_PAYLOAD``.

    Raises:
        BootstrapError: unknown built-in, no payload, undecodable payload, not a class.
    """
    if builtin:
        from aioetl.communicators.pod.builtins import BUILTINS

        try:
            return BUILTINS[builtin]
        except KeyError:
            raise BootstrapError(f"unknown built-in transformer {builtin!r}; known: {', '.join(BUILTINS)}") from None
    payload = (environ.get(ENV_CLASS_PAYLOAD) or "").strip()
    if not payload:
        raise BootstrapError(f"{ENV_CLASS_PAYLOAD} is not set (expected base64 of a cloudpickled ETLServer subclass)")
    try:
        raw = base64.b64decode(payload, validate=True)
    except ValueError as e:
        raise BootstrapError(f"{ENV_CLASS_PAYLOAD} is not valid base64: {e}") from None
    try:
        import cloudpickle

        cls = cloudpickle.loads(raw)
    except Exception as e:
        raise BootstrapError(f"cannot unpickle {ENV_CLASS_PAYLOAD}: {type(e).__name__}: {e}") from None
    server_kind(cls)  # validates
    return cls  # type: ignore[no-any-return]


def _instantiate(cls: type) -> Any:
    try:
        return cls()
    except (OSError, TypeError, ValueError) as e:
        raise BootstrapError(f"cannot create {cls.__qualname__}: {type(e).__name__}: {e}") from None


_APP_SERVER: Any = None


def __getattr__(name: str) -> Any:
    """``aioetl.communicators.pod.bootstrap:app`` for uvicorn workers: the ASGI app of a server
    re-created from the environment (``ETL_CLASS_PAYLOAD`` or ``AIOETL_BUILTIN``)."""
    global _APP_SERVER
    if name != "app":
        raise AttributeError(name)
    if _APP_SERVER is None:
        _APP_SERVER = _instantiate(load_class(os.environ, os.environ.get(ENV_BUILTIN) or None))
        from aioetl.communicators.pod.server import ETLServer

        if isinstance(_APP_SERVER, ETLServer):
            _APP_SERVER.set_processes(num_workers(os.environ.get(ENV_NUM_WORKERS)))
    return _APP_SERVER.app


def _announce_when_healthy(host: str, port: int) -> threading.Thread:
    """Print ``READY`` once ``GET /health`` answers 200 (servers we do not drive)."""
    probe = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)

    def run() -> None:
        req = f"GET /health HTTP/1.1\r\nHost: {probe}:{port}\r\nConnection: close\r\n\r\n".encode()
        while True:
            try:
                with socket.create_connection((probe, port), timeout=2) as s:
                    s.sendall(req)
                    head = s.recv(32)
                if head.startswith(b"HTTP/1.") and head[9:12] == b"200":
                    print(f"READY http://{host}:{port}", flush=True)
                    return
            except OSError:
                pass
            time.sleep(0.02)

    t = threading.Thread(target=run, name="ready-probe", daemon=True)
    t.start()
    return t


def _raise_nofile_limit() -> None:
    try:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def _serve(server: Any, kind: str, host: str, port: int, workers: int) -> int:
    if kind == "aiohttp":
        from aioetl.communicators.pod.aiohttp_server import serve

        return serve(server, host, port, workers=workers)
    if kind in ("fastapi", "ais-fastapi"):
        try:
            import uvicorn

            from aioetl.communicators.pod.fastapi_server import uvicorn_settings
        except ImportError as e:
            raise BootstrapError(f"a FastAPI server class needs FastAPI and uvicorn ({e}): "
                                 "pip install 'aioetl[fastapi]'") from e
        from aioetl.communicators.pod.server import ETLServer

        if isinstance(server, ETLServer):
            server.set_processes(workers)
        _announce_when_healthy(host, port)
        # uvicorn re-raises a captured SIGTERM after its graceful shutdown, with the
        # previous handler restored: make that handler a no-op so the exit code is 0
        signal.signal(signal.SIGTERM, lambda *_: None)
        app: Any = server.app if workers <= 1 else "aioetl.communicators.pod.bootstrap:app"
        uvicorn.run(app, host=host, port=port, **uvicorn_settings(workers))
        return 0
    if kind == "ais-flask":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        _announce_when_healthy(host, port)
        try:
            server.start()
        except KeyboardInterrupt:
            pass
        return 0
    # ais-http: it installs its own SIGTERM handler
    _announce_when_healthy(host, port)
    server.start()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run a pod (module docstring); returns the exit code."""
    ap = argparse.ArgumentParser(prog="python -m aioetl.communicators.pod.bootstrap",
                                 description="Run an aioetl ETL pod.")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--builtin", default=None, help="serve a built-in transformer instead of ETL_CLASS_PAYLOAD")
    args = ap.parse_args(argv)
    env = os.environ
    missing = missing_os_packages(env.get(ENV_OS_PACKAGES))
    if missing:
        print(f"missing OS packages: {', '.join(missing)}", file=sys.stderr, flush=True)
        return EXIT_MISSING_OS_PACKAGES
    _raise_nofile_limit()
    try:
        cls = load_class(env, args.builtin)
        kind = server_kind(cls)
        workers = num_workers(env.get(ENV_NUM_WORKERS))
        if args.builtin:
            os.environ[ENV_BUILTIN] = args.builtin
        server = _instantiate(cls)
    except BootstrapError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_CLASS
    server.host = args.host
    server.port = args.port
    return _serve(server, kind, args.host, args.port, workers)


if __name__ == "__main__":
    sys.exit(main())
