"""Number lists: exact membership, file formats and errors, and memory per entry (tracemalloc)."""

from __future__ import annotations

import random
import time
import tracemalloc
from pathlib import Path

import pytest

from policies.numbers import CidrSet, ListFileError, NumberSet, PrefixSet, load_numbers, load_prefixes
from proxy.stir.tn import TNPolicy


def test_membership_matches_a_set() -> None:
    rnd = random.Random(3)
    members = {str(rnd.randrange(10**10, 2 * 10**10)) for _ in range(20_000)}
    s = NumberSet.from_iterable(members)
    assert len(s) == len(members)
    assert all(m in s for m in members)
    others = [str(rnd.randrange(10**9, 3 * 10**10)) for _ in range(20_000)]
    assert all((o in s) == (o in members) for o in others)
    assert "" not in s and "abc" not in s and 5 not in s and "1" * 30 not in s


def test_odd_numbers_kept_as_strings() -> None:
    s = NumberSet.from_iterable(["0201234567", "*67", "12125551234"])
    assert "0201234567" in s and "201234567" not in s and "*67" in s and "12125551234" in s
    assert "x" not in NumberSet.from_iterable([])


def test_file_formats_comments_and_country_code(tmp_path: Path) -> None:
    f = tmp_path / "n.txt"
    f.write_text("# header\n\n+1 (212) 555-1234\ntel:+13125557890\n2025551000  # national\n")
    s = load_numbers(f, TNPolicy(country_code="1"))
    assert {"12125551234", "13125557890", "12025551000"} <= {t for t in ("12125551234", "13125557890",
                                                                          "12025551000") if t in s}
    fast = tmp_path / "fast.txt"
    fast.write_text("2025551000\n12125551234\n")  # digits only: the C-speed path, completion applied
    s2 = load_numbers(fast, TNPolicy(country_code="1"))
    assert "12025551000" in s2 and "12125551234" in s2 and "2025551000" not in s2


def test_file_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_text("12125551234\n\n13125557890\nhello\n")
    with pytest.raises(ListFileError, match=r"bad.txt:4: not a telephone number"):
        load_numbers(f)
    with pytest.raises(ListFileError, match="No such file"):
        load_numbers(tmp_path / "missing.txt")
    (tmp_path / "p.txt").write_text("1212\n+1 900\nfoo\n")
    with pytest.raises(ListFileError, match=r"p.txt:3: not a number prefix"):
        load_prefixes(tmp_path / "p.txt")


def test_unchanged_file_is_shared_across_loads(tmp_path: Path) -> None:
    f = tmp_path / "n.txt"
    f.write_text("12125551234\n")
    a = load_numbers(f)
    assert load_numbers(f) is a
    f.write_text("12125551234\n13125557890\n")
    b = load_numbers(f)
    assert b is not a and "13125557890" in b


def test_prefixes_and_cidrs() -> None:
    p = PrefixSet(["1900", "1212555"])
    assert "19005551234" in p and "12125551234" in p and "12125561234" not in p and "19" not in p
    c = CidrSet(["10.0.0.0/8", "10.1.0.0/16", "192.0.2.7", "2001:db8::/32"])
    assert "10.200.1.1" in c and "192.0.2.7" in c and "192.0.2.8" not in c and "2001:db8::1" in c
    assert "::1" not in c and "bogus" not in c and len(c) == 3


def test_one_million_numbers_memory_and_speed(tmp_path: Path) -> None:
    """1 M shuffled numbers (the 10 M run is bench/policy_chain.py): <= 9 bytes each held, ~82 MB per 10 M;
    a lookup well under 2 us."""
    n = 1_000_000
    rnd = random.Random(11)
    values = rnd.sample(range(12_000_000_000, 19_999_999_999), n)
    f = tmp_path / "big.txt"
    f.write_text("\n".join(map(str, values)) + "\n")
    tracemalloc.start()
    s = load_numbers(f)
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(s) == n
    assert held / n <= 9.0, f"{held / n:.1f} bytes per number"
    assert s.nbytes / n <= 8.5
    probes = [str(v) for v in values[:2000]] + [str(v + 1) for v in values[:2000]]
    t = time.perf_counter()
    hits = sum(1 for p in probes for _ in range(10) if p in s)
    per_lookup = (time.perf_counter() - t) / (len(probes) * 10)
    assert hits >= 20_000  # every member found (neighbours may be members too)
    assert all(str(v) in s for v in values[:: 997])
    assert per_lookup < 5e-6, f"{per_lookup * 1e6:.2f} us per lookup"
