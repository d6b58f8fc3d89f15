"""Campaign detection, measured: the seeded traffic of bench/traffic.py played through stirgate's sans-I/O engine
in memory with a policy file, and what the engine did to each call, by campaign kind and legitimate kind.

Every call is a real SIP exchange with the engine (`Engine.receive` / `handle_timer`, simulated clock, nothing
sleeps): the carrier trunk's INVITE (with a real Identity header for signed calls, one demo certificate per
originating SPC, cached as if fetched), the callee answering, busy, or ringing until the caller CANCELs, and a
BYE after the call's duration from either side. What the engine did is read from what it sent: the B-leg
INVITE's From display name and verstat (tagged), where it went (routed), or the final answer to the caller
(rejected); the policy steps (`Call.policy`) give the reasons.

    python -m bench.campaigns                                   # a day, 60,000 calls, the shipped profile
    python -m bench.campaigns --scale 8000 --hours 3 --no-cpu   # a quick iteration while tuning
    python -m bench.campaigns --policies bench/baseline-policies.yaml --json out.json

From Python (e.g. while tuning a profile):

    from bench.traffic import generate
    from bench.campaigns import play, summarize, format_summary
    traffic = generate(seed=1, hours=24, scale=60_000)
    replay = play(traffic, "examples/policies-campaigns.yaml")
    print(format_summary(summarize(traffic, replay)))

Flagged = rejected (any final answer stirgate wrote itself: policy reject or throttle), routed to another
trunk, or tagged where the callee sees it: a display-name prefix or verstat=TN-Validation-Failed. Other tags
(e.g. min_attestation's No-TN-Validation, added headers) are counted as `marked`, not flagged.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import heapq
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policies.base import Decision
from policies.chain import Chain, ChainResult
from policies.loader import load_policies
from policies.state import MemoryStore
from proxy.b2bua import Call as EngineCall
from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.server import tune_gc
from proxy.sip.message import Request, Response, parse
from proxy.stir import demo_certs
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.tn import TNPolicy

from .traffic import CAMPAIGN_KINDS, LEGIT_KINDS, OUTCOME_CODES, SPCS, SUBSCRIBERS, TRUNKS, Call, Traffic, generate

__all__ = ["CallResult", "Replay", "format_summary", "main", "play", "play_pair", "summarize"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POLICIES = REPO / "examples" / "policies-campaigns.yaml"
BASELINE_POLICIES = REPO / "bench" / "baseline-policies.yaml"
TARGET_CAUGHT_AFTER_5 = 0.95
TARGET_LEGIT_FLAGGED = 0.001
TARGET_ADDED_US = 30.0

LOCAL = {"udp": ("127.0.0.1", 5060)}
SG = "127.0.0.1:5060"
SDP = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
FAILED = b"verstat=TN-Validation-Failed"
NET = 0.002   # one-way latency between the peers and stirgate, seconds


# --- the engine's world: config, PKI, signers ---------------------------------------------------------------

def config_text(ca: str, extra: dict[str, Any] | None = None) -> str:
    """Carrier trunks of the model (all verify, tag mode: calls are never refused for a missing Identity),
    the subscribers behind a customer trunk, `extra` deep-merged on top (e.g. `{"state": {...}}`)."""
    doc: dict[str, Any] = {
        "listen": [f"udp:{SG}"],
        "trunks": [
            *({"name": name, "role": "carrier", "sources": list(ips), "destination": f"{ips[0]}:5060",
               "transport": "udp", "verify": {"mode": "tag", "on_missing": "tag"}} for name, ips in TRUNKS.items()),
            {"name": SUBSCRIBERS[0], "role": "customer", "sources": [SUBSCRIBERS[1]],
             "destination": f"{SUBSCRIBERS[1]}:5060", "transport": "udp"},
        ],
        "routes": [{"from": list(TRUNKS), "prefix": "", "trunks": [SUBSCRIBERS[0]]}],
        "stir": {"country_code": "1", "trust_anchors": [ca], "verify": {"iat_max_age": 60}},
        "records": {"enabled": False},
        "api": {"enabled": False},
    }
    if extra:
        _merge(doc, extra)
    return yaml.safe_dump(doc, sort_keys=False)


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def x5u_url(spc: str) -> str:
    return f"https://cert.sp{spc}.example/sp.pem"


@dataclass
class Pki:
    """The demo STI-CA with one SP certificate per originating SPC (bench/traffic.py SPCS), in memory; the
    root written to `dir` for the config's trust_anchors."""

    dir: Path
    signers: dict[str, Signer]
    chains: dict[str, bytes]

    @classmethod
    def build(cls, directory: Path) -> Pki:
        demo = demo_certs.build_demo_set()
        ca = directory / "ca.pem"
        ca.write_bytes(demo_certs.pem(demo.root.cert))
        now = datetime.datetime.now(datetime.UTC)
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=365)
        policy = TNPolicy(country_code="1")
        signers: dict[str, Signer] = {}
        chains: dict[str, bytes] = {}
        for spc in SPCS:
            sp = demo_certs.issue(f"bench STI-SP {spc}", demo.intermediate, ca=False, spc=spc, not_before=start,
                                  not_after=end)
            signers[spc] = Signer(SigningProfile(f"sp{spc}", "", x5u_url(spc)), key=sp.key, tn_policy=policy)
            chains[spc] = demo_certs.pem(sp.cert) + demo_certs.pem(demo.intermediate.cert)
        return cls(directory, signers, chains)

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.pem")

    def prefill(self, engine: Engine) -> None:
        """Every SP certificate in the verifier's cache, as if fetched once (no network)."""
        fetcher = engine.auth.fetcher
        assert fetcher is not None
        for spc, body in self.chains.items():
            entry = fetcher.trust.validate_body(x5u_url(spc), body, time.time())
            assert entry.ok, entry.failures
            fetcher.put(entry, 30 * 86400.0)


