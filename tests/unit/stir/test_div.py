"""Diverted calls (RFC 8946): div PASSporTs signed for forwarded calls, and shaken + div verified as a chain.

The claim shapes follow RFC 8946: `div` carries the diverting TN, `dest` the new target, `orig` the original
caller, no attest/origid. The numbers are in the style of the RFC's examples; its example PASSporTs cannot be
replayed byte for byte (their keys are not published), so the canonical form is checked instead.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from proxy.authentication import diverting_tn
from proxy.config import Config
from proxy.sip.message import Request, parse
from proxy.stir.passport import PPT_DIV, canonical_json, div_claims
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.tn import TNPolicy
from proxy.stir.verifier import VERSTAT_FAILED, VERSTAT_PASSED, Verifier, VerifierSettings
from tests.unit.core.sipfake import A, b_invite
from tests.unit.records.helpers import Caller, make_pki, stir_config, wall_harness

from .helpers import NOW, ORIGID, X5U, Pki, forge, header, ident

CALLER = "12155551212"  # the original caller
FORWARDER = "12155551213"  # the number the call was first placed to, which forwarded it
TARGET = "12155551214"  # where it was forwarded


def test_div_claims_are_canonical_like_rfc_8946() -> None:
    claims = div_claims(CALLER, (TARGET,), FORWARDER, 1443208345)
    assert canonical_json(claims) == (
        b'{"dest":{"tn":["12155551214"]},"div":{"tn":"12155551213"},"iat":1443208345,"orig":{"tn":"12155551212"}}'
    )


def _shaken(pki: Pki, dest: str = FORWARDER, orig: str = CALLER) -> str:
    return pki.signer.sign(orig, [dest], "A", ORIGID, NOW)


def _div(pki: Pki, div: str = FORWARDER, dest: str = TARGET, orig: str = CALLER) -> str:
    return pki.signer.sign_div(orig, [dest], div, NOW)


def _verify(pki: Pki, values: list[str], dest: str = TARGET, **settings: object) -> object:
    return Verifier(VerifierSettings(**settings)).verify(values, CALLER, [dest], None, NOW,  # type: ignore[arg-type]
                                                         {X5U: pki.entry})  # fmt: skip


def test_shaken_plus_div_verifies_as_a_chain(pki: Pki) -> None:
    result = Verifier().verify([_shaken(pki), _div(pki)], CALLER, [TARGET], None, NOW, {X5U: pki.entry})
    assert (result.status, result.verstat, result.sip_code) == ("passed", VERSTAT_PASSED, None), result.failures
    assert result.chain == ("shaken", "div")
    assert result.attest == "A" and result.origid == ORIGID  # from the shaken PASSporT, not the div one
    assert "dest-diverted" in result.headers[0].notes
    assert result.headers[1].div == FORWARDER and result.headers[1].ppt == PPT_DIV
    assert result.as_dict()["chain"] == ["shaken", "div"]
    strict = Verifier(VerifierSettings(multi_header="all")).verify([_shaken(pki), _div(pki)], CALLER, [TARGET],
                                                                   None, NOW, {X5U: pki.entry})  # fmt: skip
    assert strict.passed


def test_two_diversions_chain_transitively(pki: Pki) -> None:
    second = "12155551215"
    values = [_shaken(pki), _div(pki), _div(pki, div=TARGET, dest=second)]
    result = Verifier(VerifierSettings(multi_header="all")).verify(values, CALLER, [second], None, NOW,
                                                                   {X5U: pki.entry})  # fmt: skip
    assert result.passed and result.chain == ("shaken", "div", "div"), result.failures


@pytest.mark.parametrize(("case", "check"), [
    ("no-div", "dest-mismatch"),  # a forwarded call whose forwarder added nothing
    ("div-from-elsewhere", "dest-mismatch"),  # the div names another diverting number
    ("div-bad-signature", "dest-mismatch"),  # a div that fails cannot vouch for the diversion
    ("div-other-caller", "dest-mismatch"),  # the div is about another caller
])  # fmt: skip
def test_broken_diversion_chain_is_438(pki: Pki, case: str, check: str) -> None:
    values = [_shaken(pki)]
    if case == "div-from-elsewhere":
        values.append(_div(pki, div="12155559999"))
    elif case == "div-bad-signature":
        token, _, params = _div(pki).partition(";")
        values.append(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB") + ";" + params)
    elif case == "div-other-caller":
        values.append(_div(pki, orig="12155550000"))
    result = Verifier(VerifierSettings(multi_header="all")).verify(values, CALLER, [TARGET], None, NOW,
                                                                   {X5U: pki.entry})  # fmt: skip
    assert (result.sip_code, result.verstat) == (438, VERSTAT_FAILED)
    assert result.headers[0].failures[0].check == check
    if case == "no-div":  # the default (any header may pass) fails too: nothing passes
        assert Verifier().verify(values, CALLER, [TARGET], None, NOW, {X5U: pki.entry}).sip_code == 438


def test_div_without_div_claim_is_438(pki: Pki) -> None:
    token = forge(pki.key, header(ppt="div"), {"dest": {"tn": [TARGET]}, "iat": NOW, "orig": {"tn": CALLER}})
    result = Verifier().verify([ident(token, ppt="div")], CALLER, [TARGET], None, NOW, {X5U: pki.entry})
    assert (result.sip_code, result.verstat, result.failures[0].check) == (438, VERSTAT_FAILED, "div-missing")


# ---------------------------------------------------------------------------------- which number diverted
def _invite(*extra: str) -> Request:
    lines = ["INVITE sip:12155551214@127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.10;branch=z9hG4bK1",
             "From: <sip:+12155551212@127.0.0.10>;tag=1", "To: <sip:12155551213@127.0.0.1>", "Call-ID: x",
             "CSeq: 1 INVITE", *extra, "Content-Length: 0"]  # fmt: skip
    msg = parse(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


@pytest.mark.parametrize(("extra", "expected"), [
    (("Diversion: <sip:+12155551213@pbx.example>;reason=unconditional;counter=1",), FORWARDER),
    (("Diversion: <tel:+12155551213>;reason=no-answer, <sip:+12155550001@pbx>;reason=busy",), FORWARDER),
    (("History-Info: <sip:+12155551213@pbx.example>;index=1",
      "History-Info: <sip:+12155551214@pbx.example;cause=302>;index=1.1;mp=1"), FORWARDER),
    (("History-Info: <sip:+12155551213@a>;index=1, <sip:+12155551214@b?Reason=SIP%3Bcause%3D302>;index=1.1;rc=1",),
     FORWARDER),
    (("History-Info: <sip:+12155551213@a>;index=1, <sip:+12155551214@b>;index=1.1",), None),  # no retarget
    ((), None),
])  # fmt: skip
def test_diverting_number_from_diversion_or_history_info(extra: tuple[str, ...], expected: str | None) -> None:
    assert diverting_tn(_invite(*extra), TNPolicy()) == expected


# ---------------------------------------------------------------------------------- signing in the engine
@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("div-pki"))


def with_sign(config: Config, **sign: Any) -> Config:
    """The config with the customer trunk's `sign:` settings changed."""
    trunks = []
    for t in config.trunks:
        if t.name == "customer":
            assert t.sign is not None
            t = msgspec.structs.replace(t, sign=msgspec.structs.replace(t.sign, **sign))
        trunks.append(t)
    fields = {f: getattr(config, f) for f in config.__dataclass_fields__}
    return type(config)(**{**fields, "trunks": tuple(trunks)})


