"""What every state store must answer, as plain scenarios: run against the in-process store (unit tests) and
against a real Redis (tests/integration/test_state_redis.py), so the two backends cannot drift apart.

`run(ops, now)` is the store under test: every op of one call, in order, results aligned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from policies.state import Claim, Group, Op, Recent, Tally, Window

Run = Callable[[Sequence[Op], float], list[Any]]
T0 = 1_700_000_000.0


def claims(run: Run, ns: str) -> None:
    assert run([Claim(f"{ns}:sig", "call-1", 60)], T0) == [None]  # claimed
    assert run([Claim(f"{ns}:sig", "call-1", 60)], T0 + 1) == [None]  # the same call again
    assert run([Claim(f"{ns}:sig", "call-2", 60)], T0 + 2) == ["call-1"]  # another call: who holds it
    assert run([Claim(f"{ns}:other", "call-2", 60)], T0 + 2) == [None]


def windows(run: Run, ns: str) -> None:
    key = f"{ns}:w"
    counts = [run([Window(key, f"c{i}", 10, 4)], T0 + i)[0] for i in range(5)]
    assert counts == [1, 2, 3, 4, 4]  # at most keep (max+1) held
    assert run([Window(key, "c9", 10, 4)], T0 + 12)[0] == 3  # (2, 12]: c3, c4 and c9
    assert run([Window(key, "late", 10, 4)], T0 + 30)[0] == 1  # everything before 20 gone
    dests = f"{ns}:d"
    assert [run([Window(dests, d, 60, 3)], T0)[0] for d in ("a", "a", "b")] == [1, 1, 2]


def tallies(run: Run, ns: str) -> None:
    key = f"{ns}:t"
    fields = ("answered", "short")
    assert run([Tally(key, fields, (1, 1), 100, 10)], T0) == [(1, 1)]
    assert run([Tally(key, fields, (1, 0), 100, 10)], T0 + 15) == [(2, 1)]
    assert run([Tally(key, fields, (0, 0), 100, 10)], T0 + 50) == [(2, 1)]  # read only
    # 10 s buckets: at T0+105 the bucket holding T0 has left the window, T0+15's has not
    assert run([Tally(key, fields, (0, 0), 100, 10)], T0 + 105) == [(1, 0)]
    assert run([Tally(key, fields, (0, 0), 100, 10)], T0 + 300) == [(0, 0)]


def claimed_bumps_a_tally(run: Run, ns: str) -> None:
    """first-seen numbers: a Claim followed by a Tally with add_if_claimed counts only new claims."""
    key = f"{ns}:gw"
    fields = ("calls", "first_seen")

    def call(number: str, at: float) -> tuple[int, ...]:
        _held, totals = run([Claim(f"{ns}:seen:{number}", number, 3600),
                            Tally(key, fields, (1, 0), 600, 10, add_if_claimed=1)], at)
        return tuple(totals)

    assert call("1", T0) == (1, 1)
    assert call("2", T0 + 1) == (2, 2)
    assert call("1", T0 + 2) == (3, 2)  # seen before: not first-seen


def a_claim_bumps_every_tally_after_it(run: Run, ns: str) -> None:
    """risk_score's novel_burst: one first-seen claim counts in the gateway's long window and in its short one
    (each sliding in its own time); reading a short window nobody counted in gives zeros."""
    gateway, burst = f"{ns}:gw", f"{ns}:b"

    def call(number: str, at: float) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
        held, g, b = run([Claim(f"{ns}:seen:{number}", f"call-{at}", 3600),
                          Tally(gateway, ("calls", "first_seen"), (1, 0), 3600, 12, add_if_claimed=1),
                          Tally(burst, ("first_seen",), (0,), 120, 6, add_if_claimed=0)], at)
        return held, tuple(g), tuple(b)

    assert call("1", T0) == (None, (1, 1), (1,))
    assert call("2", T0 + 10) == (None, (2, 2), (2,))
    assert call("1", T0 + 20) == (f"call-{T0}", (3, 2), (2,))  # seen before: counted in neither
    # 20 s buckets: at T0+200 the short window holds T0+100 on; the long one still holds everything
    assert call("3", T0 + 200) == (None, (4, 3), (1,))
    assert [tuple(r) for r in run([Tally(f"{ns}:quiet", ("first_seen",), (0,), 120, 6, add_if_claimed=0)],
                                  T0 + 201)] == [(0,)]


def recents(run: Run, ns: str) -> None:
    key = f"{ns}:r"
    assert run([Recent(key, "a", 3, 60)], T0) == [("a",)]
    assert run([Recent(key, "b", 3, 60)], T0 + 1) == [("b", "a")]
    run([Recent(key, "c", 3, 60)], T0 + 2)
    assert run([Recent(key, "d", 3, 60)], T0 + 3) == [("d", "c", "b")]


#: What the memory store files a gateway group's parts under (Group.names; Redis keeps the ops' keys).
GW_NAMES = ("calls", "burst", "fb", "rec")


def groups(run: Run, ns: str) -> None:
    """risk_score's bundles: a number's ops and a gateway's, each as one Group, answer as the same ops listed one
    by one would (a claim in the first bumps a tally in the second); each part keeps its own lifetime, and a
    group's later op (the end of a call, a feedback label) lands in the same counters."""
    def call(number: str, dest: str, at: float) -> list[Any]:
        return run([Group(f"{ns}:n:{number}", (Claim(f"{ns}:seen:{number}", f"call-{at}", 3600),
                                               Recent(f"{ns}:o:{number}", dest, 3, 600)), ("seen", "rec")),
                    Group(f"{ns}:gw", (Tally(f"{ns}:g", ("calls", "first_seen", "ended"), (1, 0, 0), 3600, 12, 1),
                                       Tally(f"{ns}:b", ("first_seen",), (0,), 120, 6, 0),
                                       Tally(f"{ns}:f", ("robocall",), (0,), 7200, 10),
                                       Recent(f"{ns}:r", dest, 3, 600)), GW_NAMES)], at)

    def tuples(results: list[Any]) -> list[list[Any]]:
        return [[tuple(r) if isinstance(r, list | tuple) else r for r in group] for group in results]

    assert tuples(call("1", "a", T0)) == [[None, ("a",)], [(1, 1, 0), (1,), (0,), ("a",)]]
    assert tuples(call("2", "b", T0 + 10)) == [[None, ("b",)], [(2, 2, 0), (2,), (0,), ("b", "a")]]
    assert tuples(call("1", "c", T0 + 20)) == [[f"call-{T0}", ("c", "a")], [(3, 2, 0), (2,), (0,), ("c", "b", "a")]]
    # the end of a call and a feedback label, each a group of one op, count where the calls read
    run([Group(f"{ns}:gw", (Tally(f"{ns}:g", ("calls", "first_seen", "ended"), (0, 0, 1), 3600, 12),), ("calls",))],
        T0 + 30)
    run([Group(f"{ns}:gw", (Tally(f"{ns}:f", ("robocall",), (1,), 7200, 10),), ("fb",))], T0 + 40)
    # 200 s on: the short window (120 s) has slid past the first two calls (Redis expires keys on its own
    # clock, so lifetimes are checked on the memory store only: tests/unit/policies/test_state.py)
    assert tuples(call("1", "d", T0 + 200)) == [[f"call-{T0}", ("d", "c", "a")],
                                                [(4, 2, 1), (0,), (1,), ("d", "c", "b")]]


SCENARIOS = (claims, windows, tallies, claimed_bumps_a_tally, a_claim_bumps_every_tally_after_it, recents, groups)
