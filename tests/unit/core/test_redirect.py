"""Redirect mode in memory: 302 with the Identity in the Contact, verstat-tagged identities, reject codes,
retransmissions, the redirect listener front, records. No B-leg, no dialog, nothing left behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml

from policies.loader import load_policies_text
from proxy.config import Config, load_config_text
from proxy.engine import Engine
from proxy.records import record_from_redirect
from proxy.redirect import Redirected, contact_uri, escape_hvalue
from proxy.sip.grammar import parse_name_addr
from proxy.sip.message import Response, parse
from tests.unit.core.sipfake import LOCAL, LOOPBACK, A, B, Harness, Outs, build_request
from tests.unit.records.helpers import ORIGID, X5U, make_pki, sign_identity

CALLER = "+12125550100"
DIALLED = "+15551234567"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("redirect-pki"))


def redirect_config(pki: Path, *, listen_mode: bool = False, verify: dict[str, Any] | None = None,
                    policies: str | None = None) -> Config:
    """The loopback topology with STIR; the customer and carrier trunks in redirect mode (or, with
    `listen_mode`, both inline and a redirect listener on 127.0.0.1:5062)."""
    cfg: dict[str, Any] = yaml.safe_load(LOOPBACK.read_text())
    cfg["stir"] = {
        "country_code": "1",
        "trust_anchors": [str(pki / "ca.pem")],
        "signing_profiles": [{"name": "demo", "key": str(pki / "sp.key"), "x5u": X5U}],
        "verify": {"x5u_allow_private": True, "x5u_allow_any_port": True},
    }
    for trunk in cfg["trunks"]:
        if trunk["name"] == "customer":
            trunk["sign"] = {"profile": "demo", "origid": ORIGID, "attestation": {"prefixes": ["1212"]}}
        if trunk["name"] in ("customer", "carrier") and not listen_mode:
            trunk["mode"] = "redirect"
        if trunk["name"] == "carrier" and verify:
            trunk["verify"] = verify
    if listen_mode:
        cfg["listen"].append({"address": "udp:127.0.0.1:5062", "mode": "redirect"})
    cfg["policies"] = policies
    return load_config_text(yaml.safe_dump(cfg), str(LOOPBACK))


def harness(config: Config, policies: str | None = None) -> tuple[Harness, list[Redirected]]:
    h = Harness(Engine(config, dict(LOCAL)))
    h.engine.wall_offset = time.time() - h.now
    if policies:
        pset = load_policies_text(policies, trunks=[t.name for t in config.trunks])
        pset.setup_sync()
        h.engine.policies = pset
    seen: list[Redirected] = []
    h.engine.redirector.hooks.append(seen.append)
    return h, seen


def invite(source: tuple[str, str, int], *, call_id: str = "r-1@x", branch: str = "z9hG4bKr1",
           caller: str = CALLER, dialled: str = DIALLED, extra: list[str] | None = None) -> bytes:
    host = f"{source[1]}:{source[2]}"
    return build_request(
        "INVITE", f"sip:{dialled}@127.0.0.1:5060", via=[f"SIP/2.0/UDP {host};branch={branch}"],
        from_=f'"Alice" <sip:{caller}@{source[1]}>;tag=f1', to=f"<sip:{dialled}@127.0.0.1>", call_id=call_id,
        cseq=1, contact=f"<sip:alice@{host}>", extra=extra or [], body=b"v=0\r\n")


def contacts(resp: Response) -> list[tuple[str, dict[str, list[str]], str]]:
    """(URI without headers, {header: [unescaped values]}, header params) of every Contact."""
    out = []
    for value in resp.values("contact"):
        na = parse_name_addr(value)
        uri, _, query = na.uri.partition("?")
        headers: dict[str, list[str]] = {}
        for part in query.split("&") if query else []:
            name, _, v = part.partition("=")
            headers.setdefault(name, []).append(unquote(v))
        params = "".join(f";{k}={v}" for k, v in na.params)
        out.append((uri, headers, params))
    return out


def only_response(outs: Outs, to: tuple[str, str, int]) -> Response:
    assert all(o.is_response for o in outs), outs
    msg = outs.to(to).one().msg
    assert isinstance(msg, Response)
    return msg


def test_escape_hvalue_and_contact_uri() -> None:
    value = 'eyJ.a_b-c.d;info=<https://x.example:8443/sp.pem>;alg=ES256;ppt="shaken"'
    escaped = escape_hvalue(value)
    assert escaped == ("eyJ.a_b-c.d%3Binfo%3D%3Chttps://x.example:8443/sp.pem%3E%3Balg%3DES256%3Bppt%3D"
                       "%22shaken%22")
    assert unquote(escaped) == value
    assert escape_hvalue("a b,c@d&e%f") == "a%20b%2Cc%40d%26e%25f"
    assert contact_uri("sip:1@h", [("A", "1"), ("B", "x;y")]) == "sip:1@h?A=1&B=x%3By"
    assert contact_uri("sip:1@h?X=1", [("A", "2")]) == "sip:1@h?X=1&A=2"
    assert contact_uri("sip:1@h", []) == "sip:1@h"


def test_signing_redirect_carries_a_valid_identity(pki: Path) -> None:
    h, seen = harness(redirect_config(pki))
    outs = h.feed(invite(A), A)
    resp = only_response(outs, A)
    assert (resp.status, resp.reason) == (302, "Moved Temporarily")
    assert resp.to_tag
    got = contacts(resp)
    # One Contact per routed trunk (carrier, then carrier2), in failover order.
    assert [(uri, params) for uri, _, params in got] == [
        (f"sip:{DIALLED}@127.0.0.20:5060", ";q=1.0"), (f"sip:{DIALLED}@127.0.0.21:5060", ";q=0.9")]
    identities = [hs["Identity"] for _, hs, _ in got]
    assert identities[0] == identities[1] and len(identities[0]) == 1
    identity = identities[0][0]
    fetcher = h.engine.auth.fetcher
    assert fetcher is not None
    entry = fetcher.trust.validate_body(X5U, (pki / "sp.pem").read_bytes(), time.time())
    verifier = h.engine.auth.verifier
    assert verifier is not None
    result = verifier.verify([identity], CALLER, [DIALLED], None, time.time(), {X5U: entry})
    assert result.passed, result.failures
    assert (result.attest, result.origid) == ("A", ORIGID)
    # Stateless: no call, no transaction; the ACK of the 302 is absorbed.
    assert h.engine.calls == {} and len(h.engine.txns) == 0
    ack = build_request("ACK", f"sip:{DIALLED}@127.0.0.1:5060", via=["SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bKr1"],
                        from_=f'"Alice" <sip:{CALLER}@127.0.0.10>;tag=f1', to=resp.header("to") or "",
                        call_id="r-1@x", cseq=1)
    assert h.feed(ack, A) == []
    (r,) = seen
    assert (r.status, r.egress, r.signed is not None) == (302, "carrier", True)
    assert h.engine.stats["redirected"] == 1


def test_retransmitted_invite_gets_the_same_answer_once_recorded(pki: Path) -> None:
    h, seen = harness(redirect_config(pki))
    first = h.feed(invite(A), A).one().data
    h.now += 0.5
    again = h.feed(invite(A), A).one().data
    assert again == first
    assert len(seen) == 1 and h.engine.stats["redirect_retransmissions"] == 1
    # A new transaction (new branch) of the same call is a new request: answered afresh.
    h.now += 40
    other = h.feed(invite(A, branch="z9hG4bKr2"), A).one().data
    assert other != first and len(seen) == 2


def test_unsigned_when_no_number_but_still_redirected(pki: Path) -> None:
    h, seen = harness(redirect_config(pki))
    resp = only_response(h.feed(invite(A, caller="anonymous"), A), A)
    assert resp.status == 302
    assert all("Identity" not in hs for _, hs, _ in contacts(resp))
    assert seen[0].signed is None


def test_existing_identity_is_kept(pki: Path) -> None:
    h, _ = harness(redirect_config(pki))
    theirs = sign_identity(pki, CALLER.lstrip("+"), DIALLED.lstrip("+"))
    resp = only_response(h.feed(invite(A, extra=[f"Identity: {theirs}"]), A), A)
    assert resp.status == 302
    assert all("Identity" not in hs for _, hs, _ in contacts(resp))  # existing_identity: keep (the default)


def _fetch(h: Harness, pki: Path) -> Outs:
    """Serve a parked INVITE's certificate fetch (what the transport does), return the answer."""
    red = h.engine.redirector
    (call_id, _values), = red.fetch_requests
    red.fetch_requests.clear()
    fetcher = h.engine.auth.fetcher
    assert fetcher is not None
    entry = fetcher.trust.validate_body(X5U, (pki / "sp.pem").read_bytes(), time.time())
    fetcher.put(entry, 3600)  # as the fetch does
    red.resume(call_id, h.now, {X5U: entry})
    return h.drain()


