"""CallContexts for policy tests."""

from __future__ import annotations

import itertools
from typing import Any

from policies import CallContext, Decision
from policies.base import CallOutcome
from policies.chain import Chain, ChainResult
from policies.state import MemoryStore, StateStore
from proxy.stir.verifier import VerificationResult


def passed(attest: str = "A", spc: str = "123A", origid: str = "11111111-2222-3333-4444-555555555555"
           ) -> VerificationResult:
    return VerificationResult("passed", "TN-Validation-Passed", None, None, attest, origid, spc, "CN=SP")


def failed(code: int = 438, reason: str = "Invalid Identity Header", attest: str = "A") -> VerificationResult:
    return VerificationResult("failed", "TN-Validation-Failed", code, reason, attest, None, "123A", None)


def missing() -> VerificationResult:
    return VerificationResult("missing", "No-TN-Validation", 428, "Use Identity Header")


IDENTITY = "eyJhbGciOiJFUzI1NiJ9.eyJhdHRlc3QiOiJBIn0.{sig};info=<https://cert.example/sp.pem>;alg=ES256;ppt=shaken"


_CALL_IDS = itertools.count(1)
#: The store `judge` uses unless given one (a test wanting isolation passes its own).
STORE = MemoryStore()


def judge(policy: Any, c: CallContext, store: StateStore | None = None) -> Decision:
    """What the engine does for one policy: its observe ops run on the store, then evaluate with the results."""
    observe = getattr(policy, "observe", None)
    if observe is not None:
        ops = list(observe(c))
        results = (STORE if store is None else store).execute(ops, c.now) if ops else []
        c = c.replace(facts={policy: results})
    decision: Decision = policy.evaluate(c)
    return decision


def run(chain: Chain, c: CallContext, store: StateStore | None = None) -> ChainResult:
    """What the engine does with a chain: its state ops on the store, then evaluate with the results."""
    request = chain.observe(c)
    facts = None
    if request is not None:
        facts = request.facts((STORE if store is None else store).execute(request.ops, c.now))
    return chain.evaluate(c, facts)


def end(policy: Any, c: CallContext, duration: float | None, store: StateStore | None = None) -> None:
    """The call ended (answered when `duration` is not None): record what the policy wants."""
    outcome = CallOutcome(duration is not None, duration or 0.0)
    ops = list(policy.ended(c, outcome))
    if ops:
        (STORE if store is None else store).execute(ops, c.now)


def ctx(orig: str | None = "+12125551234", dest: str | None = "+13125557890", *,
        verification: VerificationResult | str | None = "auto", identity: bool | str = True,
        headers: list[tuple[str, str]] | None = None, call_id: str | None = None, now: float = 1_000_000.0,
        **kw: Any) -> CallContext:
    hs = list(headers or [])
    if orig is not None and not any(h[0] == "from" for h in hs):
        hs.append(("from", f"<sip:{orig}@carrier.example>;tag=1"))
    if identity:
        sig = identity if isinstance(identity, str) else "S" * 86
        hs.append(("identity", IDENTITY.format(sig=sig)))
    if verification == "auto":
        verification = passed() if identity else None
    assert not isinstance(verification, str)
    trunk = kw.pop("trunk", "carrier")
    source = kw.pop("source", ("192.0.2.1", 5060))
    call_id = call_id or f"call-{next(_CALL_IDS)}"
    return CallContext.build(call_id=call_id, trunk=trunk, source=source, orig=orig, dest=dest,
                             verification=verification, headers=hs, now=now, **kw)
