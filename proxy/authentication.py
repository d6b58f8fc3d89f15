"""STIR/SHAKEN on a call: which calls are signed or verified, and what that changes on the B-leg.

The glue between the SIP engine and `proxy.stir` (which knows nothing of SIP messages): it reads the
numbers and Identity headers off an INVITE, asks the verifier or signer, and turns the answer into header
edits or a rejection. Pure: the certificate fetch happens in the transport adapter, the engine waits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from proxy.config import Config, RcdSettings, StirSettings, Trunk
from proxy.sip.grammar import ParseError, parse_name_addr, parse_uri, split_commas
from proxy.sip.message import Header, Request
from proxy.stir.certs import CertEntry, TrustStore, load_anchors
from proxy.stir.content_fetcher import ContentFetcher
from proxy.stir.crl_fetcher import CrlFetcher
from proxy.stir.errors import SigningError
from proxy.stir.fetcher import CertFetcher, FetchSettings
from proxy.stir.passport import Rcd
from proxy.stir.rcd import integrity, json_bytes
from proxy.stir.signer import AttestationRules, RcdRule, SignedCall, Signers, SigningProfile, TrunkSigning
from proxy.stir.tn import TNPolicy, orig_tn, try_canonical_tn
from proxy.stir.trust_list import TrustListFetcher
from proxy.stir.verifier import (
    VERSTAT_NONE,
    VERSTAT_PASSED,
    VerificationResult,
    Verifier,
    VerifierSettings,
    x5u_of,
)
from proxy.stir.x5u import X5uPolicy

__all__ = ["Authenticator", "InboundOutcome", "add_display_prefix", "add_verstat", "diverting_tn", "set_display"]


@dataclass(frozen=True, slots=True)
class InboundOutcome:
    """What verification does to a call: reject it, or forward it with these header edits."""

    result: VerificationResult
    reject: tuple[int, str] | None = None
    reason_header: str | None = None
    #: Replacement values for every P-Asserted-Identity line (same order), or None to leave them.
    pai: tuple[str, ...] | None = None
    #: Replacement From value on the B-leg, or None.
    from_value: str | None = None
    extra: tuple[Header, ...] = ()

    def spent(self) -> InboundOutcome:
        """What an answered call still needs: the verdict (its record and log line read it), not the B-leg's
        header edits, which only a failover to another trunk would apply again, and none follows an answer."""
        if self.pai is None and self.from_value is None and not self.extra:
            return self
        return InboundOutcome(self.result)


def add_verstat(value: str, verstat: str) -> str:
    """`verstat=` as a URI parameter (3GPP TS 24.229) on a name-addr, replacing one already there.

    A carrier's own verstat can never be smuggled through: any existing one is dropped first.
    """
    na = parse_name_addr(value)
    uri = na.uri
    semi = uri.find(";")
    if semi >= 0:
        kept = [p for p in uri[semi + 1 :].split(";") if p and not p.lower().startswith("verstat")]
        uri = ";".join([uri[:semi], *kept])
    uri = f"{uri};verstat={verstat}"
    display = f"{na.display} " if na.display else ""
    params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in na.params)
    return f"{display}<{uri}>{params}"


def add_display_prefix(value: str, prefix: str) -> str:
    """`"SPAM? Alice" <sip:...>`: the prefix in front of the display name (quoted, as RFC 3261 wants)."""
    na = parse_name_addr(value)
    display = na.display or ""
    if display.startswith('"') and display.endswith('"'):
        display = display[1:-1]
    escaped = prefix.replace("\\", "\\\\").replace('"', '\\"')  # the display name is quoted-string text already
    text = escaped + display
    params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in na.params)
    return f'"{text}" <{na.uri}>{params}'


def set_display(value: str, name: str) -> str:
    """The name-addr with its display name replaced by `name` (quoted), e.g. a verified RCD caller name."""
    na = parse_name_addr(value)
    clean = "".join(c for c in name if c.isprintable())[:128]
    escaped = clean.replace("\\", "\\\\").replace('"', '\\"')
    params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in na.params)
    return f'"{escaped}" <{na.uri}>{params}'


def _history_info_diverter(values: Sequence[str]) -> str | None:
    """The user part of the History-Info entry the call was retargeted from (RFC 7044): the parent (by `mp`,
    `rc` or the index hierarchy) of the last entry, when the last entry records a retarget."""
    entries: list[tuple[str, str, tuple[tuple[str, str | None], ...]]] = []
    for value in values:
        try:
            na = parse_name_addr(value)
        except ParseError:
            return None
        entries.append((na.param("index") or "", na.uri, na.params))
    if len(entries) < 2:
        return None
    index, uri, params = entries[-1]
    names = {k.lower() for k, _ in params}
    lowered = uri.lower()
    if not ({"mp", "rc"} & names or ";cause=" in lowered or "reason=" in lowered):
        return None
    parent = next((v for k, v in params if k.lower() in ("mp", "rc") and v), None) or index.rpartition(".")[0]
    for entry_index, entry_uri, _ in entries[:-1]:
        if entry_index == parent:
            return _user(f"<{entry_uri}>")
    return _user(f"<{entries[-2][1]}>")


def diverting_tn(invite: Request, policy: TNPolicy) -> str | None:
    """The number that diverted the call: the top Diversion (RFC 5806, most recent first), else History-Info."""
    diversion = invite.values("diversion")
    if diversion:
        tn = try_canonical_tn(_user(diversion[0]), policy)
        if tn is not None:
            return tn
    history = invite.values("history-info")
    return try_canonical_tn(_history_info_diverter(history), policy) if history else None


def _rcd_rules(settings: RcdSettings | list[RcdSettings] | None, policy: TNPolicy) -> tuple[RcdRule, ...]:
    """The signer's RCD rules; `rcdi` digests from the local copies of the referenced content."""
    if settings is None:
        return ()
    out: list[RcdRule] = []
    for r in [settings] if isinstance(settings, RcdSettings) else settings:
        rcd = Rcd(nam=r.nam, apn=r.apn, icn=r.icn, jcd=r.jcd, jcl=r.jcl)
        rcdi: dict[str, str] = {}
        if r.icn_file:
            rcdi["/icn"] = integrity(Path(r.icn_file).read_bytes())
        if r.jcl_file:
            rcdi["/jcl"] = integrity(Path(r.jcl_file).read_bytes())
        if r.jcd is not None and rcdi:
            rcdi["/jcd"] = integrity(json_bytes(r.jcd))
        numbers = AttestationRules.from_files(r.numbers_file, tn_policy=policy).numbers
        listed = AttestationRules.from_lists(r.numbers, r.prefixes, tn_policy=policy)
        out.append(RcdRule(rcd, listed.numbers | numbers, listed.prefixes, r.crn, rcdi or None))
    return tuple(out)


