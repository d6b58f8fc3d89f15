"""POST /feedback: a label on a past call ("robocall", "wanted") fed back into the reputation its gateway and
number carry in the risk score (policies.risk_score), through the same state store the calls use.

A customer complaint or an analyst's verdict is the strongest signal there is (First Orion and Hiya build on
crowd reports); "wanted" labels cancel robocall ones, so a legitimate bulk caller reported by mistake recovers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from policies.risk_score import RiskScore
from policies.state import Op
from proxy.engine import Engine
from proxy.records import CallRecord

__all__ = ["LABELS", "apply_feedback"]

LABELS = ("robocall", "wanted")


def _values(rec: CallRecord) -> dict[str, str | None]:
    """The call's key values by key kind, as recorded (SPC and origid only from a passed verification)."""
    trusted = rec.verification == "passed" or rec.signed
    return {
        "orig_tn": rec.orig,
        "dest_tn": rec.dest,
        "origid": rec.origid if trusted else None,
        "spc": rec.spc if trusted else None,
        "trunk": rec.ingress,
        "source_ip": rec.source_ip or None,
    }


def apply_feedback(engine: Engine, rec: CallRecord, label: str, flush: Callable[[], None] = lambda: None,
                   now: float | None = None) -> dict[str, Any]:
    """Record `label` for the call's gateway and number in every risk score scope the engine's policies use.
    Returns what was applied (for the API's answer and the log)."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}")
    values = _values(rec)
    ops: list[Op] = []
    gateways: list[str] = []
    scopes: set[str] = set()
    policies = engine.policies
    for entry in policies.entries() if policies is not None else ():
        policy = entry.policy
        if not isinstance(policy, RiskScore) or policy.params.scope in scopes:
            continue
        scopes.add(policy.params.scope)
        gateway = policy.gateway_from(values)
        if gateway is not None:
            gateways.append(gateway)
        ops.extend(policy.feedback(gateway, rec.orig, label))
    when = time.time() if now is None else now
    if ops:
        if engine.state.synchronous:
            engine.state.record(ops, when)
        else:
            engine.state_writes.append((ops, when))
            flush()
    return {"call_id": rec.a_call_id, "label": label, "orig": rec.orig, "gateways": gateways, "ops": len(ops)}
