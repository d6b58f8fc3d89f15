"""pjsua2 UAs over TLS for one call, run as its own process (pjsua2 allows one Endpoint per process).

The spec (a JSON file) names a caller and any number of callees, each on its own TLS transport (own address,
certificate, CA and client-certificate policy) and account:

    {"caller": {"ip": "127.0.0.10", "port": 5061, "cert": "...", "key": "...", "ca": "...", "user": "1555...",
                "target": "sip:15551230002@127.0.0.1:5061;transport=tls", "verify_server": true,
                "media_port": 40000},
     "callees": [{"name": "carrier", "ip": "127.0.0.20", "port": 5061, "cert": "...", "key": "...", "ca": "...",
                  "user": "15551230002", "require_client_cert": true, "media_port": 40100}],
     "hangup": "caller" | "callee", "seconds": 15}

The caller calls `target`; whichever callee gets the INVITE answers 180 then 200 (a callee with "answer": false
has a TLS listener but no account: pjsua hands its calls to another account, but the INVITE is still recorded
under the callee its Request-URI names); once both sides are CONFIRMED
the `hangup` side hangs up; the agent waits (bounded, polling libHandleEvents) for both to be DISCONNECTED.
Prints one JSON object on stdout (the last line): states, statuses, which callee answered, the INVITE each
callee received (`rdata.wholeMsg`), and the caller's INVITE as pjsip logged it.

    python tests/integration/pjsua2_tls_agent.py SPEC.json [--log FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pjsua2 as pj
from pjsua2_common import AgentBase, Call, confirmed, ended, ring_and_answer


class CalleeAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, agent: Agent, name: str) -> None:
        super().__init__()
        self.agent = agent
        self.name = name

    def onIncomingCall(self, prm: Any) -> None:
        # pjsua picks the account by the To URI (stirgate's A-leg To, the same for every callee): which callee
        # the INVITE was for is read from its Request-URI host instead.
        msg = prm.rdata.wholeMsg
        name = self.agent.callee_for(msg.split(" ", 2)[1] if " " in msg else "")
        self.agent.invites.setdefault(name, []).append(msg)
        self.agent.callee_src = prm.rdata.srcAddress
        call = Call(self.agent, name, self, prm.callId)
        self.agent.callee_call = call
        self.agent.answered_by = name
        self.agent.event(f"{name}: incoming call from {prm.rdata.srcAddress}")
        ring_and_answer(call)


def tls_transport(ep: pj.Endpoint, spec: dict[str, Any], server: bool) -> int:
    tc = pj.TransportConfig()
    tc.boundAddress = spec["ip"]
    tc.publicAddress = spec["ip"]
    tc.port = spec["port"]
    tls = tc.tlsConfig
    tls.CaListFile = spec["ca"]
    if spec.get("cert"):
        tls.certFile = spec["cert"]
        tls.privKeyFile = spec["key"]
    tls.verifyServer = bool(spec.get("verify_server", False))
    tls.verifyClient = bool(spec.get("require_client_cert", False)) and server
    tls.requireClientCert = bool(spec.get("require_client_cert", False)) and server
    tls.msecTimeout = 5000
    return int(ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tc))


class Agent(AgentBase):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__("stirgate-it-pjsua2-tls")
        self.spec = spec
        self.invites: dict[str, list[str]] = {}
        self.answered_by: str | None = None
        self.accounts: list[pj.Account] = []

    def callee_for(self, ruri: str) -> str:
        """The callee whose address the Request-URI names ("?" when none)."""
        host = ruri.split("@", 1)[-1].split(";", 1)[0].split(":", 1)[0]
        return next((c["name"] for c in self.spec.get("callees", []) if c["ip"] == host), "?")

    def _account(self, party: dict[str, Any], transport: int, acc: pj.Account) -> pj.Account:
        uri = f"sip:{party['user']}@{party['ip']}:{party['port']};transport=tls"
        self.accounts.append(self.create_account(acc, uri, transport, party["ip"], party.get("media_port", 0)))
        return acc

    def start(self) -> None:
        ep = self.init_endpoint()
        caller = self.spec["caller"]
        caller_tp = tls_transport(ep, caller, server=False)
        callee_tps = [tls_transport(ep, c, server=True) for c in self.spec.get("callees", [])]
        ep.audDevManager().setNullDev()
        ep.libStart()
        self.caller_acc = self._account(caller, caller_tp, pj.Account())
        for c, tp in zip(self.spec.get("callees", []), callee_tps, strict=True):
            if c.get("answer", True):
                self._account(c, tp, CalleeAccount(self, c["name"]))

    def run(self) -> dict[str, Any]:
        seconds = float(self.spec.get("seconds", 15))
        call = Call(self, "caller", self.caller_acc)
        self.caller_call = call
        target = self.spec["caller"]["target"]
        call.makeCall(target, pj.CallOpParam(True))
        self.event(f"caller: INVITE to {target}")
        both_confirmed = self.poll_until(
            lambda: (confirmed(self.caller_call) and confirmed(self.callee_call)) or ended(self.caller_call), seconds)
        both_confirmed = both_confirmed and confirmed(self.caller_call) and confirmed(self.callee_call)
        if both_confirmed:
            side = self.callee_call if self.spec.get("hangup") == "callee" else call
            assert side is not None
            side.hangup(pj.CallOpParam(True))
            self.event(f"{side.side}: hang up")
        else:
            self.ep.hangupAllCalls()
        both_ended = self.poll_until(lambda: (ended(self.caller_call) and ended(self.callee_call))
                                     or (not both_confirmed and ended(self.caller_call)), seconds)  # fmt: skip
        return {
            "both_confirmed": both_confirmed,
            "both_ended": both_ended,
            "answered_by": self.answered_by,
            "caller_states": self.caller_call.states if self.caller_call else [],
            "callee_states": self.callee_call.states if self.callee_call else [],
            "caller_last_status": self.caller_call.last_status if self.caller_call else None,
            "invites": self.invites,
            "callee_src": self.callee_src,
            "events": self.events,
        }

    def close(self) -> None:
        self.caller_call = None
        self.callee_call = None
        self.ep.hangupAllCalls()
        self.poll_until(lambda: False, 0.05)
        self.accounts.clear()
        del self.caller_acc
        self.ep.libDestroy()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", help="JSON file: caller, callees, hangup, seconds")
    ap.add_argument("--log", help="write pjsip's log here")
    args = ap.parse_args()
    with open(args.spec) as fh:
        spec = json.load(fh)
    agent = Agent(spec)
    try:
        agent.start()
        result = agent.run()
    finally:
        if args.log:
            with open(args.log, "w") as fh:
                fh.write("\n".join(agent.log.entries))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