class Identities:
    """One Identity header per signed call, signed when first needed and shared by the engines of a pair."""

    def __init__(self, pki: Pki, wall_offset: float) -> None:
        self.pki = pki
        self.wall_offset = wall_offset
        self.values: dict[int, str] = {}

    def get(self, i: int, c: Call) -> str | None:
        if c.attest is None or c.spc is None or c.origid is None:
            return None
        v = self.values.get(i)
        if v is None:
            v = self.pki.signers[c.spc].sign(c.orig, [c.dest], c.attest, c.origid, c.t + self.wall_offset)
            self.values[i] = v
        return v

    def forget_before(self, i: int) -> None:
        for k in [k for k in self.values if k < i]:
            del self.values[k]


# --- results ----------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class CallResult:
    """What stirgate did to one call."""

    verdict: str = "lost"        # forwarded | tagged | routed | rejected | marked | lost
    code: int | None = None      # the final status the caller got (None while answered/cancelled as modelled)
    display: str | None = None   # the display name the callee saw
    decision: str = ""           # the chain's merged outcome: continue | tag | route | reject ('' : no chain)
    steps: tuple[str, ...] = ()  # "name[dry-run]:outcome note" of every step that did not just continue
    dry_flagged: bool = False    # a dry-run step would have flagged it
    decision_flagged: bool = False

    @property
    def flagged(self) -> bool:
        return self.verdict in ("tagged", "routed", "rejected")


@dataclass
class Replay:
    policies: str | None
    results: list[CallResult]
    engine_cpu_s: float
    wall_s: float
    stats: dict[str, int]
    policy_counters: list[tuple[tuple[str, str, str, str], int]] = field(default_factory=list)
    #: With `breakdown`: process CPU seconds in each part of the policy path (see `policy_parts_timed`).
    breakdown: dict[str, float] = field(default_factory=dict)

    def breakdown_us(self) -> dict[str, float]:
        n = max(1, len(self.results))
        return {k: round(v / n * 1e6, 1) for k, v in self.breakdown.items()}

    @property
    def cpu_us_per_call(self) -> float:
        return self.engine_cpu_s / max(1, len(self.results)) * 1e6


def flags(d: Decision) -> bool:
    """Whether a decision changes what the callee sees as suspicious: reject, route, display prefix, Failed."""
    return d.action in ("reject", "route") or bool(d.display_prefix) or d.verstat == "TN-Validation-Failed"


# --- the simulation ---------------------------------------------------------------------------------------------

class _A:
    """The caller side of one call (the carrier trunk's UA)."""

    __slots__ = ("bye_sent", "call_id", "final", "invite", "to_tag")

    def __init__(self, call_id: str, invite: bytes) -> None:
        self.call_id = call_id
        self.invite = invite
        self.to_tag: str | None = None
        self.final = False
        self.bye_sent = False


class _B:
    """The callee side (the subscriber's UA behind the customer trunk)."""

    __slots__ = ("answered", "done", "invite", "target")

    def __init__(self, invite: Request, target: tuple[str, str, int]) -> None:
        self.invite = invite
        self.target = target
        self.answered = False
        self.done = False


