"""The campaign bench's traffic model (bench/traffic.py) and its runner (bench/campaigns.py).

The model must be deterministic for a seed and hold the mix docs/ANALYTICS.md claims; the runner must read
what the engine did from what it sent (a display prefix, a reject) and leave no call unaccounted for.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.campaigns import play, summarize
from bench.policy_path import record, replay
from bench.traffic import CAMPAIGN_KINDS, LEGIT_KINDS, PLAN, Traffic, generate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def day() -> Traffic:
    return generate(seed=3, hours=24, scale=20_000)


def test_same_seed_same_traffic_other_seed_other_traffic() -> None:
    a = generate(seed=11, hours=4, scale=3_000)
    b = generate(seed=11, hours=4, scale=3_000)
    c = generate(seed=12, hours=4, scale=3_000)
    assert a.calls == b.calls
    assert a.campaigns == b.campaigns
    assert a.calls != c.calls


def test_calls_are_in_time_order_within_the_simulated_hours(day: Traffic) -> None:
    times = [c.t for c in day.calls]
    assert times == sorted(times)
    assert times[0] >= 0.0 and times[-1] < 24 * 3600.0
    assert abs(len(day.calls) - 20_000) < 200


def test_campaigns_average_about_13_calls_95_percent_under_27(day: Traffic) -> None:
    m = day.mix()
    assert 11.5 <= m["campaign_size_mean"] <= 14.5
    assert m["campaign_size_p95"] <= 27
    assert set(m["campaigns_by_kind"]) == set(CAMPAIGN_KINDS)
    assert 0.07 <= m["campaign_share"] <= 0.09
    # every campaign's calls are numbered 1..size, in time order, from one operation
    by_campaign: dict[int, list[int]] = {}
    for c in day.calls:
        if not c.legit:
            by_campaign.setdefault(c.campaign, []).append(c.seq)
    sizes = {k.id: k.size for k in day.campaigns}
    for cid, seqs in by_campaign.items():
        assert seqs == list(range(1, sizes[cid] + 1))


def test_legitimate_mix_holds_the_traps(day: Traffic) -> None:
    m = day.mix()
    assert set(m["calls_by_kind"]) == set(LEGIT_KINDS) | set(CAMPAIGN_KINDS)
    assert 0.27 <= m["legit_unsigned_share"] <= 0.33
    assert 0.03 <= m["legit_neighbor_share"] <= 0.06
    assert 0.60 <= m["legit_answer_share"] <= 0.70
    assert 0.20 <= m["legit_short_share_of_answered"] <= 0.30
    assert m["campaign_answer_share"] < 0.4
    legit = [c for c in day.calls if c.legit]
    # residential numbers recur; bulk callers use 1-5 numbers for many destinations
    recurring = Counter(c.orig for c in legit if c.kind == "residential")
    assert sum(n > 1 for n in recurring.values()) > 0.3 * len(recurring)
    for party in {c.party for c in legit if c.kind == "bulk"}:
        calls = [c for c in legit if c.party == party]
        assert 1 <= len({c.orig for c in calls}) <= 5
        assert len({c.dest for c in calls}) > 0.5 * len(calls)
    # unsigned legit calls come from several carrier addresses
    assert len({c.source for c in legit if c.attest is None}) >= 4
    # callees are the operator's subscribers
    assert all(PLAN.is_own(c.dest[-10:]) for c in legit[:2000])


def test_campaign_kinds_look_like_what_they_are(day: Traffic) -> None:
    robo = [c for c in day.calls if not c.legit]
    kinds: dict[str, list] = {}
    for c in robo:
        kinds.setdefault(c.kind, []).append(c)
    assert {c.attest for c in kinds["attest_c"]} == {"C"}
    assert len({c.orig for c in kinds["attest_c"]}) > 0.95 * len(kinds["attest_c"])   # fresh number each call
    assert {c.attest for c in kinds["unsigned_gw"]} == {None}
    assert all(c.neighbor for c in kinds["neighbor"])
    assert len({c.orig for c in kinds["short_pool"]}) <= 100                            # two pools of 20-50
    assert {c.attest for c in kinds["short_pool"]} == {"B"}
    assert all(c.duration < 6.0 for c in kinds["short_pool"] if c.outcome == "answered")
    seq_campaigns: dict[int, list[str]] = {}
    for c in kinds["sequential"]:
        seq_campaigns.setdefault(c.campaign, []).append(c.dest[-10:])
    # a walk stays inside one exchange (block-wise: one hundred-block)
    assert all(len({d[:6] for d in dests}) == 1 for dests in seq_campaigns.values())
    forms = {("+" if c.orig.startswith("+") else "") + str(len(c.orig.lstrip("+"))) for c in kinds["invalid"]}
    assert {"7", "9", "11"} <= forms                                                    # unprefixed forms


def test_runner_reads_the_engines_decisions() -> None:
    """Baseline built-ins: neighbour spoofing is tagged with its display prefix, '+1' impossible numbers are
    rejected with 603, attest-A residential calls pass untouched, and every call is accounted for."""
    full = generate(seed=5, hours=3, scale=4_000)
    keep = [c for c in full.calls if c.kind in ("neighbor", "invalid")]
    keep += [c for c in full.calls if c.kind == "residential"][:150]
    keep.sort(key=lambda c: c.t)
    traffic = Traffic(full.seed, full.hours, full.start_hour, keep, full.campaigns)
    replay = play(traffic, ROOT / "bench" / "baseline-policies.yaml")
    res = replay.results
    assert not [r for r in res if r.verdict == "lost"]
    pairs = list(zip(traffic.calls, res, strict=True))
    neighbor = [(c, r) for c, r in pairs if c.kind == "neighbor"]
    assert neighbor and all(r.verdict == "tagged" and (r.display or "").startswith("SPAM? ") for _, r in neighbor)
    assert all("neighbor_spoofing:tag" in " ".join(r.steps) for _, r in neighbor)
    plus = [(c, r) for c, r in pairs if c.kind == "invalid" and c.orig.startswith("+")]
    assert plus and all(r.verdict == "rejected" and r.code == 603 for _, r in plus)
    residential = [(c, r) for c, r in pairs if c.kind == "residential" and not c.neighbor]
    assert residential and all(r.verdict == "forwarded" and r.display == c.display for c, r in residential)
    answered = sum(c.outcome == "answered" and r.verdict != "rejected" for c, r in pairs)
    assert replay.stats["answered"] == answered
    assert replay.stats["calls_ended"] == len(traffic.calls)
    s = summarize(traffic, replay)
    assert s["checks"] == {"lost_calls": 0, "decision_verdict_mismatches": 0, "internal_errors": 0}
    assert s["campaigns"]["neighbor"]["flagged_share"] == 1.0


def test_runner_follows_a_call_routed_to_another_trunk(tmp_path: Path) -> None:
    """A chain routing neighbour spoofing to a carrier trunk (whose peers are also callers): seen as routed,
    and the call still completes there (answered, ended) instead of being lost."""
    policy = tmp_path / "route.yaml"
    policy.write_text("default:\n  - policy: neighbor_spoofing\n    params: {action: route, trunks: [ixc1]}\n")
    full = generate(seed=5, hours=3, scale=4_000)
    keep = sorted([c for c in full.calls if c.kind == "neighbor"][:40]
                  + [c for c in full.calls if c.kind == "enterprise"][:40], key=lambda c: c.t)
    traffic = Traffic(full.seed, full.hours, full.start_hour, keep, full.campaigns)
    replay = play(traffic, policy)
    pairs = list(zip(traffic.calls, replay.results, strict=True))
    assert all(r.verdict == "routed" for c, r in pairs if c.kind == "neighbor")
    assert all(r.verdict == "forwarded" for c, r in pairs if c.kind == "enterprise" and c.attest == "A")
    assert replay.stats["answered"] == sum(c.outcome == "answered" for c in traffic.calls)
    assert replay.stats["calls_ended"] == len(traffic.calls)


def test_replay_is_deterministic() -> None:
    """Same traffic, same policy file: the same verdict and the same reasons for every call (so a profile can
    be tuned by comparing runs)."""
    full = generate(seed=9, hours=2, scale=2_500)
    traffic = Traffic(full.seed, full.hours, full.start_hour, full.calls[:250], full.campaigns)
    a = play(traffic, ROOT / "bench" / "baseline-policies.yaml")
    b = play(traffic, ROOT / "bench" / "baseline-policies.yaml")
    assert [(r.verdict, r.code, r.steps) for r in a.results] == [(r.verdict, r.code, r.steps) for r in b.results]
    assert any(r.steps for r in a.results)


def test_policy_path_replays_the_engines_decisions() -> None:
    """bench.policy_path records the policy path as the engine walks it and replays it alone; the replay checks
    every step's outcome and note against the engine's, so a faster path that decides otherwise fails here."""
    rec = record(hours=0.5, scale=800, seed=5, policies=ROOT / "examples" / "policies-campaigns.yaml")
    judged = [e for e in rec.events if e[0] == "judge"]
    assert rec.calls > 0 and len(judged) == rec.calls
    assert any(e[0] == "end" and e[4] is not None for e in rec.events)  # ended calls recorded state
    assert any(note for e in judged for _, note in e[4])  # risk notes among the steps
    parts = replay(rec)
    assert set(parts) == {"context", "observe", "state", "evaluate", "ended"} and parts["state"] > 0
