"""Rich Call Data (RFC 9795): rcd claims signed from YAML, verified with their rcdi integrity digests, and the
verified caller name handed to verstat tagging and to policies."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from policies.base import CallContext
from proxy.authentication import Authenticator
from proxy.config import ConfigError, RcdSettings, load_config_text
from proxy.sip.message import Request, parse
from proxy.stir.passport import PPT_RCD, Rcd, canonical_json, rcd_claims
from proxy.stir.rcd import ContentEntry, digests_of, integrity, json_bytes, parse_integrity, resolve_pointer
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.verifier import VERSTAT_FAILED, VERSTAT_PASSED, Verifier, VerifierSettings
from tests.unit.core.sipfake import A, b_invite
from tests.unit.records.helpers import Caller, make_pki, stir_config, wall_harness

from .helpers import DEST, NOW, ORIG, ORIGID, X5U, Pki, forge, header, ident
from .test_div import _identities, with_sign

LOGO_URL = "https://rcd.example.com/acme.png"
LOGO = b"\x89PNG\r\n\x1a\n not really a logo, but bytes to digest"
JCARD = ["vcard", [["version", {}, "text", "4.0"], ["fn", {}, "text", "Acme Corp"]]]


def test_integrity_values() -> None:
    value = integrity(LOGO)
    assert value == "sha256-" + base64.b64encode(hashlib.sha256(LOGO).digest()).decode()
    assert parse_integrity(value) == ("sha256", hashlib.sha256(LOGO).digest())
    urlsafe = value.replace("+", "-").replace("/", "_").rstrip("=")
    assert parse_integrity(urlsafe) == parse_integrity(value)
    assert parse_integrity(integrity(LOGO, "sha512"))[0] == "sha512"
    for bad in ("md5-AAAA", "sha256", "sha256-not base64!", "sha256-" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            parse_integrity(bad)


def test_json_pointer() -> None:
    doc = {"nam": "Acme", "jcd": JCARD, "a/b": {"~c": 1}}
    assert resolve_pointer(doc, "/jcd/1/1/3") == "Acme Corp"
    assert resolve_pointer(doc, "/a~1b/~0c") == 1
    for bad in ("/nope", "/jcd/9", "jcd", "/jcd/01"):
        with pytest.raises(KeyError):
            resolve_pointer(doc, bad)


def _rcd_value(pki: Pki, rcd: Rcd, rcdi: dict[str, str] | None = None, crn: str | None = None) -> str:
    return pki.signer.sign_claims(rcd_claims(ORIG, (DEST,), NOW, rcd, crn=crn, rcdi=rcdi), PPT_RCD)


def _verify(pki: Pki, values: list[str], contents: dict[str, ContentEntry] | None = None,
            multi: str = "any") -> Any:  # fmt: skip
    return Verifier(VerifierSettings(multi_header=multi)).verify(  # type: ignore[arg-type]
        values, ORIG, [DEST], None, NOW, {X5U: pki.entry}, contents or {})


def test_rcd_passport_verifies_and_names_the_caller(pki: Pki) -> None:
    rcd = Rcd(nam="Acme Corp", icn=LOGO_URL, jcd=JCARD)
    rcdi = {"/icn": integrity(LOGO), "/jcd": integrity(json_bytes(JCARD))}
    value = _rcd_value(pki, rcd, rcdi, crn="Your appointment")
    shaken = pki.signer.sign(ORIG, [DEST], "A", ORIGID, NOW)
    result = _verify(pki, [shaken, value], {LOGO_URL: ContentEntry(LOGO_URL, digests_of(LOGO))}, multi="all")
    assert (result.status, result.verstat, result.rcd_name) == ("passed", VERSTAT_PASSED, "Acme Corp")
    assert result.chain == ("shaken", "rcd") and result.attest == "A"
    ctx = CallContext.build(call_id="c", trunk="carrier", verification=result)
    assert ctx.rcd_name == "Acme Corp"


def test_rcd_without_rcdi_still_names_the_caller(pki: Pki) -> None:
    result = _verify(pki, [_rcd_value(pki, Rcd(nam="Acme Corp", icn=LOGO_URL))])
    assert (result.verstat, result.rcd_name) == (VERSTAT_PASSED, "Acme Corp")


def test_rcd_claims_inside_the_shaken_passport(pki: Pki) -> None:
    claims = rcd_claims(ORIG, (DEST,), NOW, Rcd(nam="Acme Corp", icn=LOGO_URL), rcdi={"/icn": integrity(LOGO)},
                        attest="A", origid=ORIGID)  # fmt: skip
    value = pki.signer.sign_claims(claims)
    good = _verify(pki, [value], {LOGO_URL: ContentEntry(LOGO_URL, digests_of(LOGO))})
    assert (good.verstat, good.rcd_name, good.attest) == (VERSTAT_PASSED, "Acme Corp", "A")
    bad = _verify(pki, [value], {LOGO_URL: ContentEntry(LOGO_URL, digests_of(LOGO + b"!"))})
    assert (bad.sip_code, bad.verstat, bad.failures[0].check, bad.rcd_name) == (
        438, VERSTAT_FAILED, "rcdi-mismatch", None)


def _forged_rcd(pki: Pki, rcd: dict[str, Any], rcdi: dict[str, str] | None = None) -> str:
    body: dict[str, Any] = {"dest": {"tn": [DEST]}, "iat": NOW, "orig": {"tn": ORIG}, "rcd": rcd}
    if rcdi is not None:
        body["rcdi"] = rcdi
    return ident(forge(pki.key, header(ppt="rcd"), body), ppt="rcd")


LOGO_OK = {LOGO_URL: ContentEntry(LOGO_URL, digests_of(LOGO))}


@pytest.mark.parametrize(("rcd", "rcdi", "contents", "expected"), [
    ({"nam": "Acme", "icn": LOGO_URL}, {"/icn": integrity(b"other bytes")}, LOGO_OK, (438, "rcdi-mismatch")),
    ({"nam": "Acme", "jcd": JCARD}, {"/jcd": integrity(b"[]")}, {}, (438, "rcdi-mismatch")),
    ({"nam": "Acme", "icn": LOGO_URL, "jcl": "https://rcd.example.com/c.json"}, {"/icn": integrity(LOGO)},
     LOGO_OK, (438, "rcd-jcd-jcl")),  # both jcd? no: icn + jcl is fine, but jcl lacks a digest -> below
    ({"nam": "Acme", "jcd": JCARD, "jcl": "https://rcd.example.com/c.json"}, None, {}, (438, "rcd-jcd-jcl")),
    ({"nam": "Acme", "icn": "ftp://rcd.example.com/a.png"}, None, {}, (438, "rcd-url")),
    ({"nam": " "}, None, {}, (438, "rcd-nam-empty")),
    ({"nam": "Acme", "icn": LOGO_URL}, {"/nope": integrity(LOGO)}, LOGO_OK, (438, "rcdi-pointer")),
    ({"nam": "Acme", "icn": LOGO_URL}, {"/icn": "md5-xyz"}, LOGO_OK, (438, "rcdi-format")),
    ({"nam": "Acme", "icn": LOGO_URL, "jcd": JCARD}, {"/jcd": integrity(json_bytes(JCARD))}, {},
     (438, "rcdi-incomplete")),
    ({"nam": "Acme", "icn": LOGO_URL}, {"/icn": integrity(LOGO)}, {}, (436, "rcd-content-not-fetched")),
    ({"nam": "Acme", "icn": LOGO_URL}, {"/icn": integrity(LOGO)},
     {LOGO_URL: ContentEntry(LOGO_URL, failure=None)}, (436, "rcd-content-unreachable")),
])  # fmt: skip
def test_bad_rcd_is_rejected_with_its_code(
    pki: Pki, rcd: dict[str, Any], rcdi: dict[str, str] | None, contents: dict[str, ContentEntry],
    expected: tuple[int, str],
) -> None:
    if expected[1] == "rcd-jcd-jcl" and "jcd" not in rcd:
        expected = (438, "rcdi-incomplete")  # icn + jcl is allowed; the jcl just has no digest
    value = _forged_rcd(pki, rcd, rcdi)
    result = _verify(pki, [value], contents)
    assert (result.sip_code, result.verstat, result.failures[0].check) == (expected[0], VERSTAT_FAILED, expected[1])
    assert result.rcd_name is None


def test_rcdi_without_rcd_is_438(pki: Pki) -> None:
    token = forge(pki.key, header(), {"attest": "A", "dest": {"tn": [DEST]}, "iat": NOW, "orig": {"tn": ORIG},
                                      "origid": ORIGID, "rcdi": {"/icn": integrity(LOGO)}})  # fmt: skip
    result = _verify(pki, [ident(token)])
    assert (result.sip_code, result.verstat, result.failures[0].check) == (438, VERSTAT_FAILED, "rcdi-without-rcd")


def test_failed_rcd_beside_a_good_shaken_passes_without_a_name(pki: Pki) -> None:
    """multi_header "any": the call's TN validation stands; only the unverified name is withheld."""
    shaken = pki.signer.sign(ORIG, [DEST], "A", ORIGID, NOW)
    bad = _forged_rcd(pki, {"nam": "Acme", "icn": LOGO_URL}, {"/icn": integrity(b"x")})
    result = _verify(pki, [shaken, bad], LOGO_OK)
    assert (result.verstat, result.rcd_name, result.chain) == (VERSTAT_PASSED, None, ("shaken",))
    strict = _verify(pki, [shaken, bad], LOGO_OK, multi="all")
    assert (strict.sip_code, strict.verstat) == (438, VERSTAT_FAILED)


