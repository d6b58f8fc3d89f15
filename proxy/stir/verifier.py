"""STI-VS: every REFERENCE.md check on the Identity headers of one call, one VerificationResult out.

`Verifier.verify` is pure and synchronous given the certificates (a mapping x5u -> CertEntry), so the SIP
engine can call it on the event loop without I/O once the certificate is cached; `prepare` is the async step
that makes sure the certificates are there (fetching each URL at most once at a time), and the content that
RCD integrity digests pin (RFC 9795 `rcdi`).

Beyond one header at a time: a diverted call (RFC 8946) carries the original shaken PASSporT, whose dest is the
number that diverted, and a div PASSporT from each diverting provider; a header whose only failure is its dest
is accepted when a passing div PASSporT diverted from that dest (`VerificationResult.chain` shows the chain).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .certs import CertEntry
from .content_fetcher import ContentFetcher
from .errors import Failure, IdentityHeaderError, Outcome, PassportError
from .fetcher import CertFetcher
from .identity import IdentityHeader, parse_identity
from .passport import (
    ALG,
    KNOWN_PPTS,
    PPT_DIV,
    PPT_SHAKEN,
    DecodedJws,
    claim_failures,
    decode_token,
    header_failures,
    peek_x5u,
    verify_signature,
)
from .rcd import ContentEntry, content_urls, rcd_failures
from .tn import DEFAULT_TN_POLICY, TNPolicy, try_canonical_tn
from .x5u import DEFAULT_X5U_POLICY, X5uPolicy, check_x5u

VERSTAT_PASSED = "TN-Validation-Passed"
VERSTAT_FAILED = "TN-Validation-Failed"
VERSTAT_NONE = "No-TN-Validation"


@dataclass(frozen=True, slots=True)
class VerifierSettings:
    """STI-VS knobs (REFERENCE.md "Settings carriers expect").

    `iat_max_age`/`iat_future_skew`: freshness window in seconds. `date_iat_tolerance`: how far a Date
    header may be from iat. `multi_header`: "any" passes the call when one
    Identity header passes, "all" needs every one.
    """

    iat_max_age: int = 60
    iat_future_skew: int = 5
    date_iat_tolerance: int = 60
    require_date: bool = False
    require_alg_param: bool = True
    require_ppt_param: bool = True
    accepted_ppts: tuple[str, ...] = ("shaken", "div", "rcd")
    match_orig: bool = True
    match_dest: bool = True
    multi_header: Literal["any", "all"] = "any"
    tn_policy: TNPolicy = DEFAULT_TN_POLICY
    x5u_policy: X5uPolicy = DEFAULT_X5U_POLICY


@dataclass(frozen=True, slots=True)
class HeaderResult:
    """The verdict on one Identity header."""

    index: int
    passed: bool
    sip_code: int | None
    reason: str | None
    failures: tuple[Failure, ...]
    ppt: str | None = None
    attest: str | None = None
    origid: str | None = None
    iat: int | None = None
    x5u: str | None = None
    spc: str | None = None
    cert_subject: str | None = None
    notes: tuple[str, ...] = ()
    #: The claimed dest TNs and, for ppt=div, the diverting TN (what links a diversion chain).
    dest: tuple[str, ...] = ()
    div: str | None = None
    #: The RFC 9795 caller name (`rcd.nam`) this PASSporT carries.
    rcd_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "passed": self.passed,
            "sip_code": self.sip_code,
            "reason": self.reason,
            "ppt": self.ppt,
            "attest": self.attest,
            "origid": self.origid,
            "iat": self.iat,
            "x5u": self.x5u,
            "spc": self.spc,
            "cert_subject": self.cert_subject,
            "div": self.div,
            "rcd_name": self.rcd_name,
            "failures": [f.as_dict() for f in self.failures],
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """The verdict on a call: status passed|failed|missing, verstat, SIP code/reason to reject with."""

    status: Literal["passed", "failed", "missing"]
    verstat: str
    sip_code: int | None
    reason: str | None
    attest: str | None = None
    origid: str | None = None
    spc: str | None = None
    cert_subject: str | None = None
    failures: tuple[Failure, ...] = ()
    headers: tuple[HeaderResult, ...] = field(default=())
    #: The verified RCD caller name (from a passing PASSporT with an `rcd` claim), None without one.
    rcd_name: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def chain(self) -> tuple[str, ...]:
        """The ppt of every passing PASSporT in header order, e.g. ("shaken", "div") on a diverted call."""
        return tuple(h.ppt or "" for h in self.headers if h.passed)

    def reason_header(self) -> str | None:
        """RFC 9410 Reason value, e.g. `STIR;cause=438;text="Invalid Identity Header"`."""
        if self.sip_code is None:
            return None
        return f'STIR;cause={self.sip_code};text="{self.reason}"'

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "verstat": self.verstat,
            "sip_code": self.sip_code,
            "reason": self.reason,
            "attest": self.attest,
            "origid": self.origid,
            "spc": self.spc,
            "cert_subject": self.cert_subject,
            "rcd_name": self.rcd_name,
            "chain": list(self.chain),
            "failures": [f.as_dict() for f in self.failures],
            "headers": [h.as_dict() for h in self.headers],
        }


MISSING_RESULT = VerificationResult(
    status="missing", verstat=VERSTAT_NONE, sip_code=Outcome.MISSING.code, reason=Outcome.MISSING.reason
)


def _bad(check: str, detail: str, outcome: Outcome = Outcome.INVALID) -> Failure:
    return Failure(check, detail, outcome)


def parse_date_header(value: str) -> float | None:
    """Epoch seconds of an RFC 3261 Date header (RFC 1123 form), None when it does not parse."""
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        return None
    return dt.timestamp()


@functools.lru_cache(maxsize=64)  # a call asks more than once (fetch needed? then verify)
def x5u_of(value: str) -> str | None:
    """The JWS x5u of one Identity header value (what `prepare` fetches); None when it does not parse."""
    try:
        return peek_x5u(parse_identity(value).token)
    except (IdentityHeaderError, PassportError):
        return None


def content_urls_of(value: str) -> tuple[str, ...]:
    """URLs whose content the PASSporT's `rcdi` pins (RFC 9795): fetched by `prepare` like the x5u. The
    decode is memoised, so `verify` reads the same one."""
    try:
        ih = parse_identity(value)
        if ih.compact:
            return ()
        claims = decode_token(ih.token).claims
    except (IdentityHeaderError, PassportError):
        return ()
    return content_urls(claims) if claims.rcdi else ()


class Verifier:
    """STI-VS. Holds settings and (optionally) the fetchers; no per-call state."""

    def __init__(
        self,
        settings: VerifierSettings | None = None,
        fetcher: CertFetcher | None = None,
        contents: ContentFetcher | None = None,
    ) -> None:
        self.settings = settings or VerifierSettings()
        self.fetcher = fetcher
        self.contents = contents

    # ---- async: make sure certificates are cached ---------------------------------------------------------
    async def prepare(self, identity_values: Sequence[str]) -> dict[str, CertEntry]:
        """Fetch (or take from cache) the certificate of every Identity header's x5u, and the RCD content its
        rcdi pins (kept in the content fetcher's cache, where `verify` reads it)."""
        if self.fetcher is None:
            raise RuntimeError("Verifier has no fetcher")
        urls = [u for u in (x5u_of(v) for v in identity_values) if u]
        content = [u for v in identity_values for u in content_urls_of(v)]
        if content and self.contents is not None:
            # Both at once; not asyncio.gather, whose list result the compiled build would take for a tuple.
            certs = asyncio.ensure_future(self.fetcher.get_many(urls))
            await self.contents.get_many(content)
            return await certs
        return await self.fetcher.get_many(urls)

    def cached_certs(self, identity_values: Sequence[str]) -> dict[str, CertEntry] | None:
        """The certificates from cache, or None when one (or pinned RCD content) must be fetched first (then
        await prepare)."""
        out: dict[str, CertEntry] = {}
        if self.fetcher is None:
            return out
        contents = self.contents
        for value in identity_values:
            if contents is not None:
                for content_url in content_urls_of(value):
                    if contents.cached(content_url) is None:
                        return None
            url = x5u_of(value)
            if url is None or url in out:
                continue
            entry = self.fetcher.cached(url)
            if entry is None:
                return None
            out[url] = entry
        return out

    async def verify_call(
        self,
        identity_values: Sequence[str],
        orig_tn: str | None,
        dest_tns: Sequence[str],
        date_header: str | None,
        now: float,
    ) -> VerificationResult:
        """prepare() when needed, then verify(): the one-call convenience for the B2BUA."""
        certs = self.cached_certs(identity_values)
        if certs is None:
            certs = await self.prepare(identity_values)
        return self.verify(identity_values, orig_tn, dest_tns, date_header, now, certs)

    # ---- pure --------------------------------------------------------------------------------------------
    def verify(
        self,
        identity_values: Sequence[str],
        orig_tn: str | None,
        dest_tns: Sequence[str],
        date_header: str | None,
        now: float,
        certs_by_url: Mapping[str, CertEntry],
        contents: Mapping[str, ContentEntry] | None = None,
        *,
        per_header: bool = True,
    ) -> VerificationResult:
        """Evaluate every Identity header against the call; no I/O, no clock read. `contents`: digests of the RCD
        content the headers pin (default: what the content fetcher has cached). Without `per_header` the result
        keeps only the verdict (its `headers` empty): what a call holds for its whole life needs no more."""
        if not identity_values:
            return MISSING_RESULT
        tn_policy = self.settings.tn_policy
        call_orig = try_canonical_tn(orig_tn, tn_policy) if orig_tn else None
        call_dest = frozenset(t for t in (try_canonical_tn(d, tn_policy) for d in dest_tns) if t)
        date_check = self._date_check(date_header, now)
        results = tuple(
            self._verify_one(i, v, call_orig, call_dest, date_check, now, certs_by_url, contents)
            for i, v in enumerate(identity_values)
        )
        if len(results) > 1 and any(r.ppt == PPT_DIV for r in results):
            results = self._link_diversions(results, call_dest)
        return self._combine(results, per_header)

    def _link_diversions(
        self, results: tuple[HeaderResult, ...], call_dest: frozenset[str]
    ) -> tuple[HeaderResult, ...]:
        """RFC 8946: a PASSporT whose only failure is its dest is good when a passing div PASSporT diverted
        the call from that dest (transitively, for a call diverted several times)."""
        tn_policy = self.settings.tn_policy
        reachable = set(call_dest)
        out = list(results)
        changed = True
        while changed:
            changed = False
            for i, r in enumerate(out):
                if r.passed:
                    if r.ppt == PPT_DIV and r.div:
                        tn = try_canonical_tn(r.div, tn_policy)
                        if tn is not None and tn not in reachable:
                            reachable.add(tn)
                            changed = True
                    continue
                if not r.failures or any(f.check != "dest-mismatch" for f in r.failures):
                    continue
                if any(try_canonical_tn(t, tn_policy) in reachable for t in r.dest):
                    out[i] = HeaderResult(
                        r.index, True, None, None, (), ppt=r.ppt, attest=r.attest, origid=r.origid, iat=r.iat,
                        x5u=r.x5u, spc=r.spc, cert_subject=r.cert_subject, notes=(*r.notes, "dest-diverted"),
                        dest=r.dest, div=r.div, rcd_name=r.rcd_name,
                    )  # fmt: skip
                    changed = True
        return tuple(out)

    def _combine(self, results: tuple[HeaderResult, ...], per_header: bool = True) -> VerificationResult:
        single = len(results) == 1
        kept = results if per_header else ()
        failures = results[0].failures if single else tuple(f for r in results for f in r.failures)
        passing = [r for r in results if r.passed]
        ok = bool(passing) if self.settings.multi_header == "any" else len(passing) == len(results)
        if ok:
            best = next((r for r in passing if r.ppt == PPT_SHAKEN), passing[0])
            return VerificationResult(
                "passed",
                VERSTAT_PASSED,
                None,
                None,
                best.attest,
                best.origid,
                best.spc,
                best.cert_subject,
                failures,
                kept,
                best.rcd_name if single else next((r.rcd_name for r in passing if r.rcd_name), None),
            )
        worst = next(r for r in results if not r.passed)
        return VerificationResult(
            "failed",
            VERSTAT_FAILED,
            worst.sip_code,
            worst.reason,
            worst.attest,
            worst.origid,
            worst.spc,
            worst.cert_subject,
            failures,
            kept,
        )

    def _date_check(self, date_header: str | None, now: float) -> tuple[float | None, list[Failure]]:
        s = self.settings
        if date_header is None:
            if s.require_date:
                return None, [_bad("date-missing", "Date header required", Outcome.STALE)]
            return None, []
        ts = parse_date_header(date_header)
        if ts is None:
            return None, [_bad("date-invalid", f"Date header does not parse: {date_header!r}", Outcome.STALE)]
        if now - ts > s.iat_max_age:
            return ts, [_bad("date-stale", f"Date is {int(now - ts)} s old", Outcome.STALE)]
        if ts - now > s.iat_future_skew:
            return ts, [_bad("date-future", f"Date is {int(ts - now)} s in the future", Outcome.STALE)]
        return ts, []

    def _verify_one(
        self,
        index: int,
        value: str,
        call_orig: str | None,
        call_dest: frozenset[str],
        date_check: tuple[float | None, list[Failure]],
        now: float,
        certs_by_url: Mapping[str, CertEntry],
        contents: Mapping[str, ContentEntry] | None,
    ) -> HeaderResult:
        s = self.settings
        try:
            ih = parse_identity(value)
            if ih.compact:
                raise PassportError(
                    "jws-compact", "compact form is not accepted for SHAKEN (full form required)"
                )
            jws = decode_token(ih.token)
        except (IdentityHeaderError, PassportError) as exc:
            return _failed(index, exc.failure)
        header, claims = jws.header, jws.claims
        failures = header_failures(header)
        x5u = header.x5u
        x5u_failure = (
            check_x5u(x5u, s.x5u_policy)
            if x5u
            else _bad("x5u-missing", "PASSporT header has no x5u", Outcome.BAD_INFO)
        )
        if x5u_failure is not None:
            failures.append(x5u_failure)
        failures.extend(self._param_failures(ih, jws))
        failures.extend(claim_failures(header, claims))
        entry: CertEntry | None = None
        if x5u and x5u_failure is None:
            entry = certs_by_url.get(x5u)
            failures.extend(self._cert_failures(x5u, entry, jws, now))
            if entry is not None and entry.scope is not None and entry.ok:
                failures.extend(self._scope_failures(entry, jws))
        failures.extend(self._freshness_failures(claims.iat, date_check, now))
        failures.extend(self._match_failures(jws, call_orig, call_dest))
        rcd = claims.rcd
        if rcd is not None or claims.rcdi is not None:
            failures.extend(rcd_failures(claims, self._content_lookup(contents)))
        if entry is None:
            spc = subject = None
            notes: tuple[str, ...] = ()
        else:
            spc = entry.spc if entry.ok else None
            subject, notes = entry.subject, entry.notes
        first = failures[0].outcome if failures else None
        return HeaderResult(
            index,
            first is None,
            first.code if first is not None else None,
            first.reason if first is not None else None,
            tuple(failures),
            ppt=header.ppt,
            attest=claims.attest,
            origid=claims.origid,
            iat=claims.iat,
            x5u=x5u,
            spc=spc,
            cert_subject=subject,
            notes=notes,
            dest=claims.dest.tn or () if claims.dest is not None else (),
            div=claims.div.tn if claims.div is not None else None,
            rcd_name=rcd.nam if rcd is not None else None,
        )

    def _content_lookup(self, contents: Mapping[str, ContentEntry] | None) -> Callable[[str], ContentEntry | None]:
        """Where rcdi finds the digests of fetched content: what the caller passed, else the content cache."""
        if contents is not None:
            return contents.get
        if self.contents is not None:
            return self.contents.cached
        return _no_content

    def _scope_failures(self, entry: CertEntry, jws: DecodedJws) -> list[Failure]:
        """ATIS-1000092: a certificate limited to TNs (delegate) covers only PASSporTs from those TNs (437)."""
        scope = entry.scope
        orig = jws.claims.orig
        tn = try_canonical_tn(orig.tn, self.settings.tn_policy) if orig is not None and orig.tn else None
        if scope is None or (tn is not None and scope.covers(tn)):
            return []
        shown = orig.tn if orig is not None else None
        return [_bad("tn-not-in-certificate", f"orig {shown!r} is outside the certificate's TNAuthList",
                     Outcome.BAD_CREDENTIAL)]  # fmt: skip

    def _param_failures(self, ih: IdentityHeader, jws: DecodedJws) -> list[Failure]:
        s = self.settings
        out: list[Failure] = []
        if ih.alg is None:
            if s.require_alg_param:
                out.append(_bad("identity-alg-missing", "Identity header has no alg parameter"))
        elif ih.alg != ALG:
            out.append(_bad("identity-alg", f"Identity alg {ih.alg!r} is not ES256"))
        if ih.ppt is None:
            if s.require_ppt_param:
                out.append(_bad("identity-ppt-missing", "Identity header has no ppt parameter"))
        elif ih.ppt != jws.header.ppt:
            out.append(_bad("identity-ppt-mismatch", f"ppt {ih.ppt!r} differs from PASSporT ppt"))
        ppt = jws.header.ppt
        if ppt in KNOWN_PPTS and ppt not in s.accepted_ppts:
            out.append(_bad("ppt-unsupported", f"ppt {ppt!r} is not accepted"))
        if ih.info != jws.header.x5u:
            out.append(_bad("info-x5u-mismatch", "Identity info differs from the PASSporT x5u"))
        return out

    @staticmethod
    def _cert_failures(x5u: str, entry: CertEntry | None, jws: DecodedJws, now: float) -> list[Failure]:
        if entry is None:
            return [_bad("x5u-not-fetched", f"no certificate available for {x5u}", Outcome.BAD_INFO)]
        if entry.failures:
            return list(entry.failures)
        if entry.public_key is None:
            return [_bad("cert-key", "certificate has no usable key", Outcome.BAD_CREDENTIAL)]
        out: list[Failure] = []
        if now < entry.not_before:
            out.append(_bad("cert-not-yet-valid", "certificate chain not yet valid", Outcome.BAD_CREDENTIAL))
        elif now > entry.not_after:
            out.append(_bad("cert-expired", "certificate chain expired", Outcome.BAD_CREDENTIAL))
        if not verify_signature(jws, entry.public_key):
            out.append(
                _bad("signature-invalid", "PASSporT signature does not verify with the x5u certificate")
            )
        return out

    def _freshness_failures(
        self, iat: int | None, date_check: tuple[float | None, list[Failure]], now: float
    ) -> list[Failure]:
        s = self.settings
        date_ts, out = date_check[0], list(date_check[1])
        if iat is None:
            return out
        if now - iat > s.iat_max_age:
            out.append(
                _bad("iat-stale", f"iat is {int(now - iat)} s old (max {s.iat_max_age})", Outcome.STALE)
            )
        elif iat - now > s.iat_future_skew:
            out.append(_bad("iat-future", f"iat is {int(iat - now)} s in the future", Outcome.STALE))
        if date_ts is not None and abs(date_ts - iat) > s.date_iat_tolerance:
            out.append(
                _bad(
                    "date-iat-mismatch", f"Date and iat differ by {int(abs(date_ts - iat))} s", Outcome.STALE
                )
            )
        return out

    def _match_failures(
        self, jws: DecodedJws, call_orig: str | None, call_dest: frozenset[str]
    ) -> list[Failure]:
        s = self.settings
        claims = jws.claims
        out: list[Failure] = []
        if s.match_orig and claims.orig is not None and (claims.orig.tn or claims.orig.uri):
            claimed = try_canonical_tn(claims.orig.tn, s.tn_policy) if claims.orig.tn else None
            if call_orig is None:
                out.append(_bad("orig-call-missing", "the call carries no caller TN to compare"))
            elif claimed != call_orig:
                out.append(
                    _bad("orig-mismatch", f"orig {claims.orig.tn!r} does not match caller {call_orig!r}")
                )
        if s.match_dest and claims.dest is not None and (claims.dest.tn or claims.dest.uri):
            claimed_dest = {try_canonical_tn(t, s.tn_policy) for t in claims.dest.tn or ()}
            if not call_dest:
                out.append(_bad("dest-call-missing", "the call carries no called TN to compare"))
            elif not (claimed_dest & call_dest):
                out.append(
                    _bad("dest-mismatch", f"dest {list(claims.dest.tn or ())} does not match the call")
                )
        return out


def _no_content(_url: str) -> ContentEntry | None:
    return None


def _failed(index: int, failure: Failure) -> HeaderResult:
    """A header that could not be read at all."""
    return HeaderResult(index, False, failure.outcome.code, failure.outcome.reason, (failure,))
