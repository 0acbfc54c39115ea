"""The exception tree of aioetl.errors: domains, statuses, the transient marker (pure)."""

from __future__ import annotations

import ast
import inspect

import pytest

from aioetl import errors
from aioetl.errors import (
    AioetlError,
    AlreadyExists,
    BadRequest,
    ClientError,
    ConfigError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidName,
    NodeUnavailable,
    NotFound,
    PeerError,
    PodUnavailable,
    RangeNotSatisfiable,
    RemoteError,
    RemoteUnavailable,
    RequestError,
    ServerError,
    StorageError,
    TransformError,
    TransientError,
    XactionError,
    is_transient,
)

# (class, parent domain, status): the module docstring's diagram, as data
TREE = [
    (TransientError, AioetlError, 503),
    (ClientError, AioetlError, 400),
    (RequestError, ClientError, 400),
    (InvalidName, RequestError, 400),
    (BadRequest, RequestError, 400),
    (RangeNotSatisfiable, RequestError, 416),
    (NotFound, ClientError, 404),
    (AlreadyExists, ClientError, 409),
    (Conflict, ClientError, 409),
    (ServerError, AioetlError, 500),
    (StorageError, ServerError, 500),
    (InsufficientStorage, StorageError, 507),
    (PeerError, ServerError, 502),
    (NodeUnavailable, PeerError, 503),
    (TransformError, ServerError, 500),
    (PodUnavailable, TransformError, 503),
    (XactionError, ServerError, 500),
    (Forbidden, ClientError, 403),
    (RemoteError, PeerError, 502),
    (RemoteUnavailable, RemoteError, 503),
    (ConfigError, ServerError, 500),
]


@pytest.mark.parametrize(("cls", "parent", "status"), TREE, ids=[c.__name__ for c, _, _ in TREE])
def test_tree_and_statuses(cls: type[AioetlError], parent: type[AioetlError], status: int) -> None:
    assert issubclass(cls, parent)
    assert cls.status == status
    e = cls("boom")
    assert e.status == status and e.message == "boom" and str(e) == "boom"


def test_every_exported_class_is_in_the_tree_and_in_the_diagram() -> None:
    exported = {n for n in errors.__all__ if inspect.isclass(getattr(errors, n))}
    assert exported == {c.__name__ for c, _, _ in TREE} | {"AioetlError"}
    doc = errors.__doc__ or ""
    for name in exported:
        assert f" {name} " in doc or f" {name}\n" in doc, name


def test_four_and_five_hundreds_stay_apart() -> None:
    for cls, _, status in TREE:
        if issubclass(cls, ClientError):
            assert 400 <= status < 500 and not issubclass(cls, ServerError)
        if issubclass(cls, ServerError):
            assert status >= 500 and not issubclass(cls, ClientError)


def test_transient_is_a_type() -> None:
    transient = {c for c, _, _ in TREE if issubclass(c, TransientError)}
    assert transient == {TransientError, NodeUnavailable, PodUnavailable, RemoteUnavailable}
    with pytest.raises(TransientError):
        raise NodeUnavailable("no targets in the cluster map")
    with pytest.raises(PeerError):  # the domain still catches it
        raise NodeUnavailable("peer down")
    assert is_transient(PodUnavailable("retry"))
    assert not is_transient(InsufficientStorage("full"))
    assert not is_transient(ValueError("x"))


def test_is_transient_honours_the_legacy_attribute() -> None:
    e = NotFound("x")
    e.transient = True  # type: ignore[attr-defined]
    assert is_transient(e)
    e.transient = "yes"  # type: ignore[attr-defined]  # only a real True counts
    assert not is_transient(e)


def test_status_can_be_overridden_per_instance() -> None:
    assert BadRequest("too large", status=413).status == 413
    assert BadRequest("plain").status == 400


def test_module_imports_nothing_else_of_aioetl() -> None:
    tree = ast.parse(inspect.getsource(errors))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("aioetl"), ast.dump(node)
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("aioetl") for a in node.names)


def test_error_body_and_go_texts() -> None:
    assert str(errors.bck_not_found("b")) == 'bucket "ais://b" does not exist'
    assert str(errors.obj_not_found("b", "o")) == 'object "ais://b/o" does not exist'
    assert errors.error_body("m", 404, method="GET", path="/v1/x", node="t1") == (
        b'{"message": "m", "method": "GET", "url_path": "/v1/x", "remote_addr": "", "caller": "", '
        b'"node": "t1", "status": 404}'
    )
