"""One pjsua2 call between two UAs, run as its own process (pjsua2 allows one Endpoint per process).

Both UAs live in one Endpoint, each on its own UDP transport and account: the caller on 127.0.0.10:PORT and the
callee on 127.0.0.20:PORT. The caller calls sip:DIALLED@TARGET (stirgate, or the callee directly) with an
`X-Stirgate-Test: 42` header; the callee answers 180 then 200; once both calls are CONFIRMED the caller hangs up;
the agent waits for both to be DISCONNECTED. pjlib runs no thread: the agent polls `libHandleEvents` in a
bounded loop. The null audio device is used; media sockets are bound to the UAs' loopback addresses.

Prints one JSON object on stdout (the last line): what each side saw, the caller's INVITE as sent (captured from
pjsip's message log at level 5) and the callee's INVITE as received (`rdata.wholeMsg`).

    python tests/integration/pjsua2_agent.py --target 127.0.0.1:5060 --port 5060 [--log FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pjsua2 as pj
from pjsua2_common import AgentBase, Call, confirmed, ended, ring_and_answer

CALLER_IP = "127.0.0.10"
CALLEE_IP = "127.0.0.20"
DIALLED = "15551230002"
CUSTOM_NAME, CUSTOM_VALUE = "X-Stirgate-Test", "42"


class CalleeAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def onIncomingCall(self, prm: Any) -> None:
        self.agent.callee_invite = prm.rdata.wholeMsg
        self.agent.callee_src = prm.rdata.srcAddress
        call = Call(self.agent, "callee", self, prm.callId)
        self.agent.callee_call = call
        self.agent.event(f"callee: incoming call from {prm.rdata.srcAddress}")
        ring_and_answer(call)


class Agent(AgentBase):
    def __init__(self, port: int, media_ports: tuple[int, int]) -> None:
        super().__init__("stirgate-it-pjsua2")
        self.port = port
        self.media_ports = media_ports
        self.callee_invite: str | None = None

    def start(self) -> None:
        ep = self.init_endpoint()
        self.transports = {}
        for side, ip in (("caller", CALLER_IP), ("callee", CALLEE_IP)):
            tc = pj.TransportConfig()
            tc.boundAddress = ip
            tc.publicAddress = ip
            tc.port = self.port
            self.transports[side] = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
        ep.audDevManager().setNullDev()
        ep.libStart()
        self.caller_acc = self.create_account(pj.Account(), f"sip:15551230001@{CALLER_IP}:{self.port}",
                                              self.transports["caller"], CALLER_IP, self.media_ports[0])
        self.callee_acc = self.create_account(CalleeAccount(self), f"sip:{DIALLED}@{CALLEE_IP}:{self.port}",
                                              self.transports["callee"], CALLEE_IP, self.media_ports[1])
        self.callee_acc.setDefault()

    def run(self, target: str, seconds: float) -> dict[str, Any]:
        call = Call(self, "caller", self.caller_acc)
        self.caller_call = call
        prm = pj.CallOpParam(True)
        hdr = pj.SipHeader()
        hdr.hName = CUSTOM_NAME
        hdr.hValue = CUSTOM_VALUE
        prm.txOption.headers.append(hdr)
        call.makeCall(f"sip:{DIALLED}@{target}", prm)
        self.event(f"caller: INVITE to {target}")
        both_confirmed = self.poll_until(lambda: confirmed(self.caller_call) and confirmed(self.callee_call),
                                         seconds)  # fmt: skip
        if both_confirmed:
            call.hangup(pj.CallOpParam(True))
            self.event("caller: hang up")
        else:
            self.ep.hangupAllCalls()
        both_ended = self.poll_until(lambda: (ended(self.caller_call) and ended(self.callee_call))
                                     or (not both_confirmed and ended(self.caller_call)), seconds)  # fmt: skip
        host, _, port = target.rpartition(":")
        sent = self.log.sent_invites(host, int(port))
        # The answer: the callee's 200 as sent (to stirgate, or to the caller) and as the caller received it.
        answers_tx = [m for peer, m in self.log.messages("TX", "200/INVITE") if not peer.startswith(CALLEE_IP)]
        answers_rx = [m for peer, m in self.log.messages("RX", "200/INVITE") if not peer.startswith(CALLER_IP)]
        return {
            "both_confirmed": both_confirmed,
            "both_ended": both_ended,
            "caller_states": self.caller_call.states if self.caller_call else [],
            "callee_states": self.callee_call.states if self.callee_call else [],
            "caller_last_status": self.caller_call.last_status if self.caller_call else None,
            "caller_invite_sent": sent[0] if sent else None,
            "caller_invites_sent": len(sent),
            "callee_invite_received": self.callee_invite,
            "callee_src": self.callee_src,
            "callee_answer_sent": answers_tx[0] if answers_tx else None,
            "caller_answer_received": answers_rx[0] if answers_rx else None,
            "events": self.events,
        }

    def close(self) -> None:
        self.caller_call = None
        self.callee_call = None
        self.ep.hangupAllCalls()
        self.poll_until(lambda: False, 0.05)
        del self.caller_acc
        del self.callee_acc
        self.ep.libDestroy()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="host:port the caller sends its INVITE to")
    ap.add_argument("--port", type=int, default=5060, help="SIP port of both UAs")
    ap.add_argument("--media-ports", default="40000,40100", help="RTP base ports of caller,callee")
    ap.add_argument("--seconds", type=float, default=15.0, help="bound for each phase")
    ap.add_argument("--log", help="write pjsip's log here")
    args = ap.parse_args()
    media = tuple(int(p) for p in args.media_ports.split(","))
    agent = Agent(args.port, (media[0], media[1]))
    try:
        agent.start()
        result = agent.run(args.target, args.seconds)
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