def test_verification_redirect_tags_the_pai(pki: Path) -> None:
    h, seen = harness(redirect_config(pki))
    identity = sign_identity(pki, "15551230001", "12125550100")
    pai = "<sip:+15551230001@127.0.0.20>"
    data = invite(B, caller="+15551230001", dialled="+12125550100",
                  extra=[f"P-Asserted-Identity: {pai}", f"Identity: {identity}"])
    assert h.feed(data, B) == []  # parked: its certificate is not cached
    assert h.feed(data, B) == []  # a retransmission meanwhile is not answered twice
    resp = only_response(_fetch(h, pki), B)
    assert resp.status == 302
    ((uri, hs, params),) = contacts(resp)  # carrier -> customer: one route, no q
    assert (uri, params) == ("sip:+12125550100@127.0.0.10:5060", "")
    assert hs == {"P-Asserted-Identity": ["<sip:+15551230001@127.0.0.20;verstat=TN-Validation-Passed>"]}
    assert seen[0].inbound is not None and seen[0].inbound.result.passed and seen[0].x5u_fetched
    rec = record_from_redirect(seen[0], h.engine.wall_offset, h.engine.auth.tn_policy)
    assert (rec.verification, rec.verstat, rec.attest, rec.status, rec.end_reason) == (
        "passed", "TN-Validation-Passed", "A", 302, "redirected")
    assert (rec.orig, rec.dest, rec.ingress, rec.egress) == ("15551230001", "12125550100", "carrier", "customer")


