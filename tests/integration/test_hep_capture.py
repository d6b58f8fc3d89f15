"""HEP capture against real receivers (issue 15): sngrep listening for HEP, and a capture server that is down.

A SIPp call (customer 127.0.0.10 -> stirgate -> carrier 127.0.0.20, UDP) with `hep:` pointing at a tee in the
test that records each HEP packet (read from the wire layout by tests/integration/tls_env.read_hep, not by
proxy.hep) and passes it on, unchanged, to `sngrep -N -L udp:...` writing a pcap. Asserted:
- every message either SIPp peer traced (both legs, both directions) has one HEP copy with exactly its bytes,
  the right source and destination address and port, and the A-leg Call-ID as correlation id;
- the generic chunks (family, protocol, capture id, SIP type, time) are right, and sngrep understood every copy
  (its pcap holds each payload with the same addresses);
- with an auth key, sngrep configured with that password accepts the copies (it reads the auth chunk where
  stirgate writes it; a wrong key is refused by it, checked by sending one);
- a capture server that is down (UDP and TCP) costs the calls nothing: they all succeed, copies are counted as
  dropped.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.conftest import StirgateFactory
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, SIP_PORT, STIRGATE_IP, Sipp, SippResult
from tests.integration.tls_env import HepPacket, HepTee, Sngrep, event_count, read_pcap, stopping

pytestmark = pytest.mark.integration

CALL_ORDER = [1, 2, 7, 8, 9, 10, 11, 12, 3, 4, 15, 17]  # chunk types as stirgate writes them (no auth key)


def call_ids(*results: SippResult) -> set[str]:
    return {m.header("Call-ID") for r in results for m in r.messages}


def run_call(workdir: Path, calls: int = 1) -> tuple[SippResult, SippResult]:
    with harness.running(Sipp("uas_basic.xml", CARRIER_IP, workdir, calls=calls)) as (uas,), \
            harness.running(Sipp("uac_basic.xml", CUSTOMER_IP, workdir, remote=(STIRGATE_IP, SIP_PORT),
                                 calls=calls)) as (uac,):  # fmt: skip
        r_uac = uac.wait()
        r_uas = uas.wait(timeout=20)
    assert r_uac.returncode == 0 and r_uac.successful == calls, r_uac.summary()
    assert r_uas.returncode == 0, r_uas.summary()
    return r_uac, r_uas


def test_every_message_of_both_legs_reaches_sngrep_with_one_correlation_id(
        sipp_bin: str, stirgate_factory: StirgateFactory, tmp_path: Path) -> None:  # fmt: skip
    if shutil.which("sngrep") is None:
        pytest.skip("sngrep is not installed (Debian package sngrep; `make test` installs it)")
    sngrep = Sngrep(tmp_path)
    tee = HepTee(forward=(STIRGATE_IP, sngrep.port))
    with stopping(sngrep, tee):
        sngrep.start()
        tee.start()
        sg = stirgate_factory(extra={"hep": {"address": tee.address, "capture_id": 2001}})
        t0 = time.time()
        r_uac, r_uas = run_call(tmp_path)
        a_call_id = r_uac.messages[0].header("Call-ID")
        b_call_id = r_uas.messages[0].header("Call-ID")
        assert a_call_id != b_call_id
        # What stirgate received is what the peers sent, and the other way round: one HEP copy each.
        expected = []
        for m in r_uac.messages:
            peer = (CUSTOMER_IP, SIP_PORT)
            expected.append((m.raw, peer, (STIRGATE_IP, SIP_PORT)) if m.direction == "sent"
                            else (m.raw, (STIRGATE_IP, SIP_PORT), peer))  # fmt: skip
        for m in r_uas.messages:
            peer = (CARRIER_IP, SIP_PORT)
            expected.append((m.raw, peer, (STIRGATE_IP, SIP_PORT)) if m.direction == "sent"
                            else (m.raw, (STIRGATE_IP, SIP_PORT), peer))  # fmt: skip
        ids = {a_call_id, b_call_id}

        def of_call(packets: list[HepPacket]) -> list[HepPacket]:
            return [p for p in packets if any(f"Call-ID: {c}\r\n".encode() in p.payload for c in ids)]

        tee.wait_for(lambda ps: len(of_call(ps)) >= len(expected), f"{len(expected)} HEP copies of the call")
        t1 = time.time()
        copies = of_call(tee.packets)
        assert len(copies) == len(expected), [p.payload.split(b"\r\n", 1)[0] for p in copies]
        got = sorted((p.payload, p.src, p.dst) for p in copies)
        assert got == sorted(expected)
        for p in copies:
            assert p.correlation == a_call_id.encode(), (p.correlation, p.payload[:60])
            assert p.order == CALL_ORDER
            assert p.u8(1) == 2 and p.u8(2) == 17 and p.u8(11) == 1  # IPv4, UDP, SIP
            assert p.u32(12) == 2001
            assert int(t0) <= p.u32(9) <= int(t1) + 1 and 0 <= p.u32(10) < 1_000_000
        sngrep.stop()
        frames = read_pcap(sngrep.pcap)
        seen = {(f.payload, f.src, f.dst) for f in frames}
        missing = [x[0].split(b"\r\n", 1)[0] for x in expected if x not in seen]
        assert not missing, f"sngrep did not take these copies: {missing}"
        # The counters (published every second): everything sent, nothing dropped.
        harness.wait_until(lambda: event_count(sg.config, "hep_sent") >= len(expected), "hep_sent to count them",
                           attempts=100, interval=0.1)  # fmt: skip
        assert event_count(sg.config, "hep_dropped") == 0


def test_auth_key_is_accepted_by_sngrep_with_that_password(sipp_bin: str, stirgate_factory: StirgateFactory,
                                                          tmp_path: Path) -> None:
    if shutil.which("sngrep") is None:
        pytest.skip("sngrep is not installed (Debian package sngrep; `make test` installs it)")
    config = tmp_path / "sngreprc"
    config.write_text("set eep.listen.pass s3cret\n")
    sngrep = Sngrep(tmp_path, config=config)
    tee = HepTee(forward=(STIRGATE_IP, sngrep.port))
    with stopping(sngrep, tee):
        sngrep.start()
        tee.start()
        stirgate_factory(extra={"hep": {"address": tee.address, "capture_id": 7, "auth_key": "s3cret"}})
        r_uac, r_uas = run_call(tmp_path)
        ids = call_ids(r_uac, r_uas)
        n = len(r_uac.messages) + len(r_uas.messages)
        tee.wait_for(lambda ps: sum(any(c.encode() in p.payload for c in ids) for p in ps) >= n, "the copies")
        copies = [p for p in tee.packets if any(c.encode() in p.payload for c in ids)]
        assert all(p.chunks[14] == b"s3cret" and p.order.index(14) == p.order.index(15) - 1 for p in copies)
        # A copy with another key, sent the same way, must be refused: the password is really checked.
        forged = bytearray(tee.raw[-1])
        key_at = forged.find(b"s3cret")
        forged[key_at : key_at + 6] = b"wrong!"
        cid_at = forged.find(b"Call-ID: ") + 9
        forged[cid_at] = ord("#")  # same length: marks the forged copy
        marker = bytes(forged[cid_at : forged.find(b"\r\n", cid_at)])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(bytes(forged), (STIRGATE_IP, sngrep.port))
        sngrep.stop()
        payloads = {f.payload for f in read_pcap(sngrep.pcap)}
        assert all(p.payload in payloads for p in copies)
        assert not any(marker in p for p in payloads)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_capture_server_that_is_down_costs_the_calls_nothing(sipp_bin: str, stirgate_factory: StirgateFactory,
                                                               tmp_path: Path, transport: str) -> None:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    port = harness.free_port(STIRGATE_IP, kind=kind)  # nothing listens there
    sg = stirgate_factory(extra={"hep": {"address": f"{STIRGATE_IP}:{port}", "transport": transport}})
    r_uac, _ = run_call(tmp_path, calls=5)
    assert r_uac.successful == 5
    harness.wait_until(lambda: event_count(sg.config, "hep_dropped") >= 1, "dropped copies to be counted",
                       attempts=100, interval=0.1)  # fmt: skip
    sent, dropped = event_count(sg.config, "hep_sent"), event_count(sg.config, "hep_dropped")
    if transport == "tcp":
        assert sent == 0  # never connected: every copy dropped at once
    else:
        # UDP learns the server is down from the ICMP port-unreachable the first copy draws, then tries one
        # copy per second (`hold_off`): the 5 calls' ~55 copies are nearly all dropped without being sent.
        assert dropped > 3 * sent, (sent, dropped)
