"""CPU per call of the sans-I/O engine alone, in memory: the bench call (bench/scenarios/uac.xml and uas.xml)
replayed through `Engine.receive` and `Engine.handle_timer`, no sockets, no event loop.

This is the user-space share of what a live relay step costs (the rest is the kernel's UDP and uvloop). It is
repeatable under valgrind (`--callgrind`), so a change to the hot path can be judged by its instruction count
on a busy machine. Calls overlap as they do at `--rate` calls/s: each INVITE, answer, ACK and BYE arrives at
its own time and every transaction lingers for its RFC 3261 timers.

    python -m bench.engine_calls                     # 20,000 calls, CPU µs per call
    python -m bench.engine_calls --profile           # cProfile, top functions by own time
    python -m bench.engine_calls --sign              # the customer trunk signs (STI-AS), demo PKI
    python -m bench.engine_calls --verify            # the UAC is a carrier trunk: every INVITE's Identity
                                                     # verified (STI-VS), certificate cached
    python -m bench.engine_calls --redirect          # the customer trunk in redirect mode: INVITE -> 302 with
                                                     # the Identity in the Contact -> ACK (no B-leg)
    python -m bench.engine_calls --verify --crl      # the same with an SP certificate that names a CRL
                                                     # distribution point, its CRL checked and cached (issue 17)
    python -m bench.engine_calls --shed              # INVITEs refused at the door (503, then their ACK): CPU
                                                     # per refused INVITE (issue 19)
    python -m bench.engine_calls --live [--sign]     # with what a live worker adds when a call ends: the call
                                                     # record (SQLite writer thread), the metrics, the per-call
                                                     # log line (to /dev/null), as `stirgate run` installs them
    valgrind --tool=callgrind python -m bench.engine_calls --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import os
import pstats
import sys
import tempfile
import time
import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.config import load_config_text
from proxy.engine import Engine
from proxy.logsink import sink
from proxy.metrics import Metrics
from proxy.records import call_end_hook
from proxy.recordstore import make_writer
from proxy.server import _call_logger, configure_logging, tune_gc
from proxy.sip.message import parse
from proxy.stir.crl_fetcher import CrlFetcher
from proxy.stir.demo_certs import build_demo_set, init_demo_certs, issue, key_pem, pem, write_demo_set
from proxy.stir.signer import Signer, SigningProfile

UAC = ("udp", "127.0.0.10", 5060)
UAS = ("udp", "127.0.0.20", 5060)
LOCAL = {"udp": ("127.0.0.1", 5060)}

CONFIG = """
listen: [udp:127.0.0.1:5060]
trunks:
  - {name: customer, role: customer, sources: [127.0.0.10], destination: 127.0.0.10:5060, transport: udp}
  - {name: carrier, role: carrier, sources: [127.0.0.20], destination: 127.0.0.20:5060, transport: udp}
routes:
  - {from: [customer], prefix: "", trunks: [carrier]}
  - {from: [carrier], prefix: "", trunks: [customer]}
"""

SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.10\r\ns=-\r\nc=IN IP4 127.0.0.10\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


SIGN = """
stir:
  signing_profiles:
    - {{name: bench, key: {key}, x5u: "https://127.0.0.1:8443/sp.pem"}}
"""


VERIFY = """
stir:
  trust_anchors: [{ca}]
  crl_cache_dir: {crl_dir}
  verify: {{x5u_allow_private: true, x5u_allow_any_port: true}}
"""
X5U = "https://127.0.0.1:8443/sp.pem"
CRL_URL = "https://127.0.0.1:8443/sti.crl"


def crl_pki(directory: str) -> bytes:
    """The demo PKI whose SP certificate names a CRL distribution point, and that CRL (DER, nothing revoked)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    now = datetime.datetime.now(datetime.UTC)
    demo = build_demo_set(now)
    write_demo_set(directory, demo)
    sp = issue("bench SP with CDP", demo.intermediate, ca=False, spc="9999", crl_urls=(CRL_URL,),
               not_before=now - datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=30))
    with open(os.path.join(directory, "sp.pem"), "wb") as f:
        f.write(pem(sp.cert) + pem(demo.intermediate.cert))
    with open(os.path.join(directory, "sp.key"), "wb") as f:
        f.write(key_pem(sp.key))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(demo.intermediate.cert.subject)
           .last_update(now - datetime.timedelta(hours=1)).next_update(now + datetime.timedelta(days=1))
           .sign(demo.intermediate.key, hashes.SHA256()))
    return crl.public_bytes(Encoding.DER)