# ---------------------------------------------------------------------------------- signing from YAML
@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = make_pki(tmp_path_factory.mktemp("rcd-pki"))
    (d / "logo.png").write_bytes(LOGO)
    return d


def test_customer_rcd_from_yaml_is_signed_as_an_rcd_passport(pki_dir: Path) -> None:
    rules = [RcdSettings(nam="Acme Sales", icn=LOGO_URL, icn_file=str(pki_dir / "logo.png"), crn="Order update",
                         numbers=["+12125550100"]),
             RcdSettings(nam="Acme Corp")]  # fmt: skip
    h = wall_harness(with_sign(stir_config(pki_dir), rcd=rules))
    ids = _identities(b_invite(h.feed(Caller(h).invite(), A)))
    assert [i["ppt"] for i in ids] == ["shaken", "rcd"]
    assert ids[1]["rcd"] == {"icn": LOGO_URL, "nam": "Acme Sales"}
    assert ids[1]["rcdi"] == {"/icn": integrity(LOGO)} and ids[1]["crn"] == "Order update"
    other = Caller(h)
    other.from_ = f"<sip:+12125550199@127.0.0.10>;tag={other.tag}"  # another number: the catch-all rule
    ids = _identities(b_invite(h.feed(other.invite(), A)))
    assert ids[1]["rcd"] == {"nam": "Acme Corp"} and "rcdi" not in ids[1]


