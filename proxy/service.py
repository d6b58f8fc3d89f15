"""STI-AS/VS for front ends other than the inline B2BUA: the SIP redirect mode and the ATIS-1000082 API.

Both reuse what an inline call uses (the Authenticator's signer and verifier, the trunk's verify settings,
the trunk's policy chain); this module holds the few steps they share: the policy context of an INVITE, the
chain's verdict, and a whole verification of a call described only by its numbers. Pure: time is passed in.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from policies.base import CallContext, Decision
from policies.chain import ChainResult, OnStateError
from policies.loader import PolicySet
from policies.state import Op, StateStore
from proxy.authentication import Authenticator
from proxy.config import Trunk
from proxy.sip.grammar import ParseError
from proxy.sip.message import Request
from proxy.stir.certs import CertEntry
from proxy.stir.tn import try_canonical_tn
from proxy.stir.verifier import VerificationResult

__all__ = ["NumbersVerdict", "invite_context", "judge", "verify_numbers"]


def invite_context(auth: Authenticator, pset: PolicySet, invite: Request, trunk: Trunk, source: tuple[str, int],
                   verification: VerificationResult | None, wall_now: float) -> CallContext:
    """The CallContext of an INVITE, built as the inline engine builds it (`Engine._judge`)."""
    try:
        display = invite.from_.display
    except ParseError:
        display = None
    if display is not None and len(display) > 1 and display[0] == '"' and display[-1] == '"':
        display = display[1:-1]
    orig_tn, dests = auth.call_tns(invite)
    names = pset.header_names
    return CallContext.build(
        call_id=invite.call_id,
        trunk=trunk.name,
        trunk_role=trunk.role,
        source=source,
        orig=invite.header("p-asserted-identity") or invite.header("from"),
        dest=invite.uri,
        display_name=display,
        verification=verification,
        headers=[(h.key, h.value) for h in invite.headers if h.key in names],
        now=wall_now,
        tn_policy=auth.tn_policy,
        header_names=names,
        orig_tn=orig_tn,
        dest_tn=dests[0] if dests else None,
    )


def judge(pset: PolicySet | None, trunk: Trunk, ctx: CallContext | None, state: StateStore | None = None,
          on_error: OnStateError = "open", writes: list[tuple[list[Op], float]] | None = None) -> ChainResult | None:
    """The trunk's chain over the context, or None when the trunk has no chain (or no context was built).

    Stateful policies get their state from a synchronous store at once. These front ends answer without
    keeping the request: with an asynchronous store (Redis) the call's ops are still recorded (`writes`, sent
    by the transport), so it counts for later calls, but it is decided as a state miss (`on_error`)."""
    if pset is None or ctx is None:
        return None
    chain = pset.chain_for(trunk.name)
    if not len(chain):
        return None
    request = chain.observe(ctx)
    facts = None
    if request is not None:
        if not request.ops:
            facts = request.facts([])
        elif state is not None and state.synchronous:
            facts = request.facts(state.execute(request.ops, ctx.now))
        else:
            if writes is not None:
                writes.append((request.ops, ctx.now))
            facts = request.facts(None)
    return chain.evaluate(ctx, facts, on_error)


def has_chain(pset: PolicySet | None, trunk: Trunk) -> bool:
    return pset is not None and len(pset.chain_for(trunk.name)) > 0


@dataclass(frozen=True, slots=True)
class NumbersVerdict:
    """A verification request's answer: the verifier's result, the verstat to pass on, and what the trunk's
    settings and chain decided (`reject` set when the call would be refused, with its headers)."""

    result: VerificationResult
    verstat: str
    reject: tuple[int, str] | None
    #: Response headers of a rejection (Reason, Call-Info jCard, Retry-After), as (name, value).
    reject_headers: tuple[tuple[str, str], ...]
    #: The chain's merged decision (None: no chain ran, e.g. rejected by verification first).
    decision: Decision | None
    #: (policy, mode, outcome, note) per chain entry, for the call record.
    steps: tuple[tuple[str, str, str, str], ...]
    #: Headers to add towards the called party: attestation headers, policy tags.
    headers: tuple[tuple[str, str], ...]


def verify_numbers(auth: Authenticator, pset: PolicySet | None, trunk: Trunk, *, call_id: str,
                   source: tuple[str, int], values: Sequence[str], orig: str, dests: Sequence[str], time: int,
                   wall_now: float, fetched: Mapping[str, CertEntry] | None = None, state: StateStore | None = None,
                   on_error: OnStateError = "open",
                   writes: list[tuple[list[Op], float]] | None = None) -> NumbersVerdict:
    """Verify a call given by its numbers as a call from `trunk` would be: its verify settings first (a reject
    there ends it, as inline), then its policy chain. `time` stands for the call's Date header."""
    assert auth.verifier is not None
    date = email.utils.formatdate(time, usegmt=True)
    result = auth.verifier.verify(values, orig, dests, date, wall_now, auth.certs_for(values, fetched))
    rejected = auth.rejection(result, trunk)
    if rejected is not None and rejected.reject is not None:
        headers = (("Reason", rejected.reason_header),) if rejected.reason_header else ()
        return NumbersVerdict(result, result.verstat, rejected.reject, headers, None, (), ())
    verstat = auth.verstat_for(result, trunk)
    added = tuple((h.raw.split(":", 1)[0], h.value) for h in auth.attestation_headers(result, trunk))
    if not has_chain(pset, trunk):
        return NumbersVerdict(result, verstat, None, (), None, (), added)
    assert pset is not None
    policy = auth.tn_policy
    ctx = CallContext.build(
        call_id=call_id, trunk=trunk.name, trunk_role=trunk.role, source=source, orig=orig, dest=dests[0],
        verification=result, headers=(("identity", v) for v in values), now=wall_now, tn_policy=policy,
        header_names=pset.header_names, orig_tn=try_canonical_tn(orig, policy),
        dest_tn=try_canonical_tn(dests[0], policy),
    )
    chain = judge(pset, trunk, ctx, state, on_error, writes)
    assert chain is not None
    d = chain.decision
    steps = tuple((s.name, s.mode, s.decision.outcome, s.decision.note) for s in chain.steps)
    if d.action == "reject":
        return NumbersVerdict(result, verstat, (d.code or 603, d.reason or "Decline"), d.response_headers(), d,
                              steps, ())
    if d.attestation_indicator:
        added = (*[h for h in added if h[0].lower() != "p-attestation-indicator"],
                 ("P-Attestation-Indicator", d.attestation_indicator))
    added = (*added, *d.set_headers, *d.add_headers)
    return NumbersVerdict(result, d.verstat or verstat, None, (), d, steps, added)
