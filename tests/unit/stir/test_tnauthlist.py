from __future__ import annotations

import pytest

from proxy.stir.tnauthlist import TNAuthListError, encode_spc_tnauthlist, parse_tnauthlist


def test_spc_explicit() -> None:
    der = encode_spc_tnauthlist("1234")
    assert der == bytes.fromhex("3008a006160431323334")
    parsed = parse_tnauthlist(der)
    assert parsed.spc == "1234" and parsed.bare is None


def test_range_and_one_tn() -> None:
    start = b"\x16\x0b15550100000"
    count = b"\x02\x01\x64"
    seq = b"\x30" + bytes([len(start + count)]) + start + count
    rng = b"\xa1" + bytes([len(seq)]) + seq
    one = b"\xa2\x0d\x16\x0b15550100009"
    spc = bytes.fromhex("a006160431323334")
    body = spc + rng + one
    parsed = parse_tnauthlist(b"\x30" + bytes([len(body)]) + body)
    assert parsed.spcs == ("1234",)
    assert parsed.ranges == (("15550100000", 100),)
    assert parsed.tns == ("15550100009",)


def test_implicit_spc_is_accepted() -> None:
    assert parse_tnauthlist(b"\x30\x06\x80\x0412AB").spc == "12AB"


def test_bare_ia5() -> None:
    parsed = parse_tnauthlist(b"\x16\x03abc")
    assert parsed.bare == "abc" and parsed.spc is None


@pytest.mark.parametrize(
    "der",
    [b"", b"\x30", b"\x30\x05\xa0\x03\x16", b"\x04\x01a", b"\x30\x00", b"\x30\x03\xa5\x01a",
     b"\x30\x06\xa0\x04\x0c\x0212", b"\x30\x06\xa0\x04\x16\x0212extra"],
)  # fmt: skip
def test_garbage_is_an_error(der: bytes) -> None:
    with pytest.raises(TNAuthListError):
        parse_tnauthlist(der)
