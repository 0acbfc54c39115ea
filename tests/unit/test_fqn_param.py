"""``fqn_param``: Go's ``url.PathEscape`` on FQNs, fast path and general path agree."""

from __future__ import annotations

import random
from urllib.parse import unquote

from aioetl.communicators.target.comm import fqn_param

# Go url.shouldEscape(c, encodePathSegment): unreserved and "$&+:=@" stay, all else is %XX (UTF-8)
_GO_KEEP = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~$&+:=@")


def go_path_escape(s: str) -> str:
    return "".join(chr(b) if chr(b) in _GO_KEEP else f"%{b:02X}" for b in s.encode())


def test_typical_fqn_keeps_at_and_escapes_slash_and_percent() -> None:
    fqn = "/dev/shm/t1/mp0/@ais/images/%ob/food/apple_01.png"
    assert fqn_param(fqn) == "%2Fdev%2Fshm%2Ft1%2Fmp0%2F@ais%2Fimages%2F%25ob%2Ffood%2Fapple_01.png"
    assert fqn_param(fqn) == go_path_escape(fqn)


def test_random_names_match_go_and_round_trip() -> None:
    rng = random.Random(7)
    alphabet = "ab/%@ +;,?#&=$:é中\u00a0.-_~"
    for _ in range(2000):
        fqn = "/mp/@ais/b/%ob/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        got = fqn_param(fqn)
        assert got == go_path_escape(fqn), fqn
        assert unquote(got) == fqn
