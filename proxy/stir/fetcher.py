"""x5u certificate fetcher and cache, and the guarded HTTP GET every fetch in proxy.stir goes through.

proxy.stir does network I/O only here and in its sibling fetchers (`crl_fetcher.py`, `trust_list.py`,
`content_fetcher.py`), all built on `HttpGetter`:
- aiohttp GET with connect/read/total timeouts and a body size cap; no redirects (a 3xx could point the fetch
  at an internal address the URL rules never saw), DNS answers filtered by the SSRF guard.
- cachetools TLRUCache with a per-entry expiry: HTTP Cache-Control (s-maxage, max-age, no-store/no-cache) or
  Expires, default 24 h, never past the validated chain's notAfter; failures are cached briefly.
- One fetch in flight per URL: concurrent callers await the same task.
- With a revocation checker (`crl_fetcher.CrlFetcher`), a valid chain is checked against the CRLs of its
  distribution points before it is cached, and the entry is cached no longer than those CRLs are current.
The clock is injectable so cache expiry is testable without sleeping.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cachetools import TLRUCache
from cryptography import x509

from proxy.tracebacks import forget_frames

from .certs import CertEntry, TrustStore
from .x5u import DEFAULT_X5U_POLICY, X5uPolicy, check_x5u, is_forbidden_address


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """Timeouts in seconds, sizes in bytes, TTLs in seconds. `ca_file`: extra CA for the x5u https server."""

    connect_timeout: float = 2.0
    read_timeout: float = 2.0
    total_timeout: float = 4.0
    max_bytes: int = 64 * 1024
    default_ttl: float = 24 * 3600.0
    max_ttl: float = 7 * 24 * 3600.0
    failure_ttl: float = 10.0
    cache_size: int = 10_000
    ca_file: str | None = None


def http_ttl(headers: Mapping[str, str], now: float, default: float) -> float:
    """Freshness lifetime of a response per RFC 9111 §4.2.1 (shared cache: s-maxage first)."""
    cc = headers.get("Cache-Control", "")
    directives: dict[str, str] = {}
    for part in cc.split(","):
        name, _, value = part.strip().partition("=")
        if name:
            directives[name.lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in directives:
            try:
                return max(0.0, float(int(directives[name])))
            except ValueError:
                return 0.0
    expires = headers.get("Expires")
    if expires is not None:
        try:
            exp = email.utils.parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError, IndexError):
            return 0.0  # an invalid Expires means "already expired"
        base = now
        date = headers.get("Date")
        if date:
            try:
                base = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError, IndexError):
                base = now
        return max(0.0, exp - base)
    return default


class _GuardedResolver(AbstractResolver):
    """Drops non-public addresses from DNS answers, so a public-looking name cannot reach the inside."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        public = [a for a in answers if not is_forbidden_address(ipaddress.ip_address(a["host"]))]
        if not public:
            raise OSError(f"{host} resolves only to non-public addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


class TooLarge(Exception):
    """The body is over the size cap."""


#: What a failed GET raises (besides TooLarge): timeouts, HTTP client errors, TLS errors, refused connections.
FETCH_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError)


def error_detail(exc: BaseException) -> str:
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Concurrent requests for one URL share one fetch: the first starts it, the others await the same task
    (shielded, so a caller that gives up does not cancel it for the rest)."""

    __slots__ = ("_inflight",)

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Task[T]] = {}

    async def run(self, url: str, fetch: Callable[[], Coroutine[Any, Any, T]]) -> T:
        task = self._inflight.get(url)
        if task is None:
            task = asyncio.get_running_loop().create_task(fetch())
            self._inflight[url] = task
            task.add_done_callback(lambda _t: self._inflight.pop(url, None))
        return await asyncio.shield(task)


class HttpGetter:
    """GET with the x5u protections: timeouts, a size cap, no redirects, DNS answers filtered by the SSRF guard
    unless `policy.allow_private`, an extra CA for the server's TLS certificate. The URL itself is checked by
    the caller (`check_x5u` with its own policy) before any I/O."""

    def __init__(self, policy: X5uPolicy, settings: FetchSettings, max_bytes: int | None = None) -> None:
        self.policy = policy
        self.settings = settings
        self.max_bytes = settings.max_bytes if max_bytes is None else max_bytes
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # HTTP requests actually sent (for tests and metrics)

    def _session_for_fetch(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            ctx = ssl.create_default_context()
            if s.ca_file:
                ctx.load_verify_locations(cafile=s.ca_file)
            connector = aiohttp.TCPConnector(
                ssl=ctx,
                resolver=None if self.policy.allow_private else _GuardedResolver(),
                limit=100,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=s.total_timeout, sock_connect=s.connect_timeout, sock_read=s.read_timeout
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body); raises TooLarge or one of FETCH_ERRORS."""
        session = self._session_for_fetch()
        limit = self.max_bytes
        self.requests += 1
        try:
            async with session.get(url, allow_redirects=False, headers=headers) as resp:
                if resp.content_length is not None and resp.content_length > limit:
                    raise TooLarge
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(16384):
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge
                    chunks.append(chunk)
                return resp.status, resp.headers, b"".join(chunks)
        except FETCH_ERRORS as exc:
            # The automatic GC is off (proxy.server.tune_gc): a failed fetch's exception chain, whose tracebacks'
            # frames refer back to the exceptions, would be held until the periodic full pass (~80 objects per
            # refused connection, ~100 per failed TLS handshake). Callers read only its type and text.
            forget_frames(exc)
            del exc
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class RevocationChecker(Protocol):
    """Checks a validated chain against the CRLs of its distribution points (`crl_fetcher.CrlFetcher`)."""

    async def check(
        self, entry: CertEntry, chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], now: float
    ) -> tuple[CertEntry, float]:
        """The entry with revocation failures/notes added, and until when that answer holds (epoch s)."""
        ...

    async def close(self) -> None: ...