def _forwarded_b_leg(pki_dir: Path, div: str, diversion: str, to: str = "+12125550123") -> Request:
    """A call from the customer trunk that arrives signed (the caller's provider's shaken, for the number the
    caller dialled: +12125550123, which the customer owns) and forwarded to 15551234567."""
    h = wall_harness(with_sign(stir_config(pki_dir), div=div))
    original = Signer(SigningProfile("t", str(pki_dir / "sp.key"), "https://other.example/sp.pem")).sign(
        "19725550100", ["12125550123"], "A", ORIGID, h.now + h.engine.wall_offset
    )
    caller = Caller(h, user="15551234567")
    caller.from_ = f'"Bob" <sip:+19725550100@127.0.0.10>;tag={caller.tag}'
    caller.to_base = f"<sip:{to}@127.0.0.1>"
    outs = h.feed(caller.invite(extra=(f"Identity: {original}", diversion)), A)
    return b_invite(outs)


def _b64json(seg: str) -> dict[str, Any]:
    out = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    assert isinstance(out, dict)
    return out


def _identities(invite: Request) -> list[dict[str, Any]]:
    out = []
    for value in invite.headers_all("identity"):
        head, payload, _ = value.split(";", 1)[0].split(".")
        out.append({"ppt": _b64json(head)["ppt"], **_b64json(payload)})
    return out


def test_forwarded_call_gets_div_after_the_original_shaken(pki_dir: Path) -> None:
    invite = _forwarded_b_leg(pki_dir, "owned", "Diversion: <sip:+12125550123@127.0.0.10>;reason=unconditional")
    ids = _identities(invite)
    assert [i["ppt"] for i in ids] == ["shaken", "div"]
    assert ids[0]["dest"] == {"tn": ["12125550123"]}  # the caller's provider's PASSporT, untouched
    assert {k: ids[1][k] for k in ("orig", "dest", "div")} == {
        "orig": {"tn": "19725550100"}, "dest": {"tn": ["15551234567"]}, "div": {"tn": "12125550123"}}
    assert "attest" not in ids[1]


@pytest.mark.parametrize(("div", "diversion", "ppts"), [
    ("owned", "Diversion: <sip:+14155550123@127.0.0.10>", ["shaken"]),  # diverted by a number it does not own
    ("always", "Diversion: <sip:+14155550123@127.0.0.10>", ["shaken", "div"]),  # a trunk configured to forward
    ("off", "Diversion: <sip:+12125550123@127.0.0.10>", ["shaken"]),
    ("always", "Subject: no diversion header", ["shaken", "div"]),  # To (the number dialled) differs from R-URI
    ("owned", "Subject: no diversion header", ["shaken"]),  # without Diversion/History-Info, owned signs nothing
])  # fmt: skip
def test_div_only_when_the_trunk_signs_that_diversion(pki_dir: Path, div: str, diversion: str,
                                                      ppts: list[str]) -> None:  # fmt: skip
    invite = _forwarded_b_leg(pki_dir, div, diversion)
    assert [i["ppt"] for i in _identities(invite)] == ppts


def test_no_div_when_to_is_the_target(pki_dir: Path) -> None:
    invite = _forwarded_b_leg(pki_dir, "always", "Subject: not forwarded", to="15551234567")
    assert [i["ppt"] for i in _identities(invite)] == ["shaken"]
