"""Shared by the records tests: engines driven in memory (tests/unit/core/sipfake.py), STIR configs, records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from proxy.b2bua import Call
from proxy.config import Config, load_config_text
from proxy.engine import Engine
from proxy.records import CallRecord
from proxy.stir.demo_certs import init_demo_certs
from proxy.stir.signer import Signer, SigningProfile
from tests.unit.core.sipfake import LOCAL, LOOPBACK, A, B, Callee, Caller, Harness, b_invite, established_call

X5U = "https://127.0.0.1:8443/sp.pem"
ORIGID = "3a1b3d94-0dca-4a4f-8f64-8a0f0c0f1f7b"


def stir_config(pki: Path) -> Config:
    """examples/loopback.yaml plus STIR: the customer trunk signs (A for 1212...), carrier calls are verified."""
    cfg: dict[str, Any] = yaml.safe_load(LOOPBACK.read_text())
    for trunk in cfg["trunks"]:
        trunk.pop("sign", None)
    cfg["stir"] = {
        "country_code": "1",
        "trust_anchors": [str(pki / "ca.pem")],
        "signing_profiles": [{"name": "demo", "key": str(pki / "sp.key"), "x5u": X5U}],
        "verify": {"x5u_allow_private": True, "x5u_allow_any_port": True},
    }
    for trunk in cfg["trunks"]:
        if trunk["name"] == "customer":
            trunk["sign"] = {"profile": "demo", "origid": ORIGID, "attestation": {"prefixes": ["1212"]}}
    return load_config_text(yaml.safe_dump(cfg), str(LOOPBACK))


def make_pki(directory: Path) -> Path:
    init_demo_certs(directory, spc="1234")
    return directory


def wall_harness(config: Config | None = None) -> Harness:
    """A harness whose engine clock maps to the real wall clock (certificates and iat need real time)."""
    engine = Engine(config, dict(LOCAL)) if config is not None else None
    h = Harness(engine)
    h.engine.wall_offset = time.time() - h.now
    return h


def collect(h: Harness) -> list[Call]:
    calls: list[Call] = []
    h.engine.call_end_hooks.append(calls.append)
    return calls


def answered_call(h: Harness, caller: Caller | None = None, hold: float = 30.0) -> tuple[Caller, Callee]:
    """A customer -> carrier call answered, held `hold` seconds, then hung up by the caller."""
    if caller is not None:
        outs = h.feed(caller.invite(), caller.addr)
        callee = Callee(h, b_invite(outs))
        h.feed(callee.reply(None, 180), B)
        a200 = h.feed(callee.reply(None, 200), B).to(caller.addr).responses(200).one().msg
        caller.learn(a200)  # type: ignore[arg-type]
        h.feed(caller.ack(), caller.addr)
    else:
        caller, callee = established_call(h)
    h.now += hold
    bye = h.feed(caller.request("BYE"), caller.addr).to(B).requests("BYE").one().msg
    h.feed(callee.reply(bye, 200), B)  # type: ignore[arg-type]
    return caller, callee


def rejected_call(h: Harness, code: int = 486) -> Caller:
    caller = Caller(h)
    outs = h.feed(caller.invite(), A)
    callee = Callee(h, b_invite(outs))
    h.feed(callee.reply(None, code, "Busy Here"), B)
    return caller


def sign_identity(pki: Path, orig: str, dest: str, attest: str = "A") -> str:
    return Signer(SigningProfile("t", str(pki / "sp.key"), X5U)).sign(orig, [dest], attest, ORIGID, time.time())


def rec(**kw: Any) -> CallRecord:
    """A record with plausible defaults (for database tests)."""
    base: dict[str, Any] = {
        "a_call_id": "a@x", "b_call_id": "b", "ingress": "carrier", "source_ip": "192.0.2.1", "source_port": 5060,
        "orig": "12125550100", "orig_signaled": "+12125550100", "dest": "15551234567",
        "dest_signaled": "+15551234567", "invite_at": 1_700_000_000.0, "ended_at": 1_700_000_030.0,
        "status": 200, "end_reason": "bye-a",
    }
    base.update(kw)
    return CallRecord(**base)
