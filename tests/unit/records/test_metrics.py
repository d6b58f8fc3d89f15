"""Metrics: what observe_call counts comes out of /metrics text as prometheus-client's parser reads it."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from proxy.config import RecordsSettings
from proxy.metrics import Histo, Metrics, call_outcome, engine_snapshot
from proxy.records import RecordWriter
from tests.unit.core.sipfake import Harness
from tests.unit.records.helpers import answered_call, rec, rejected_call


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_calls_policies_failures_and_x5u(tmp_path: Path) -> None:
    m = Metrics(process_metrics=False)
    m.observe_call(rec(ingress="carrier", answered_at=1.0, verification="passed", verstat="TN-Validation-Passed",
                       attest="A", x5u_fetched=True))
    m.observe_call(rec(ingress="carrier", answered_at=1.0, verification="passed", verstat="TN-Validation-Passed",
                       attest="A"))
    m.observe_call(rec(ingress="carrier", verification="failed", verstat="TN-Validation-Failed", status=438,
                       end_reason="rejected:438", failures=("signature", "iat-stale"),
                       policy_decisions=(("velocity", "dry-run", "reject"),)))
    m.observe_call(rec(ingress="customer", status=487, end_reason="cancelled"))
    w = RecordWriter(RecordsSettings(path=str(tmp_path / "r.db"), queue_size=1))
    w.put(rec())
    w.put(rec())
    m.bind(lambda: {"active_calls": 3, "transactions": 7, "invites": 11}, w)
    m.observe_forward_delay(0.0003)
    m.observe_forward_delay(2.0)
    s = _samples(m)
    calls = "stirgate_calls_total"
    assert s[(calls, (("attest", "A"), ("outcome", "answered"), ("trunk", "carrier"),
                      ("verstat", "TN-Validation-Passed")))] == 2
    assert s[(calls, (("attest", "none"), ("outcome", "rejected"), ("trunk", "carrier"),
                      ("verstat", "TN-Validation-Failed")))] == 1
    assert s[(calls, (("attest", "none"), ("outcome", "cancelled"), ("trunk", "customer"), ("verstat", "none")))] == 1
    assert s[("stirgate_policy_hits_total", (("action", "reject"), ("mode", "dry-run"), ("policy", "velocity")))] == 1
    assert s[("stirgate_verification_failures_total", (("reason", "signature"),))] == 1
    assert s[("stirgate_x5u_cache_hits_total", ())] == 2 and s[("stirgate_x5u_cache_misses_total", ())] == 1
    assert s[("stirgate_active_calls", ())] == 3 and s[("stirgate_transactions", ())] == 7
    assert s[("stirgate_sip_events_total", (("event", "invites"),))] == 11
    assert s[("stirgate_record_queue_depth", ())] == 1 and s[("stirgate_records_dropped_total", ())] == 1
    h = "stirgate_invite_forward_delay_seconds"
    assert s[(h + "_bucket", (("le", "0.00025"),))] == 0 and s[(h + "_bucket", (("le", "0.0005"),))] == 1
    assert s[(h + "_bucket", (("le", "+Inf"),))] == 2 and s[(h + "_count", ())] == 2
    assert abs(s[(h + "_sum", ())] - 2.0003) < 1e-9
    w.flush_and_close()


def test_histo_bounds_are_inclusive() -> None:
    h = Histo((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 3.0):
        h.observe(v)
    assert h.counts == [2, 2, 1] and h.count == 5


def test_outcomes_and_engine_snapshot() -> None:
    assert call_outcome(rec(answered_at=1.0)) == "answered"
    assert call_outcome(rec(end_reason="no-answer")) == "no-answer"
    assert call_outcome(rec(end_reason="failed:503")) == "failed"
    assert call_outcome(rec(end_reason="bye-early")) == "cancelled"
    h = Harness()
    answered_call(h)
    rejected_call(h)
    snap = engine_snapshot(h.engine)
    assert snap["invites"] == 2 and snap["calls_ended"] == 2 and snap["active_calls"] == 0
    assert "transactions" in snap


def test_gc_passes_are_exported() -> None:
    m = Metrics(process_metrics=False)
    m.observe_gc_pass(0.004, 0)
    m.observe_gc_pass(0.7, 25)
    got = _samples(m)
    assert got[("stirgate_gc_pass_seconds_count", ())] == 2
    assert got[("stirgate_gc_pass_seconds_bucket", (("le", "0.01"),))] == 1
    assert got[("stirgate_gc_pass_seconds_bucket", (("le", "1.0"),))] == 2
    assert got[("stirgate_gc_unreachable_total", ())] == 25
