"""The ATIS-1000082 REST API of a live stirgate, asked over HTTP/1.1 keep-alive (http.client) and HTTPS with
client certificates: sample requests, every error case, cross-checks with secsipidx in both directions, the
policy chain's decision, call records (traceback) and metrics."""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.harness import api_listen
from tests.integration.sti_env import (
    BLOCKED,
    C_ONLY_TOKEN,
    JCARD,
    MTLS_NAME,
    TAGGER_TOKEN,
    ApiClient,
    api_address,
    client,
    get_json,
    signing_request,
    start_stirgate,
    sti_config,
    traceback_calls,
    verification_request,
)
from tests.integration.stir_env import (
    SECSIPIDX,
    TERM_IP,
    StirgateAt,
    StirPki,
    X5uServer,
    jws_parts,
    secsipidx_check,
    secsipidx_sign,
    sign_identity,
    started,
    tamper_signature,
)

ORIG = "+15551230001"
DEST = "12125550100"
SIGN = "/stir/v1/signing"
VERIFY = "/stir/v1/verification"

needs_secsipidx = pytest.mark.skipif(SECSIPIDX is None, reason="secsipidx not installed (apt-get install secsipidx)")


@pytest.fixture(scope="module")
def gate(sti_pki: StirPki, sti_x5u: X5uServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[StirgateAt, dict[str, Any]]]:
    workdir = tmp_path_factory.mktemp("sti-gate")
    cfg = sti_config(sti_pki, sti_x5u.url(), workdir)
    g = start_stirgate(cfg, workdir / "run")
    yield g, cfg
    rc = g.stop()
    assert rc == 0, g.log_tail()


@pytest.fixture
def api(gate: tuple[StirgateAt, dict[str, Any]]) -> Iterator[ApiClient]:
    with client(api_address(gate[1])) as c:
        yield c


