"""Built-in transformers: local stand-ins for the images ``aistorage/transformer_<name>``
of NVIDIA/ais-etl, served by ``python -m aioetl.communicators.pod.bootstrap --builtin <name>``.

    hello_world      b"Hello World!"
    echo             the input
    md5              hex MD5 digest of the input (ASCII bytes)
    hash_with_args   hex xxhash64 of the input; seed = int(etl_args) if given,
                     else int(env SEED_DEFAULT or 0)
"""

from __future__ import annotations

import hashlib
import os

from aioetl.communicators.pod.aiohttp_server import AiohttpServer
from aioetl.communicators.pod.config import PodConfig
from aioetl.communicators.wire.const import ENV_SEED_DEFAULT

__all__ = ["BUILTINS", "EchoServer", "HashWithArgsServer", "HelloWorldServer", "Md5Server"]


def _data(data: bytes | str) -> bytes:
    """``ETL_DIRECT_FQN=true`` hands over a path: read it."""
    if isinstance(data, str):
        with open(data, "rb") as f:
            return f.read()
    return data


class HelloWorldServer(AiohttpServer):
    """Answers every object with ``b"Hello World!"``."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return b"Hello World!"


class EchoServer(AiohttpServer):
    """Returns the object unchanged."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return _data(data)


class Md5Server(AiohttpServer):
    """Returns the hex MD5 digest of the object, e.g. ``b"5d41402abc4b2a76b9719d911017c592"``."""

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        return hashlib.md5(_data(data)).hexdigest().encode()


class HashWithArgsServer(AiohttpServer):
    """Returns the hex xxhash64 of the object with a per-request seed.

    The seed is ``int(etl_args)`` when given, else ``SEED_DEFAULT`` from the
    environment (read at construction), else 0.

    Raises:
        ValueError: (per request) ``etl_args`` is not an integer.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 8000, *, config: PodConfig | None = None,
                 seed_default: int | None = None) -> None:
        super().__init__(host, port, config=config)
        self.seed_default = int(os.environ.get(ENV_SEED_DEFAULT) or 0) if seed_default is None else seed_default

    def transform(self, data: bytes | str, path: str, etl_args: str) -> bytes:
        import xxhash

        seed = int(etl_args) if etl_args else self.seed_default
        return xxhash.xxh64(_data(data), seed=seed).hexdigest().encode()


BUILTINS: dict[str, type[AiohttpServer]] = {
    "hello_world": HelloWorldServer,
    "echo": EchoServer,
    "md5": Md5Server,
    "hash_with_args": HashWithArgsServer,
}
