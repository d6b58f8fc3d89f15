"""What the STI service tests (ATIS-1000082 API, redirect mode, Kamailio as an SBC) share.

A stirgate on 127.0.0.1:5060 with the demo PKI (stir_env.make_pki) whose certificate the shipped x5u server
publishes, trunks as in ../shared/TOPOLOGY.md (customer 127.0.0.10 signs, carrier 127.0.0.20 verifies with
`mode: reject`, carrier-tag 127.0.0.30 verifies and only tags), a policy file that blocks one caller with 608 and
a jCard, and API clients with bearer tokens. `redirect=True` puts the customer and carrier trunks in redirect
mode and adds a redirect listener on 127.0.0.1:5062 (REDIRECT_PORT) for the inline carrier-tag trunk.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration import harness
from tests.integration.harness import CARRIER_IP, CUSTOMER_IP, SIP_PORT, STIRGATE_IP, api_listen
from tests.integration.stir_env import StirgateAt, StirPki, stir_section, write_config

TAG_IP = "127.0.0.30"  # a carrier trunk that verifies and only tags
REDIRECT_PORT = SIP_PORT + 2
SBC_TOKEN = "sbc-token-0123456789abcdef"
C_ONLY_TOKEN = "c-only-token-0123456789abcdef"
TAGGER_TOKEN = "tagger-token-0123456789abcdef"
BLOCKED = "+12155550199"  # the policy file denies this caller (608 with a jCard)
JCARD = "https://jcard.example.net/blocked.json"
MTLS_NAME = "sbc-east.test"

POLICIES = f"""\
trunks:
  carrier:
    - policy: lists
      params:
        deny: {{orig_numbers: ["{BLOCKED}"]}}
        jcard_url: {JCARD}
  customer:
    - policy: lists
      params:
        deny: {{orig_numbers: ["{BLOCKED}"]}}
        jcard_url: {JCARD}
"""


def _trunk(name: str, role: str, ip: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "role": role, "sources": [ip], "destination": f"{ip}:{SIP_PORT}", "transport": "udp",
            **more}


def sti_config(pki: StirPki, x5u: str, workdir: Path, *, redirect: bool = False, sti_listen: str | None = None,
               tls: dict[str, Any] | None = None, records: bool = True, ip: str = STIRGATE_IP) -> dict[str, Any]:
    """The config; `ip`: stirgate's SIP address (127.0.0.2 beside another stirgate on 127.0.0.1)."""
    mode = {"mode": "redirect"} if redirect else {}
    (workdir / "policies.yaml").write_text(POLICIES)
    clients: list[dict[str, Any]] = [
        {"name": "sbc", "token": SBC_TOKEN, "sign": {"profile": "demo"}, "verify": {"trunk": "carrier"}},
        {"name": "sbc-c", "token": C_ONLY_TOKEN, "sign": {"profile": "demo", "max_attest": "C"}},
        {"name": "tagger", "token": TAGGER_TOKEN, "verify": {"trunk": "carrier-tag"}},
    ]
    if tls is not None:
        clients.append({"name": "sbc-east", "tls_name": MTLS_NAME, "sign": {"profile": "demo"}})
    api_port = harness.free_port(STIRGATE_IP, kind=socket.SOCK_STREAM)
    listen: list[Any] = [f"udp:{ip}:{SIP_PORT}", f"tcp:{ip}:{SIP_PORT}"]
    if redirect:
        listen += [{"address": f"udp:{ip}:{REDIRECT_PORT}", "mode": "redirect"},
                   {"address": f"tcp:{ip}:{REDIRECT_PORT}", "mode": "redirect"}]
    sti: dict[str, Any] = {"clients": clients}
    if sti_listen is not None:
        sti["listen"] = sti_listen
    if tls is not None:
        sti["tls"] = tls
    return {
        "listen": listen,
        "unknown_source": "reject",
        "sip": {"failover_timeout": 1.0, "no_answer_timeout": 5.0, "drain_grace": 2.0},
        "trunks": [
            _trunk("customer", "customer", CUSTOMER_IP, sign={"profile": "demo", "attestation": {"prefixes": ["1555"]}},
                   **mode),
            _trunk("carrier", "carrier", CARRIER_IP, verify={"mode": "reject"}, **mode),
            _trunk("carrier-tag", "carrier", TAG_IP, verify={"mode": "tag"}),
        ],
        "routes": [
            {"from": ["customer"], "prefix": "", "trunks": ["carrier"]},
            {"from": ["carrier", "carrier-tag"], "prefix": "", "trunks": ["customer"]},
        ],
        "stir": stir_section(pki, x5u),
        "policies": str(workdir / "policies.yaml"),
        "records": {"enabled": records, "path": str(workdir / "records.sqlite3"), "flush_interval": 0.05},
        "api": {"listen": f"{STIRGATE_IP}:{api_port}"},
        "sti_api": sti,
        "logging": {"level": "debug"},
    }


