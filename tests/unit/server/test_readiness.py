"""/readyz's answer (`Engine.not_ready`): the same judgement as the engine's answer to an OPTIONS probe."""

from __future__ import annotations

from tests.unit.core.sipfake import A, Harness, build_request, make_engine


def options_status(h: Harness) -> int | None:
    req = build_request("OPTIONS", "sip:127.0.0.1:5060", via=["SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-opt"],
                        from_="<sip:probe@127.0.0.10>;tag=p", to="<sip:127.0.0.1>", call_id="probe-1", cseq=1)
    (out,) = h.feed(req, A)
    return out.status


def test_ready_unless_draining_or_at_a_hard_bound() -> None:
    h = Harness(make_engine())
    engine = h.engine
    assert engine.not_ready() == "" and options_status(h) == 200
    engine.calls_in_setup = engine.config.overload.max_calls_in_setup
    assert engine.not_ready() == "overloaded: calls-in-setup" and options_status(h) == 503
    engine.calls_in_setup = 0
    engine.draining = True
    assert engine.not_ready() == "draining" and options_status(h) == 503
