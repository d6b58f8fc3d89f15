"""CallContexts for policy tests."""

from __future__ import annotations

from typing import Any

from policies import CallContext
from proxy.stir.verifier import VerificationResult


def passed(attest: str = "A", spc: str = "123A", origid: str = "11111111-2222-3333-4444-555555555555"
           ) -> VerificationResult:
    return VerificationResult("passed", "TN-Validation-Passed", None, None, attest, origid, spc, "CN=SP")


def failed(code: int = 438, reason: str = "Invalid Identity Header", attest: str = "A") -> VerificationResult:
    return VerificationResult("failed", "TN-Validation-Failed", code, reason, attest, None, "123A", None)


def missing() -> VerificationResult:
    return VerificationResult("missing", "No-TN-Validation", 428, "Use Identity Header")


IDENTITY = "eyJhbGciOiJFUzI1NiJ9.eyJhdHRlc3QiOiJBIn0.{sig};info=<https://cert.example/sp.pem>;alg=ES256;ppt=shaken"


def ctx(orig: str | None = "+12125551234", dest: str | None = "+13125557890", *,
        verification: VerificationResult | str | None = "auto", identity: bool | str = True,
        headers: list[tuple[str, str]] | None = None, call_id: str = "call-1", now: float = 1_000_000.0,
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
    return CallContext.build(call_id=call_id, trunk=trunk, source=source, orig=orig, dest=dest,
                             verification=verification, headers=hs, now=now, **kw)