def start_stirgate(cfg: dict[str, Any], workdir: Path) -> StirgateAt:
    workdir.mkdir(parents=True, exist_ok=True)
    ip = cfg["listen"][0].split(":")[1]
    gate = StirgateAt(write_config(workdir / "stirgate.yaml", cfg), workdir, ip, CUSTOMER_IP)
    return gate.start()


def api_address(cfg: dict[str, Any]) -> tuple[str, int]:
    listen = cfg["sti_api"].get("listen") or cfg["api"]["listen"]
    host, _, port = listen.rpartition(":")
    return host, int(port)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes

    def inner(self) -> dict[str, Any]:
        """The signingResponse / verificationResponse object."""
        (value,) = self.body.values()
        assert isinstance(value, dict)
        return value


class ApiClient:
    """A keep-alive HTTP/1.1 client (http.client) for the ATIS-1000082 endpoints."""

    def __init__(self, address: tuple[str, int], token: str | None = SBC_TOKEN,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.address = address
        self.token = token
        if ssl_context is not None:
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                *address, timeout=10, context=ssl_context)
        else:
            self.conn = http.client.HTTPConnection(*address, timeout=10)

    def close(self) -> None:
        self.conn.close()

    def post(self, path: str, body: Any, *, content_type: str | None = "application/json",
             token: str | bool | None = True, request_id: str | None = None,
             headers: dict[str, str] | None = None) -> Reply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if content_type is not None:
            hdrs["Content-Type"] = content_type
        tok = self.token if token is True else token
        if isinstance(tok, str):
            hdrs["Authorization"] = f"Bearer {tok}"
        if request_id is not None:
            hdrs["X-RequestID"] = request_id
        self.conn.request("POST", path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"_text": raw.decode(errors="replace")}
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed, raw)

    def sign(self, orig: str, dests: list[str], attest: str = "A", **kw: Any) -> Reply:
        return self.post("/stir/v1/signing", signing_request(orig, dests, attest), **kw)

    def verify(self, orig: str, dests: list[str], identity: str, **kw: Any) -> Reply:
        return self.post("/stir/v1/verification", verification_request(orig, dests, identity), **kw)


def signing_request(orig: str, dests: list[str], attest: str = "A", iat: int | None = None,
                    origid: str | None = None) -> dict[str, Any]:
    return {"signingRequest": {"attest": attest, "dest": {"tn": dests}, "iat": int(time.time()) if iat is None
                               else iat, "orig": {"tn": orig}, "origid": origid or str(uuid.uuid4())}}


def verification_request(orig: str, dests: list[str], identity: str, at: int | None = None) -> dict[str, Any]:
    return {"verificationRequest": {"from": {"tn": orig}, "to": {"tn": dests},
                                    "time": int(time.time()) if at is None else at, "identity": identity}}


def get_json(address: tuple[str, int], path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if resp.getheader("Content-Type", "").startswith("application/json")
                             else raw.decode())
    finally:
        conn.close()


@contextlib.contextmanager
def client(address: tuple[str, int], **kw: Any) -> Iterator[ApiClient]:
    c = ApiClient(address, **kw)
    try:
        yield c
    finally:
        c.close()


def traceback_calls(cfg: dict[str, Any], orig: str, dest: str, want: int) -> list[dict[str, Any]]:
    """The records /traceback returns for orig -> dest around now, polled (bounded) until `want` are there."""
    address = api_listen(cfg)
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        nonlocal found
        status, body = get_json(address, f"/traceback?orig={orig.replace('+', '%2B')}&dest={dest}"
                                                   f"&at={int(time.time())}&window=10m")
        found = body.get("calls", []) if status == 200 and isinstance(body, dict) else []
        return len(found) >= want

    with contextlib.suppress(TimeoutError):
        harness.wait_until(enough, "records to reach the traceback", attempts=200, interval=0.05)
    return found