def config_text(sign_dir: str | None, verify_dir: str | None = None, redirect: bool = False) -> str:
    """The relay config; with a demo PKI folder, the customer trunk signs every call (attestation A), or the
    UAC's trunk is a carrier whose INVITEs are verified (failures rejected)."""
    if verify_dir is not None:
        text = CONFIG.replace("{name: customer, role: customer", "{name: customer, role: carrier")
        text = text.replace("destination: 127.0.0.10:5060, transport: udp}",
                            "destination: 127.0.0.10:5060, transport: udp, verify: {mode: reject, on_missing: reject}}")
        text = text.replace("{name: carrier, role: carrier", "{name: carrier, role: customer")
        return text + VERIFY.format(ca=os.path.join(verify_dir, "ca.pem"), crl_dir=os.path.join(verify_dir, "crl"))
    if sign_dir is None:
        return CONFIG
    mode = ", mode: redirect" if redirect else ""
    text = CONFIG.replace(
        "destination: 127.0.0.10:5060, transport: udp}",
        'destination: 127.0.0.10:5060, transport: udp, sign: {profile: bench, attestation: {prefixes: ["1202"]}}'
        + mode + "}",
    )
    return text + SIGN.format(key=os.path.join(sign_dir, "sp.key"))


def _uac_request(method: str, i: int, cseq: int, ruri: str, to_tag: str = "", identity: str = "") -> bytes:
    body = SDP if method == "INVITE" else b""
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    subject = "Subject: bench\r\n" if method == "INVITE" else ""
    if identity:
        subject += f"Identity: {identity}\r\n"
    return (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.10:5060;branch=z9hG4bK-{i}-{cseq}-{method[0]}\r\n"
        f"From: \"bench\" <sip:+12025550100@127.0.0.10:5060>;tag=1234SIPpTag00{i}\r\n"
        f"To: <sip:12025550199@127.0.0.1:5060>{to_tag}\r\n"
        f"Call-ID: {i}-1234@127.0.0.10\r\nCSeq: {cseq} {method}\r\n"
        f"Contact: <sip:+12025550100@127.0.0.10:5060>\r\nMax-Forwards: 70\r\n{subject}{ctype}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _uas_response(request: bytes, status: int, reason: str, body: bytes = b"") -> bytes:
    """What SIPp's uas.xml answers: [last_Via:] [last_From:] [last_To:];tag [last_Call-ID:] [last_CSeq:]."""
    req = parse(request)
    copied = "".join(f"{h.raw}\r\n" for h in req.headers if h.key in ("via", "from", "call-id", "cseq"))
    to = req.header("to") or ""
    if ";tag=" not in to:
        to += ";tag=5678SIPpTag01"
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (f"SIP/2.0 {status} {reason}\r\n{copied}To: {to}\r\nContact: <sip:127.0.0.20:5060;transport=UDP>\r\n"
            f"{ctype}Content-Length: {len(body)}\r\n\r\n").encode() + body


def _take(engine: Engine, prefix: bytes) -> bytes:
    for data, _target in engine.outbox:
        if data.startswith(prefix):
            return data
    raise AssertionError(f"engine sent no {prefix!r}: {[d[:20] for d, _ in engine.outbox]}")


def _identities(calls: int, pki: str) -> list[str]:
    """One fresh PASSporT per call (orig +12025550100, dest 12025550199, attest A), signed now."""
    with open(os.path.join(pki, "sp.key"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signer = Signer(SigningProfile("bench", "", X5U), key=key)
    now = time.time()
    return [signer.sign("12025550100", ["12025550199"], "A", str(uuid.uuid4()), now) for _ in range(calls)]


def _prefill_cert_cache(engine: Engine, pki: str, crl: bytes | None = None) -> None:
    """The x5u certificate as if fetched once (the fetch itself is I/O, measured by the live bench); with a CRL,
    checked against it through the CRL fetcher as a fetched certificate is (the CRL taken as if downloaded)."""
    fetcher = engine.auth.fetcher
    assert fetcher is not None
    now = time.time()
    with open(os.path.join(pki, "sp.pem"), "rb") as f:
        entry, chain = fetcher.trust.validate_body_chain(X5U, f.read(), now)
    assert entry.ok, entry.failures
    if crl is not None:
        crls = fetcher.revocation
        assert isinstance(crls, CrlFetcher)
        assert crls.preload(CRL_URL, crl, chain[1:2])
        entry, _valid_until = asyncio.run(crls.check(entry, chain, fetcher.trust.anchors, now))
        assert entry.ok and "crl-checked" in entry.notes, (entry.failures, entry.notes)
    fetcher.put(entry, 3600.0)


def run_redirect(calls: int, rate: float, sign_dir: str) -> tuple[Engine, float]:
    """Redirect mode: INVITE -> 302 (Identity in the Contact) -> ACK, `calls` times."""
    engine = Engine(load_config_text(config_text(sign_dir, redirect=True), "<bench>"), LOCAL)
    engine.wall_offset = time.time()
    tune_gc()
    step = 1.0 / rate
    now = 0.0
    cpu = 0.0
    clock = time.process_time
    for i in range(calls):
        now += step
        invite = _uac_request("INVITE", i, 1, "sip:12025550199@127.0.0.1:5060")
        t = clock()
        engine.receive(invite, UAC, now)
        cpu += clock() - t
        answer = parse(_take(engine, b"SIP/2.0 302"))
        engine.outbox.clear()
        ack = _uac_request("ACK", i, 1, "sip:12025550199@127.0.0.1:5060", f";tag={answer.to_tag}")
        t = clock()
        engine.receive(ack, UAC, now + 0.0002)
        engine.handle_timer(now + 0.0003)
        cpu += clock() - t
        assert not engine.outbox
    assert engine.stats["redirected"] == calls and not engine.calls, engine.stats
    return engine, cpu


class LiveHooks:
    """What `stirgate run` hangs on the engine besides the SIP work (proxy/server.py `_serve`): the per-call log
    line, the metrics and the call record, the records written by the SQLite writer thread."""

    def __init__(self, engine: Engine, directory: str) -> None:
        configure_logging("info")
        settings = load_config_text(CONFIG + f"records: {{path: {directory}/records.sqlite3}}\n", "<bench>").records
        self.metrics = Metrics()
        self.writer = make_writer(settings)
        self.writer.start()
        engine.call_end_hooks.append(_call_logger())
        engine.call_end_hooks.append(call_end_hook(self.writer, [self.metrics.observe_call], engine.auth.tn_policy))

    def close(self) -> None:
        """The writer's last rows written (inside the timed part: its thread's CPU is the process's)."""
        self.writer.flush_and_close()
        sink.flush()


def run(calls: int, rate: float, sign_dir: str | None = None, verify_dir: str | None = None,
        redirect: bool = False, crl: bytes | None = None, live: str | None = None) -> tuple[Engine, float]:
    """Replay `calls` bench calls; returns the engine and the process CPU seconds spent inside it.

    `live`: a directory for the call records: the hooks a live worker adds are installed (`LiveHooks`) and the
    CPU is the whole process's from the first call to the last record written (harness included: the caller
    subtracts a run without them)."""
    if redirect:
        assert sign_dir is not None
        return run_redirect(calls, rate, sign_dir)
    engine = Engine(load_config_text(config_text(sign_dir, verify_dir), "<bench>"), LOCAL)
    engine.wall_offset = time.time()
    hooks = LiveHooks(engine, live) if live is not None else None
    identities = [""] * calls
    if verify_dir is not None:
        _prefill_cert_cache(engine, verify_dir, crl)
        identities = _identities(calls, verify_dir)
    tune_gc()  # as `stirgate run` does: the cyclic GC otherwise dominates
    step = 1.0 / rate
    now = 0.0
    cpu = 0.0
    clock = time.process_time
    started = clock()
    for i in range(calls):
        now += step
        invite = _uac_request("INVITE", i, 1, "sip:12025550199@127.0.0.1:5060", identity=identities[i])
        t = clock()
        engine.receive(invite, UAC, now)
        cpu += clock() - t
        b_invite = _take(engine, b"INVITE ")
        engine.outbox.clear()
        ok = _uas_response(b_invite, 200, "OK", SDP)
        t = clock()
        engine.receive(ok, UAS, now + 0.0002)
        cpu += clock() - t
        a_ok = parse(_take(engine, b"SIP/2.0 200"))
        engine.outbox.clear()
        to_tag = f";tag={a_ok.to_tag}"
        target = "sip:127.0.0.1:5060"
        ack = _uac_request("ACK", i, 1, target, to_tag)
        bye = _uac_request("BYE", i, 2, target, to_tag)
        t = clock()
        engine.receive(ack, UAC, now + 0.0004)
        engine.receive(bye, UAC, now + 0.0005)
        cpu += clock() - t
        b_ack = _take(engine, b"ACK ")
        b_bye = _take(engine, b"BYE ")
        engine.outbox.clear()
        bye_ok = _uas_response(b_bye, 200, "OK")
        t = clock()
        engine.receive(bye_ok, UAS, now + 0.0007)
        engine.handle_timer(now + 0.0008)
        cpu += clock() - t
        engine.outbox.clear()
        del b_ack
    t = clock()
    engine.handle_timer(now + 60.0)  # every lingering transaction ends
    cpu += clock() - t
    if hooks is not None:
        hooks.close()
        cpu = clock() - started  # whole: the writer thread's CPU overlaps the harness
    assert engine.stats["calls_ended"] == calls, engine.stats
    assert not engine.calls, len(engine.calls)
    return engine, cpu


def run_shed(calls: int) -> tuple[Engine, float]:
    """Replay `calls` INVITEs refused under overload (the loop lags: every source alone is over its share) and
    the ACK of each 503; returns the engine and the CPU seconds spent inside it."""
    engine = Engine(load_config_text(config_text(None), "<bench>"), LOCAL)
    engine.loop_lag = 10.0
    tune_gc()
    invites = [_uac_request("INVITE", i, 1, "sip:12025550199@127.0.0.1:5060") for i in range(calls)]
    cpu = 0.0
    clock = time.process_time
    now = 0.0
    for i in range(calls):
        now += 0.0001
        t = clock()
        engine.receive(invites[i], UAC, now)
        cpu += clock() - t
        refusal = parse(_take(engine, b"SIP/2.0 503"))
        engine.outbox.clear()
        ack = _uac_request("ACK", i, 1, "sip:12025550199@127.0.0.1:5060", f";tag={refusal.to_tag}")
        t = clock()
        engine.receive(ack, UAC, now)
        cpu += clock() - t
    assert engine.stats["overload_rejected"] == calls and engine.stats["stateless_acks"] == calls, engine.stats
    assert len(engine.txns) == 0 and not engine.calls
    return engine, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=1000.0, help="calls per second of engine time (overlap)")
    ap.add_argument("--profile", action="store_true", help="cProfile the replay, print the top functions")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up run (for instruction counts)")
    ap.add_argument("--sign", action="store_true", help="the customer trunk signs every call (demo PKI)")
    ap.add_argument("--verify", action="store_true", help="every INVITE's Identity is verified (cached cert)")
    ap.add_argument("--redirect", action="store_true", help="redirect mode: INVITE -> 302 with the Identity -> ACK")
    ap.add_argument("--crl", action="store_true", help="with --verify: the certificate's CRL (CDP) checked, cached")
    ap.add_argument("--shed", action="store_true", help="INVITEs refused at the door (503) and their ACKs")
    ap.add_argument("--live", action="store_true",
                    help="also what a live worker adds per call (record, metrics, log line): whole-process CPU "
                         "with and without them, the difference")
    args = ap.parse_args(argv)
    if args.shed:
        if not args.no_warmup:
            run_shed(min(args.calls, 2000))
        _engine, cpu = run_shed(args.calls)
        print(f"engine CPU per refused INVITE (503 + its ACK): {cpu / args.calls * 1e6:.1f} µs over {args.calls}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        sign_dir = verify_dir = None
        crl = None
        if args.verify and args.crl:
            crl = crl_pki(tmp)
        elif args.sign or args.verify or args.redirect:
            init_demo_certs(tmp)
        if args.sign or args.redirect:
            sign_dir = tmp
        elif args.verify:
            verify_dir = tmp
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            run(args.calls, args.rate, sign_dir, verify_dir, args.redirect, crl)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
            return 0
        if args.live:
            return _live(args, sign_dir, verify_dir, crl, tmp)
        if not args.no_warmup:
            run(min(args.calls, 2000), args.rate, sign_dir, verify_dir, args.redirect, crl)
        _engine, cpu = run(args.calls, args.rate, sign_dir, verify_dir, args.redirect, crl)
    what = ("redirect" if args.redirect else "signing" if args.sign
            else ("verifying, CRL cached" if crl else "verifying") if args.verify else "relay")
    print(f"engine CPU per call ({what}): {cpu / args.calls * 1e6:.1f} µs over {args.calls} calls at {args.rate:g} cps")
    return 0


def _live(args: argparse.Namespace, sign_dir: str | None, verify_dir: str | None, crl: bytes | None,
          tmp: str) -> int:
    """Whole-process CPU per call with the live hooks and without (harness included in both), alternated three
    times; the per-call log lines go to /dev/null."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    with_hooks: list[float] = []
    without: list[float] = []
    try:
        os.dup2(devnull, 2)
        run(min(args.calls, 2000), args.rate, sign_dir, verify_dir, args.redirect, crl, live=tmp + "/warm")
        for k in range(3):
            for live in ((tmp + f"/r{k}", None) if k % 2 == 0 else (None, tmp + f"/r{k}")):
                if live is not None:
                    os.makedirs(live, exist_ok=True)
                t = time.process_time()
                run(args.calls, args.rate, sign_dir, verify_dir, False, crl, live=live)
                (with_hooks if live is not None else without).append(time.process_time() - t)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    per = [(w - o) / args.calls * 1e6 for w, o in zip(with_hooks, without, strict=True)]
    per.sort()
    what = "signing" if sign_dir else "verifying" if verify_dir else "relay"
    whole = sorted(with_hooks)[1] / args.calls * 1e6
    bare = sorted(without)[1] / args.calls * 1e6
    print(f"live hooks ({what}): record + metrics + log line add {per[1]:.1f} µs per call (median of 3: "
          + ", ".join(f"{x:.1f}" for x in per) + f"); whole process with them {whole:.1f} µs/call, without "
          f"{bare:.1f} (harness included in both)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
