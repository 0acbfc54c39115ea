"""What the fault pods compute and how they choose to misbehave (shared by the tests,
the raw pod :mod:`tests.faults.faultpod` and the transform-level pod classes).

The transform is content-derived (``expected(data)``), so a destination holding
another object's output is recognised as misattributed, not merely "different".

Misbehaviour is chosen by object name: ``.../bad-<mode>-<n>.bin`` misbehaves with
``<mode>``; every other object is transformed correctly. Transform-level modes
(our ``AiohttpServer`` and ``aistore[etl]``'s ``FastAPIServer``):

    none   transform() returns None
    str    transform() returns a str ("S" + hex of the expected output)
    raise  transform() raises
    sleep  transform() sleeps FAULT_SLEEP_S (longer than obj_timeout), then answers

This module is pickled by value into init_class pods (cloudpickle); the raw pod
imports it from its own directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from typing import Any

import cloudpickle
from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer as AisFastAPIServer

from aioetl.communicators import AiohttpServer

__all__ = ["AisFaultServer", "OurFaultServer", "SlowServer", "expected", "mode_of", "str_output"]

_BAD = re.compile(r"(?:^|/)bad-([a-z0-9]+)-\d+")


def expected(data: bytes) -> bytes:
    """The correct output for ``data``: ``b"T" + sha256(data)[:8] + reversed(data)``."""
    return b"T" + hashlib.sha256(data).digest()[:8] + data[::-1]


def str_output(data: bytes) -> str:
    """What the ``str`` mode returns instead of bytes."""
    return "S" + expected(data).hex()


def mode_of(path: str) -> str:
    """``"none"`` for ``"b/x/bad-none-3.bin"`` (any of the three path shapes); ``""`` if good."""
    m = _BAD.search(path)
    return m.group(1) if m else ""


def _fault_transform(data: Any, path: str) -> Any:
    if isinstance(data, str):  # direct_file_access
        with open(data, "rb") as f:
            data = f.read()
    mode = mode_of(path)
    if mode == "none":
        return None
    if mode == "str":
        return str_output(data)
    if mode == "raise":
        raise ValueError(f"injected fault for {path}")
    if mode == "sleep":
        time.sleep(float(os.environ.get("FAULT_SLEEP_S", "5")))
    slow = float(os.environ.get("FAULT_SLOW_S", "0"))
    if slow:
        time.sleep(slow)
    return expected(data)


class OurFaultServer(AiohttpServer):  # type: ignore[misc]
    """Our pod server (``communicators.AiohttpServer``) with the transform-level faults."""

    def transform(self, data: Any, path: str, etl_args: str) -> Any:
        return _fault_transform(data, path)


class AisFaultServer(AisFastAPIServer):  # type: ignore[misc]
    """``aistore[etl]``'s ``FastAPIServer``, run as written, with the same faults."""

    def transform(self, data: Any, path: str, etl_args: str) -> Any:
        return _fault_transform(data, path)


SlowServer = OurFaultServer  # FAULT_SLOW_S in the ETL's env slows every object down

cloudpickle.register_pickle_by_value(sys.modules[__name__])
