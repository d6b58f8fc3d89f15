"""Calls over TLS with real TLS SIP peers (pjsua2 over TLS on both sides), issue 15.

1. TLS between carriers: a pjsua2 caller (customer PBX, 127.0.0.10) -> TLS -> stirgate O (127.0.0.1, signs)
   -> mutual TLS -> stirgate T (127.0.0.2, verifies) -> TLS -> a pjsua2 callee (127.0.0.20, which demands a
   client certificate). The call connects, T finds the PASSporT O signed valid (verstat=TN-Validation-Passed at
   the callee), Via and Contact say TLS, and the callee's BYE travels back over the same connections (T reaches
   O over O's own, mutually authenticated connection). O also sends HEP over TCP: the calls' messages on both
   legs, as the decrypted SIP, with the A-leg Call-ID as their correlation id.
2. Failover: the customer's route lists four TLS carriers: one whose certificate comes from a CA the trunk does
   not trust, one whose certificate names another host, one that accepts TCP and never answers the
   ClientHello, and a good one. The handshakes fail (the last after the handshake timeout), each failure moves
   the call on at once, and the good carrier answers.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import log_problems
from tests.integration.harness import CARRIER2_IP, CARRIER_IP, CUSTOMER_IP, DIALLED, STIRGATE_IP
from tests.integration.stir_env import TERM_IP, StirgateAt, X5uServer, make_pki, param, stir_section, write_config
from tests.integration.tls_env import (
    PROBE_IP,
    TLS_PORT,
    HepTcpCollector,
    TlsPki,
    base_config,
    describe,
    event_count,
    run_tls_agent,
    stopping,
    tls_block,
)

pytestmark = pytest.mark.integration

CALLER_USER = "15551230001"  # owned prefix 1555: attest A
WRONG_NAME_IP = "127.0.0.22"
STALL_IP = "127.0.0.23"


def header_lines(msg: str, name: str) -> list[str]:
    head = msg.split("\r\n\r\n", 1)[0]
    return [ln.split(":", 1)[1].strip() for ln in head.split("\r\n")[1:]
            if ln.split(":", 1)[0].strip().lower() == name.lower()]  # fmt: skip


def party(pki: TlsPki, label: str, ip: str, dns: str, user: str, media: int, **more: Any) -> dict[str, Any]:
    me = pki.leaf(label, dns=dns, ip=ip, issuer=more.pop("issuer", "trusted"))
    return {"name": label, "ip": ip, "port": TLS_PORT, "cert": str(me.cert), "key": str(me.key), "ca": str(pki.ca),
            "user": user, "media_port": media, **more}  # fmt: skip


def stop_checked(*sgs: StirgateAt) -> list[str]:
    problems = []
    for sg in sgs:
        alive = sg.alive()
        rc = sg.stop()
        if not alive or rc != 0:
            problems.append(f"stirgate {sg.ip} exit {rc}:\n{sg.log_tail()}")
        problems += log_problems(sg)
    return problems


def test_tls_between_carriers_call_is_signed_verified_and_ends(pjsua2_available: None, tmp_path: Path) -> None:
    tls = TlsPki(tmp_path / "tls")
    stir = make_pki(tmp_path / "stir")
    x5u = X5uServer(stir, tmp_path)
    hep = HepTcpCollector()
    o_cert = tls.leaf("sbc-o", dns="sbc-o.test", ip=STIRGATE_IP)
    t_cert = tls.leaf("sbc-t", dns="sbc-t.test", ip=TERM_IP)
    with stopping(x5u, hep):
        x5u.start()
        hep.start()
        o_cfg = base_config(STIRGATE_IP, [
            {"name": "customer", "role": "customer", "sources": [CUSTOMER_IP], "transport": "tls",
             "destination": f"{CUSTOMER_IP}:{TLS_PORT}", "tls": tls_block(tls, o_cert, "pbx.customer.test"),
             "sign": {"profile": "demo", "attestation": {"prefixes": ["1555"]}}},
            {"name": "carrier", "role": "carrier", "sources": [TERM_IP], "transport": "tls",
             "destination": f"{TERM_IP}:{TLS_PORT}", "tls": tls_block(tls, o_cert, "sbc-t.test")},
        ], [{"from": ["customer"], "prefix": "", "trunks": ["carrier"]},
            {"from": ["carrier"], "prefix": "", "trunks": ["customer"]}],
            stir=stir_section(stir, x5u.url()),
            hep={"address": hep.address, "capture_id": 4242, "transport": "tcp"})  # fmt: skip
        t_cfg = base_config(TERM_IP, [
            {"name": "carrier", "role": "carrier", "sources": [STIRGATE_IP], "transport": "tls",
             "destination": f"{STIRGATE_IP}:{TLS_PORT}", "tls": tls_block(tls, t_cert, "sbc-o.test"),
             "verify": {"mode": "reject"}},
            {"name": "customer", "role": "customer", "sources": [CARRIER_IP], "transport": "tls",
             "destination": f"{CARRIER_IP}:{TLS_PORT}", "tls": tls_block(tls, t_cert, "pbx.far-end.test")},
        ], [{"from": ["carrier"], "prefix": "", "trunks": ["customer"]},
            {"from": ["customer"], "prefix": "", "trunks": ["carrier"]}],
            stir=stir_section(stir, x5u.url()))  # fmt: skip
        o_dir, t_dir = tmp_path / "o", tmp_path / "t"
        o_dir.mkdir()
        t_dir.mkdir()
        o = StirgateAt(write_config(o_dir / "stirgate.yaml", o_cfg), o_dir, STIRGATE_IP, PROBE_IP)
        t = StirgateAt(write_config(t_dir / "stirgate.yaml", t_cfg), t_dir, TERM_IP, PROBE_IP)
        problems: list[str] = []
        try:
            o.start()
            t.start()
            spec = {
                "caller": party(tls, "pbx", CUSTOMER_IP, "pbx.customer.test", CALLER_USER, 40000,
                                target=f"sip:{DIALLED}@{STIRGATE_IP}:{TLS_PORT};transport=tls", verify_server=True),
                "callees": [party(tls, "far-end", CARRIER_IP, "pbx.far-end.test", DIALLED, 40100,
                                  require_client_cert=True)],
                "hangup": "callee",
                "seconds": 20,
            }  # fmt: skip
            r = run_tls_agent(spec, tmp_path)
            assert r["both_confirmed"], describe(r) + f"\nO:\n{o.log_tail()}\nT:\n{t.log_tail()}"
            assert r["both_ended"], describe(r)
            assert r["caller_states"][-1] == "DISCONNECTED" and r["callee_states"][-1] == "DISCONNECTED"
            invite = r["invites"]["far-end"][0]
            # Verified by T: the PASSporT O signed, fetched from the x5u URL, checked against the STI-CA.
            identity_from = header_lines(invite, "From")[0]
            assert param(identity_from, "verstat") == "TN-Validation-Passed", invite
            # The B-leg towards the callee is TLS on T's TLS address, in Via and Contact.
            assert header_lines(invite, "Via")[0].startswith(f"SIP/2.0/TLS {TERM_IP}:{TLS_PORT};"), invite
            assert header_lines(invite, "Contact") == [f"<sip:{TERM_IP}:{TLS_PORT};transport=tls>"], invite
            assert r["callee_src"].startswith(TERM_IP + ":"), r["callee_src"]
            # HEP from O over TCP: both legs of the call, TLS decrypted, one correlation id (the A-leg's).
            a_call_id = header_lines(_first(hep, "INVITE ", src=(CUSTOMER_IP, None)), "Call-ID")[0]

            def complete(packets: list[Any]) -> bool:
                firsts = [p.payload.split(b"\r\n", 1)[0] for p in packets]
                return sum(f.startswith(b"BYE ") for f in firsts) >= 2 and \
                    sum(f.startswith(b"SIP/2.0 200 ") and b"BYE" in p.payload for f, p in zip(firsts, packets,
                                                                                        strict=True)) >= 2
            hep.wait_for(complete, "HEP copies of both legs' BYE and its 200")
            b_invite = _first(hep, "INVITE ", dst=(TERM_IP, TLS_PORT))
            assert header_lines(b_invite, "Via")[0].startswith(f"SIP/2.0/TLS {STIRGATE_IP}:{TLS_PORT};")
            assert header_lines(b_invite, "Identity"), "O signed the B-leg INVITE"
            b_call_id = header_lines(b_invite, "Call-ID")[0]
            assert b_call_id != a_call_id
            legs: dict[str, list[str]] = {a_call_id: [], b_call_id: []}
            for p in hep.packets:
                cid = header_lines(p.payload.decode(), "Call-ID")[0]
                if cid not in legs:
                    continue  # the readiness probes' OPTIONS
                assert p.correlation == a_call_id.encode(), (p.correlation, p.payload[:80])
                assert p.u8(2) == 6 and p.u32(12) == 4242  # TCP (TLS), our capture id
                assert TLS_PORT in (p.src[1], p.dst[1])
                into = "<" if p.dst[0] == STIRGATE_IP else ">"  # received by O, or sent
                legs[cid].append(into + " " + " ".join(p.payload.split(b"\r\n", 1)[0].decode().split()[:2]))
            # Every message of both legs, in and out (the callee hung up).
            assert {m.split(" sip:")[0] for m in legs[a_call_id]} >= {
                "< INVITE", "> SIP/2.0 100", "> SIP/2.0 180", "> SIP/2.0 200", "< ACK", "> BYE", "< SIP/2.0 200"}
            assert {m.split(" sip:")[0] for m in legs[b_call_id]} >= {
                "> INVITE", "< SIP/2.0 180", "< SIP/2.0 200", "> ACK", "< BYE", "> SIP/2.0 200"}
        finally:
            problems = stop_checked(o, t)
        assert not problems, "\n".join(problems)


def _first(hep: HepTcpCollector, start: str, src: tuple[str, int | None] | None = None,
           dst: tuple[str, int | None] | None = None) -> str:
    def match(addr: tuple[str, int], want: tuple[str, int | None] | None) -> bool:
        return want is None or (addr[0] == want[0] and (want[1] is None or addr[1] == want[1]))

    hep.wait_for(lambda ps: any(p.payload.startswith(start.encode()) and match(p.src, src) and match(p.dst, dst)
                                for p in ps), f"a HEP copy of {start} from {src} to {dst}")  # fmt: skip
    return next(p.payload.decode() for p in hep.packets
                if p.payload.startswith(start.encode()) and match(p.src, src) and match(p.dst, dst))


def test_untrusted_wrong_name_and_stalling_tls_carriers_fail_over_to_the_good_one(pjsua2_available: None,
                                                                                  tmp_path: Path) -> None:
    tls = TlsPki(tmp_path / "tls")
    me = tls.leaf("stirgate", dns="sbc.stirgate.test", ip=STIRGATE_IP)
    carriers = [("untrusted", CARRIER_IP, "carrier20.test"), ("wrong-name", WRONG_NAME_IP, "carrier22.test"),
                ("stalling", STALL_IP, "carrier23.test"), ("good", CARRIER2_IP, "carrier21.test")]
    trunks = [{"name": "customer", "role": "customer", "sources": [CUSTOMER_IP], "transport": "tls",
               "destination": f"{CUSTOMER_IP}:{TLS_PORT}", "tls": tls_block(tls, me)}]
    trunks += [{"name": name, "role": "carrier", "sources": [ip], "transport": "tls",
                "destination": f"{ip}:{TLS_PORT}", "tls": tls_block(tls, me, dns)} for name, ip, dns in carriers]
    cfg = base_config(STIRGATE_IP, trunks, [{"from": ["customer"], "prefix": "", "trunks": [c[0] for c in carriers]}],
                      protection={"tls_handshake_timeout": 1.5})  # fmt: skip
    cfg["sip"]["failover_timeout"] = 20.0  # every failover below comes from the TLS failure, not from this timer
    sg = StirgateAt(write_config(tmp_path / "stirgate.yaml", cfg), tmp_path, STIRGATE_IP, PROBE_IP)
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # accepts (kernel backlog), never says a word
    silent.bind((STALL_IP, TLS_PORT))
    silent.listen(8)
    problems: list[str] = []
    try:
        sg.start()
        spec = {
            "caller": party(tls, "pbx", CUSTOMER_IP, "pbx.customer.test", CALLER_USER, 40000,
                            target=f"sip:{DIALLED}@{STIRGATE_IP}:{TLS_PORT};transport=tls", verify_server=True),
            "callees": [
                party(tls, "untrusted", CARRIER_IP, "carrier20.test", DIALLED, 40100, issuer="untrusted",
                      answer=False),
                party(tls, "wrong-name", WRONG_NAME_IP, "someone-else.test", DIALLED, 40200, answer=False),
                party(tls, "good", CARRIER2_IP, "carrier21.test", DIALLED, 40300, require_client_cert=True),
            ],
            "hangup": "caller",
            "seconds": 20,
        }  # fmt: skip
        r = run_tls_agent(spec, tmp_path)
        assert r["both_confirmed"], describe(r) + f"\n{sg.log_tail()}"
        assert r["answered_by"] == "good", describe(r)
        assert set(r["invites"]) == {"good"}, "an INVITE reached a carrier whose TLS identity was refused"
        assert r["both_ended"], describe(r)
        assert event_count(sg.config, "failovers") == 3
        assert event_count(sg.config, "tls_handshake_failures") == 2
        assert event_count(sg.config, "tls_handshake_timeouts") == 1
        failures = {(e["host"], e["error"]) for e in sg.log_events("connect_failed")}
        reasons = {host: error for host, error in failures}
        assert "certificate verify failed" in reasons[CARRIER_IP] or "unable to get" in reasons[CARRIER_IP], reasons
        assert "carrier22.test" in reasons[WRONG_NAME_IP] and "mismatch" in reasons[WRONG_NAME_IP].lower(), reasons
        assert STALL_IP in reasons, reasons
    finally:
        silent.close()
        problems = stop_checked(sg)
    assert not problems, "\n".join(problems)
