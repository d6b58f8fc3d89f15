"""Chain semantics: first reject ends, last route wins, tags accumulate, dry-run changes nothing."""

from __future__ import annotations

from typing import Any

import msgspec

from policies import CONTINUE, CallContext, Chain, ChainEntry, Counters, Decision, merge
from policies.base import BasePolicy

from .helpers import ctx


class Fixed(BasePolicy):
    """Answers a fixed decision and counts its calls."""

    class Params(msgspec.Struct):
        pass

    def __init__(self, decision: Decision) -> None:
        super().__init__(None)
        self.decision = decision
        self.calls = 0

    def evaluate(self, c: CallContext) -> Decision:
        self.calls += 1
        return self.decision


class Boom(BasePolicy):
    def evaluate(self, c: CallContext) -> Decision:
        raise RuntimeError("bug")


def chain(*items: Any, counters: Counters | None = None) -> Chain:
    entries = []
    for i, item in enumerate(items):
        policy, mode = item if isinstance(item, tuple) else (item, "enforce")
        entries.append(ChainEntry(f"p{i}", "fixed", mode, policy))
    return Chain("a", entries, counters)


def test_first_reject_ends_the_chain() -> None:
    later = Fixed(Decision.tag(verstat="No-TN-Validation"))
    c = chain(Fixed(Decision.tag(display_prefix="X ")), Fixed(Decision.reject(603, "Decline")),
              Fixed(Decision.reject(486, "Busy Here")), later)
    r = c.evaluate(ctx())
    assert (r.decision.code, r.decision.display_prefix) == (603, None)  # tags dropped on reject
    assert later.calls == 0 and [s.name for s in r.steps] == ["p0", "p1"]


def test_last_route_wins_and_tags_accumulate() -> None:
    c = chain(
        Fixed(Decision.route(["t1"])),
        Fixed(Decision.tag(display_prefix="SPAM? ", add_headers=[("X-A", "1")], set_headers=[("X-S", "a")])),
        Fixed(Decision.route(["t2", "t3"])),
        Fixed(Decision.tag(display_prefix="SPAM? ", verstat="TN-Validation-Failed", attestation_indicator="C",
                           add_headers=[("X-A", "2")], set_headers=[("x-s", "b")])),
        Fixed(Decision.tag(display_prefix="[B] ", verstat="No-TN-Validation")),
    )
    d = c.evaluate(ctx()).decision
    assert d.action == "route" and d.trunks == ("t2", "t3")
    assert d.display_prefix == "SPAM? [B] "  # in chain order, the same prefix once
    assert d.verstat == "No-TN-Validation" and d.attestation_indicator == "C"  # last wins
    assert d.add_headers == (("X-A", "1"), ("X-A", "2"))
    assert d.set_headers == (("x-s", "b"),)


def test_single_decisions_pass_through_unchanged() -> None:
    only = Decision.tag(verstat="No-TN-Validation")
    assert chain(Fixed(CONTINUE), Fixed(only)).evaluate(ctx()).decision is only
    assert chain().evaluate(ctx()).decision is CONTINUE
    assert merge([]) is CONTINUE
    routed = merge([Decision.route(["t"]), Decision.tag(verstat="No-TN-Validation")])
    assert routed.action == "route" and routed.verstat == "No-TN-Validation"


def test_dry_run_changes_nothing_but_counts_and_reports() -> None:
    counters = Counters()
    would_reject = Fixed(Decision.reject(603, "Decline"))
    after = Fixed(Decision.tag(verstat="No-TN-Validation"))
    c = chain((would_reject, "dry-run"), (Fixed(Decision.route(["x"])), "dry-run"), after, counters=counters)
    r = c.evaluate(ctx())
    assert r.decision is after.decision  # as if the dry-run entries were not there
    assert after.calls == 1
    assert [(s.name, s.mode, s.decision.outcome) for s in r.dry_run] == [("p0", "dry-run", "reject"),
                                                                         ("p1", "dry-run", "route")]
    c.evaluate(ctx())
    assert counters.get("carrier", "p0", "dry-run", "reject") == 2
    assert counters.get("carrier", "p1", "dry-run", "route") == 2
    assert counters.get("carrier", "p2", "enforce", "tag") == 2
    assert r.as_dict()["steps"][0] == {"policy": "p0", "mode": "dry-run", "action": "reject", "code": 603,
                                       "reason": "Decline"}


def test_a_policy_bug_counts_as_error_and_continues() -> None:
    counters = Counters()
    c = chain(Boom(None), Fixed(Decision.reject(603, "Decline")), counters=counters)
    assert c.evaluate(ctx()).decision.code == 603
    assert counters.get("carrier", "p0", "enforce", "error") == 1


def test_on_call_end_reaches_policies_with_the_hook() -> None:
    seen: list[float] = []

    class Ends(Fixed):
        def on_call_end(self, c: CallContext, duration: float) -> None:
            seen.append(duration)

    c = chain(Fixed(CONTINUE), Ends(CONTINUE))
    c.on_call_end(ctx(), 4.5)
    assert seen == [4.5]


def test_reject_response_headers() -> None:
    d = Decision.reject(608, "Rejected", reason_header='STIR;cause=438;text="x"', jcard_url="https://j.example/c",
                        retry_after=5)
    assert d.response_headers() == (("Reason", 'STIR;cause=438;text="x"'),
                                    ("Call-Info", "<https://j.example/c>;purpose=jcard"), ("Retry-After", "5"))


def test_context_build_keeps_only_wanted_headers() -> None:
    c = CallContext.build(call_id="x", trunk="a", orig="tel:+1-212-555-1234", dest="sip:+13125557890@h",
                          headers=[("From", "a"), ("x-secret", "s"), ("identity", "i1"), ("identity", "i2")])
    assert c.orig_tn == "12125551234" and c.dest_tn == "13125557890"
    assert dict(c.headers) == {"from": ("a",), "identity": ("i1", "i2")}
    assert c.identity_present and not c.verified and c.verstat is None
