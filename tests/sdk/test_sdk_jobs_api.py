"""Job requests through the SDK: honest status, refusals before anything is created,
and the TCBMsg flags (accepted as AIStore accepts them for ais://, or refused)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
import requests
from aistore.sdk.errors import AISError
from aistore.sdk.etl.webserver.fastapi_server import FastAPIServer

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.sdk, pytest.mark.timeout(300)]

N = 60


class FailTens(FastAPIServer):
    """Raises for o-NN0 (every tenth object)."""

    def transform(self, data: bytes, path: str, etl_args: str) -> bytes:
        if path.endswith("0.bin"):
            raise ValueError(f"refusing {path}")
        return data[::-1]


@pytest.fixture(scope="module")
def src(sdk: Any) -> Iterator[Any]:
    b = sdk.bucket(f"japi-{os.getpid()}").create(exist_ok=True)
    for i in range(N):
        b.object(f"o-{i:03d}.bin").get_writer().put_content(f"payload {i}".encode())
    yield b
    b.delete(missing_ok=True)


@pytest.fixture(scope="module")
def etl(sdk: Any) -> Iterator[str]:
    name = f"japi-fail-{os.getpid() % 100000}"
    sdk.etl(name).init_class()(FailTens)
    yield name
    try:
        sdk.etl(name).delete()
    except AISError:
        pass


def bucket_names(sdk: Any) -> set[str]:
    return {b.name for b in sdk.cluster().list_buckets()}


def test_status_err_sums_errors_over_every_target(sdk: Any, src: Any, etl: str, endpoint: str) -> None:
    dst = sdk.bucket(f"japi-dst-{os.getpid()}")
    job = src.transform(etl_name=etl, to_bck=dst, cont_on_err=True)
    try:
        assert not sdk.job(job).wait(timeout=120).success
        report = requests.get(f"{endpoint}/v1/jobs/{job}/errors", timeout=30).text.splitlines()
        failing = {f"o-{i:03d}.bin" for i in range(0, N, 10)}
        assert {json.loads(r)["obj_name"].rsplit("/", 1)[1] for r in report} == failing
        per_target = [s for s in sdk.job(job).get_details().list_snapshots() if s.abort_err == ""]
        assert len(per_target) == 3
        err = sdk.job(job).status().err
        assert err.startswith(f"{len(failing)} object error(s): "), err
        for name in failing:
            assert name in err, f"{name} missing from {err!r}"
    finally:
        dst.delete(missing_ok=True)


def test_invalid_template_is_refused_before_the_destination_is_created(sdk: Any, src: Any, etl: str) -> None:
    dst_name = f"japi-never-{os.getpid()}"
    for tmpl in ("o-{9..1}.bin", "o-{000..999}-{000..999}-{00..99}.bin"):
        with pytest.raises(AISError) as ei:
            src.objects(obj_template=tmpl).transform(to_bck=sdk.bucket(dst_name), etl_name=etl)
        assert ei.value.status_code == 400, ei.value
        assert "template" in str(ei.value)
    assert dst_name not in bucket_names(sdk), "nothing is created for a job that is refused"


def test_synchronize_is_refused_and_latest_force_are_accepted(sdk: Any, src: Any, etl: str) -> None:
    dst_name = f"japi-sync-{os.getpid()}"
    with pytest.raises(AISError) as ei:
        src.transform(etl_name=etl, to_bck=sdk.bucket(dst_name), sync=True)
    assert ei.value.status_code == 400 and "synchronize" in str(ei.value)
    assert dst_name not in bucket_names(sdk)
    dst = sdk.bucket(f"japi-flags-{os.getpid()}")
    try:
        job = src.transform(etl_name=etl, to_bck=dst, latest=True, force=True, cont_on_err=True,
                            prefix_filter="o-00")
        sdk.job(job).wait(timeout=120)
        got = {e.name for e in dst.list_all_objects()}
        assert got == {f"o-{i:03d}.bin" for i in range(1, 10)}, "latest/force change nothing on ais:// (as AIStore)"
    finally:
        dst.delete(missing_ok=True)


def test_synchronize_with_an_object_list_is_ignored(sdk: Any, src: Any, etl: str) -> None:
    dst = sdk.bucket(f"japi-lsync-{os.getpid()}")
    try:
        job = src.objects(obj_names=["o-001.bin", "o-002.bin"]).transform(to_bck=dst, etl_name=etl, sync=True)
        assert sdk.job(job).wait(timeout=120).success
        assert dst.object("o-001.bin").get_reader().read_all() == b"payload 1"[::-1]
    finally:
        dst.delete(missing_ok=True)
