"""Shared fixtures: a real local cluster (gateway + targets as processes on 127.0.0.1).

- ``cluster``: one 3-target cluster per test session, data root under pytest's tmp.
- ``endpoint``: its gateway URL.
- ``sdk``: an official ``aistore.sdk.Client`` on it, with a short retry config so
  that an unexpected 5xx fails a test in seconds rather than the SDK's ~90 s.
- ``bucket_name``: a fresh random bucket name (the test creates it).

``AIOETL_SDK_VERSION`` tells which SDK environment runs the tests (``make test``
runs the ``sdk`` marker once per SDK version).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from aioetl.engine.node.launcher import LocalCluster


def fast_data_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[str]:
    """A data root on tmpfs (/dev/shm) when there is one: tests create thousands of small
    files, which tmpfs makes ~20x faster than this machine's disk. Removed afterwards."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        import shutil
        import tempfile

        d = tempfile.mkdtemp(prefix=f"aioetl-{name}-", dir="/dev/shm")
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        yield str(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for data in fast_data_dir(tmp_path_factory, "cluster"):
        with LocalCluster(targets=3, data_dir=data, port=0) as c:
            yield c


@pytest.fixture(scope="session")
def endpoint(cluster: LocalCluster) -> str:
    return cluster.endpoint


def make_sdk_client(endpoint: str):  # type: ignore[no-untyped-def]
    """An aistore SDK client that gives up quickly on 5xx (tests want the error)."""
    from aistore.sdk import Client

    try:
        from aistore.sdk.retry_config import RetryConfig
        from urllib3.util.retry import Retry

        rc = RetryConfig(
            http_retry=Retry(total=1, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504], connect=0, read=0),
            network_retry=RetryConfig.default().network_retry,
        )
        return Client(endpoint, retry_config=rc, timeout=(5, 60))
    except (ImportError, TypeError, AttributeError):  # older SDKs
        return Client(endpoint, timeout=(5, 60))


@pytest.fixture(scope="session")
def sdk(endpoint: str):  # type: ignore[no-untyped-def]
    return make_sdk_client(endpoint)


@pytest.fixture
def bucket_name() -> str:
    return f"test-{secrets.token_hex(4)}"


def sdk_version() -> str:
    from importlib.metadata import version

    return version("aistore")


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"aistore SDK {sdk_version()} (AIOETL_SDK_VERSION={os.environ.get('AIOETL_SDK_VERSION', '')})"
    except Exception:
        return "aistore SDK not installed"