def test_verification_redirect_without_pai_tags_from(pki: Path) -> None:
    h, _ = harness(redirect_config(pki))
    bad = sign_identity(pki, "15559999999", "12125550100")  # orig does not match the caller
    h.feed(invite(B, caller="+15551230001", dialled="+12125550100", extra=[f"Identity: {bad}"]), B)
    resp = only_response(_fetch(h, pki), B)
    ((_, hs, _),) = contacts(resp)
    assert hs == {"From": ['"Alice" <sip:+15551230001@127.0.0.20;verstat=TN-Validation-Failed>']}
    # The certificate is cached now: the next call is answered at once.
    h.now += 1
    outs = h.feed(invite(B, call_id="r-2@x", caller="+15551230001", dialled="+12125550100",
                         extra=[f"Identity: {bad}"]), B)
    assert only_response(outs, B).status == 302


@pytest.mark.parametrize(("verify", "identity", "code", "reason"), [
    ({"mode": "reject"}, "mismatch", 438, "Invalid Identity Header"),
    ({"mode": "tag", "on_missing": "reject"}, None, 428, "Use Identity Header"),
])
def test_verification_rejects(pki: Path, verify: dict[str, Any], identity: str | None, code: int,
                              reason: str) -> None:
    h, seen = harness(redirect_config(pki, verify=verify))
    extra = [] if identity is None else [f"Identity: {sign_identity(pki, '15559999999', '12125550100')}"]
    outs = h.feed(invite(B, caller="+15551230001", dialled="+12125550100", extra=extra), B)
    if identity is not None:
        outs = _fetch(h, pki)
    resp = only_response(outs, B)
    assert (resp.status, resp.reason) == (code, reason)
    assert not resp.has("contact")
    if code == 438:
        assert resp.header("reason") == 'STIR;cause=438;text="Invalid Identity Header"'
    assert seen[0].status == code and h.engine.stats["redirect_rejected"] == 1


POLICIES = """
trunks:
  customer:
    - policy: lists
      params:
        deny: {orig_numbers: ["+12125550199"]}
        jcard_url: https://jcard.example.net/blocked.json
  carrier:
    - policy: display_tag
      params: {prefix: "SPAM? ", attest: [A, B, C]}
"""


def test_policy_reject_gets_608_with_jcard(pki: Path) -> None:
    h, seen = harness(redirect_config(pki), POLICIES)
    resp = only_response(h.feed(invite(A, caller="+12125550199"), A), A)
    assert (resp.status, resp.reason) == (608, "Rejected")
    assert resp.header("call-info") == "<https://jcard.example.net/blocked.json>;purpose=jcard"
    assert seen[0].decisions == [("lists", "enforce", "reject", "lists")]
    assert seen[0].signed is None  # refused before signing
    # Another caller passes the chain and is signed.
    ok = only_response(h.feed(invite(A, call_id="r-9@x", branch="z9hG4bKr9"), A), A)
    assert ok.status == 302 and "Identity" in contacts(ok)[0][1]