# ----------------------------------------------------------------------------------------------- signing
@needs_secsipidx
def test_signing_sample_request_verifies_in_secsipidx(api: ApiClient, sti_pki: StirPki, sti_x5u: X5uServer) -> None:
    req = signing_request(ORIG, [DEST], "A")
    r = api.post(SIGN, req, request_id="req-0001")
    assert r.status == 200, r.body
    assert r.headers["x-requestid"] == "req-0001"
    assert r.headers["content-type"].startswith("application/json")
    identity = r.inner()["identity"]
    assert set(r.inner()) == {"identity"}
    header, claims, sig = jws_parts(identity)
    assert header == {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": sti_x5u.url()}
    assert claims == {"attest": "A", "dest": {"tn": [DEST]}, "iat": req["signingRequest"]["iat"],
                      "orig": {"tn": ORIG.lstrip("+")}, "origid": req["signingRequest"]["origid"]}
    assert len(sig) == 64
    assert identity.endswith(f";info=<{sti_x5u.url()}>;alg=ES256;ppt=shaken")
    check = secsipidx_check(identity, sti_pki.pub)
    assert check.returncode == 0 and check.stdout.strip().endswith("ok"), check.stdout + check.stderr


@needs_secsipidx
def test_secsipidx_signed_header_verifies_through_the_api(api: ApiClient, sti_pki: StirPki, sti_x5u: X5uServer) -> None:
    identity = secsipidx_sign(sti_pki.key, sti_x5u.url(), orig=ORIG.lstrip("+"), dest=DEST, attest="B")
    r = api.verify(ORIG, [DEST], identity, request_id="v-1")
    assert r.status == 200, r.body
    body = r.inner()
    assert body["verstat"] == "TN-Validation-Passed" and "reasonCode" not in body
    assert (body["attest"], body["origid"]) == ("B", "3a1b3d94-0dca-4a4f-8f64-8a0f0c0f1f7b")
    assert body["decision"]["action"] == "continue"
    # and the same header, tampered, fails: the API really checks the signature
    bad = api.verify(ORIG, [DEST], tamper_signature(identity)).inner()
    assert (bad["verstat"], bad["reasonCode"]) == ("TN-Validation-Failed", 438)


def test_api_signed_identity_verifies_through_the_api(api: ApiClient) -> None:
    identity = api.sign(ORIG, [DEST], "B").inner()["identity"]
    body = api.verify(ORIG, [DEST], identity).inner()
    assert (body["verstat"], body["attest"]) == ("TN-Validation-Passed", "B")


# ----------------------------------------------------------------------------------------------- verification
def test_verification_failures_follow_the_mapped_trunk(api: ApiClient, sti_pki: StirPki, sti_x5u: X5uServer) -> None:
    good = sign_identity(sti_pki.key, sti_x5u.url(), orig=ORIG.lstrip("+"), dest=DEST)
    # carrier (verify mode reject): a bad signature is refused with 438 and its RFC 9410 Reason
    body = api.verify(ORIG, [DEST], tamper_signature(good)).inner()
    assert (body["verstat"], body["reasonCode"], body["reasonText"]) == (
        "TN-Validation-Failed", 438, "Invalid Identity Header")
    assert body["decision"] == {"action": "reject", "code": 438, "reason": "Invalid Identity Header",
                                "reasonHeader": 'STIR;cause=438;text="Invalid Identity Header"'}
    # claims that do not match the call
    assert api.verify(ORIG, ["12125550111"], good).inner()["reasonCode"] == 438
    # an untrusted certificate: 437
    untrusted = sign_identity(sti_pki.untrusted_key, sti_x5u.url("untrusted.pem"), orig=ORIG.lstrip("+"), dest=DEST)
    assert api.verify(ORIG, [DEST], untrusted).inner()["decision"]["code"] == 437
    # a stale call time: 403 Stale Date
    stale = api.post(VERIFY, verification_request(ORIG, [DEST], good, at=int(time.time()) - 3600)).inner()
    assert (stale["reasonCode"], stale["decision"]["code"]) == (403, 403)
    # the tagging trunk (verify mode tag): the same failure is passed on, tagged
    with client(api.address, token=TAGGER_TOKEN) as tagger:
        body = tagger.verify(ORIG, [DEST], tamper_signature(good)).inner()
    assert (body["verstat"], body["reasonCode"], body["decision"]["action"]) == ("TN-Validation-Failed", 438,
                                                                                "continue")


def test_verification_runs_the_trunks_policy_chain(api: ApiClient, sti_pki: StirPki, sti_x5u: X5uServer) -> None:
    identity = sign_identity(sti_pki.key, sti_x5u.url(), orig=BLOCKED.lstrip("+"), dest=DEST)
    body = api.verify(BLOCKED, [DEST], identity).inner()
    assert body["verstat"] == "TN-Validation-Passed"
    assert body["decision"] == {"action": "reject", "code": 608, "reason": "Rejected",
                                "callInfo": f"<{JCARD}>;purpose=jcard",
                                "policies": [["lists", "enforce", "reject", "lists"]]}


# ----------------------------------------------------------------------------------------------- errors
def _valid_sign() -> dict[str, Any]:
    return signing_request(ORIG, [DEST], "A")


def _with(**over: Any) -> dict[str, Any]:
    req = _valid_sign()
    req["signingRequest"].update(over)
    return req


ERROR_CASES: list[tuple[str, str, Any, dict[str, Any], int, str]] = [
    # (name, path, body, post() options, status, text in reasonText)
    ("bad json", SIGN, b'{"signingRequest": {', {}, 400, "malformed JSON"),
    ("empty body", SIGN, b"", {}, 400, "empty body"),
    ("not an object", VERIFY, b"[1, 2]", {}, 400, "Expected object, got array"),
    ("missing field", SIGN, {"signingRequest": {"attest": "A"}}, {}, 400, "signingRequest.dest: missing"),
    ("wrong type iat", SIGN, _with(iat="1443208345"), {}, 400, "signingRequest.iat: Expected int, got str"),
    ("wrong type orig", SIGN, _with(orig="15551230001"), {}, 400, "signingRequest.orig: Expected object"),
    ("unknown attest", SIGN, _with(attest="D"), {}, 400, "Invalid enum value 'D' (A, B or C)"),
    ("unknown field", SIGN, _with(ppt="div"), {}, 400, "signingRequest.ppt: unknown field"),
    ("origid not a uuid", SIGN, _with(origid="x"), {}, 400, "signingRequest.origid: 'x' is not a UUID"),
    ("not a number", SIGN, _with(orig={"tn": "alice"}), {}, 400, "signingRequest.orig.tn: 'alice'"),
    ("stale iat", SIGN, _with(iat=1443208345), {}, 400, "signingRequest.iat: 1443208345 is more than 60 s"),
    ("verify: no identity", VERIFY, {"verificationRequest": {"from": {"tn": ORIG}, "to": {"tn": [DEST]},
                                                            "time": 1}}, {}, 400,
     "verificationRequest.identity: missing"),
    ("over-long body", SIGN, _with(origid="0" * 9000), {}, 413, "body larger than 8192 bytes"),
    ("wrong content type", SIGN, _valid_sign(), {"content_type": "text/plain"}, 415,
     "Content-Type must be application/json"),
    ("no content type", SIGN, _valid_sign(), {"content_type": None}, 415, "Content-Type must be application/json"),
    ("no token", SIGN, _valid_sign(), {"token": None}, 401, "authentication required"),
    ("bad token", SIGN, _valid_sign(), {"token": "not-a-known-token-at-all"}, 401, "unknown bearer token"),
    ("basic auth", SIGN, _valid_sign(), {"token": None, "headers": {"Authorization": "Basic dXNlcjpwYXNz"}}, 401,
     "expected a Bearer token"),
    ("client may not verify", VERIFY, verification_request(ORIG, [DEST], "x;info=<https://a/b>"),
     {"token": C_ONLY_TOKEN}, 403, "may not verify"),
    ("attest above the client's", SIGN, _valid_sign(), {"token": C_ONLY_TOKEN}, 403, "may attest C at most"),
    ("client may not sign", SIGN, _valid_sign(), {"token": TAGGER_TOKEN}, 403, "may not sign"),
]


@pytest.mark.parametrize(("path", "body", "options", "status", "text"),
                         [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors_get_a_status_and_a_reason(api: ApiClient, path: str, body: Any, options: dict[str, Any],
                                          status: int, text: str) -> None:
    r = api.post(path, body, request_id="err-1", **options)
    assert r.status == status, r.body
    assert r.headers["x-requestid"] == "err-1"
    inner = r.inner()
    assert set(r.body) == {"signingResponse" if path == SIGN else "verificationResponse"}
    assert inner["reasonCode"] == status
    assert text in inner["reasonText"], inner
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert "identity" not in inner and "verstat" not in inner


def test_requests_leave_call_records_and_metrics(gate: tuple[StirgateAt, dict[str, Any]], api: ApiClient,
                                                 sti_pki: StirPki, sti_x5u: X5uServer) -> None:
    _, cfg = gate
    orig, dest = "+15551239876", "12125559876"
    assert api.sign(orig, [dest], "A", request_id="rec-sign").status == 200
    identity = sign_identity(sti_pki.key, sti_x5u.url(), orig=orig.lstrip("+"), dest=dest)
    assert api.verify(orig, [dest], tamper_signature(identity), request_id="rec-verify").status == 200
    calls = traceback_calls(cfg, orig, dest, want=2)
    by_id = {c["a_call_id"]: c for c in calls}
    assert set(by_id) == {"rec-sign", "rec-verify"}, calls
    s, v = by_id["rec-sign"], by_id["rec-verify"]
    assert (s["ingress"], s["signed"], s["attest"], s["status"], s["end_reason"]) == ("sbc", True, "A", 200,
                                                                                      "api:signed")
    assert s["source_ip"] == "127.0.0.1" and s["transport"] == "http"
    assert (v["verification"], v["verstat"], v["status"], v["end_reason"]) == ("failed", "TN-Validation-Failed",
                                                                              438, "rejected:438")
    assert "signature-invalid" in v["failures"]
    status, text = get_json(api_listen(cfg), "/metrics")
    assert status == 200
    assert 'stirgate_sti_api_requests_total{op="signing",status="200"}' in text
    assert 'stirgate_sti_api_requests_total{op="verification",status="200"}' in text
    assert 'stirgate_calls_total{attest="A",outcome="api",trunk="sbc",verstat="none"}' in text


# ----------------------------------------------------------------------------------------------- mutual TLS
def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _client_cert(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, d: Path,
                 stem: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca[0].subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca[1], hashes.SHA256()))
    cert_path, key_path = d / f"{stem}.pem", d / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_mutual_tls_on_its_own_listener(sti_pki: StirPki, sti_x5u: X5uServer, tmp_path: Path) -> None:
    import socket

    from tests.integration import harness

    clients_ca = _ca("stirgate test client CA")
    (tmp_path / "clients-ca.pem").write_bytes(clients_ca[0].public_bytes(serialization.Encoding.PEM))
    good = _client_cert(clients_ca, MTLS_NAME, tmp_path, "sbc-east")
    unknown = _client_cert(clients_ca, "someone-else.test", tmp_path, "other")
    rogue = _client_cert(_ca("rogue CA"), MTLS_NAME, tmp_path, "rogue")
    port = harness.free_port("127.0.0.1", kind=socket.SOCK_STREAM)
    tls = {"cert": str(sti_pki.dir / "x5u-server.pem"), "key": str(sti_pki.dir / "x5u-server.key"),
           "client_ca": str(tmp_path / "clients-ca.pem")}
    cfg = sti_config(sti_pki, sti_x5u.url(), tmp_path, sti_listen=f"127.0.0.1:{port}", tls=tls, ip=TERM_IP)
    gate = start_stirgate(cfg, tmp_path / "run")

    def ctx(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        c = ssl.create_default_context(cafile=str(sti_pki.ca))
        if cert is not None:
            c.load_cert_chain(str(cert[0]), str(cert[1]))
        return c

    with started(gate):
        addr = ("127.0.0.1", port)
        with client(addr, token=None, ssl_context=ctx(good)) as c:
            r = c.sign(ORIG, [DEST], "A")
            assert r.status == 200, r.body
            assert r.inner()["identity"].count(".") >= 2
        with client(addr, token=None, ssl_context=ctx(None)) as c:
            assert c.sign(ORIG, [DEST], "A").status == 401  # no certificate, no token
        with client(addr, ssl_context=ctx(None)) as c:
            assert c.sign(ORIG, [DEST], "A").status == 200  # a token works over https too
        with client(addr, token=None, ssl_context=ctx(unknown)) as c:
            assert c.sign(ORIG, [DEST], "A").status == 401  # a valid certificate of no configured client
        with client(addr, token=None, ssl_context=ctx(rogue)) as c, pytest.raises((ssl.SSLError, OSError)):
            c.sign(ORIG, [DEST], "A")  # a certificate from another CA: the handshake fails
        # The metrics API does not serve the STI endpoints when they have their own listener.
        with client(api_listen(cfg)) as plain:
            assert plain.sign(ORIG, [DEST], "A").status == 404
        calls = traceback_calls(cfg, ORIG, DEST, want=2)
        assert {(c["ingress"], c["transport"]) for c in calls} == {("sbc-east", "https"), ("sbc", "https")}
    assert gate.returncode == 0, gate.log_tail()
