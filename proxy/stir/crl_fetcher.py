"""CRLs from certificates' distribution points (ATIS-1000080): fetched, verified, cached until nextUpdate.

- The GET is the x5u fetcher's (`HttpGetter`: timeouts, size cap, no redirects, SSRF guard on DNS answers);
  the URL rules are the x5u ones with http allowed as well (a CRL is signed; ATIS names an HTTP URL).
- A downloaded CRL is kept only when it parses, its signature verifies with the key of its issuer (the
  certificate's issuer, or for an indirect CRL the certificate named by cRLIssuer) and it is current; a bad
  download never replaces a good CRL.
- Kept in memory and on disk (`cache_dir/<sha256(url)>.crl`, DER, written atomically) until its nextUpdate, so a
  restart does not refetch every CRL; an expired CRL is fetched again at the next use.
- One fetch in flight per URL; a failure is remembered for `failure_ttl` seconds so a dead or hanging server
  costs one bounded wait per period, not one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from . import crl
from .certs import CertEntry
from .crl import CrlResult, Unavailable
from .fetcher import FETCH_ERRORS, FetchSettings, HttpGetter, SingleFlight, TooLarge, error_detail
from .x5u import X5uPolicy, check_x5u


def crl_policy(x5u_policy: X5uPolicy) -> X5uPolicy:
    """The x5u rules, with http besides https (and its port 80): a CRL carries its own signature."""
    return replace(x5u_policy, schemes=("http", "https"), ports=(80, *x5u_policy.ports))


class CrlFetcher:
    """Distribution-point CRLs for `CertFetcher` (its `revocation` checker)."""

    def __init__(
        self,
        policy: X5uPolicy,
        settings: FetchSettings,
        *,
        cache_dir: str | Path | None = None,
        unavailable: Unavailable = "pass",
        signers: Sequence[x509.Certificate] = (),
        max_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = crl_policy(policy)
        self.settings = settings
        self.unavailable: Unavailable = unavailable
        self.signers = tuple(signers)  # e.g. the STI-PA's CRL signing certificate (indirect CRLs)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._clock = clock
        self._http = HttpGetter(self.policy, settings, max_bytes)
        self._good: dict[str, tuple[x509.CertificateRevocationList, float]] = {}  # url -> (crl, nextUpdate)
        self._failed: dict[str, tuple[str, float]] = {}  # url -> (error, retry at)
        self._flight: SingleFlight[CrlResult] = SingleFlight()

    @property
    def requests(self) -> int:
        return self._http.requests

    # --- what CertFetcher calls -------------------------------------------------------------------------------
    async def check(
        self,
        entry: CertEntry,
        chain: Sequence[x509.Certificate],
        anchors: Sequence[x509.Certificate],
        now: float,
    ) -> tuple[CertEntry, float]:
        checks = crl.chain_checks(chain)
        if not checks:
            return entry, float("inf")
        others = (*self.signers, *anchors, *chain)
        wanted: dict[str, list[x509.Certificate]] = {}
        for c in checks:
            candidates = crl.signer_candidates(c, others)
            for url in c.point.urls:
                wanted.setdefault(url, []).extend(candidates)
        urls = list(wanted)
        results = await asyncio.gather(*(self.get(u, wanted[u]) for u in urls))
        verdict = crl.evaluate(
            checks,
            dict(zip(urls, results, strict=True)),
            others,
            now,
            self.unavailable,
            retry_at=now + self.settings.failure_ttl,
        )
        if not (verdict.failures or verdict.notes):
            return entry, verdict.valid_until
        updated = replace(
            entry,
            failures=entry.failures + verdict.failures,
            notes=tuple(dict.fromkeys(entry.notes + verdict.notes)),
        )
        return updated, verdict.valid_until

    # --- one CRL --------------------------------------------------------------------------------------------
    def cached(self, url: str, now: float | None = None) -> x509.CertificateRevocationList | None:
        """The current CRL for url from memory, None when absent or past its nextUpdate."""
        hit = self._good.get(url)
        if hit is None:
            return None
        if (self._clock() if now is None else now) >= hit[1]:
            return None
        return hit[0]

    async def get(self, url: str, signers: Sequence[x509.Certificate]) -> CrlResult:
        """The current CRL for url (memory, then disk, then the network), at most one fetch at a time."""
        now = self._clock()
        hit = self.cached(url, now)
        if hit is not None:
            return CrlResult(url, hit)
        failed = self._failed.get(url)
        if failed is not None and now < failed[1]:
            return CrlResult(url, error=failed[0])
        from_disk = self._load(url, signers, now)
        if from_disk is not None:
            return CrlResult(url, from_disk)
        chain = tuple(signers)
        return await self._flight.run(url, lambda: self._fetch(url, chain))

    def preload(self, url: str, body: bytes, signers: Sequence[x509.Certificate]) -> bool:
        """Take a CRL obtained out of band (a file, a bench) for `url`, under the same rules as a download:
        kept (memory and disk) only when it parses, verifies with one of `signers` and is current."""
        parsed, _error = self._accept(body, signers, self._clock())
        if parsed is None:
            return False
        self._remember(url, parsed)
        self._store(url, parsed)
        return True

    def _accept(
        self, body: bytes, signers: Sequence[x509.Certificate], now: float
    ) -> tuple[x509.CertificateRevocationList | None, str | None]:
        try:
            parsed = crl.parse_crl(body)
        except ValueError as exc:
            return None, f"not a CRL: {exc}"
        if not crl.signature_ok(parsed, signers):
            return None, "CRL signature does not verify with its issuer's key"
        if not crl.is_current(parsed, now):
            return None, "CRL is expired (nextUpdate passed) or not yet valid"
        return parsed, None

    async def _fetch(self, url: str, signers: tuple[x509.Certificate, ...]) -> CrlResult:
        refused = check_x5u(url, self.policy)
        if refused is not None:
            return self._fail(url, f"CRL URL refused: {refused.detail}")
        try:
            status, _headers, body = await self._http.get(url)
        except TooLarge:
            return self._fail(url, f"CRL over {self._http.max_bytes} bytes")
        except FETCH_ERRORS as exc:
            return self._fail(url, f"CRL fetch failed: {error_detail(exc)}")
        if status != 200:
            return self._fail(url, f"CRL server answered HTTP {status}")
        now = self._clock()
        parsed, error = self._accept(body, signers, now)
        if parsed is None:
            return self._fail(url, error or "unusable CRL")
        self._remember(url, parsed)
        self._store(url, parsed)
        return CrlResult(url, parsed)

    def _remember(self, url: str, parsed: x509.CertificateRevocationList) -> None:
        nu = crl.next_update(parsed)
        assert nu is not None  # is_current checked it
        old = self._good.get(url)
        if old is None or old[0].last_update_utc <= parsed.last_update_utc:
            self._good[url] = (parsed, nu)
        self._failed.pop(url, None)

    def _fail(self, url: str, error: str) -> CrlResult:
        self._failed[url] = (error, self._clock() + self.settings.failure_ttl)
        return CrlResult(url, error=error)

    # --- disk -----------------------------------------------------------------------------------------------
    def _path(self, url: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:40] + ".crl")

    def _load(
        self, url: str, signers: Sequence[x509.Certificate], now: float
    ) -> x509.CertificateRevocationList | None:
        path = self._path(url)
        if path is None:
            return None
        try:
            body = path.read_bytes()
        except OSError:
            return None
        parsed, _error = self._accept(body, signers, now)
        if parsed is not None:
            self._remember(url, parsed)
        return parsed

    def _store(self, url: str, parsed: x509.CertificateRevocationList) -> None:
        path = self._path(url)
        if path is None:
            return
        with contextlib.suppress(OSError):  # a read-only disk costs a refetch after restart, nothing else
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(parsed.public_bytes(Encoding.DER))
            os.replace(tmp, path)

    async def close(self) -> None:
        await self._http.close()