def _token(stir: StirSettings) -> str | None:
    if stir.trust_list_token:
        return stir.trust_list_token
    if stir.trust_list_token_file:
        return Path(stir.trust_list_token_file).read_text().strip() or None
    return None


def _user(uri_or_name_addr: str | None) -> str | None:
    if not uri_or_name_addr:
        return None
    try:
        na = parse_name_addr(uri_or_name_addr)
        uri = parse_uri(na.uri)
    except ParseError:
        return None
    return uri.user


class Authenticator:
    """Built once per config: signing keys loaded, trust anchors read, the certificate cache created."""

    def __init__(self, config: Config) -> None:
        stir = config.stir
        self.tn_policy = TNPolicy(country_code=stir.country_code, orig_order=tuple(stir.orig_order))
        v = stir.verify
        self.wait_timeout = v.wait_timeout
        self.verifier: Verifier | None = None
        self.fetcher: CertFetcher | None = None
        self._stir = stir
        #: The last INVITE's (orig TN, dest TNs): verification and the policy context both read them.
        self._tns: tuple[Request, str | None, tuple[str, ...]] | None = None
        fetch = FetchSettings(
            connect_timeout=v.fetch_timeout,
            read_timeout=v.fetch_timeout,
            total_timeout=v.fetch_timeout * 2,
            max_bytes=v.max_cert_bytes,
            default_ttl=v.cache_ttl,
            failure_ttl=v.failure_ttl,
            cache_size=v.cache_size,
            ca_file=v.x5u_ca_file,
        )
        #: The STI-PA trust list (its last good copy is read from disk now; the server refreshes it).
        self.trust_list: TrustListFetcher | None = None
        if stir.trust_list_url:
            self.trust_list = TrustListFetcher(
                stir.trust_list_url, fetch, token=_token(stir), cache_path=stir.trust_list_cache,
                allow_private=v.x5u_allow_private, allow_any_port=v.x5u_allow_any_port,
            )  # fmt: skip
            self.trust_list.load_cached()
        if stir.trust_anchors or self.trust_list is not None:
            trust = self._trust_store()
            policy = X5uPolicy(
                allowed_hosts=tuple(v.x5u_allowed_hosts),
                allow_private=v.x5u_allow_private,
                allow_any_port=v.x5u_allow_any_port,
            )
            crls = None
            if stir.crl_fetch:
                crls = CrlFetcher(policy, fetch, cache_dir=stir.crl_cache_dir, unavailable=stir.crl_unavailable,
                                  signers=load_anchors(stir.crl_signers), max_bytes=stir.crl_max_bytes)  # fmt: skip
            self.fetcher = CertFetcher(trust, policy, fetch, revocation=crls)
            contents = ContentFetcher(policy, fetch, max_bytes=v.rcd_max_bytes, ttl=v.rcd_content_ttl)
            settings = VerifierSettings(
                iat_max_age=v.iat_max_age,
                iat_future_skew=v.iat_future_skew,
                date_iat_tolerance=v.date_iat_tolerance,
                require_date=v.require_date,
                multi_header=v.multi_header,
                tn_policy=self.tn_policy,
                x5u_policy=policy,
            )
            self.verifier = Verifier(settings, self.fetcher, contents)
        self.signers = Signers(
            [SigningProfile(p.name, p.key, p.x5u) for p in stir.signing_profiles], self.tn_policy
        )
        self.trunk_signing: dict[str, TrunkSigning] = {}
        for trunk in config.trunks:
            if trunk.sign is None:
                continue
            att = trunk.sign.attestation
            rules = None
            if att is not None:
                listed = AttestationRules.from_lists(att.numbers, att.prefixes, tn_policy=self.tn_policy)
                from_files = AttestationRules.from_files(att.numbers_file, att.prefixes_file,
                                                         tn_policy=self.tn_policy)
                rules = AttestationRules(listed.numbers | from_files.numbers,
                                         listed.prefixes + from_files.prefixes, att.known_customer)
            self.trunk_signing[trunk.name] = TrunkSigning(
                trunk=trunk.name,
                profile=trunk.sign.profile,
                attestation=rules,
                origid=trunk.sign.origid,
                add_date=trunk.sign.add_date,
                existing_identity=trunk.sign.existing_identity,
                rcd=_rcd_rules(trunk.sign.rcd, self.tn_policy),
                rcd_in_shaken=trunk.sign.rcd_in_shaken,
                div=trunk.sign.div,
            )

    def _trust_store(self) -> TrustStore:
        s = self._stir
        listed = self.trust_list.anchors if self.trust_list is not None else ()
        return TrustStore.from_paths(s.trust_anchors, s.crl_dir, lenient_tnauthlist=s.verify.lenient_tnauthlist,
                                     extra_anchors=listed)  # fmt: skip

    def apply_trust_list(self, anchors: Sequence[x509.Certificate]) -> None:
        """A new STI-PA list was downloaded (`trust_list.refresh()`): verify with it from now on. Cached
        certificate verdicts were reached under the old anchors, so they are dropped."""
        if self.trust_list is not None:
            self.trust_list.anchors = tuple(anchors)
        if self.fetcher is not None:
            self.fetcher.replace_trust(self._trust_store())

    def refresh_crls(self) -> bool:
        """Re-read anchors and CRLs (ATIS-1000080: CRLs are refreshed periodically). False when unchanged
        because there is nothing to refresh; raises (and keeps the old store) when the files are unusable."""
        if self.fetcher is None or not self._stir.crl_dir:
            return False
        self.fetcher.replace_trust(self._trust_store())
        return True

    # --- reading the call -------------------------------------------------------------------------------------
    @staticmethod
    def identity_values(invite: Request) -> list[str]:
        """Every Identity header value (`y` included), comma-joined ones split."""
        out: list[str] = []
        for h in invite.headers:
            if h.key == "identity":
                out.extend(split_commas(h.value))
        return out

    def orig_tn(self, invite: Request) -> str | None:
        pai = invite.header("p-asserted-identity")
        if pai is not None:
            pai = next(iter(split_commas(pai)), None)
        return orig_tn(_user(pai), _user(invite.header("from")), self.tn_policy)

    def dest_tns(self, invite: Request) -> list[str]:
        out = []
        for candidate in (_user(f"<{invite.uri}>"), _user(invite.header("to"))):
            tn = try_canonical_tn(candidate, self.tn_policy)
            if tn is not None and tn not in out:
                out.append(tn)
        return out

    def call_tns(self, invite: Request) -> tuple[str | None, tuple[str, ...]]:
        """(orig_tn, dest_tns) of an INVITE. Verification and then the policy context of the same call both
        need them (parsing PAI/From, R-URI and To again cost ~6 us per call), so the last INVITE's are kept."""
        memo = self._tns
        if memo is not None and memo[0] is invite:
            return memo[1], memo[2]
        orig, dests = self.orig_tn(invite), tuple(self.dest_tns(invite))
        self._tns = (invite, orig, dests)
        return orig, dests

    # --- STI-VS -----------------------------------------------------------------------------------------------
    def verifies(self, ingress: Trunk) -> bool:
        return self.verifier is not None and ingress.role == "carrier" and ingress.verify.mode != "off"

    def cached_certs(self, values: Sequence[str]) -> dict[str, CertEntry] | None:
        """The certificates of these Identity values from cache (hand them to `verify`), or None when one must
        be fetched before `verify` can give a real answer."""
        assert self.verifier is not None
        return self.verifier.cached_certs(values) if values else {}

    def certs_for(self, values: Sequence[str], fetched: Mapping[str, CertEntry] | None = None) -> dict[str, CertEntry]:
        """What was fetched for this call, else what is cached now (a URL still missing fails as 436)."""
        out: dict[str, CertEntry] = dict(fetched) if fetched else {}
        if self.fetcher is None:
            return out
        for value in values:
            url = x5u_of(value)
            if url is not None and url not in out:
                entry = self.fetcher.cached(url)
                if entry is not None:
                    out[url] = entry
        return out

    def verify(self, invite: Request, ingress: Trunk, wall_now: float,
               fetched: Mapping[str, CertEntry] | None = None,
               values: Sequence[str] | None = None) -> InboundOutcome:
        """`fetched`: the certificates fetched (or looked up) for this call; `values`: its Identity values
        when the caller has read them already."""
        assert self.verifier is not None
        if values is None:
            values = self.identity_values(invite)
        orig, dests = self.call_tns(invite)
        # A call holds its verdict for its life (policies, record, log line), not the per-header results:
        # ~350 bytes per held verified call (docs/PERFORMANCE.md, concurrency).
        result = self.verifier.verify(values, orig, dests, invite.header("date"), wall_now,
                                      self.certs_for(values, fetched), per_header=False)
        rejected = self.rejection(result, ingress)
        if rejected is not None:
            return rejected
        verstat = self.verstat_for(result, ingress)
        if ingress.verify.rcd_display_name and result.rcd_name and result.passed:
            return self._tag_with_name(invite, result, verstat, result.rcd_name)
        pais = invite.headers_all("p-asserted-identity")
        extra = self.attestation_headers(result, ingress)
        try:
            if pais:
                return InboundOutcome(result, pai=tuple(add_verstat(v, verstat) for v in pais), extra=tuple(extra))
            # Without the A-leg tag (the B-leg From gets its own): the same caller's From then reads the same,
            # and its parse is a cache hit on the B-leg.
            return InboundOutcome(result, from_value=add_verstat(invite.from_.format(drop_tag=True), verstat),
                                  extra=tuple(extra))
        except ParseError:
            return InboundOutcome(result, extra=tuple(extra))

    @staticmethod
    def rejection(result: VerificationResult, ingress: Trunk) -> InboundOutcome | None:
        """The trunk's verify settings turn a failure (or a missing Identity) into a rejection, or not."""
        settings = ingress.verify
        if result.status == "missing":
            if settings.on_missing == "reject":
                return InboundOutcome(result, reject=(428, "Use Identity Header"))
        elif not result.passed and settings.mode == "reject":
            code = result.sip_code or 438
            return InboundOutcome(result, reject=(code, result.reason or "Invalid Identity Header"),
                                  reason_header=result.reason_header())
        return None

    @staticmethod
    def verstat_for(result: VerificationResult, ingress: Trunk) -> str:
        verstat = result.verstat
        if verstat == VERSTAT_PASSED and ingress.verify.passed_only_for_attest_a and result.attest != "A":
            verstat = VERSTAT_NONE
        return verstat

    @staticmethod
    def attestation_headers(result: VerificationResult, ingress: Trunk) -> list[Header]:
        extra: list[Header] = []
        if ingress.verify.attestation_headers and result.passed:
            if result.attest:
                extra.append(Header.make("p-attestation-indicator", result.attest))
            if result.origid:
                extra.append(Header.make("p-origination-id", result.origid))
        return extra

    @staticmethod
    def _tag_with_name(invite: Request, result: VerificationResult, verstat: str, name: str) -> InboundOutcome:
        """verstat as usual, and the verified RCD name (RFC 9795 `nam`) as the caller's display name."""
        try:
            pais = tuple(set_display(add_verstat(v, verstat), name) for v in invite.headers_all("p-asserted-identity"))
            from_value = invite.from_.format(drop_tag=True)
            if not pais:
                from_value = add_verstat(from_value, verstat)
            return InboundOutcome(result, pai=pais or None, from_value=set_display(from_value, name))
        except ParseError:
            return InboundOutcome(result)

    # --- STI-AS -----------------------------------------------------------------------------------------------
    def signs(self, ingress: Trunk, egress: Trunk) -> bool:
        return ingress.name in self.trunk_signing and egress.role == "carrier"

    def sign(self, invite: Request, ingress: Trunk, wall_now: float) -> SignedCall | None:
        """The Identity (and Date) for the B-leg, or None when the call cannot be signed (no usable TN)."""
        trunk = self.trunk_signing[ingress.name]
        orig = self.orig_tn(invite)
        dests = self.dest_tns(invite)
        if orig is None or not dests:
            return None
        diverted = None
        if trunk.div != "off" and trunk.existing_identity == "keep" and invite.has("identity"):
            diverted = self._diverted_from(invite, trunk, dests[0])
            if diverted is not None:
                dests = dests[:1]  # the new target (R-URI); To still names the diverting number
        try:
            return self.signers.sign_call(trunk, orig, dests, wall_now, diverted)
        except SigningError:
            return None

    def _diverted_from(self, invite: Request, trunk: TrunkSigning, target: str) -> str | None:
        """RFC 8946: the number a signed call was forwarded from, when this trunk signs its diversions."""
        tn = diverting_tn(invite, self.tn_policy)
        if tn is None and trunk.div == "always":
            tn = try_canonical_tn(_user(invite.header("to")), self.tn_policy)
        if tn is None or tn == target:
            return None
        if trunk.div == "owned" and not (trunk.attestation is not None and trunk.attestation.owns(tn)):
            return None
        return tn

    def keeps_existing(self, ingress: Trunk) -> bool:
        return self.trunk_signing[ingress.name].existing_identity == "keep"