def test_policy_tags_travel_as_uri_headers(pki: Path) -> None:
    h, _ = harness(redirect_config(pki), POLICIES)
    identity = sign_identity(pki, "15551230001", "12125550100", "B")
    h.feed(invite(B, caller="+15551230001", dialled="+12125550100",
                  extra=["P-Asserted-Identity: <sip:+15551230001@127.0.0.20>", f"Identity: {identity}"]), B)
    resp = only_response(_fetch(h, pki), B)
    ((_, hs, _),) = contacts(resp)
    assert hs["From"] == ['"SPAM? Alice" <sip:+15551230001@127.0.0.20>']
    assert hs["P-Asserted-Identity"] == ['"SPAM? " <sip:+15551230001@127.0.0.20;verstat=TN-Validation-Passed>']


def test_redirect_listener_answers_inline_trunks(pki: Path) -> None:
    h, seen = harness(redirect_config(pki, listen_mode=True))
    out: list[tuple[bytes, tuple[str, str, int]]] = []
    red = h.engine.redirector
    red.receive(invite(A), A, h.now, out)
    assert h.engine.outbox == []  # nothing on the engine's own outbox
    (data, target), = out
    resp = parse(data)
    assert isinstance(resp, Response) and resp.status == 302 and target == A
    assert "Identity" in contacts(resp)[0][1]
    # The same INVITE on the inline listener is relayed as usual.
    outs = h.feed(invite(A, call_id="inline@x"), A)
    assert outs.to(B).requests("INVITE")
    out.clear()
    options = build_request("OPTIONS", "sip:127.0.0.1:5062", via=["SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bKo"],
                            from_="<sip:p@127.0.0.10>;tag=1", to="<sip:127.0.0.1:5062>", call_id="o@x", cseq=1)
    red.receive(options, A, h.now, out)
    assert parse(out.pop()[0]).status == 200  # type: ignore[union-attr]
    bye = build_request("BYE", "sip:127.0.0.1:5062", via=["SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bKb"],
                        from_="<sip:p@127.0.0.10>;tag=1", to="<sip:x@127.0.0.1>;tag=2", call_id="b@x", cseq=2)
    red.receive(bye, A, h.now, out)
    assert parse(out.pop()[0]).status == 481  # type: ignore[union-attr]
    msg = build_request("MESSAGE", "sip:127.0.0.1:5062", via=["SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bKm"],
                        from_="<sip:p@127.0.0.10>;tag=1", to="<sip:x@127.0.0.1>", call_id="m@x", cseq=1)
    red.receive(msg, A, h.now, out)
    assert parse(out.pop()[0]).status == 405  # type: ignore[union-attr]
    red.receive(invite(("udp", "192.0.2.99", 5060)), ("udp", "192.0.2.99", 5060), h.now, out)
    assert parse(out.pop()[0]).status == 403  # type: ignore[union-attr]
    red.receive(b"garbage\r\n\r\n", A, h.now, out)
    assert out == [] and h.engine.stats["unparseable"] == 1
    assert len(seen) == 1


def test_draining_and_overload_answer_503(pki: Path) -> None:
    h, seen = harness(redirect_config(pki))
    h.engine.accepting = False
    resp = only_response(h.feed(invite(A), A), A)
    assert resp.status == 503 and resp.header("retry-after")
    h.engine.accepting = True
    h.engine.loop_lag = 10.0
    resp = only_response(h.feed(invite(A, call_id="r-3@x"), A), A)
    assert resp.status == 503
    assert seen == []


def test_redirect_config_errors(pki: Path) -> None:
    cfg: dict[str, Any] = yaml.safe_load(LOOPBACK.read_text())
    cfg["listen"] = [{"address": "udp:127.0.0.1:5062", "mode": "redirect"}]
    cfg.pop("stir")
    for t in cfg["trunks"]:
        t.pop("sign", None)
    with pytest.raises(Exception, match="at least one listen address must be inline"):
        load_config_text(yaml.safe_dump(cfg))
    cfg["listen"] = [{"address": "udp:127.0.0.1", "mode": "redirect"}, "udp:127.0.0.1:5060"]
    with pytest.raises(Exception, match=r"listen\[0\]\.address: expected transport:host:port"):
        load_config_text(yaml.safe_dump(cfg))
    cfg["listen"] = ["udp:127.0.0.1:5060"]
    cfg["trunks"][0]["mode"] = "relay"
    with pytest.raises(Exception, match=r"trunks\[0\]\.mode"):
        load_config_text(yaml.safe_dump(cfg))
