"""x5u URL rules (REFERENCE.md, STI-VS): what the verifier may fetch, checked before any I/O.

https only on 443/8443, no userinfo/query/fragment, an optional host allow-list, and an SSRF guard refusing
loopback/private/link-local targets. The guard can be lifted explicitly (`allow_private=True`, and
`allow_any_port=True` for servers on random test ports) for tests and the loopback demo, never implicitly.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from .errors import Failure, Outcome

_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True, slots=True)
class X5uPolicy:
    """Which x5u URLs may be fetched. `allowed_hosts`: exact names, or `.suffix` for a domain; empty = any."""

    schemes: tuple[str, ...] = ("https",)
    ports: tuple[int, ...] = (443, 8443)
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    allow_userinfo: bool = False
    allow_query: bool = False
    allow_fragment: bool = False
    allow_any_port: bool = False
    max_length: int = 2048


DEFAULT_X5U_POLICY = X5uPolicy()


def _fail(check: str, detail: str) -> Failure:
    return Failure(check, detail, Outcome.BAD_INFO)


def is_forbidden_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Targets an attacker could aim an x5u at to reach the inside of the network."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or not addr.is_global
    )


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    for entry in allowed:
        entry = entry.lower()
        if entry.startswith(".") and (host.endswith(entry) or host == entry[1:]):
            return True
        if host == entry:
            return True
    return False


@functools.lru_cache(maxsize=4096)  # pure and per-URL: memoised off the per-call path
def check_x5u(url: str, policy: X5uPolicy = DEFAULT_X5U_POLICY) -> Failure | None:
    """None when the URL may be fetched, else the 436 failure that forbids it. Pure: no DNS."""
    if not url:
        return _fail("x5u-empty", "x5u is empty")
    if len(url) > policy.max_length:
        return _fail("x5u-too-long", f"x5u longer than {policy.max_length}")
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return _fail("x5u-malformed", f"x5u does not parse: {exc}")
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        return _fail("x5u-scheme", f"x5u scheme {scheme or '(none)'!r} not allowed (https required)")
    host = (parts.hostname or "").lower()
    if not host:
        return _fail("x5u-malformed", "x5u has no host")
    if (parts.username is not None or parts.password is not None) and not policy.allow_userinfo:
        return _fail("x5u-userinfo", "x5u carries userinfo")
    if parts.query and not policy.allow_query:
        return _fail("x5u-query", "x5u carries a query")
    if parts.fragment and not policy.allow_fragment:
        return _fail("x5u-fragment", "x5u carries a fragment")
    if "#" in url and not policy.allow_fragment:
        return _fail("x5u-fragment", "x5u carries a fragment")
    effective = port if port is not None else _DEFAULT_PORTS.get(scheme, 0)
    if effective not in policy.ports and not policy.allow_any_port:
        return _fail("x5u-port", f"x5u port {effective} not allowed")
    if not _host_allowed(host, policy.allowed_hosts):
        return _fail("x5u-host", f"x5u host {host!r} not in the allow-list")
    if not policy.allow_private:
        if host == "localhost" or host.endswith(".localhost"):
            return _fail("x5u-ssrf", f"x5u host {host!r} is local")
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return None
        if is_forbidden_address(addr):
            return _fail("x5u-ssrf", f"x5u address {host} is not public")
    return None
