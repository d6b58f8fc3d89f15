"""The STI-PA trust list body: what counts as a good list (every entry a CA certificate, at least one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.authentication import Authenticator
from proxy.config import ConfigError, load_config_text
from proxy.stir.demo_certs import pem
from proxy.stir.trust_list import TrustListError, parse_trust_list, to_pem

from .helpers import NOW, X5U, Pki


def test_pem_bundle_and_json_forms(pki: Pki) -> None:
    roots = pem(pki.demo.root.cert) + pem(pki.demo.intermediate.cert)
    assert [c.subject for c in parse_trust_list(roots)] == [pki.demo.root.cert.subject,
                                                            pki.demo.intermediate.cert.subject]  # fmt: skip
    pems = [pem(pki.demo.root.cert).decode(), pem(pki.demo.intermediate.cert).decode()]
    for body in (json.dumps(pems), json.dumps({"trustList": pems}), json.dumps({"certificates": pems})):
        assert len(parse_trust_list(body.encode())) == 2
    assert parse_trust_list(to_pem(parse_trust_list(roots))) == parse_trust_list(roots)


@pytest.mark.parametrize("body", [
    b"", b"   \n", b"<html>maintenance</html>", b'{"trustList": []}', b'{"other": 1}', b"[1, 2]",
    b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
])  # fmt: skip
def test_bad_lists_are_refused(body: bytes) -> None:
    with pytest.raises(TrustListError):
        parse_trust_list(body)


def test_an_end_entity_certificate_spoils_the_list(pki: Pki) -> None:
    with pytest.raises(TrustListError, match="not a CA"):
        parse_trust_list(pem(pki.demo.root.cert) + pem(pki.demo.sp.cert))


def test_last_good_list_on_disk_is_the_trust_at_start(pki: Pki, tmp_path: Path) -> None:
    """No trust_anchors at all: the anchors are the cached list (a restart while the STI-PA is down)."""
    cache = tmp_path / "list.pem"
    text = f"""
stir:
  trust_list_url: https://sti-pa.example.com/trust-list
  trust_list_cache: {cache}
"""
    empty = Authenticator(load_config_text(text, "tl.yaml"))
    assert empty.fetcher is not None and empty.trust_list is not None
    body = (pki.directory / "sp.pem").read_bytes()
    assert [f.check for f in empty.fetcher.trust.validate_body(X5U, body, NOW).failures] == ["cert-untrusted"]
    cache.write_bytes(pem(pki.demo.root.cert))
    auth = Authenticator(load_config_text(text, "tl.yaml"))
    assert auth.fetcher is not None
    assert auth.fetcher.trust.validate_body(X5U, body, NOW).ok
    # a new list from the STI-PA replaces the anchors (and forgets verdicts reached under the old ones)
    auth.fetcher.put(auth.fetcher.trust.validate_body(X5U, body, NOW), 3600)
    auth.apply_trust_list([pki.demo.intermediate.cert])
    assert auth.fetcher.cached(X5U) is None


@pytest.mark.parametrize(("key", "value", "message"), [
    ("trust_list_url", "http://sti-pa.example.com/list", "https"),
    ("trust_list_token_file", "/nonexistent/token", "no such file"),
    ("trust_list_refresh", "0", "positive"),
])  # fmt: skip
def test_trust_list_config_errors_are_located(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(f"stir:\n  {key}: {value}\n", "tl.yaml")
    assert f"stir.{key}" in str(err.value) and message in str(err.value)
