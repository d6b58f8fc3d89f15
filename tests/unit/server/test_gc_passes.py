"""The periodic full GC pass: rarer while it finds nothing (each pass stalls the loop for as long as it walks
every object), back to its base interval when it finds garbage."""

from __future__ import annotations

from proxy.server import GC_CLEAN_PASS, next_gc_wait


def test_clean_passes_back_off_to_the_cap() -> None:
    waits = [600.0]
    for _ in range(8):
        waits.append(next_gc_wait(waits[-1], 0, 600.0, 21600.0))
    assert waits == [600.0, 1200.0, 2400.0, 4800.0, 9600.0, 19200.0, 21600.0, 21600.0, 21600.0]


def test_a_pass_that_finds_garbage_returns_to_the_base() -> None:
    assert next_gc_wait(21600.0, GC_CLEAN_PASS + 1, 600.0, 21600.0) == 600.0
    assert next_gc_wait(1200.0, GC_CLEAN_PASS, 600.0, 21600.0) == 2400.0  # a few failed requests' worth: clean


def test_a_cap_below_the_base_keeps_the_base() -> None:
    assert next_gc_wait(600.0, 0, 600.0, 0.0) == 600.0
