"""The fuzzing harness (tests/fuzz, `make fuzz`) in CI: seeds clean, oracles bite, a short run of each target.

The long runs are `make fuzz` (docs/FUZZING.md). The atheris runs here skip when atheris is not installed; the
fallback loop (no coverage feedback) runs everywhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.sip.message import ParseError, Request, Response, parse
from proxy.sip.validate import check_request
from tests.fuzz import __main__ as fuzz_main
from tests.fuzz import targets
from tests.fuzz.seeds import SEEDS
from tests.fuzz.targets import A_SIDE, REPLY, TARGETS, Finding, encode_ops
from tests.unit.core.sipfake import SDP_A, SDP_B, A, B, Callee, Harness, b_invite, build_request, start_call

ROOT = Path(__file__).resolve().parents[2]
CRASHES = ROOT / "tests" / "fuzz" / "crashes"
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_seed_runs_clean(target: str) -> None:
    seeds = SEEDS[target]()
    assert len(seeds) >= 50
    for data in seeds:
        TARGETS[target](data)


def test_seeds_include_every_rfc4475_and_malformed_message() -> None:
    seeds = set(SEEDS["parser"]())
    for d in ("rfc4475", "malformed"):
        for p in (ROOT / "tests" / "data" / d).glob("*.dat"):
            assert p.read_bytes() in seeds, p


def test_engine_oracle_hangs_up_answered_calls_and_catches_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    answered = encode_ops([(A_SIDE, 0, 0, b"\x00"), (REPLY, 0, 0, b"\x03\x00"), (A_SIDE, 0, 0, b"\x03")])
    targets.engine_one(answered)  # the confirmed call is hung up by its caller: clean
    monkeypatch.setattr(targets._World, "hang_up", lambda self: None)
    with pytest.raises(Finding, match="calls left: confirmed"):
        targets.engine_one(answered)


def test_stream_oracle_compares_split_and_whole_reads() -> None:
    msg = SEEDS["parser"]()[-1]
    stream = b"\r\n" + msg + b"\r\n\r\n" + msg
    for seed in range(0, 256, 7):
        targets.stream_one(bytes([seed | 3, seed % 40]) + stream)


def test_parser_only_parse_error_escapes() -> None:
    for data in (b"", b"\x00", b"INVITE", b"SIP/2.0 999 x\r\n\r\n", b"A b SIP/3.0\r\nVia: x\r\n\r\n"):
        targets.parser_one(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fallback_loop_short_run(target: str, tmp_path: Path) -> None:
    args = argparse.Namespace(corpus=tmp_path / "corpus", crashes=tmp_path, seconds=1, runs=3000, seed=1)
    result = fuzz_main.run_fallback(target, args)
    assert result["crashes"] == [], result
    assert result["runs"] > 50


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris not installed: the fallback loop runs instead")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_atheris_short_run(target: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", "--target", target, "--seconds", "3", "--fuzzer-seed", "1",
         "--corpus", str(tmp_path / "corpus"), "--crashes", str(tmp_path / "crashes")],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith(target + " "))
    runs = int(line.split()[1])
    assert runs > 100, proc.stdout
    assert not list((tmp_path / "crashes").iterdir())


# --- bugs the fuzzer found (fixed in proxy/; these keep them fixed) ---------------------------------------------


def test_early_bye_from_callee_answers_the_invite_and_frees_its_transaction() -> None:
    """RFC 3261 15: the callee MUST NOT send BYE on the early dialog; a hostile trunk may. Found by the engine target:
    the call ended and the caller's INVITE server transaction stayed in Proceeding for ever, unanswered."""
    h = Harness()
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, 180), B)
    outs = h.feed(callee.request("BYE"), B)
    for bye in list(outs.to(A).requests("BYE")):  # if stirgate relays it, the caller accepts it
        assert isinstance(bye.msg, Request)
        outs.extend(h.feed(caller.reply(bye.msg, 200), A))
    outs.extend(h.settle(1000))
    outs.extend(h.settle(1000))
    assert [s for s in outs.to(A).statuses() if s >= 300], "the caller's INVITE never got a final response"
    h.assert_clean()


