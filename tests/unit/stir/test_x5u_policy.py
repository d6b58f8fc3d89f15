from __future__ import annotations

import pytest

from proxy.stir.fetcher import http_ttl
from proxy.stir.x5u import X5uPolicy, check_x5u


@pytest.mark.parametrize(
    "url", ["https://cert.example.com/sp.pem", "https://cert.example.com:8443/sp.pem", "https://8.8.8.8/a.pem"]
)
def test_allowed(url: str) -> None:
    assert check_x5u(url) is None


@pytest.mark.parametrize(
    ("url", "check"),
    [
        ("", "x5u-empty"),
        ("http://cert.example.com/sp.pem", "x5u-scheme"),
        ("ftp://cert.example.com/sp.pem", "x5u-scheme"),
        ("cert.example.com/sp.pem", "x5u-scheme"),
        ("https://cert.example.com:444/sp.pem", "x5u-port"),
        ("https://cert.example.com:99999/sp.pem", "x5u-malformed"),
        ("https://user@cert.example.com/sp.pem", "x5u-userinfo"),
        ("https://cert.example.com/sp.pem?x=1", "x5u-query"),
        ("https://cert.example.com/sp.pem#frag", "x5u-fragment"),
        ("https:///sp.pem", "x5u-malformed"),
        ("https://127.0.0.1/sp.pem", "x5u-ssrf"),
        ("https://[::1]/sp.pem", "x5u-ssrf"),
        ("https://[::ffff:10.0.0.1]/sp.pem", "x5u-ssrf"),
        ("https://169.254.169.254/latest", "x5u-ssrf"),
        ("https://192.168.1.1/sp.pem", "x5u-ssrf"),
        ("https://localhost/sp.pem", "x5u-ssrf"),
        ("https://0.0.0.0/sp.pem", "x5u-ssrf"),
    ],
)
def test_refused_with_436(url: str, check: str) -> None:
    failure = check_x5u(url)
    assert failure is not None and failure.check == check and failure.sip_code == 436


def test_allow_list_and_test_override() -> None:
    policy = X5uPolicy(allowed_hosts=("certs.example.com", ".sti.example.net"))
    assert check_x5u("https://certs.example.com/a.pem", policy) is None
    assert check_x5u("https://a.sti.example.net/a.pem", policy) is None
    failure = check_x5u("https://evil.example.org/a.pem", policy)
    assert failure is not None and failure.check == "x5u-host"
    assert check_x5u("https://127.0.0.1:8443/sp.pem", X5uPolicy(allow_private=True)) is None
    assert (
        check_x5u("http://127.0.0.1:8080/sp.pem", X5uPolicy(allow_private=True, schemes=("http",), ports=(8080,)))
        is None
    )


@pytest.mark.parametrize(
    ("headers", "ttl"),
    [
        ({}, 86400.0),
        ({"Cache-Control": "max-age=300"}, 300.0),
        ({"Cache-Control": "public, s-maxage=60, max-age=300"}, 60.0),
        ({"Cache-Control": "no-store"}, 0.0),
        ({"Cache-Control": "no-cache, max-age=300"}, 0.0),
        ({"Cache-Control": "max-age=abc"}, 0.0),
        ({"Expires": "Tue, 14 Nov 2023 23:13:20 GMT"}, 3600.0),
        ({"Expires": "Tue, 14 Nov 2023 23:13:20 GMT", "Date": "Tue, 14 Nov 2023 23:03:20 GMT"}, 600.0),
        ({"Expires": "0"}, 0.0),
        ({"Cache-Control": "max-age=10", "Expires": "Tue, 14 Nov 2023 23:13:20 GMT"}, 10.0),
    ],
)
def test_http_ttl(headers: dict[str, str], ttl: float) -> None:
    assert http_ttl(headers, 1_700_000_000, 86400.0) == ttl