class CachingFetcher(Generic[T]):
    """What the x5u and the RCD content fetchers share: entries by URL in a TLRU cache (each with its own expiry,
    epoch seconds), one fetch in flight per URL, GETs under the x5u rules (`HttpGetter`). A subclass says how
    one URL is fetched and judged (`_fetch`), and caches the answer itself."""

    def __init__(self, policy: X5uPolicy, settings: FetchSettings, clock: Callable[[], float],
                 max_bytes: int | None = None) -> None:
        self.policy = policy
        self.settings = settings
        self._clock = clock
        self._cache: TLRUCache[str, tuple[T, float]] = TLRUCache(
            maxsize=settings.cache_size, ttu=lambda _k, v, _now: v[1], timer=clock
        )
        self._flight: SingleFlight[T] = SingleFlight()
        self._http = HttpGetter(policy, settings, max_bytes)

    @property
    def requests(self) -> int:
        """HTTP requests actually sent (for tests and metrics)."""
        return self._http.requests

    def cached(self, url: str) -> T | None:
        """The cached entry for url, if still fresh: what the synchronous verifier path uses."""
        hit = self._cache.get(url)
        return hit[0] if hit is not None else None

    async def get(self, url: str) -> T:
        """The entry for url, fetching it at most once at a time."""
        hit = self.cached(url)
        if hit is not None:
            return hit
        return await self._flight.run(url, lambda: self._fetch(url))

    async def get_many(self, urls: Iterable[str]) -> dict[str, T]:
        unique = list(dict.fromkeys(urls))
        entries = await asyncio.gather(*(self.get(u) for u in unique))
        return dict(zip(unique, entries, strict=True))

    async def close(self) -> None:
        await self._http.close()

    async def _fetch(self, url: str) -> T:
        raise NotImplementedError


class CertFetcher(CachingFetcher[CertEntry]):
    """Fetches, validates (through the TrustStore) and caches x5u certificates."""

    def __init__(
        self,
        trust: TrustStore,
        policy: X5uPolicy = DEFAULT_X5U_POLICY,
        settings: FetchSettings | None = None,
        clock: Callable[[], float] = time.time,
        revocation: RevocationChecker | None = None,
    ) -> None:
        super().__init__(policy, settings or FetchSettings(), clock)
        self.trust = trust
        self.revocation = revocation

    def replace_trust(self, trust: TrustStore) -> None:
        """New anchors or CRLs: every cached verdict was reached under the old ones, so forget them all."""
        self.trust = trust
        self._cache.clear()

    def put(self, entry: CertEntry, ttl: float) -> None:
        """Cache an entry for ttl seconds (capped by notAfter when valid); ttl <= 0 does not cache."""
        now = self._clock()
        expires = now + ttl
        if entry.ok:
            expires = min(expires, entry.not_after)
        if expires > now:
            self._cache[entry.url] = (entry, expires)

    async def close(self) -> None:
        await super().close()
        if self.revocation is not None:
            await self.revocation.close()

    async def _fetch(self, url: str) -> CertEntry:
        failure = check_x5u(url, self.policy)
        if failure is not None:
            entry = CertEntry(url, failures=(failure,))
            self.put(entry, self.settings.failure_ttl)
            return entry
        try:
            status, headers, body = await self._http.get(url)
        except TooLarge:
            entry = CertEntry.fetch_failure(
                url, "x5u-too-large", f"x5u body over {self.settings.max_bytes} bytes"
            )
        except FETCH_ERRORS as exc:
            entry = CertEntry.fetch_failure(url, "x5u-unreachable", f"x5u fetch failed: {error_detail(exc)}")
        else:
            if status != 200:
                entry = CertEntry.fetch_failure(url, "x5u-http-status", f"x5u answered HTTP {status}")
            else:
                now = self._clock()
                trust = self.trust
                entry, chain = trust.validate_body_chain(url, body, now)
                valid_until = float("inf")
                if entry.ok and self.revocation is not None and chain:
                    entry, valid_until = await self.revocation.check(entry, chain, trust.anchors, now)
                if entry.ok:
                    ttl = min(http_ttl(headers, now, self.settings.default_ttl), self.settings.max_ttl,
                              valid_until - now)
                    self.put(entry, ttl)
                    return entry
        self.put(entry, self.settings.failure_ttl)
        return entry
