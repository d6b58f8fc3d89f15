"""Each built-in over CallContexts that cover its edges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from policies import CONTINUE, Decision
from policies.anonymous import Anonymous
from policies.display_tag import DisplayTag
from policies.dnc import Dnc
from policies.invalid_numbers import InvalidNumbers, nanp_problem
from policies.lists import Lists
from policies.loader import BUILTINS, resolve_policy
from policies.min_attestation import MinAttestation
from policies.neighbor_spoofing import NeighborSpoofing
from policies.replay import Replay, signatures
from policies.require_identity import RequireIdentity
from policies.route_by_verstat import RouteByVerstat
from policies.state import MemoryStore
from policies.velocity import Velocity
from policies.verification import Verification

from .helpers import ctx, end, failed, judge, missing, passed


def make(cls: Any, **params: Any) -> Any:
    return cls(msgspec.convert(params, cls.Params))


def test_every_builtin_resolves() -> None:
    for name in BUILTINS:
        cls = resolve_policy(name)
        assert callable(cls.evaluate) and issubclass(cls.Params, msgspec.Struct)


# --- require_identity ---------------------------------------------------------------------------------------
def test_require_identity_default_428_with_reason() -> None:
    p = make(RequireIdentity)
    assert p.evaluate(ctx()) is CONTINUE
    d = p.evaluate(ctx(identity=False, verification=missing()))
    assert (d.action, d.code, d.reason) == ("reject", 428, "Use Identity Header")
    assert d.reason_header == 'STIR;cause=428;text="Use Identity Header"'


def test_require_identity_unverified_trunk_uses_headers() -> None:
    p = make(RequireIdentity, action="tag")
    assert p.evaluate(ctx(identity=False)).verstat == "No-TN-Validation"
    c = ctx(verification=None)  # trunk without verification, Identity present
    assert c.verification is None and c.identity_present
    assert p.evaluate(c) is CONTINUE


def test_require_identity_route() -> None:
    d = make(RequireIdentity, action="route", trunks=["legacy"]).evaluate(ctx(identity=False))
    assert d.action == "route" and d.trunks == ("legacy",)


# --- verification -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("code", "reason"), [(436, "Bad Identity Info"), (437, "Unsupported Credential"),
                                              (438, "Invalid Identity Header"), (403, "Stale Date")])
def test_verification_rejects_with_its_stir_code(code: int, reason: str) -> None:
    d = make(Verification).evaluate(ctx(verification=failed(code, reason)))
    assert (d.code, d.reason) == (code, reason)
    assert d.reason_header == (f'STIR;cause={code};text="{reason}"' if code != 403 else None)


def test_verification_passes_missing_and_unverified() -> None:
    p = make(Verification)
    for c in (ctx(), ctx(identity=False, verification=missing()), ctx(verification=None)):
        assert p.evaluate(c) is CONTINUE


def test_verification_tag_and_fixed_code() -> None:
    assert make(Verification, action="tag").evaluate(ctx(verification=failed())).verstat == "TN-Validation-Failed"
    d = make(Verification, code=603).evaluate(ctx(verification=failed(437)))
    assert (d.code, d.reason) == (603, "Decline")


# --- min_attestation ----------------------------------------------------------------------------------------
def test_min_attestation_levels() -> None:
    p = make(MinAttestation, level="B")
    assert p.evaluate(ctx(verification=passed("A"))) is CONTINUE
    assert p.evaluate(ctx(verification=passed("B"))) is CONTINUE
    assert p.evaluate(ctx(verification=passed("C"))).verstat == "No-TN-Validation"
    assert p.evaluate(ctx(verification=failed(attest="A"))) is CONTINUE  # unverified: skipped by default
    applied = make(MinAttestation, level="C", unverified="apply", action="reject")
    assert applied.evaluate(ctx(verification=failed(attest="A"))).code == 603
    assert applied.evaluate(ctx(verification=None)).action == "reject"


# --- lists --------------------------------------------------------------------------------------------------
def test_lists_inline_every_kind() -> None:
    p = make(Lists, deny={"orig_numbers": ["+1 212 555 1234"], "dest_prefixes": ["1900"], "sources": ["10.0.0.0/8"],
                          "spcs": ["666X"], "origids": ["AAAAAAAA-0000-0000-0000-000000000000"]})
    assert p.evaluate(ctx()).action == "reject"  # orig number, written with spaces
    assert p.evaluate(ctx("+12125551235")) is CONTINUE
    assert p.evaluate(ctx("+12125551235", "+19005551234")).code == 603
    assert p.evaluate(ctx("+12125551235", source=("10.1.2.3", 5060))).action == "reject"
    assert p.evaluate(ctx("+12125551235", verification=passed(spc="666x"))).action == "reject"
    assert p.evaluate(ctx("+12125551235", verification=failed())) is CONTINUE  # SPC of a failed one: untrusted
    oid = passed(origid="aaaaaaaa-0000-0000-0000-000000000000")
    assert p.evaluate(ctx("+12125551235", verification=oid)).action == "reject"


def test_lists_allow_beats_deny_and_allow_only() -> None:
    p = make(Lists, deny={"orig_prefixes": ["1212"]}, allow={"orig_numbers": ["12125551234"]})
    assert p.evaluate(ctx()) is CONTINUE
    assert p.evaluate(ctx("+12125551299")).action == "reject"
    only = make(Lists, allow={"sources": ["192.0.2.0/24"]}, allow_only=True, action="tag", display_prefix="?")
    assert only.evaluate(ctx()) is CONTINUE
    assert only.evaluate(ctx(source=("198.51.100.1", 5060))).display_prefix == "?"


def test_lists_files(tmp_path: Path) -> None:
    (tmp_path / "deny.txt").write_text("# robocallers\n\n+1 (800) 555-0199\n13125550123  # note\n")
    (tmp_path / "pfx.txt").write_text("1976\n")
    (tmp_path / "src.txt").write_text("203.0.113.0/24\n2001:db8::/32\n")
    from policies.base import DataFile

    params = msgspec.convert({"deny": {"orig_numbers_file": "x", "orig_prefixes_file": "y", "sources_file": "z"}},
                             Lists.Params, dec_hook=lambda t, o: DataFile(tmp_path / {"x": "deny.txt", "y": "pfx.txt",
                                                                                        "z": "src.txt"}[o]))
    p = Lists(params)
    import asyncio

    asyncio.run(p.setup())
    assert p.evaluate(ctx("18005550199")).action == "reject"
    assert p.evaluate(ctx("+19765550000")).action == "reject"
    assert p.evaluate(ctx("+12025550000", source=("2001:db8::5", 5060))).action == "reject"
    assert p.evaluate(ctx("+12025550000")) is CONTINUE


def test_lists_needs_a_list() -> None:
    with pytest.raises(ValueError, match="at least one"):
        make(Lists)


# --- dnc ----------------------------------------------------------------------------------------------------
def test_dnc_reject_and_exemption() -> None:
    p = make(Dnc, numbers=["13125557890"], exempt_spcs=["123A"])
    d = p.evaluate(ctx(verification=passed("B")))
    assert (d.code, d.reason) == (607, "Unwanted")
    assert p.evaluate(ctx(verification=passed("A", spc="123a"))) is CONTINUE
    assert p.evaluate(ctx(verification=passed("A", spc="999Z"))).action == "reject"
    assert p.evaluate(ctx(dest="+13125550143")) is CONTINUE
    anyspc = make(Dnc, numbers=["13125557890"], exempt_spcs=["*"], action="tag", display_prefix="DNC ")
    assert anyspc.evaluate(ctx(verification=passed("A", spc="x"))) is CONTINUE
    assert anyspc.evaluate(ctx(verification=failed())).display_prefix == "DNC "
    no_exempt = make(Dnc, numbers=["13125557890"])
    assert no_exempt.evaluate(ctx(verification=passed("A"))).action == "reject"


# --- invalid_numbers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tn", "problem"), [
    ("12125551234", None), ("2125551234", None), ("12125550123", "fictional_555"), ("442071234567", None),
    ("19115550123", "n11"), ("12124110123", "n11"),
    ("10125550123", "leading_0_1"), ("12120550123", "leading_0_1"), ("12121550123", "leading_0_1"),
    ("12125550100", "fictional_555"), ("12125550199", "fictional_555"), ("12125550200", None),
    ("1212555012", "length"), ("121255512344", "length"), ("123456", "length"),
    ("12222222222", "same_digit"), ("15555555555", "same_digit"), ("77777777", "same_digit"),
])
def test_nanp_checks(tn: str, problem: str | None) -> None:
    checks = frozenset(["n11", "leading_0_1", "fictional_555", "length", "same_digit"])
    assert nanp_problem(tn, checks) == problem


def test_invalid_numbers_policy() -> None:
    p = make(InvalidNumbers)
    assert p.evaluate(ctx()) is CONTINUE
    assert p.evaluate(ctx("+19115550123")).note == "invalid_numbers:n11"
    assert p.evaluate(ctx("+13125557890")).note == "invalid_numbers:orig_equals_dest"
    assert p.evaluate(ctx(dest="+19115550123")) is CONTINUE  # dest not checked by default
    assert make(InvalidNumbers, apply_to=["dest"]).evaluate(ctx(dest="+19115550123")).action == "reject"
    assert make(InvalidNumbers, checks=["n11"]).evaluate(ctx("+12125550100")) is CONTINUE
    assert p.evaluate(ctx(None)) is CONTINUE  # no number: the anonymous policy's business


# --- neighbor_spoofing --------------------------------------------------------------------------------------
def test_neighbor_spoofing() -> None:
    p = make(NeighborSpoofing)
    d = p.evaluate(ctx("+13125557999", "+13125557890", verification=passed("B")))
    assert d.display_prefix == "SPAM? " and d.action == "continue"
    assert p.evaluate(ctx("+13125557999", "+13125557890", verification=passed("A"))) is CONTINUE
    assert p.evaluate(ctx("+13125567999", "+13125557890", verification=passed("B"))) is CONTINUE
    assert p.evaluate(ctx("+13125557999", "+13125557890", verification=failed(attest="A"))).tagged
    assert make(NeighborSpoofing, digits=3).evaluate(ctx("+13129991000", "+13125557890", verification=None)).tagged
    assert p.evaluate(ctx("+443125557999", "+443125557890", verification=None)) is CONTINUE  # not NANP length


# --- replay -------------------------------------------------------------------------------------------------
def test_replay_same_passport_other_call(request: pytest.FixtureRequest) -> None:
    p = make(Replay, scope=request.node.name)
    assert judge(p, ctx(identity="A" * 86, call_id="c1", now=100.0)) is CONTINUE
    assert judge(p, ctx(identity="A" * 86, call_id="c1", now=101.0)) is CONTINUE  # same call again
    d = judge(p, ctx(identity="A" * 86, call_id="c2", now=120.0))
    assert (d.code, d.reason_header) == (438, 'STIR;cause=438;text="Invalid Identity Header"')
    assert judge(p, ctx(identity="B" * 86, call_id="c3", now=121.0)) is CONTINUE
    assert judge(p, ctx(identity="A" * 86, call_id="c4", now=161.0)) is CONTINUE  # window over: forgotten
    assert judge(p, ctx(identity=False, verification=missing())) is CONTINUE
    assert p.observe(ctx(identity=False, verification=missing())) == ()


def test_replay_scope_shared_across_instances(request: pytest.FixtureRequest) -> None:
    a = make(Replay, scope=request.node.name)
    b = make(Replay, scope=request.node.name, action="tag")
    other = make(Replay, scope=request.node.name + "-other")
    judge(a, ctx(identity="C" * 86, call_id="c1"))
    assert judge(b, ctx(identity="C" * 86, call_id="c2")).verstat == "TN-Validation-Failed"
    assert judge(other, ctx(identity="C" * 86, call_id="c2")) is CONTINUE


def test_signatures_parsing() -> None:
    assert signatures(("h.p." + "s" * 20 + ";info=<x>", "h.p." + "t" * 20 + ", h.p." + "u" * 20)) == [
        "s" * 20, "t" * 20, "u" * 20]
    assert signatures(("h..sig;info=x", "garbage", "")) == []


# --- velocity -----------------------------------------------------------------------------------------------
def test_velocity_calls_per_window_sliding() -> None:
    p = make(Velocity, max_calls=3, window=10, scope="sliding")
    outcomes = [judge(p, ctx(now=t)).action for t in (0, 1, 2, 3, 4)]
    assert outcomes == ["continue", "continue", "continue", "reject", "reject"]
    d = judge(p, ctx(now=5))
    assert (d.code, d.retry_after, d.response_headers()) == (503, 60, (("Retry-After", "60"),))
    assert d.note == "velocity:orig_tn calls 4 > 3 in 10 s"  # which threshold, with what value
    # the window slides: (4.5, 14.5] still holds 5, 9, 12, 14.5; (15, 25] only 16 and 25
    assert [judge(p, ctx(now=t)).action for t in (9, 12, 14.5, 16, 25)] == ["reject"] * 4 + ["continue"]
    assert judge(p, ctx("+12025551000", now=16)) is CONTINUE  # other callers pass


def test_velocity_distinct_destinations() -> None:
    p = make(Velocity, max_destinations=2, window=60, action="tag", display_prefix="ROBO? ", scope="dests")
    assert judge(p, ctx(dest="+13125550001", now=0)) is CONTINUE
    assert judge(p, ctx(dest="+13125550001", now=1)) is CONTINUE
    assert judge(p, ctx(dest="+13125550002", now=2)) is CONTINUE
    assert judge(p, ctx(dest="+13125550003", now=3)).display_prefix == "ROBO? "
    assert judge(p, ctx(dest="+13125550004", now=62)) is CONTINUE  # 0..2 expired: 003, 004


def test_velocity_short_call_share() -> None:
    p = make(Velocity, max_short_share=0.5, min_completed=4, action="reject", scope="short")
    for duration in (1, 2, 30, 3):
        c = ctx(now=0)
        assert judge(p, c) is CONTINUE
        end(p, c, duration)
    unanswered = ctx(now=1)
    judge(p, unanswered)
    end(p, unanswered, None)  # not answered: not part of the share
    assert judge(p, ctx(now=10)).note == "velocity:orig_tn short_share 0.75 > 0.5 over 4 calls"
    assert judge(p, ctx(now=4000)) is CONTINUE  # short_window (3600 s) passed


def test_velocity_keys_and_expiry() -> None:
    store = MemoryStore(max_keys=2)
    p = make(Velocity, key="spc", max_calls=1, window=5)
    assert p.observe(ctx(verification=failed())) == ()  # untrusted SPC: no key
    assert judge(p, ctx(verification=passed(spc="X"), now=0), store) is CONTINUE
    assert judge(p, ctx(verification=passed(spc="X"), now=1), store).action == "reject"
    judge(p, ctx(verification=passed(spc="Y"), now=10), store)
    assert len(store) == 1  # X idle for a window: dropped
    for spc in "ABCD":
        judge(p, ctx(verification=passed(spc=spc), now=11), store)
    assert len(store) <= 2
    trunk = make(Velocity, key="trunk", max_calls=1)
    judge(trunk, ctx("+12025550001"), store)
    assert judge(trunk, ctx("+12025550002"), store).action == "reject"
    combo = make(Velocity, key="origid+trunk", max_calls=1)
    judge(combo, ctx(verification=passed(origid="o1"), trunk="t1"), store)
    assert judge(combo, ctx(verification=passed(origid="o1"), trunk="t2"), store) is CONTINUE
    assert judge(combo, ctx(verification=passed(origid="o1"), trunk="t1"), store).action == "reject"


def test_velocity_needs_a_threshold() -> None:
    with pytest.raises(msgspec.ValidationError, match="needs max_calls"):
        msgspec.convert({}, Velocity.Params)
    with pytest.raises(msgspec.ValidationError, match="unknown key 'origin'"):
        msgspec.convert({"key": "origin", "max_calls": 1}, Velocity.Params)


# --- anonymous ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("orig", "headers", "hit"), [
    ("+12125551234", [], False),
    ("anonymous", [("from", '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1')], True),
    ("+12125551234", [("privacy", "id")], True),
    ("+12125551234", [("privacy", "none")], False),
    ("+12125551234", [("from", "<sip:Restricted@carrier.example>;tag=1"),
                      ("p-asserted-identity", "<sip:+12125551234@carrier.example>")], True),
    ("+12125551234", [("from", '"Unknown Caller" <sip:+12125551234@carrier.example>;tag=1')], False),
    (None, [], True),
])
def test_anonymous(orig: str | None, headers: list[tuple[str, str]], hit: bool) -> None:
    d = make(Anonymous).evaluate(ctx(orig, headers=headers))
    assert (d.code == 433) is hit
    if hit:
        assert d.reason == "Anonymity Disallowed" and d.reason_header is None


def test_anonymous_options() -> None:
    assert make(Anonymous, privacy=False).evaluate(ctx(headers=[("privacy", "id")])) is CONTINUE
    assert make(Anonymous, no_number=False).evaluate(ctx(None)) is CONTINUE
    assert make(Anonymous, action="tag").evaluate(ctx(None)).verstat == "No-TN-Validation"


# --- display_tag --------------------------------------------------------------------------------------------
def test_display_tag_conditions() -> None:
    p = make(DisplayTag, attest=["B", "C"], verstat=["TN-Validation-Failed"])
    assert p.evaluate(ctx(verification=passed("B"))).display_prefix == "SPAM? "
    assert p.evaluate(ctx(verification=passed("A"))) is CONTINUE
    assert p.evaluate(ctx(verification=failed())).display_prefix == "SPAM? "
    both = make(DisplayTag, prefix="[?] ", attest=["B"], unverified=True, match="all")
    assert both.evaluate(ctx(verification=passed("B"))) is CONTINUE
    assert make(DisplayTag, unverified=True).evaluate(ctx(verification=None)).tagged
    with pytest.raises(msgspec.ValidationError, match="needs a condition"):
        msgspec.convert({}, DisplayTag.Params)


# --- route_by_verstat ---------------------------------------------------------------------------------------
def test_route_by_verstat() -> None:
    p = make(RouteByVerstat, failed=["analytics"], missing=["vm", "vm2"])
    assert p.evaluate(ctx(verification=failed())) == Decision.route(["analytics"], note="route_by_verstat:failed")
    assert p.evaluate(ctx(identity=False, verification=missing())).trunks == ("vm", "vm2")
    assert p.evaluate(ctx()) is CONTINUE
    assert p.evaluate(ctx(verification=None)) is CONTINUE
    assert sorted(p.route_targets()) == ["analytics", "vm", "vm2"]
