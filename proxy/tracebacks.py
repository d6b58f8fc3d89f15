"""Letting a caught exception's tracebacks go, so that they are freed by reference counting.

stirgate runs with the automatic cyclic GC off (`proxy.server.tune_gc`; a full pass only every
`sip.gc_full_interval` or less often). A caught exception kept past its handler, or raised again in a chain,
holds its traceback, whose frames hold their locals, one of which is often the exception itself: a reference
cycle that only the cyclic GC frees. Where stirgate catches an exception that repeats under a fault (a failed
fetch, a Redis that refuses, an HTTP request that cannot be served), it lets the chain's frames go here.
"""

from __future__ import annotations

import traceback

__all__ = ["forget_frames"]


def forget_frames(exc: BaseException) -> None:
    """Drop the tracebacks of `exc` and of the exceptions it was raised from or during, clearing their frames'
    locals: what makes an exception chain a reference cycle (a frame's local names the exception whose
    traceback holds that frame)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)  # (the frame still running, the handler's, is left alone)
            e.__traceback__ = None
        todo.append(e.__cause__)
        todo.append(e.__context__)