def test_rcd_in_shaken_mode(pki_dir: Path) -> None:
    h = wall_harness(with_sign(stir_config(pki_dir), rcd=RcdSettings(nam="Acme Corp"), rcd_in_shaken=True))
    ids = _identities(b_invite(h.feed(Caller(h).invite(), A)))
    assert [i["ppt"] for i in ids] == ["shaken"]
    assert ids[0]["rcd"] == {"nam": "Acme Corp"} and ids[0]["attest"] == "A"


def test_rcd_canonical_claims() -> None:
    claims = rcd_claims("12025551000", ("12025551001",), 1443208345, Rcd(nam="James Bond", icn=LOGO_URL),
                        rcdi={"/icn": "sha256-abc"})  # fmt: skip
    assert canonical_json(claims) == (
        b'{"dest":{"tn":["12025551001"]},"iat":1443208345,"orig":{"tn":"12025551000"},'
        b'"rcd":{"icn":"https://rcd.example.com/acme.png","nam":"James Bond"},"rcdi":{"/icn":"sha256-abc"}}'
    )


@pytest.mark.parametrize(("rcd", "where"), [
    ('{nam: ""}', "rcd.nam"),
    ('{nam: Acme, icn: "http://x/a.png"}', "rcd.icn"),
    ('{nam: Acme, jcd: [vcard, []], jcl: "https://x/c.json"}', "rcd.jcl"),
    ('{nam: Acme, icn_file: /nonexistent}', "rcd.icn_file"),
    ('[{nam: Acme}, {nam: Acme, icn: "https://x/a.png", icn_file: /nonexistent}]', "rcd[1].icn_file"),
])  # fmt: skip
def test_rcd_config_errors_are_located(pki_dir: Path, rcd: str, where: str) -> None:
    text = f"""
stir:
  signing_profiles: [{{name: p, key: {pki_dir / 'sp.key'}, x5u: "https://x/sp.pem"}}]
trunks:
  - name: customer
    role: customer
    sign:
      profile: p
      rcd: {rcd}
"""
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "rcd.yaml")
    assert f"trunks[0].sign.{where}" in str(err.value), str(err.value)


