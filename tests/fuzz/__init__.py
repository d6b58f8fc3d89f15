"""Coverage-guided fuzzing of stirgate's sans-I/O core (issue 6, part 4).

Three targets, each a function of one byte string (`targets.py`):

- ``parser``: ``proxy.sip.message.parse`` + ``check_request`` (+ header views, serialisation round trip) on
  arbitrary bytes; the only exception allowed is ``ParseError``.
- ``engine``: ``Engine.receive`` over a sequence of datagrams decoded from the input (raw fuzzed bytes from the
  customer trunk, the carrier trunks, an unknown address and TCP, plus peer replies and dialog requests built
  against what stirgate actually sent), then the timers run out: nothing raises, no internal error is counted,
  and ``engine.calls == {}``, ``len(engine.txns) == 0``, no call counter or timer is left behind.
- ``stream``: ``frame_stream`` over arbitrary TCP byte streams split at arbitrary points: only ``ParseError``,
  the framing does not depend on where the stream was split, every frame is exactly head + Content-Length.

``python -m tests.fuzz --help`` runs them under atheris (libFuzzer), one subprocess per target, bounded in time.
Nothing in this package imports ``proxy`` at import time: the runner imports it under atheris instrumentation.
"""
