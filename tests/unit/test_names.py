"""Pure tests of bucket/object name validation and the uname encoding (aioetl.engine.core.names)."""

from __future__ import annotations

import pytest

from aioetl.engine.core.names import (
    MAX_BCK_NAME_LEN,
    MAX_OBJ_NAME_BYTES,
    bck_key,
    bck_uri,
    is_remote,
    make_uname,
    parse_uname,
    split_bck_key,
    uname_key,
    validate_bck_name,
    validate_obj_name,
)
from aioetl.errors import BadRequest, ClientError, InvalidName

GOOD_BCK = ["b", "my-bucket", "my_bucket", "v1.2", "A-Z_09", "a" * MAX_BCK_NAME_LEN, ".hidden", "a.b.c"]
BAD_BCK = [
    "",
    "a" * (MAX_BCK_NAME_LEN + 1),
    "a b",
    "a/b",
    "..",
    ".",
    "a..b",
    "bck*",
    "bck?",
    "b\x00",
    "b\n",
    "naïve",
    "%2F",
    "a\\b",
]


@pytest.mark.parametrize("name", GOOD_BCK)
def test_good_bucket_names_pass_unchanged(name: str) -> None:
    assert validate_bck_name(name) == name


@pytest.mark.parametrize("name", BAD_BCK, ids=repr)
def test_bad_bucket_names_raise_invalid_name_400(name: str) -> None:
    with pytest.raises(InvalidName) as ei:
        validate_bck_name(name)
    assert isinstance(ei.value, ClientError) and ei.value.status == 400
    assert ei.value.message, "the error must say what is wrong"


def test_bucket_name_too_long_message_says_so() -> None:
    with pytest.raises(InvalidName, match="too long"):
        validate_bck_name("x" * 65)


GOOD_OBJ = [
    "o",
    "a/b/c.txt",
    "dir/sub dir/file name with spaces",
    "ünïcødé/名前/файл",
    "...",  # a segment of three dots is an ordinary name
    "a/..b/c..",
    ".hidden",
    "a%2Fb",  # already-decoded names may contain '%'
    "x" * 255,
    "/".join(["y" * 200] * 5),  # 1004 bytes, under the 1 KiB limit
    "e" * 255 + "/" + "f" * 255 + "/" + "g" * 255 + "/" + "h" * 255,  # exactly 1023 bytes
]
BAD_OBJ = [
    "",
    "..",
    ".",
    "../x",
    "a/../../etc/x",
    "a/./b",
    "a/..",
    "/etc/x",
    "/x",
    "a//b",
    "a/",
    "a\x00b",
    "\x00",
    "z" * 256,  # one segment over the filesystem's 255-byte limit
    "/".join(["z" * 200] * 6),  # 1205 bytes
    "é" * 513,  # 513 characters but 1026 UTF-8 bytes
]


@pytest.mark.parametrize("name", GOOD_OBJ, ids=lambda n: repr(n[:40]))
def test_good_object_names_pass_unchanged(name: str) -> None:
    assert validate_obj_name(name) == name


@pytest.mark.parametrize("name", BAD_OBJ, ids=lambda n: repr(n[:40]))
def test_bad_object_names_raise_invalid_name_400(name: str) -> None:
    with pytest.raises(InvalidName) as ei:
        validate_obj_name(name)
    assert ei.value.status == 400 and ei.value.message


def test_object_name_limit_counts_utf8_bytes_not_characters() -> None:
    base = "/".join(["q" * 255] * 4)  # 4 segments of 255 bytes + 3 slashes
    assert len(base.encode()) == 1023 and validate_obj_name(base) == base
    with pytest.raises(InvalidName, match="too long"):
        validate_obj_name(base + "/" + "é")  # 1023 + 1 + 2 bytes > 1024
    two_byte = "/".join(["é" * 127] * 4)  # 511 characters, 1019 bytes: under the limit
    assert len(two_byte.encode()) <= MAX_OBJ_NAME_BYTES and validate_obj_name(two_byte) == two_byte
    over = "/".join(["é" * 127] * 5)  # 639 characters, 1274 bytes; every segment under 255
    assert len(over) < MAX_OBJ_NAME_BYTES < len(over.encode())
    with pytest.raises(InvalidName):
        validate_obj_name(over)


def test_messages_name_the_offending_part() -> None:
    with pytest.raises(InvalidName, match=r'segment "\.\."'):
        validate_obj_name("a/../b")
    with pytest.raises(InvalidName, match="absolute"):
        validate_obj_name("/etc/passwd")
    with pytest.raises(InvalidName, match="NUL"):
        validate_obj_name("a\x00")


@pytest.mark.parametrize(
    "bck,obj",
    [("b", "o"), ("my-bck", "a/b/c"), ("b.1", "ünï/名前"), ("b", "x y/z%2F"), ("b", "a@#b/@#/c")],
)
def test_uname_round_trip(bck: str, obj: str) -> None:
    u = make_uname(bck, obj)
    assert u == f"ais/@#/{bck}/{obj}", "the SDK hashes bck.get_path() + obj, i.e. ais/@#/<bck>/<obj>"
    assert parse_uname(u) == ("ais", bck, obj)


def test_uname_other_provider_and_bucket_only() -> None:
    assert make_uname("aws:b", "o") == "aws/@#/b/o", "a remote bucket's uname carries its provider (HRW hashes it)"
    assert parse_uname("gcp/@#/b/o") == ("gcp", "b", "o")
    assert parse_uname("ais/@#/b") == ("ais", "b", "")


def test_bucket_keys() -> None:
    assert bck_key("ais", "b") == bck_key("", "b") == "b"
    assert bck_key("aws", "b") == bck_key("s3", "b") == bck_key("S3", "b") == "aws:b"
    assert split_bck_key("aws:b") == ("aws", "b") and split_bck_key("b") == ("ais", "b")
    assert bck_uri("aws:b", "x/y") == "aws://b/x/y" and bck_uri("b") == "ais://b"
    assert is_remote("aws:b") and not is_remote("b")
    assert uname_key("aws/@#/b/o/p") == ("aws:b", "o/p") and uname_key("ais/@#/b/o") == ("b", "o")
    with pytest.raises(BadRequest, match="gcp"):
        bck_key("gcp", "b")
    with pytest.raises(InvalidName):
        bck_key("aws", "a:b")


@pytest.mark.parametrize("uname", ["", "ais", "ais/b/o", "b/o", "ais/#/b/o"])
def test_parse_uname_rejects_malformed(uname: str) -> None:
    with pytest.raises(InvalidName):
        parse_uname(uname)
