from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.stir.errors import IdentityHeaderError
from proxy.stir.identity import (
    _plain_params,
    _scan_params,
    format_identity,
    is_identity_header,
    parse_identity,
    split_identity_values,
)

TOKEN = "aGVhZA.cGF5bG9hZA.c2ln"


def test_round_trip() -> None:
    value = format_identity(TOKEN, "https://cert.example.com/sp.pem")
    assert value == f"{TOKEN};info=<https://cert.example.com/sp.pem>;alg=ES256;ppt=shaken"
    parsed = parse_identity(value)
    assert (parsed.token, parsed.info, parsed.alg, parsed.ppt) == (
        TOKEN,
        "https://cert.example.com/sp.pem",
        "ES256",
        "shaken",
    )
    assert not parsed.compact


def test_quoted_ppt_spaces_and_brackets_with_semicolons() -> None:
    parsed = parse_identity(f' {TOKEN} ; info=<https://c.example.com/a;b.pem> ; alg=ES256 ; ppt="shaken" ')
    assert parsed.info == "https://c.example.com/a;b.pem"
    assert parsed.ppt == "shaken"


def test_compact_form_is_flagged() -> None:
    assert parse_identity("aGVhZA..c2ln;info=<https://x.example.com/a.pem>").compact


@pytest.mark.parametrize(
    ("value", "check"),
    [
        ("garbage", "identity-no-params"),
        (TOKEN, "identity-no-params"),
        ("!!!;info=<https://x/a.pem>", "identity-token"),
        ("a.b;info=<https://x/a.pem>", "identity-token"),
        ("a b.c.d;info=<https://x/a.pem>", "identity-token"),
        (f"{TOKEN};alg=ES256;ppt=shaken", "identity-info-missing"),
        (f"{TOKEN};info=<>;alg=ES256", "identity-info-missing"),
        (f"{TOKEN};info=<https://x/a.pem;alg=ES256", "identity-params"),
        (f'{TOKEN};info=<https://x/a.pem>;ppt="shaken', "identity-params"),
    ],
)
def test_malformed_is_438(value: str, check: str) -> None:
    with pytest.raises(IdentityHeaderError) as err:
        parse_identity(value)
    assert err.value.check == check
    assert err.value.sip_code == 438


def test_header_names_and_split() -> None:
    assert is_identity_header("Identity") and is_identity_header("y") and is_identity_header("IDENTITY ")
    assert not is_identity_header("Identity-Info")
    assert split_identity_values('a.b.c;info=<https://x/a,b>;ppt="x,y", d.e.f;info=<https://y>') == [
        'a.b.c;info=<https://x/a,b>;ppt="x,y"',
        "d.e.f;info=<https://y>",
    ]


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab=;<> \t\r"xI:/.')), max_size=30))
def test_plain_parameter_split_agrees_with_the_scanner(text: str) -> None:
    """The fast split of Identity parameters, where it answers, gives what the careful scanner gives."""
    fast = _plain_params(text)
    if fast is None:
        return
    try:
        slow: object = _scan_params(text)
    except IdentityHeaderError:
        slow = "error"
    assert fast == slow
