"""Per-trunk policy chains: route, tag or reject every call after STIR verification (docs/POLICIES.md).

The engine's API: `load_policies(path, ...) -> PolicySet` (then `await pset.setup()`), swapped atomically
on reload; `pset.chain_for(trunk) -> Chain`, kept by the call; `chain.evaluate(CallContext.build(...))
-> ChainResult`; `chain.on_call_end(ctx, duration)` when an answered call ends.
"""

from .base import CONTINUE, DEFAULT_HEADERS, BasePolicy, CallContext, DataFile, Decision, Params, Policy
from .chain import Chain, ChainEntry, ChainResult, Counters, Step, merge
from .loader import BUILTINS, PolicyEnv, PolicyError, PolicySet, load_policies, load_policies_text

__all__ = [
    "BUILTINS",
    "CONTINUE",
    "DEFAULT_HEADERS",
    "BasePolicy",
    "CallContext",
    "Chain",
    "ChainEntry",
    "ChainResult",
    "Counters",
    "DataFile",
    "Decision",
    "Params",
    "Policy",
    "PolicyEnv",
    "PolicyError",
    "PolicySet",
    "Step",
    "load_policies",
    "load_policies_text",
    "merge",
]