class Sim:
    """One engine, one policy set, the traffic played into it in simulated time (`run_until`)."""

    def __init__(self, traffic: Traffic, policies: str | Path | None, pki: Pki, identities: Identities,
                 config_extra: dict[str, Any] | None = None, name: str = "0") -> None:
        self.traffic = traffic
        self.calls = traffic.calls
        self.identities = identities
        cfg = load_config_text(config_text(pki.ca, config_extra), "<bench.campaigns>")
        engine = Engine(cfg, dict(LOCAL))
        engine.wall_offset = identities.wall_offset
        pki.prefill(engine)
        if policies is not None:
            pset = load_policies(policies, trunks=[t.name for t in cfg.trunks], tn_policy=engine.auth.tn_policy,
                                 counters=engine.policy_counters)
            pset.setup_sync()
            engine.policies = pset
        engine.call_end_hooks.append(self._ended)
        self.engine = engine
        self.policies = str(policies) if policies is not None else None
        self.results = [CallResult() for _ in self.calls]
        self.heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self.seq = itertools.count()
        self.next_call = 0
        self.a: dict[str, tuple[int, _A]] = {}
        self.b: dict[str, tuple[int, _B]] = {}
        self.cpu = 0.0
        self.ended: list[tuple[str, ChainResult]] = []
        self.now = traffic.start_hour * 3600.0
        #: In every A-leg Call-ID ("<call index>-bench<name>@<source>"): what tells the caller's messages from
        #: the callee's (the B-leg's Call-IDs are the engine's own), wherever a route sends the B-leg.
        self.tag = f"bench{name}"
        self._a_mark = f"-{self.tag}@".encode()

    # -- scheduling -------------------------------------------------------------------------------------------
    def at(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), fn, arg))

    def run_until(self, t_end: float) -> None:
        calls, heap = self.calls, self.heap
        n = len(calls)
        while True:
            t_call = calls[self.next_call].t if self.next_call < n else math.inf
            t_ev = heap[0][0] if heap else math.inf
            t = min(t_call, t_ev)
            if t > t_end:
                break
            self._timers(t)
            self.now = t
            if t_call <= t_ev:
                i = self.next_call
                self.next_call += 1
                self._start(i)
            else:
                _, _, fn, arg = heapq.heappop(heap)
                fn(arg)
        self._timers(t_end)
        self.now = t_end

    def done(self) -> bool:
        return self.next_call >= len(self.calls) and not self.heap

    def _timers(self, t: float) -> None:
        eng = self.engine
        clock = time.process_time
        while True:
            d = eng.earliest_deadline()
            if d is None or d > t:
                return
            d = eng.next_deadline()
            if d is None or d > t:
                return
            c = clock()
            eng.handle_timer(d)
            self.cpu += clock() - c
            if self.ended:
                self._read_ended()
            self._drain(d)

    def _send(self, data: bytes, source: tuple[str, str, int], t: float) -> None:
        clock = time.process_time
        c = clock()
        self.engine.receive(data, source, t)
        self.cpu += clock() - c
        if self.ended:
            self._read_ended()
        self._drain(t)

    def _drain(self, t: float) -> None:
        out = self.engine.outbox
        if not out:
            return
        msgs = list(out)
        out.clear()
        mark = self._a_mark
        for data, target in msgs:
            if mark in data:
                self.at(t + NET, self._to_a, (data, target))
            else:
                self.at(t + NET, self._to_b, (data, target))

    # -- the caller (A side) ----------------------------------------------------------------------------------
    def _start(self, i: int) -> None:
        c = self.calls[i]
        src = c.source
        call_id = f"{i}-{self.tag}@{src}"
        identity = self.identities.get(i, c)
        disp = f'"{c.display}" ' if c.display else ""
        head = (
            f"INVITE sip:{c.dest}@{SG} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {src}:5060;branch=z9hG4bKa{i}\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: {disp}<sip:{c.orig}@{src}>;tag=a{i}\r\n"
            f"To: <sip:{c.dest}@{SG}>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 INVITE\r\n"
            f"Contact: <sip:{c.orig}@{src}:5060>\r\n"
            + (f"Identity: {identity}\r\n" if identity else "")
            + f"X-Bench-Call: {i}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
        )
        invite = head.encode() + SDP
        self.a[call_id] = (i, _A(call_id, invite))
        if c.outcome == "noanswer":
            self.at(self.now + c.ring, self._cancel, call_id)
        self._send(invite, ("udp", src, 5060), self.now)

    def _cancel(self, call_id: str) -> None:
        entry = self.a.get(call_id)
        if entry is None or entry[1].final:
            return
        i, a = entry
        c = self.calls[i]
        head = a.invite.split(b"\r\nCSeq:", 1)[0].decode()
        data = (head.replace("INVITE ", "CANCEL ", 1) + "\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n").encode()
        self._send(data, ("udp", c.source, 5060), self.now)

    def _to_a(self, item: tuple[bytes, tuple[str, str, int]]) -> None:
        data, target = item
        msg = parse(data)
        entry = self.a.get(msg.call_id)
        if entry is None:
            return
        i, a = entry
        if isinstance(msg, Request):
            if msg.method == "BYE":   # the callee hung up
                self._send(_response(msg, 200, "OK"), target, self.now)
                self._a_done(msg.call_id)
            elif msg.method != "ACK":
                self._send(_response(msg, 200, "OK"), target, self.now)
            return
        status = msg.status
        method = msg.cseq[1]
        if method != "INVITE" or status < 200:
            if method == "BYE" and status >= 200:
                self._a_done(msg.call_id)
            return
        if a.final:
            if status < 300:   # a 2xx retransmission: ACK again
                self._send(self._ack(i, a, msg), target, self.now)
            return
        a.final = True
        a.to_tag = msg.to_tag
        self._send(self._ack(i, a, msg), target, self.now)
        r = self.results[i]
        if status >= 300:
            r.code = status
            if status != 487 and r.verdict == "lost":
                r.verdict = "rejected"   # stirgate answered before any B-leg: its own decision
            self._a_done(msg.call_id)
            return
        c = self.calls[i]
        if not c.callee_hangs_up:
            self.at(self.now + c.duration, self._a_bye, msg.call_id)

    def _ack(self, i: int, a: _A, resp: Response) -> bytes:
        c = self.calls[i]
        to = resp.header("to") or ""
        if resp.status < 300:
            ruri = f"sip:{SG}"
            contact = resp.contact
            if contact is not None:
                ruri = contact.uri
            branch = f"z9hG4bKa{i}ack"
        else:
            ruri = f"sip:{c.dest}@{SG}"
            branch = f"z9hG4bKa{i}"
        return (f"ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {c.source}:5060;branch={branch}\r\nMax-Forwards: 70\r\n"
                f"From: {resp.header('from')}\r\nTo: {to}\r\nCall-ID: {a.call_id}\r\nCSeq: 1 ACK\r\n"
                f"Content-Length: 0\r\n\r\n").encode()

    def _a_bye(self, call_id: str) -> None:
        entry = self.a.get(call_id)
        if entry is None:
            return
        i, a = entry
        if a.bye_sent:
            return
        a.bye_sent = True
        c = self.calls[i]
        disp = f'"{c.display}" ' if c.display else ""
        data = (f"BYE sip:{SG} SIP/2.0\r\nVia: SIP/2.0/UDP {c.source}:5060;branch=z9hG4bKa{i}bye\r\n"
                f"Max-Forwards: 70\r\nFrom: {disp}<sip:{c.orig}@{c.source}>;tag=a{i}\r\n"
                f"To: <sip:{c.dest}@{SG}>;tag={a.to_tag}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\n"
                f"Content-Length: 0\r\n\r\n").encode()
        self._send(data, ("udp", c.source, 5060), self.now)

    def _a_done(self, call_id: str) -> None:
        self.a.pop(call_id, None)

    # -- the callee (B side) ----------------------------------------------------------------------------------
    def _to_b(self, item: tuple[bytes, tuple[str, str, int]]) -> None:
        data, target = item
        msg = parse(data)
        if isinstance(msg, Response):
            return   # 200 to our BYE
        method = msg.method
        if method == "INVITE":
            if msg.call_id in self.b:
                return   # a retransmission: answered already or about to be
            i = int(msg.header("x-bench-call") or -1)
            if i < 0:
                return
            b = _B(msg, target)
            self.b[msg.call_id] = (i, b)
            self._judge_b_invite(i, msg, data, target)
            c = self.calls[i]
            if c.outcome in OUTCOME_CODES:
                code = OUTCOME_CODES[c.outcome]
                self.at(self.now + 0.05, self._b_final, (msg.call_id, code))
                return
            self.at(self.now + 0.02, self._b_provisional, msg.call_id)
            if c.outcome == "answered":
                self.at(self.now + c.ring, self._b_answer, msg.call_id)
            return
        entry = self.b.get(msg.call_id)
        if method == "CANCEL":
            self._send(_response(msg, 200, "OK"), target, self.now)
            if entry is not None and not entry[1].done:
                entry[1].done = True
                self._send(_response(entry[1].invite, 487, "Request Terminated", f"b{entry[0]}"), target, self.now)
            return
        if method == "ACK":
            if entry is not None and entry[1].answered:
                i = entry[0]
                c = self.calls[i]
                if c.callee_hangs_up:
                    self.at(self.now + c.duration, self._b_bye, msg.call_id)
            elif entry is not None:
                self.b.pop(msg.call_id, None)   # the ACK of our error response: the B side is done
            return
        if method == "BYE":
            self._send(_response(msg, 200, "OK"), target, self.now)
            self.b.pop(msg.call_id, None)
            return
        self._send(_response(msg, 200, "OK"), target, self.now)

    def _judge_b_invite(self, i: int, msg: Request, data: bytes, target: tuple[str, str, int]) -> None:
        """What the callee sees: routed elsewhere, a display prefix, verstat Failed, or untouched."""
        r = self.results[i]
        c = self.calls[i]
        try:
            display = msg.from_.display
        except Exception:
            display = None
        if display is not None and len(display) >= 2 and display[0] == '"' and display[-1] == '"':
            display = display[1:-1]
        r.display = display
        if target[1] != SUBSCRIBERS[1]:
            r.verdict = "routed"
        elif (display or "") != (c.display or "") or FAILED in data:
            r.verdict = "tagged"
        else:
            r.verdict = "forwarded"

    def _b_provisional(self, call_id: str) -> None:
        entry = self.b.get(call_id)
        if entry is None or entry[1].done:
            return
        i, b = entry
        self._send(_response(b.invite, 180, "Ringing", f"b{i}"), b.target, self.now)

    def _b_answer(self, call_id: str) -> None:
        entry = self.b.get(call_id)
        if entry is None or entry[1].done:
            return
        i, b = entry
        b.done = b.answered = True
        self._send(_response(b.invite, 200, "OK", f"b{i}", SDP, f"<sip:{b.target[1]}:5060>"), b.target, self.now)

    def _b_final(self, arg: tuple[str, int]) -> None:
        call_id, code = arg
        entry = self.b.get(call_id)
        if entry is None or entry[1].done:
            return
        i, b = entry
        b.done = True
        reason = {486: "Busy Here", 480: "Temporarily Unavailable", 404: "Not Found"}[code]
        self._send(_response(b.invite, code, reason, f"b{i}"), b.target, self.now)

    def _b_bye(self, call_id: str) -> None:
        entry = self.b.pop(call_id, None)
        if entry is None:
            return
        i, b = entry
        inv = b.invite
        contact = inv.contact
        ruri = contact.uri if contact is not None else f"sip:{SG}"
        data = (f"BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {b.target[1]}:5060;branch=z9hG4bKb{i}bye\r\n"
                f"Max-Forwards: 70\r\nFrom: {inv.header('to')};tag=b{i}\r\nTo: {inv.header('from')}\r\n"
                f"Call-ID: {call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n").encode()
        self._send(data, b.target, self.now)

    # -- what the engine decided ------------------------------------------------------------------------------
    def _ended(self, call: EngineCall) -> None:
        """Engine hook at the end of every call (inside the engine's timed CPU): only note the call's policy
        result; `_read_ended` reads it after the engine returns."""
        if call.policy is not None:
            self.ended.append((call.a.call_id, call.policy[2]))

    def _read_ended(self) -> None:
        """The chain's decision and the steps that said something, of the calls that just ended."""
        ended, self.ended = self.ended, []
        for call_id, result in ended:
            self._read_result(call_id, result)

    def _read_result(self, call_id: str, result: ChainResult) -> None:
        idx = _index_of(call_id)
        if idx is None or not 0 <= idx < len(self.results):
            return
        r = self.results[idx]
        r.decision = result.decision.outcome
        r.decision_flagged = flags(result.decision)
        if r.verdict == "forwarded" and result.decision.tagged and not r.decision_flagged:
            r.verdict = "marked"   # tagged in a way the callee is not warned by (e.g. No-TN-Validation)
        steps = []
        for s in result.steps:
            d = s.decision
            if d.outcome == "continue":
                continue
            mode = "" if s.mode == "enforce" else "[dry-run]"
            steps.append(f"{s.name}{mode}:{d.outcome} {d.note}".rstrip())
            if s.mode == "dry-run" and flags(d):
                r.dry_flagged = True
        r.steps = tuple(steps)


