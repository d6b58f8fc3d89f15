"""Ended calls leave no reference cycles: stirgate runs with the automatic cyclic GC off (proxy.server.tune_gc),
so a cycle among call state would be memory held until the periodic full collection, at every call."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

from proxy.sip.message import Request, Response, parse

from .sipfake import A, B, Callee, Harness, b_invite, established_call, start_call


def _resp(data: bytes) -> Response:
    msg = parse(data)
    assert isinstance(msg, Response)
    return msg


def _req(data: bytes) -> Request:
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def caller_hangs_up(h: Harness) -> None:
    caller, callee = established_call(h)
    outs = h.feed(caller.request("BYE"), A)
    h.feed(callee.reply(_req(outs.to(B).one().data), 200), B)


def callee_busy(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    outs = h.feed(callee.reply(None, 486, "Busy Here"), B)
    h.feed(caller.ack_non2xx(_resp(outs.to(A).one().data)), A)


def caller_cancels(h: Harness) -> None:
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(caller.cancel(), A)
    final = _resp(outs.to(A)[1].data)
    cancel = _req(outs.to(B).one().data)
    h.feed(callee.reply(cancel, 200), B)
    h.feed(callee.reply(None, 487, "Request Terminated"), B)
    h.feed(caller.ack_non2xx(final), A)


def callee_never_answers(h: Harness) -> None:
    start_call(h)


@pytest.fixture
def collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("scenario", [caller_hangs_up, callee_busy, caller_cancels, callee_never_answers])
def test_ended_calls_leave_no_cycles(scenario: Callable[[Harness], None], collector: None) -> None:
    h = Harness()
    for _ in range(3):
        scenario(h)
    h.run_until(h.now + 600.0)
    h.settle()
    h.assert_clean()
    assert h.engine.stats["calls_ended"] == 3
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    ours = sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("proxy.")})
    assert ours == []
