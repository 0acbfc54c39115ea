"""ETLs end to end: a real 2-target cluster, real pod processes, the official SDK.

Runs under aistore 2.0.0 and 1.26.0 (``make test``). The ETL classes are
defined in this module and pickled by value (as classes defined in a test
method are), so the pods need not import this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import cloudpickle
import pytest
import requests
from aistore.sdk.errors import AISError
from aistore.sdk.etl import ETLConfig
from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer as AisFastAPIServer

from aioetl.engine.node.launcher import LocalCluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(300)]

SDK = tuple(int(x) for x in version("aistore").split(".")[:2])


def sdk_client(endpoint: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    from conftest import make_sdk_client

    return make_sdk_client(endpoint)


@pytest.fixture(scope="module")
def etl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(targets=2, data_dir=str(tmp_path_factory.mktemp("etlc")), port=0) as c:
        yield c


@pytest.fixture(scope="module")
def client(etl_cluster: LocalCluster):  # type: ignore[no-untyped-def]
    return sdk_client(etl_cluster.endpoint)


@pytest.fixture(scope="module")
def bck(client):  # type: ignore[no-untyped-def]
    b = client.bucket("etl-src").create(exist_ok=True)
    b.object("a/obj1.jpg").get_writer().put_content(b"hello aioetl")
    b.object("obj2.txt").get_writer().put_content(b"0123456789" * 13)
    b.object("big.bin").get_writer().put_content(os.urandom(1 << 20))
    return b


_seq = iter(range(10**6))


@pytest.fixture
def etl_name(client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    name = f"etl-{os.getpid() % 1000}-{next(_seq)}"
    yield name
    try:
        client.etl(name).delete()
    except AISError:
        pass


def content(bck: Any, obj: str, etl: Any = None, args: Any = None) -> bytes:
    cfg = ETLConfig(etl, args) if etl is not None else None
    return bck.object(obj).get_reader(etl=cfg).read_all() if cfg else bck.object(obj).get_reader().read_all()


# -- transformer classes (aistore[etl] FastAPIServer subclasses: the SDK's own contract)
class Echo(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return data


class MD5(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return hashlib.md5(data).hexdigest().encode()


class XXHash(AisFastAPIServer):
    def __init__(self) -> None:
        super().__init__()
        self.seed = int(os.getenv("SEED_DEFAULT", "0"))

    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        import xxhash

        seed = int(etl_args) if etl_args else self.seed
        return xxhash.xxh64(data, seed=seed).hexdigest().encode()


class Upper(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return data.upper()


class Reverse(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return data[::-1]


class Append(AisFastAPIServer):
    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        return data + b"-appended"


class PathProbe(AisFastAPIServer):
    def transform(self, data: Any, path: str, etl_args: str) -> bytes:
        assert isinstance(data, str), f"expected a path, got {type(data)}"
        with open(data, "rb") as f:
            return f"{os.path.basename(data)}|{len(f.read())}".encode()


class StreamMD5(AisFastAPIServer):
    def transform_stream(self, reader: Any, path: str, etl_args: str) -> Iterator[bytes]:
        h = hashlib.md5()
        while True:
            chunk = reader.read(4096)
            if not chunk:
                break
            h.update(chunk)
        yield h.hexdigest().encode()


class Loud(AisFastAPIServer):
    def __init__(self) -> None:
        super().__init__()
        print("loud-etl initialized: hello from __init__", flush=True)

    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        if etl_args == "raise":
            raise ValueError("deliberate failure in transform")
        if etl_args == "sleep":
            time.sleep(6)
        if etl_args == "exit":
            os._exit(7)
        if etl_args == "kill-pid1":
            os.kill(1, signal.SIGTERM)
        return data


def init_class(client: Any, name: str, cls: type, **kw: Any) -> None:
    client.etl(name).init_class(**kw)(cls)


# -- tests ------------------------------------------------------------------------
def test_init_class_echo_and_md5(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    init_class(client, etl_name, Echo)
    assert content(bck, "a/obj1.jpg", etl_name) == b"hello aioetl"
    md5_name = etl_name + "-md5"
    try:
        init_class(client, md5_name, MD5, comm_type="hpull")
        assert content(bck, "obj2.txt", md5_name) == hashlib.md5(b"0123456789" * 13).hexdigest().encode()
    finally:
        client.etl(md5_name).delete()


def test_xxhash_with_dependency_env_and_args(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    import xxhash

    init_class(client, etl_name, XXHash, comm_type="hpull", dependencies=["xxhash"], SEED_DEFAULT="500")
    data = b"0123456789" * 13
    assert content(bck, "obj2.txt", etl_name) == xxhash.xxh64(data, seed=500).hexdigest().encode()
    assert content(bck, "obj2.txt", etl_name, "10000") == xxhash.xxh64(data, seed=10000).hexdigest().encode()


def test_init_image_hello_world(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    cmd = ["uvicorn", "fastapi_server:fastapi_app", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
    client.etl(etl_name).init(image="aistorage/transformer_hello_world:latest", command=cmd)
    assert content(bck, "a/obj1.jpg", etl_name) == b"Hello World!"
    details = client.etl(etl_name).view()
    assert details.init_msg.runtime.image == "aistorage/transformer_hello_world:latest"
    assert details.init_msg.runtime.command == cmd


def test_init_image_hash_with_args_env_order(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    import xxhash

    client.etl(etl_name).init(image="aistorage/transformer_hash_with_args:latest", SEED_DEFAULT=500)
    env = client.etl(etl_name).view().init_msg.runtime.env
    assert (env[0].name, env[0].value) == ("SEED_DEFAULT", "500")
    assert content(bck, "obj2.txt", etl_name) == xxhash.xxh64(b"0123456789" * 13, seed=500).hexdigest().encode()


@pytest.mark.skipif(SDK >= (2, 0), reason="Etl.init_spec and etl_templates were removed in aistore 2.0.0")
@pytest.mark.filterwarnings("ignore:Kubernetes Pod spec ETL initialization:FutureWarning")
def test_init_spec_md5_sdk126(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    from aistore.sdk.etl.etl_templates import MD5 as MD5_TEMPLATE

    client.etl(etl_name).init_spec(template=MD5_TEMPLATE.format(communication_type="hpush"), communication_type="hpush")
    assert content(bck, "obj2.txt", etl_name) == hashlib.md5(b"0123456789" * 13).hexdigest().encode()
    assert client.etl(etl_name).view().init_msg.spec is not None


def test_direct_file_access_gives_a_path(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    init_class(client, etl_name, PathProbe, direct_file_access=True)
    assert content(bck, "a/obj1.jpg", etl_name) == b"obj1.jpg|12"


@pytest.mark.parametrize("comm", ["hpush", "hpull"])
def test_transform_stream_1mib(client, bck, etl_name, comm) -> None:  # type: ignore[no-untyped-def]
    init_class(client, etl_name, StreamMD5, comm_type=comm)
    want = hashlib.md5(content(bck, "big.bin")).hexdigest().encode()
    assert content(bck, "big.bin", etl_name) == want


def test_pipeline_mixing_comm_types(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    names = [etl_name + "-u", etl_name + "-r", etl_name + "-a"]
    try:
        init_class(client, names[0], Upper, comm_type="ws")
        init_class(client, names[1], Reverse, comm_type="hpull")
        init_class(client, names[2], Append, comm_type="hpush")
        e1, e2, e3 = (client.etl(n) for n in names)
        got = bck.object("a/obj1.jpg").get_reader(etl=ETLConfig(e1 >> e2 >> e3)).read_all()
        assert got == b"hello aioetl".upper()[::-1] + b"-appended"
        # hpull first: AIStore refuses inline pipelines (a redirect drops the header)
        with pytest.raises(AISError) as ei:
            bck.object("a/obj1.jpg").get_reader(etl=ETLConfig(e2 >> e3)).read_all()
        assert ei.value.status_code == 400
    finally:
        for n in names:
            try:
                client.etl(n).delete()
            except AISError:
                pass


def test_lifecycle_view_logs_stop_start_delete(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    init_class(client, etl_name, Loud)
    etl = client.etl(etl_name)
    assert etl.view().init_msg.name == etl_name
    logs = etl.logs()
    assert len(logs) == 2 and all("hello from __init__" in entry.logs for entry in logs)
    tid = logs[0].target_id
    assert [entry.target_id for entry in etl.logs(tid)] == [tid]
    running = [e.id for e in client.cluster().list_etls()]
    assert etl_name in running
    etl.stop()
    assert etl_name in [e.id for e in client.cluster().list_etls(stages=["Aborted"])]
    assert etl_name not in [e.id for e in client.cluster().list_etls()]
    with pytest.raises(AISError):
        content(bck, "obj2.txt", etl_name)
    etl.start()
    assert content(bck, "obj2.txt", etl_name) == b"0123456789" * 13
    etl.delete()
    with pytest.raises(AISError):
        etl.view()


def test_context_manager_cleans_up(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    with client.etl(etl_name) as etl:
        etl.init_class()(Echo)
        assert content(bck, "obj2.txt", etl_name) == b"0123456789" * 13
    with pytest.raises(AISError):
        client.etl(etl_name).view()


def test_unknown_etl_is_404(client, bck) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AISError) as ei:
        content(bck, "obj2.txt", "no-such-etl")
    assert ei.value.status_code == 404


# -- faults -----------------------------------------------------------------------
def test_transform_error_reaches_client_as_error(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    init_class(client, etl_name, Loud)
    with pytest.raises(AISError) as ei:
        content(bck, "obj2.txt", etl_name, "raise")
    assert 400 <= ei.value.status_code < 500
    assert "deliberate failure in transform" in str(ei.value)
    errs = client.etl(etl_name).view().obj_errors or []
    assert any("obj2.txt" in e.obj_name for e in errs)


def test_obj_timeout_and_pod_not_wedged(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    init_class(client, etl_name, Loud, obj_timeout="2s")
    t0 = time.monotonic()
    with pytest.raises(AISError) as ei:
        content(bck, "obj2.txt", etl_name, "sleep")
    assert "timeout" in str(ei.value).lower()
    assert time.monotonic() - t0 < 5.5
    assert content(bck, "obj2.txt", etl_name) == b"0123456789" * 13


def _wait_stage(client: Any, name: str, stage: str, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if name in [e.id for e in client.cluster().list_etls(stages=[stage])]:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"{name} not {stage} within {timeout_s}s")


def test_pod_exit_aborts_only_that_etl(client, bck, etl_name) -> None:  # type: ignore[no-untyped-def]
    other = etl_name + "-ok"
    try:
        init_class(client, other, Echo)
        init_class(client, etl_name, Loud, NUM_WORKERS=1)
        # the dead pod surfaces as an AISError or as a connection error, by SDK version
        with pytest.raises(Exception):  # noqa: B017
            content(bck, "obj2.txt", etl_name, "exit")
        assert _wait_stage(client, etl_name, "Aborted", 10) < 10
        assert content(bck, "obj2.txt", other) == b"0123456789" * 13
    finally:
        client.etl(other).delete()


def test_missing_os_package_fails_init_naming_it(client, etl_name) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AISError) as ei:
        init_class(client, etl_name, Echo, os_packages=["surely-not-installed-pkg"])
    assert "surely-not-installed-pkg" in str(ei.value)
    assert ei.value.status_code < 500


def test_wrong_secret_on_object_route_is_refused(client, bck, etl_name, etl_cluster) -> None:  # type: ignore[no-untyped-def]
    init_class(client, etl_name, Echo)
    smap = client.cluster().get_info()
    for t in smap.tmap.values():
        url = f"{t.public_net.direct_url}/v1/etl/_object/{etl_name}/WrongSecret/ais%2F@%23%2Fetl-src%2Fobj2.txt"
        r = requests.get(url, timeout=10)
        assert r.status_code == 401, r.text
        assert b"0123456789" not in r.content


def _pod_procs(data_dir: str, name: str) -> list[int]:
    with open(os.path.join(data_dir, "gateway", "etlmd.json")) as f:
        md = json.load(f)
    return [int(p["pid"]) for p in md[name]["pods"].values()]


def _in_own_pid_ns(top_pid: int) -> bool:
    """The pod's server runs as PID 1 of a namespace of its own (NSpid: <host pid> 1)."""
    import psutil

    for child in psutil.Process(top_pid).children(recursive=False):
        with open(f"/proc/{child.pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) >= 2 and ids[-1] == "1"
    return False


def test_sigterm_to_pid1_kills_only_its_own_pod(client, bck, etl_name, etl_cluster) -> None:  # type: ignore[no-untyped-def]
    other = etl_name + "-ok"
    try:
        init_class(client, other, Echo)
        init_class(client, etl_name, Loud, NUM_WORKERS=1)
        tops = _pod_procs(etl_cluster.data_dir, etl_name)
        if not all(_in_own_pid_ns(p) for p in tops):
            pytest.fail("pods are not in their own PID namespace: refusing to send a signal to PID 1")
        try:  # a graceful server may still answer the request that signalled it; either is fine
            assert content(bck, "obj2.txt", etl_name, "kill-pid1") == b"0123456789" * 13
        except AISError:
            pass
        _wait_stage(client, etl_name, "Aborted", 10)
        for n in etl_cluster.nodes():
            assert n.proc is not None and n.proc.poll() is None, f"{n.node_id} died"
        assert content(bck, "obj2.txt", other) == b"0123456789" * 13
    finally:
        client.etl(other).delete()
