"""How a process's part of a trunk's contract follows its part of the offered INVITEs (proxy.limit_shares)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import yaml

from proxy.admission import Admission, Gate
from proxy.config import StateSettings, load_config_text
from proxy.limit_shares import (
    INTERVAL,
    STALE_INTERVALS,
    BoardExchange,
    LimitShares,
    RedisExchange,
    ShareBoard,
    _trunk_id,
    board_for,
    limit_shares,
    share_of,
)

from .sipfake import loopback_yaml


def customer_gate() -> Gate:
    """The customer trunk's gate, with a contract of 100 calls/s and 40 calls at once."""
    cfg = yaml.safe_load(loopback_yaml())
    next(t for t in cfg["trunks"] if t["name"] == "customer")["limits"] = {"max_cps": 100, "max_calls": 40}
    gate = Admission(load_config_text(yaml.safe_dump(cfg), "test.yaml")).gate("customer")
    assert gate is not None
    return gate


def test_alone_a_process_holds_the_whole_contract() -> None:
    assert share_of(0, 0, 1) == 1.0
    assert share_of(500, 500, 1) == 1.0


def test_an_even_spread_splits_the_contract_evenly() -> None:
    assert share_of(50, 100, 2) == pytest.approx(0.5)
    assert share_of(25, 100, 4) == pytest.approx(0.25)


def test_shares_follow_the_offered_load_and_sum_to_one() -> None:
    counts = [90, 10, 0]
    shares = [share_of(c, sum(counts), len(counts)) for c in counts]
    assert sum(shares) == pytest.approx(1.0)
    assert shares[0] > 0.85 and 0.0 < shares[2] < 0.02  # the idle one keeps a sliver


def test_before_any_load_the_processes_split_evenly() -> None:
    assert share_of(0, 0, 3) == pytest.approx(1 / 3)


# --- the workers of one node: the shared board --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def exchange(ex: BoardExchange, counts: dict[str, int]) -> list[tuple[int, int]]:
    return asyncio.run(ex(list(counts), list(counts.values())))


def test_workers_see_each_others_counts_on_the_board() -> None:
    board, clock = ShareBoard(3), Clock()
    w0, w1 = BoardExchange(board, 0, clock=clock), BoardExchange(board, 1, clock=clock)
    assert exchange(w0, {"customer": 30, "other": 5}) == [(30, 1), (5, 1)]
    assert exchange(w1, {"customer": 10}) == [(40, 2)]
    assert exchange(w0, {"customer": 20, "other": 5}) == [(30, 2), (5, 1)]  # w1's 10 is still its last word


def test_a_worker_not_heard_from_drops_out_and_one_that_withdraws_at_once() -> None:
    board, clock = ShareBoard(2), Clock()
    w0, w1 = BoardExchange(board, 0, clock=clock), BoardExchange(board, 1, clock=clock)
    exchange(w1, {"customer": 50})
    clock.now += INTERVAL * STALE_INTERVALS + 0.1
    assert exchange(w0, {"customer": 10}) == [(10, 1)]
    exchange(w1, {"customer": 50})
    asyncio.run(w1.withdraw(["customer"]))
    assert exchange(w0, {"customer": 10}) == [(10, 1)]


def test_the_board_is_shared_with_forked_workers() -> None:
    board = ShareBoard(2)
    pid = os.fork()
    if pid == 0:  # the worker: says its count, as a forked stirgate worker does
        try:
            BoardExchange(board, 1).board.write(1, [(_trunk_id("customer"), 77, time.monotonic())])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert exchange(BoardExchange(board, 0), {"customer": 3}) == [(80, 2)]


def test_shares_follow_the_board() -> None:
    board, clock = ShareBoard(2), Clock()
    gates = [customer_gate(), customer_gate()]
    shares = [LimitShares(BoardExchange(board, i, clock=clock), lambda i=i: [gates[i]]) for i in range(2)]
    for _ in range(2):  # an interval of steady traffic, 90 INVITEs to one worker, 10 to the other, twice
        gates[0].offered += 90
        gates[1].offered += 10
        assert asyncio.run(shares[0].tick()) and asyncio.run(shares[1].tick())
        clock.now += INTERVAL
    assert gates[0].share == pytest.approx(share_of(90, 100, 2))
    assert gates[1].share == pytest.approx(share_of(10, 100, 2))
    assert gates[0].rate == pytest.approx(100 * 91 / 102) and gates[1].max_calls == round(40 * 11 / 102)


def test_which_exchange_a_process_takes() -> None:
    memory, redis = StateSettings(), StateSettings(backend="redis")
    own = StateSettings(trunk_limits="per_worker")
    assert board_for(memory, 1) is None and board_for(redis, 2) is None and board_for(own, 2) is None
    board = board_for(memory, 2)
    assert isinstance(board, ShareBoard) and board.workers == 2

    def gates() -> list[Gate]:
        return []

    shared = limit_shares(memory, "w0", 0, board, gates)
    assert shared is not None and isinstance(shared.exchange, BoardExchange)
    assert limit_shares(memory, "w0", 0, None, gates) is None  # one worker: its limits are its own
    assert limit_shares(own, "w0", 0, board, gates) is None
    through_redis = limit_shares(redis, "w0", 0, None, gates)
    assert through_redis is not None and isinstance(through_redis.exchange, RedisExchange)
    asyncio.run(through_redis.exchange.close())
