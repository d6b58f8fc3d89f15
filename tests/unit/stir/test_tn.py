from __future__ import annotations

import pytest

from proxy.stir.errors import TNError
from proxy.stir.tn import TNPolicy, canonical_tn, first_tn, is_anonymous, orig_tn, try_canonical_tn

NANP = TNPolicy(country_code="1", national_length=10)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+15550100000", "15550100000"),
        ("+1 (555) 010-0000", "15550100000"),
        ("1.555.010.0000", "15550100000"),
        ("tel:+1-555-010-0000", "15550100000"),
        ("tel:+15550100000;phone-context=example.com", "15550100000"),
        ("sip:+15550100000@gw.example.com;user=phone", "15550100000"),
        ("sips:+15550100000;tgrp=tg1;trunk-context=example.com@gw.example.com", "15550100000"),
        ('"Alice" <sip:+15550100000@example.com>;tag=abc', "15550100000"),
        ("<tel:+15550100000>", "15550100000"),
        ("*67", "*67"),
        ("%2315550100000", "#15550100000"),
        ("01256500600", "01256500600"),
    ],
)
def test_canonical_forms(raw: str, expected: str) -> None:
    assert canonical_tn(raw) == expected


def test_national_number_gets_country_code() -> None:
    assert canonical_tn("5550100000", NANP) == "15550100000"
    assert canonical_tn("(555) 010-0000", NANP) == "15550100000"
    # with + it is already international; other lengths are left alone
    assert canonical_tn("+5550100000", NANP) == "5550100000"
    assert canonical_tn("15550100000", NANP) == "15550100000"
    assert canonical_tn("5550100000") == "5550100000"


@pytest.mark.parametrize(
    "raw",
    # "+" + 16 digits is one too long however it is written; str.isdigit() is true for "²" and "١٢٣".
    ["", "abc", "sip:alice@example.com", "+", "555-ABC", "1" * 16, "+" + "1" * 16, "²", "+١٢٣", "555²"],
)
def test_garbage_is_a_typed_error(raw: str) -> None:
    with pytest.raises(TNError):
        canonical_tn(raw)
    assert try_canonical_tn(raw) is None


def test_pai_then_from_order_is_configurable() -> None:
    pai, frm = "<sip:+15550100000@a>", "<sip:+15550199999@b>"
    assert orig_tn(pai, frm) == "15550100000"
    assert orig_tn(None, frm) == "15550199999"
    assert orig_tn(pai, frm, TNPolicy(orig_order=("from", "pai"))) == "15550199999"
    assert first_tn(["sip:bob@x", "tel:+15550100001"]) == "15550100001"


def test_anonymous() -> None:
    assert is_anonymous('"Anonymous" <sip:anonymous@anonymous.invalid>')
    assert not is_anonymous("sip:+15550100000@x")
