"""/readyz's answer (`proxy.server.not_ready`): the same judgement as the engine's answer to an OPTIONS probe."""

from __future__ import annotations

from proxy.server import not_ready
from tests.unit.core.sipfake import A, Harness, build_request, make_engine


def options_status(h: Harness) -> int | None:
    req = build_request("OPTIONS", "sip:127.0.0.1:5060", via=["SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-opt"],
                        from_="<sip:probe@127.0.0.10>;tag=p", to="<sip:127.0.0.1>", call_id="probe-1", cseq=1)
    (out,) = h.feed(req, A)
    return out.status


def test_ready_unless_draining_or_at_a_hard_bound() -> None:
    h = Harness(make_engine())
    engine = h.engine
    assert not_ready(engine) == "" and options_status(h) == 200
    engine.calls_in_setup = engine.config.overload.max_calls_in_setup
    assert not_ready(engine) == "overloaded: calls-in-setup" and options_status(h) == 503
    engine.calls_in_setup = 0
    engine.draining = True
    assert not_ready(engine) == "draining" and options_status(h) == 503
