"""What the pjsua2 agents (pjsua2_agent.py over UDP, pjsua2_tls_agent.py over TLS) share: pjsip's message log
kept in memory, a call that records its states, a callee that answers 180 then 200, and an agent base that
sets up the Endpoint (no pjlib thread, the null audio device), creates accounts and polls `libHandleEvents` in
bounded loops. Imported by those scripts, which run as processes of their own (one Endpoint per process).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pjsua2 as pj

# pjsip's message log:
#   "TX 1234 bytes Request msg INVITE/cseq=1 (tdta0x...) to UDP 127.0.0.1:5060:\r\n<msg>\n--end msg--"
_TX = re.compile(r"TX (\d+) bytes Request msg INVITE/cseq=\d+ \([^)]*\) to (\w+) ([\d.]+):(\d+):\r?\n", re.S)
#   "RX 987 bytes Response msg 200/INVITE/cseq=1 (rdata0x...) from UDP 127.0.0.1:5060:\r\n<msg>\n--end msg--"
_MSG = re.compile(r"(TX|RX) (\d+) bytes (Request|Response) msg (\S+) \([^)]*\) (?:to|from) (\w+) ([\d.]+):(\d+):\r?\n")


class LogCapture(pj.LogWriter):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.entries: list[str] = []

    def write(self, entry: Any) -> None:
        self.entries.append(entry.msg)

    def sent_invites(self, host: str, port: int) -> list[str]:
        """The INVITEs transmitted to host:port, whole, as pjsip logged them (the exact bytes it sent)."""
        out = []
        for text in self.entries:
            m = _TX.search(text)
            if not m or m.group(3) != host or int(m.group(4)) != port:
                continue
            size = int(m.group(1))
            out.append(text[m.end() : m.end() + size])
        return out

    def messages(self, direction: str, what: str) -> list[tuple[str, str]]:
        """(peer "ip:port", whole message) for each logged message of `direction` ("TX"/"RX") whose pjsip
        summary starts with `what` (e.g. "200/INVITE")."""
        out = []
        for text in self.entries:
            m = _MSG.search(text)
            if not m or m.group(1) != direction or not m.group(4).startswith(what):
                continue
            size = int(m.group(2))
            out.append((f"{m.group(6)}:{m.group(7)}", text[m.end() : m.end() + size]))
        return out


class Call(pj.Call):  # type: ignore[misc]
    def __init__(self, agent: AgentBase, side: str, acc: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.agent = agent
        self.side = side
        self.states: list[str] = []
        self.disconnected = False
        self.confirmed = False
        self.last_status: int | None = None

    def onCallState(self, prm: Any) -> None:
        ci = self.getInfo()
        self.states.append(ci.stateText)
        self.confirmed = self.confirmed or ci.state == pj.PJSIP_INV_STATE_CONFIRMED
        self.disconnected = ci.state == pj.PJSIP_INV_STATE_DISCONNECTED
        self.last_status = ci.lastStatusCode
        self.agent.event(f"{self.side}: state {ci.stateText} ({ci.lastStatusCode} {ci.lastReason})")


def confirmed(c: Call | None) -> bool:
    return c is not None and c.confirmed


def ended(c: Call | None) -> bool:
    return c is not None and c.disconnected


def ring_and_answer(call: Call) -> None:
    """180, then 200."""
    for status in (180, 200):
        prm = pj.CallOpParam()
        prm.statusCode = status
        call.answer(prm)


class AgentBase:
    """The Endpoint and what every agent keeps: its events (timed), pjsip's log, the two calls."""

    def __init__(self, user_agent: str) -> None:
        self.user_agent = user_agent
        self.events: list[str] = []
        self.t0 = time.monotonic()
        self.callee_src: str | None = None
        self.caller_call: Call | None = None
        self.callee_call: Call | None = None
        self.log = LogCapture()
        self.ep = pj.Endpoint()

    def event(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.t0:7.3f} {text}")

    def init_endpoint(self) -> pj.Endpoint:
        """libCreate and libInit: no pjlib thread (the agent polls), pjsip's log at level 5 into `log`."""
        ep = self.ep
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.userAgent = self.user_agent
        cfg.logConfig.level = 5
        cfg.logConfig.consoleLevel = 5
        cfg.logConfig.msgLogging = True
        cfg.logConfig.writer = self.log
        cfg.logConfig.decor = 0
        cfg.medConfig.hasIoqueue = True
        cfg.medConfig.noVad = True
        ep.libInit(cfg)
        return ep

    @staticmethod
    def create_account(acc: pj.Account, id_uri: str, transport: int, ip: str, media_port: int) -> pj.Account:
        """`acc` created on `transport` as `id_uri`, its media on `ip`, no NAT rewriting."""
        ac = pj.AccountConfig()
        ac.idUri = id_uri
        ac.sipConfig.transportId = transport
        ac.mediaConfig.transportConfig.boundAddress = ip
        ac.mediaConfig.transportConfig.publicAddress = ip
        ac.mediaConfig.transportConfig.port = media_port
        ac.mediaConfig.transportConfig.portRange = 8
        ac.natConfig.sdpNatRewriteUse = False
        ac.natConfig.viaRewriteUse = False
        ac.natConfig.contactRewriteUse = False
        acc.create(ac)
        return acc

    def poll_until(self, done: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if done():
                return True
            self.ep.libHandleEvents(10)
        return bool(done())
