"""A call whose policies need shared state waits for it (bounded by state.timeout_ms), in the sans-I/O engine.

The asynchronous store here is the engine's side of the contract only (requests out, answers in); the real
Redis behind it is tested in tests/integration/test_state_redis.py and test_shared_state_e2e.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.loader import load_policies_text
from policies.state import Op, Tally, Window
from proxy.config import Config

from .sipfake import A, B, Callee, Caller, Harness, b_invite, loopback_config, make_engine, start_call

POLICY = "trunks:\n  customer:\n    - policy: velocity\n      params: {max_calls: 1, window: 60}\n"


class Deferred:
    """The engine's view of an asynchronous store: it never answers by itself."""

    synchronous = False

    def execute(self, ops: Sequence[Op], now: float) -> list[Any]:
        raise AssertionError("an asynchronous store is never executed inline")


def harness(on_error: str = "open", policy: str = POLICY) -> Harness:
    config: Config = loopback_config(**{"\ntrunks:": f"\nstate: {{timeout_ms: 20, on_error: {on_error}}}\ntrunks:"})
    engine = make_engine(config)
    engine.state = Deferred()
    engine.policies = load_policies_text(policy, trunks=[t.name for t in config.trunks],
                                         counters=engine.policy_counters)
    return Harness(engine)


def test_the_call_waits_for_its_state_then_is_decided_with_it() -> None:
    h = harness()
    caller, outs = start_call(h)
    assert outs.statuses() == [100] and not outs.to(B)  # no B-leg before the state is in
    ((call_id, ops, now),) = h.engine.state_requests
    assert call_id == caller.call_id and isinstance(ops[0], Window) and now == h.now + h.engine.wall_offset  # wall time
    h.engine.state_requests.clear()
    h.engine.state_ready(call_id, [1], h.now)
    assert b_invite(h.drain())
    assert h.engine.state_waiting == 0

    _second, outs = start_call(h, Caller(h))
    ((call_id, _, _),) = h.engine.state_requests
    h.engine.state_ready(call_id, [2], h.now)  # over max_calls
    assert h.drain().to(A).statuses() == [503]


def test_no_answer_in_time_open_lets_the_call_through_and_counts_the_miss() -> None:
    h = harness("open")
    start_call(h)
    outs = h.advance(0.021)
    assert b_invite(outs)
    assert h.engine.stats["state_timeouts"] == 1 and h.engine.state_waiting == 0
    assert h.engine.policy_counters.get("customer", "velocity", "enforce", "state-miss") == 1
    (call_id, _, _), = h.engine.state_requests
    h.engine.state_ready(call_id, [5], h.now)  # late: the call was decided without it
    assert not h.drain()


def test_no_answer_in_time_closed_applies_the_policy_action() -> None:
    h = harness("closed")
    start_call(h)
    assert h.advance(0.021).to(A).statuses() == [503]


def test_store_failure_is_a_miss_counted_apart() -> None:
    h = harness("open")
    start_call(h)
    (call_id, _, _), = h.engine.state_requests
    h.engine.state_ready(call_id, None, h.now)
    assert b_invite(h.drain())
    assert h.engine.stats["state_errors"] == 1 and h.engine.stats["state_timeouts"] == 0


def test_a_call_cancelled_while_waiting_frees_its_wait() -> None:
    h = harness()
    caller, _ = start_call(h)
    outs = h.feed(caller.cancel(), A)
    assert 487 in outs.to(A).statuses()
    assert h.engine.state_waiting == 0
    (call_id, _, _), = h.engine.state_requests
    h.engine.state_ready(call_id, [1], h.now)
    assert not h.drain().to(B)


def test_ended_calls_are_recorded_through_the_store() -> None:
    policy = ("trunks:\n  customer:\n    - policy: velocity\n"
              "      params: {max_short_share: 0.5, min_completed: 1}\n")
    h = harness(policy=policy)
    caller, outs = start_call(h)
    (call_id, _, _), = h.engine.state_requests
    h.engine.state_ready(call_id, [(0, 0)], h.now)
    callee = Callee(h, b_invite(h.drain()))
    outs = h.feed(callee.reply(None, 200), B)
    caller.learn(outs.to(A).responses(200).one().msg)  # type: ignore[arg-type]
    h.feed(caller.ack(), A)
    h.now += 2.0
    bye = h.feed(caller.request("BYE"), A).to(B).requests("BYE").one().msg
    h.feed(callee.reply(bye, 200), B)  # type: ignore[arg-type]
    ((ops, _),) = h.engine.state_writes
    (tally,) = ops
    assert isinstance(tally, Tally) and tally.add == (1, 1)  # answered, short (2 s < 6 s)


def test_memory_store_needs_no_wait() -> None:
    config = loopback_config()
    engine = make_engine(config)
    engine.policies = load_policies_text(POLICY, trunks=[t.name for t in config.trunks])
    h = Harness(engine)
    _, outs = start_call(h)
    assert b_invite(outs) and not engine.state_requests
    _, outs = start_call(h, Caller(h))
    assert outs.to(A).statuses() == [100, 503]