def test_verified_name_becomes_the_display_name_when_asked(pki_dir: Path) -> None:
    """`verify: {rcd_display_name: true}`: the customer sees the verified RCD name (with verstat)."""
    config = stir_config(pki_dir)
    carrier = next(t for t in config.trunks if t.name == "carrier")
    carrier = msgspec.structs.replace(carrier, verify=msgspec.structs.replace(carrier.verify, rcd_display_name=True))
    fields = {f: getattr(config, f) for f in config.__dataclass_fields__}
    config = type(config)(**{**fields, "trunks": tuple(carrier if t.name == "carrier" else t for t in config.trunks)})
    auth = Authenticator(config)
    assert auth.fetcher is not None
    now = time.time()  # the PKI of stir_config is made at the real time
    pki_entry = auth.fetcher.trust.validate_body("https://127.0.0.1:8443/sp.pem", (pki_dir / "sp.pem").read_bytes(),
                                                 now)  # fmt: skip
    signer = Signer(SigningProfile("t", str(pki_dir / "sp.key"), "https://127.0.0.1:8443/sp.pem"))
    shaken = signer.sign("12125550100", ["15551234567"], "A", ORIGID, now)
    rcd = signer.sign_rcd("12125550100", ["15551234567"], Rcd(nam='Acme "Corp"'), now)
    raw = ("INVITE sip:15551234567@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.20;branch=z9hG4bK1\r\n"
           "From: \"Spoofed\" <sip:+12125550100@127.0.0.20>;tag=1\r\nTo: <sip:15551234567@127.0.0.1>\r\n"
           f"Call-ID: x\r\nCSeq: 1 INVITE\r\nIdentity: {shaken}\r\nIdentity: {rcd}\r\nContent-Length: 0\r\n\r\n")
    invite = parse(raw.encode())
    assert isinstance(invite, Request)
    outcome = auth.verify(invite, carrier, now, {"https://127.0.0.1:8443/sp.pem": pki_entry})
    assert outcome.result.rcd_name == 'Acme "Corp"' and outcome.reject is None
    assert outcome.from_value == '"Acme \\"Corp\\"" <sip:+12125550100@127.0.0.20;verstat=TN-Validation-Passed>'