def _index_of(call_id: str) -> int | None:
    head = call_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _response(req: Request, status: int, reason: str, to_tag: str | None = None, body: bytes = b"",
              contact: str | None = None) -> bytes:
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [h.raw for h in req.headers if h.key == "via"]
    lines += [h.raw for h in req.headers if h.key in ("from", "call-id", "cseq")]
    to = req.header("to") or ""
    if to_tag is not None and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    if contact:
        lines.append(f"Contact: {contact}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- playing ----------------------------------------------------------------------------------------------------

#: The policy path of a call, as the engine walks it: state ops gathered, run on the memory store (before the
#: chain, and again when the call ends), the chain evaluated, end-of-call ops gathered. The context is built
#: by compiled code calling compiled code (policies/context.py), out of reach of these wrappers: it is counted
#: in `engine_rest` (`python -m bench.policy_path` times it apart).
_PARTS: tuple[tuple[type, str, str], ...] = (
    (Chain, "observe", "observe"),
    (MemoryStore, "execute", "state"),
    (MemoryStore, "record", "state"),
    (Chain, "evaluate", "evaluate"),
    (Chain, "ended", "ended"),
)


@contextlib.contextmanager
def policy_parts_timed(acc: dict[str, float]) -> Iterator[None]:
    """Process CPU spent in each part of the policy path, added to `acc` (seconds), while the block runs.

    The engine is compiled but these classes are not, so it calls them through their class attributes, which
    are wrapped here and restored after. Each wrapped call costs two clock reads more (~1 us): the parts are
    for finding where the time goes, the paired engines for the figure."""
    clock = time.process_time
    saved = [(cls, name, cls.__dict__[name]) for cls, name, _ in _PARTS]

    def timed(fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            c = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[part] = acc.get(part, 0.0) + clock() - c
        return wrapper

    try:
        for cls, name, part in _PARTS:
            raw = cls.__dict__[name]
            if isinstance(raw, classmethod):
                setattr(cls, name, classmethod(timed(raw.__func__, part)))
            else:
                setattr(cls, name, timed(raw, part))
        yield
    finally:
        for cls, name, raw in saved:
            setattr(cls, name, raw)

def _wall_offset(traffic: Traffic) -> float:
    """Simulated second 0 is midnight UTC today: iat and the state store's windows see plausible wall time, and
    the same traffic gives the same windows whatever the hour the bench runs."""
    del traffic
    return math.floor(time.time() / 86400.0) * 86400.0


def play_pair(traffic: Traffic, policies: str | Path | None, *, baseline: str | Path | None = None,
              config_extra: dict[str, Any] | None = None, slice_s: float = 600.0,
              progress: Callable[[str], None] | None = None, breakdown: bool = False
              ) -> tuple[Replay, Replay | None]:
    """Play the traffic through an engine with `policies` and, interleaved slice by slice so the machine's
    background load falls on both alike, through one with `baseline` (None: no policy file) when `baseline`
    is not the string "skip". Returns (with policies, baseline or None). `breakdown`: also time each part of
    the policy path in the first engine (Replay.breakdown; adds ~1 us per part to its CPU)."""
    tune_gc()
    with tempfile.TemporaryDirectory(prefix="bench-campaigns-") as tmp:
        pki = Pki.build(Path(tmp))
        identities = Identities(pki, _wall_offset(traffic))
        sims = [Sim(traffic, policies, pki, identities, config_extra, "0")]
        if baseline != "skip":
            sims.append(Sim(traffic, baseline, pki, identities, config_extra, "1"))
        walls = [0.0] * len(sims)
        t = traffic.start_hour * 3600.0
        end = t + traffic.hours * 3600.0 + 3600.0
        last_report = time.monotonic()
        slices = 0
        parts: dict[str, float] = {}
        while not all(s.done() for s in sims) and t < end + 86400.0:
            t += slice_s
            # alternate which engine goes first: the first of a slice pays for warming caches (measured: an
            # A/A pair of identical engines differed by ~8 % when one always went first)
            for k, s in (reversed(list(enumerate(sims))) if slices % 2 else enumerate(sims)):
                w = time.perf_counter()
                with policy_parts_timed(parts) if breakdown and k == 0 else contextlib.nullcontext():
                    s.run_until(t)
                walls[k] += time.perf_counter() - w
            identities.forget_before(min(s.next_call for s in sims) - 1)
            slices += 1
            if slices % 6 == 0:
                gc.collect()   # nothing here should form cycles; collected now and then, untimed, to be sure
            if progress is not None and time.monotonic() - last_report > 10.0:
                last_report = time.monotonic()
                done = min(s.next_call for s in sims)
                progress(f"  simulated {(t - traffic.start_hour * 3600.0) / 3600.0:5.1f} h, {done:,} calls "
                         f"started, {sum(walls):.0f} s")
        for k, s in enumerate(sims):
            with policy_parts_timed(parts) if breakdown and k == 0 else contextlib.nullcontext():
                s.run_until(t + 300.0)   # lingering transactions end
        replays = [Replay(s.policies, s.results, s.cpu, walls[k], dict(s.engine.stats),
                          s.engine.policy_counters.items(), parts if k == 0 else {}) for k, s in enumerate(sims)]
    return replays[0], (replays[1] if len(replays) > 1 else None)


def play(traffic: Traffic, policies: str | Path | None, *, config_extra: dict[str, Any] | None = None,
         progress: Callable[[str], None] | None = None, breakdown: bool = False) -> Replay:
    """Play the traffic through one engine with `policies` (None: no policy file)."""
    return play_pair(traffic, policies, baseline="skip", config_extra=config_extra, progress=progress,
                     breakdown=breakdown)[0]


# --- the report -------------------------------------------------------------------------------------------------

def _share(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def _counts(calls: Sequence[Call], results: Sequence[CallResult], idx: Iterable[int]) -> dict[str, Any]:
    idx = list(idx)
    n = len(idx)
    verdicts = Counter(results[i].verdict for i in idx)
    flagged = sum(results[i].flagged for i in idx)
    out: dict[str, Any] = {"calls": n, "flagged": flagged, "flagged_share": _share(flagged, n),
                           "verdicts": dict(sorted(verdicts.items()))}
    dry = sum(results[i].dry_flagged or results[i].flagged for i in idx)
    if dry != flagged:
        out["flagged_share_with_dry_run"] = _share(dry, n)
    return out


def summarize(traffic: Traffic, replay: Replay, baseline: Replay | None = None,
              warmup_hours: float = 0.0) -> dict[str, Any]:
    """Per campaign kind: flagged share of calls 6..N of each campaign (the target), of all its calls, of its
    first 5; per legitimate kind and per trap (neighbours, unsigned, short calls, each bulk caller); why.

    `warmup_hours`: judge only the calls (and campaigns) that start after the first hours of the simulation,
    once the state the policies keep has filled (e.g. 24 of a 48-hour run: the second day)."""
    calls, res = traffic.calls, replay.results
    out: dict[str, Any] = {"policies": replay.policies, "seed": traffic.seed, "hours": traffic.hours,
                           "warmup_hours": warmup_hours, "calls": len(calls), "mix": traffic.mix()}
    since = traffic.start_hour * 3600.0 + warmup_hours * 3600.0
    starts = {c.id: c.start for c in traffic.campaigns}
    counted = [c.t >= since if c.legit else starts.get(c.campaign, c.t) >= since for c in calls]
    out["judged_calls"] = sum(counted)
    camp: dict[str, Any] = {}
    robo = [i for i, c in enumerate(calls) if not c.legit and counted[i]]
    for kind in (*CAMPAIGN_KINDS, "all"):
        idx = [i for i in robo if kind == "all" or calls[i].kind == kind]
        after = [i for i in idx if calls[i].seq > 5]
        first = [i for i in idx if calls[i].seq <= 5]
        e = _counts(calls, res, idx)
        e["campaigns"] = len({calls[i].campaign for i in idx})
        e["after_5"] = _counts(calls, res, after)
        e["first_5_flagged_share"] = _counts(calls, res, first)["flagged_share"]
        by_op: dict[str, Any] = {}
        for op in sorted({calls[i].party for i in idx}):
            oi = [i for i in after if calls[i].party == op]
            by_op[op] = {"after_5_calls": len(oi), "after_5_flagged_share": _counts(calls, res, oi)["flagged_share"]}
        e["operations"] = by_op
        camp[kind] = e
    out["campaigns"] = camp
    legit = [i for i, c in enumerate(calls) if c.legit and counted[i]]
    lk: dict[str, Any] = {}
    for kind in (*LEGIT_KINDS, "all"):
        lk[kind] = _counts(calls, res, [i for i in legit if kind == "all" or calls[i].kind == kind])
    out["legit"] = lk
    traps = {
        "neighbors": [i for i in legit if calls[i].neighbor],
        "unsigned": [i for i in legit if calls[i].attest is None],
        "unsigned_neighbors": [i for i in legit if calls[i].attest is None and calls[i].neighbor],
        "attest_b_c": [i for i in legit if calls[i].attest in ("B", "C")],
        "short_answered": [i for i in legit if calls[i].outcome == "answered" and calls[i].duration < 6.0],
        **{f"bulk:{p}": [i for i in legit if calls[i].kind == "bulk" and calls[i].party == p]
           for p in sorted({calls[i].party for i in legit if calls[i].kind == "bulk"})},
        "call-centre": [i for i in legit if calls[i].party == "call-centre"],
    }
    out["legit_traps"] = {k: _counts(calls, res, v) for k, v in traps.items()}
    out["legit_flagged_by_party"] = dict(Counter(
        f"{calls[i].kind}:{calls[i].party}" for i in legit if res[i].flagged).most_common(15))
    out["legit_flagged_by_step"] = dict(_step_counter(res[i] for i in legit if res[i].flagged).most_common(15))
    out["campaign_flagged_by_step"] = dict(_step_counter(res[i] for i in robo if res[i].flagged).most_common(15))
    out["campaign_missed_after_5_by_operation"] = dict(Counter(
        calls[i].party for i in robo if calls[i].seq > 5 and not res[i].flagged).most_common())
    lost = sum(r.verdict == "lost" for r in res)
    mismatch = sum(1 for r in res if r.decision and r.decision_flagged != r.flagged and r.verdict != "lost")
    out["checks"] = {"lost_calls": lost, "decision_verdict_mismatches": mismatch,
                     "internal_errors": replay.stats.get("internal_errors", 0)}
    cpu: dict[str, Any] = {"engine_us_per_call": round(replay.cpu_us_per_call, 1),
                           "wall_s": round(replay.wall_s, 1)}
    if baseline is not None:
        cpu["baseline_policies"] = baseline.policies
        cpu["baseline_engine_us_per_call"] = round(baseline.cpu_us_per_call, 1)
        cpu["added_us_per_call"] = round(replay.cpu_us_per_call - baseline.cpu_us_per_call, 1)
    if replay.breakdown:
        parts = replay.breakdown_us()
        cpu["policy_path_us_per_call"] = parts
        if "added_us_per_call" in cpu:
            cpu["policy_path_us_per_call"]["engine_rest"] = round(cpu["added_us_per_call"] - sum(parts.values()), 1)
    out["cpu"] = cpu
    after = camp["all"]["after_5"]["flagged_share"] or 0.0
    legit_share = lk["all"]["flagged_share"] or 0.0
    out["targets"] = {
        "caught_after_5": {"value": after, "target": TARGET_CAUGHT_AFTER_5, "met": after >= TARGET_CAUGHT_AFTER_5},
        "legit_flagged": {"value": legit_share, "target": TARGET_LEGIT_FLAGGED,
                          "met": legit_share <= TARGET_LEGIT_FLAGGED},
    }
    if "added_us_per_call" in cpu and baseline is not None:
        # The analytics' target is met against the profile without them (bench/profile-without-risk.yaml);
        # against no policy file the figure also holds the per-call checks and the chain itself.
        out["targets"]["added_cpu_us"] = {"value": cpu["added_us_per_call"], "target": TARGET_ADDED_US,
                                          "met": cpu["added_us_per_call"] <= TARGET_ADDED_US,
                                          "against": _shown_path(baseline.policies)}
    return out


def _shown_path(policies: str | None) -> str:
    """A policy file as the summary names it: relative to the repository when inside it."""
    if policies is None:
        return "no policy file"
    path = Path(policies)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else policies


def median_cpu(summary: dict[str, Any], pairs: Sequence[tuple[float, float]]) -> None:
    """Replace the CPU figures of `summary` by the medians of several comparisons ((with, baseline) µs per call):
    on a shared machine one comparison can be off by several µs either way."""
    cpu = summary["cpu"]
    cpu["engine_us_per_call"] = round(statistics.median(w for w, _ in pairs), 1)
    cpu["baseline_engine_us_per_call"] = round(statistics.median(b for _, b in pairs), 1)
    added = [w - b for w, b in pairs]
    cpu["added_us_per_call"] = round(statistics.median(added), 1)
    cpu["added_us_runs"] = [round(a, 1) for a in added]
    # The spread, to judge a target near the median with: the standard error of the mean, and each run's added
    # CPU as a share of its baseline (the host's speed drifts between runs; the share drifts less).
    cpu["added_us_mean"] = round(statistics.mean(added), 2)
    cpu["added_us_se"] = round(statistics.stdev(added) / len(added) ** 0.5, 2) if len(added) > 1 else None
    cpu["added_share_median"] = round(statistics.median((w - b) / b for w, b in pairs if b > 0), 4)
    target = summary["targets"].get("added_cpu_us")
    if target is not None:
        target["value"] = cpu["added_us_per_call"]
        target["met"] = cpu["added_us_per_call"] <= TARGET_ADDED_US


def _step_counter(results: Iterable[CallResult]) -> Counter[str]:
    c: Counter[str] = Counter()
    for r in results:
        for s in r.steps:
            name, _, rest = s.partition(":")
            outcome, _, note = rest.partition(" ")
            # "velocity:orig_tn calls 21 > 20 in 10 s" -> "velocity(throttle/reject) velocity:orig_tn calls"
            words = note.split()
            c[f"{name}:{outcome} {' '.join(words[:2])}".rstrip()] += 1
    return c


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}%"


def format_summary(s: dict[str, Any]) -> str:
    warm = (f"; judged: {s['judged_calls']:,} calls after the first {s['warmup_hours']:g} h"
            if s["warmup_hours"] else "")
    lines = [f"policies: {s['policies']}   seed {s['seed']}, {s['hours']:g} h, {s['calls']:,} calls "
             f"({s['mix']['campaign_calls']:,} in {s['mix']['campaigns']} campaigns, mean size "
             f"{s['mix']['campaign_size_mean']}){warm}", "",
             "| campaign kind | campaigns | calls | flagged after 5 | flagged, all calls | first 5 | tagged "
             "| rejected |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, e in s["campaigns"].items():
        v = e["verdicts"]
        lines.append(f"| {kind} | {e['campaigns']} | {e['calls']} | {_pct(e['after_5']['flagged_share'])} "
                     f"({e['after_5']['calls']}) | {_pct(e['flagged_share'])} | {_pct(e['first_5_flagged_share'])} | "
                     f"{v.get('tagged', 0) + v.get('routed', 0)} | {v.get('rejected', 0)} |")
    lines += ["", "| legitimate | calls | flagged | tagged | rejected |", "|---|---:|---:|---:|---:|"]
    for name, e in [*s["legit"].items(), *s["legit_traps"].items()]:
        v = e["verdicts"]
        extra = f" (dry-run {_pct(e['flagged_share_with_dry_run'])})" if "flagged_share_with_dry_run" in e else ""
        lines.append(f"| {name} | {e['calls']} | {_pct(e['flagged_share'])} ({e['flagged']}){extra} | "
                     f"{v.get('tagged', 0) + v.get('routed', 0)} | {v.get('rejected', 0)} |")
    if s["legit_flagged_by_step"]:
        lines += ["", "legitimate calls flagged, by step: " + ", ".join(
            f"{k} {v}" for k, v in s["legit_flagged_by_step"].items())]
    if s["campaign_missed_after_5_by_operation"]:
        lines.append("campaign calls 6..N missed, by operation: " + ", ".join(
            f"{k} {v}" for k, v in s["campaign_missed_after_5_by_operation"].items()))
    cpu = s["cpu"]
    line = f"engine CPU {cpu['engine_us_per_call']:.1f} µs/call"
    if "baseline_engine_us_per_call" in cpu:
        line += (f"; {cpu['baseline_policies'] or 'no policy file'}: {cpu['baseline_engine_us_per_call']:.1f} "
                 f"µs/call; added {cpu['added_us_per_call']:+.1f} µs/call")
        if "added_us_runs" in cpu:
            line += f" (median of {len(cpu['added_us_runs'])}: {', '.join(f'{a:+.1f}' for a in cpu['added_us_runs'])})"
            if cpu.get("added_us_se") is not None:
                line += (f"; mean {cpu['added_us_mean']:+.1f} ± {cpu['added_us_se']:.1f} (s.e.), "
                         f"{100 * cpu['added_share_median']:.1f} % of the baseline (median)")
    lines += ["", line + f" (replay {cpu['wall_s']:.0f} s wall)"]
    if "policy_path_us_per_call" in cpu:
        lines.append("policy path, µs/call (timed apart): " + ", ".join(
            f"{k} {v:.1f}" for k, v in cpu["policy_path_us_per_call"].items()))
    for name, t in s["targets"].items():
        val = f"{100 * t['value']:.2f}%" if name != "added_cpu_us" else f"{t['value']:.1f} µs"
        goal = f"{100 * t['target']:.1f}%" if name != "added_cpu_us" else f"{t['target']:.0f} µs"
        against = f", against {t['against']}" if t.get("against") else ""
        lines.append(f"target {name}: {val} (target {'>=' if name == 'caught_after_5' else '<='} {goal}{against}): "
                     f"{'met' if t['met'] else 'NOT met'}")
    ch = s["checks"]
    if any(ch.values()):
        lines.append(f"CHECK: {ch}")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------------------

def default_policies() -> Path:
    """The shipped campaign profile when it exists, else the baseline of today's built-ins."""
    return DEFAULT_POLICIES if DEFAULT_POLICIES.exists() else BASELINE_POLICIES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.campaigns", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    ap.add_argument("--scale", type=int, default=60_000, help="calls over the simulated time (default 60,000)")
    ap.add_argument("--campaign-share", type=float, default=0.08, help="share of calls in campaigns (0.08)")
    ap.add_argument("--start-hour", type=float, default=None, help="hour of day the simulation starts at")
    ap.add_argument("--policies", default=None,
                    help=f"policy file (default {DEFAULT_POLICIES.relative_to(REPO)} when present, else "
                         f"{BASELINE_POLICIES.relative_to(REPO)})")
    ap.add_argument("--baseline", default=None,
                    help="policy file of the CPU comparison engine (default: none, so 'added' is the policies' cost)")
    ap.add_argument("--no-cpu", action="store_true", help="play with the policies only (about half the time)")
    ap.add_argument("--config-extra", default=None, help="YAML file deep-merged into the generated main config")
    ap.add_argument("--warmup-hours", type=float, default=0.0,
                    help="judge only calls after the first N simulated hours (e.g. --hours 48 --warmup-hours 24)")
    ap.add_argument("--cpu-repeat", type=int, default=1,
                    help="play the CPU comparison this many times and report the medians (a loaded machine)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the parts of the policy path (context, observe, state, evaluate, ended)")
    ap.add_argument("--json", default=None, help="write the summary (and, with --per-call, every call) here")
    ap.add_argument("--per-call", action="store_true", help="include every call and its result in the JSON")
    args = ap.parse_args(argv)
    policies = Path(args.policies) if args.policies else default_policies()
    extra = yaml.safe_load(Path(args.config_extra).read_text()) if args.config_extra else None
    t0 = time.monotonic()
    traffic = generate(args.seed, args.hours, args.scale, args.campaign_share, args.start_hour)
    print(f"traffic: {len(traffic.calls):,} calls, {len(traffic.campaigns)} campaigns over {args.hours:g} h "
          f"(seed {args.seed}), generated in {time.monotonic() - t0:.1f} s; policies {policies}", flush=True)
    progress = (lambda m: print(m, flush=True))  # noqa: E731
    if args.no_cpu:
        replay, base = play(traffic, policies, config_extra=extra, progress=progress, breakdown=args.breakdown), None
    else:
        replay, base = play_pair(traffic, policies, baseline=args.baseline, config_extra=extra, progress=progress,
                                 breakdown=args.breakdown)
    summary = summarize(traffic, replay, base, args.warmup_hours)
    if base is not None and args.cpu_repeat > 1:
        pairs = [(replay.cpu_us_per_call, base.cpu_us_per_call)]
        for k in range(args.cpu_repeat - 1):
            again, again_base = play_pair(traffic, policies, baseline=args.baseline, config_extra=extra)
            assert again_base is not None
            pairs.append((again.cpu_us_per_call, again_base.cpu_us_per_call))
            print(f"  CPU comparison {k + 2}/{args.cpu_repeat}: added {pairs[-1][0] - pairs[-1][1]:+.1f} µs/call",
                  flush=True)
        median_cpu(summary, pairs)
    summary["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(format_summary(summary))
    if args.json:
        doc = dict(summary)
        if args.per_call:
            doc["per_call"] = [
                {**c._asdict(), "result": {"verdict": r.verdict, "code": r.code, "display": r.display,
                                           "decision": r.decision, "steps": list(r.steps),
                                           "dry_flagged": r.dry_flagged}}
                for c, r in zip(traffic.calls, replay.results, strict=True)]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