def test_unacked_2xx_to_early_reinvite_answers_the_invite_and_frees_its_transaction() -> None:
    """Found by the engine target: a re-INVITE on the early dialog answered 2xx and never ACKed hung the call up
    (ack timeout) and left the caller's initial INVITE server transaction in Proceeding for ever."""
    h = Harness()
    caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    a180 = h.feed(callee.reply(None, 180), B).to(A).responses(180).one().msg
    assert isinstance(a180, Response)
    caller.learn(a180)
    reinv = h.feed(caller.request("INVITE", body=SDP_A), A).to(B).requests("INVITE").one().msg
    assert isinstance(reinv, Request)
    outs = h.feed(callee.reply(reinv, 200, body=SDP_B), B)
    outs.extend(h.run_until(h.now + 100))  # the caller never ACKs: 64*T1, BYE on both legs
    outs.extend(h.settle(1000))
    outs.extend(h.settle(1000))
    assert [o for o in outs.to(A).responses() if o.msg.cseq == (1, "INVITE") and (o.status or 0) >= 300], \
        "the caller's INVITE never got a final response"
    h.assert_clean()


@pytest.mark.parametrize("contact", ["<sip:bob@127.0.0.20:5060> -5", "<"])
def test_2xx_with_unparseable_contact_does_not_leak_the_call(contact: str) -> None:
    """Found by the engine target: the client transaction took the 2xx (Accepted), the call dropped it
    (ParseError): the call stayed for ever, the caller got no final response, the 2xx was never ACKed."""
    h = Harness()
    _caller, outs = start_call(h)
    callee = Callee(h, b_invite(outs))
    callee.contact = contact
    outs = h.feed(callee.reply(None, 200, body=SDP_B), B)
    outs.extend(h.settle(1000))
    outs.extend(h.settle(1000))
    assert [s for s in outs.to(A).statuses() if s >= 200], "the caller's INVITE never got a final response"
    h.assert_clean()


@pytest.mark.parametrize("data", [b"SIP/2.0 2\xb20 OK\r\n\r\n", b"SIP/2.0 \xb2\xb2\xb2 x\r\n\r\n",
                                  (CRASHES / "parser-non-ascii-status-digits.bin").read_bytes()])
def test_parse_status_with_unicode_digits_raises_parse_error(data: bytes) -> None:
    """Found by the parser target: str.isdigit accepts latin-1 '\\xb2', int() does not: ValueError escaped."""
    with pytest.raises(ParseError):
        parse(data)


@pytest.mark.parametrize("source", [B, ("udp", "192.0.2.99", 5060)])
def test_engine_receive_status_with_unicode_digits_never_raises(source: tuple[str, str, int]) -> None:
    h = Harness()
    h.feed(b"SIP/2.0 2\xb20 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nCall-ID: x\r\n"
           b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", source)
    h.assert_clean()


OPEN_BUGS = {"parser-via-only-commas.bin"}


@pytest.mark.parametrize("path", sorted(p for p in CRASHES.glob("*-*") if p.name not in OPEN_BUGS),
                         ids=lambda p: p.name)
def test_saved_crash_replays_clean(path: Path) -> None:
    """Every input the fuzzer saved (tests/fuzz/crashes/) runs clean through its target (open bugs: below)."""
    TARGETS[path.name.split("-", 1)[0]](path.read_bytes())


# --- open bugs ------------------------------------------------------------------------------------------------


def _via_request(via: str) -> bytes:
    return build_request("INVITE", "sip:15551234567@127.0.0.1", via=[via], from_="<sip:a@127.0.0.10>;tag=1",
                         to="<sip:b@127.0.0.1>", call_id="via-commas", cseq=1)


@pytest.mark.parametrize("via", [",", " , ,,"])
def test_check_request_via_only_commas_is_400(via: str) -> None:
    req = parse(_via_request(via))
    assert isinstance(req, Request)
    assert check_request(req) == (400, "Bad Via")


def test_engine_receive_via_only_commas_never_raises() -> None:
    h = Harness()
    outs = h.feed(_via_request(","), A)
    assert outs.to(A).statuses() == [400]
    h.assert_clean()


def test_saved_crash_via_only_commas() -> None:
    targets.parser_one((CRASHES / "parser-via-only-commas.bin").read_bytes())
