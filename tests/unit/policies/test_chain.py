"""Chain semantics: first reject ends, last route wins, tags accumulate, dry-run changes nothing."""

from __future__ import annotations

from typing import Any

import msgspec

from policies import CONTINUE, CallContext, Chain, ChainEntry, Counters, Decision, merge
from policies.base import BasePolicy, CallOutcome
from policies.filters import Filter
from policies.state import MemoryStore, Op, Tally, Window

from .helpers import ctx, passed, run


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


class Counting(Fixed):
    """A stateful policy: observes one Window op, fires its decision when the count passes 1."""

    hit = Decision.reject(603, "Decline")

    def observe(self, c: CallContext) -> list[Op]:
        return [Window(f"counting:{id(self)}", c.call_id, 60.0, 5)]

    def evaluate(self, c: CallContext) -> Decision:
        (count,) = c.state_for(self) or (0,)
        return self.hit if count > 1 else CONTINUE

    def ended(self, c: CallContext, outcome: CallOutcome) -> list[Op]:
        return [Tally(f"ended:{id(self)}", ("answered",), (int(outcome.answered),), 60.0)]


def test_ended_collects_what_policies_record() -> None:
    p = Counting(CONTINUE)
    c = chain(Fixed(CONTINUE), p)
    (op,) = c.ended(ctx(), CallOutcome(True, 4.5))
    assert isinstance(op, Tally) and op.add == (1,)


def test_state_gathered_before_evaluate() -> None:
    p = Counting(CONTINUE)
    c = chain(p)
    store = MemoryStore()
    assert run(c, ctx(now=1), store).decision.action == "continue"
    assert run(c, ctx(now=2), store).decision.code == 603


def test_state_missing_open_continues_and_is_counted_closed_applies_the_action() -> None:
    counters = Counters()
    p = Counting(CONTINUE)
    c = chain(p, counters=counters)
    request = c.observe(ctx())
    assert request is not None and len(request.ops) == 1
    open_result = c.evaluate(ctx(), request.facts(None), "open")
    assert open_result.decision.action == "continue"
    assert counters.get("carrier", "p0", "enforce", "state-miss") == 1
    assert c.evaluate(ctx(), request.facts(None), "closed").decision.code == 603


def test_when_filter_skips_entries_and_their_state() -> None:
    counters = Counters()
    p = Counting(CONTINUE)
    only_c = Filter.parse({"attest": ["C"]})
    c = Chain("carrier", [ChainEntry("p0", "counting", "enforce", p, when=only_c)], counters)
    store = MemoryStore()
    request = c.observe(ctx(verification=passed("A")))
    assert request is not None and (request.ops, request.slices) == ([], [])
    for _ in range(3):
        assert run(c, ctx(verification=passed("A")), store).decision.action == "continue"
    assert counters.items() == []  # never applied: not counted
    run(c, ctx(verification=passed("C")), store)
    assert run(c, ctx(verification=passed("C")), store).decision.code == 603


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
