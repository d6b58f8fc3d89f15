"""Concurrency mode (issue 6): N long calls held open through one SUT, to measure memory per established dialog.

The target is 100,000 concurrent dialogs in one stirgate process under 1 GB RSS. One SIPp UAC places N calls at
`--setup-rate` (`bench/scenarios/uac_hold.xml`: INVITE, 200, ACK, then a pause longer than the whole set-up plus
the measurement, then BYE), one SIPp UAS answers and waits for the BYE (`uas_hold.xml`). The bench polls the
SUT's own state (stirgate: its /metrics on a bench-only port; Kamailio: `kamcmd dlg.stats_active`) once a
second, bounded, and reads the memory of the SUT's process tree from /proc at every poll:

- idle: after start and one scrape, before any call;
- while the dialogs build up (the first poll past every 20 % of N);
- at N: the moment the last call is established (set-up transactions of the last 64*T1 = 32 s still alive);
- settled: once those transactions have expired (dialogs only): **bytes per dialog = (settled - idle) / N**;
- after the calls ended (SIPp sends the BYEs at the set-up rate), and once their transactions expired.

stirgate's generated config is the relay's with the HTTP API on (`--api-listen`, port offset applied) and an
`overload:` block raised so that nothing is refused for being too many dialogs or a slow loop. `--hold-mode`
says what stirgate does to each held call: relay it, sign it (the B-leg INVITE gets an Identity), or verify it
(the UAC is a carrier trunk sending one freshly signed PASSporT per call from a SIPp injection file,
`uac_hold_identity.xml`; stirgate rejects what fails). `--hold-transport tcp` puts both SIPp trunks on TCP (SIPp
`-t t1`: one connection each way). `--hold-reinvite` has each call send a re-INVITE right after its ACK, before
the hold (`uac_hold_reinvite.xml`, `uas_hold_reinvite.xml`); `--hold-reinvite during` in the middle of it
(`uac_hold_reinvite_during.xml`: the hold twice, before and after the re-INVITE), and the bench then also samples
once the re-INVITEs have all been answered and their transactions expired (**bytes per dialog after a re-INVITE
during the hold**), before the BYEs begin. With `--workers 2` there is one UAC per worker
(`--uacs`, placed on the workers as the sweeps place theirs), N and the rate shared; the gauges are every
worker's API added up, the memory that of the whole tree (supervisor and workers).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .modes import MODES, Pki, write_identity_pool
from .procs import Addr, descendants, udp_bound
from .sipp import BUFF, SCENARIOS, SIPP, _counts, _int, _last_row, _rusage_wait
from .step import _log_warnings, wait_free
from .suts import SUT, Kamailio, Stirgate

SETTLE_S = 45.0        # the set-up transactions linger 64*T1 = 32 s after the last call; bound of that wait
MARGIN_S = 20.0        # hold beyond set-up + settle, for the samples and a slow start
POLL_S = 1.0
LATE_S = 35.0          # build-up polls after this many seconds: the set-up transaction pool is steady
QUICK_DIALOGS = 20_000
VERIFIED = "TN-Validation-Passed"  # the verstat of a call whose caller's PASSporT passed


@dataclass
class Sample:
    """One poll: the SUT's own view and the memory of its process tree (kB)."""

    t: float                 # seconds since the UAC started
    established: int         # answered and not ended (stirgate: answered - calls_ended; Kamailio: confirmed)
    live: int                # calls held in any state
    transactions: int
    rss_kb: int              # VmRSS summed over the tree (shared pages counted once per process)
    pss_kb: int              # Pss summed over the tree (shared pages split: no double count)
    uac_created: int = 0
    uac_failed: int = 0
    label: str = ""
    extra: dict[str, int] = field(default_factory=dict)


def tree_memory(root: int) -> tuple[int, int]:
    """(VmRSS, Pss) in kB summed over `root` and its descendants."""
    rss = pss = 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                        break
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return rss, pss


def tcp_free(a: Addr) -> bool:
    """Nobody listens on this TCP address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp: a TIME_WAIT left by a run is free
        try:
            s.bind((a.host, a.port))
        except OSError:
            return False
    return True


def build_up_bound_s(dialogs: int, rate: float) -> float:
    """How long the build-up is watched at most: 1.5 x the set-up time at `rate`, plus 30 s."""
    return dialogs / rate * 1.5 + 30


def iat_window_s(dialogs: int, rate: float) -> int:
    """stir.verify.iat_max_age for hold mode verify: the pool is signed just before the UAC starts, so the last
    PASSporT is at most the build-up bound old when it arrives (plus a minute for a slow start); never below
    stirgate's default of 60 s."""
    return max(60, math.ceil(build_up_bound_s(dialogs, rate) + 60))


def _raise_nofile() -> None:
    """SIPp's open-files limit up to the hard limit (a child's preexec: it holds a call table of N)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the systems, with a way to read how many dialogs they hold ------------------------------------------------

class HoldStirgate(Stirgate):
    """The bench's relay config with the HTTP API on (to read its gauges) and overload bounds out of the way."""

    def __init__(self, *a: object, api: Addr, dialogs: int, transport: str = "udp", reinvite: str | None = None,
                 **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.api = api
        self.dialogs = dialogs
        self.trunk_transport = transport
        self.reinvite = reinvite
        self.base_label = self.label
        self.set_mode(MODES["relay"], None)

    def set_mode(self, mode: Any, pki: Any) -> None:
        """The label adds what Stirgate's does not name: the hold mode (signed or verified calls), TCP and the
        re-INVITE."""
        super().set_mode(mode, pki)
        extra = [mode.name] if mode.name != "relay" else []
        extra += ["TCP"] if self.trunk_transport == "tcp" else []
        extra += [f"re-INVITE {self.reinvite} the hold"] if self.reinvite else []
        self.label = f"{self.base_label[:-1]}{''.join(f', {x}' for x in extra)})"

    def config_text(self) -> str:
        text = super().config_text()
        off = "api:\n  enabled: false\n"
        if off not in text:
            raise RuntimeError("the generated stirgate config has no `api: enabled: false` block to replace")
        text = text.replace(off, f"api:\n  enabled: true\n  listen: {self.api}   # bench only: the gauges polled "
                                 f"(worker i: port + i)\n")
        return text + f"""
# Concurrency mode: nothing refused for holding many dialogs (or their set-up transactions), for loop lag or a
# filling receive queue while they build up.
overload:
  max_dialogs: {max(200_000, 2 * self.dialogs)}
  max_calls_in_setup: 20000
  max_loop_lag_ms: 10000
  max_transactions: {max(500_000, 4 * self.dialogs)}
  max_receive_queue: 1.0
"""

    def extra_addrs(self) -> list[Addr]:
        return []

    def apis(self) -> list[Addr]:
        """Each worker's HTTP API (its own engine and counters): the configured port plus the worker's index."""
        return [Addr(self.api.host, self.api.port + i) for i in range(self.workers)]

    def state(self) -> dict[str, int] | None:
        """stirgate's gauges and counters, every worker's added up, or None when one does not answer."""
        rows = [self.worker_state(api) for api in self.apis()]
        return None if any(r is None for r in rows) else summed([r for r in rows if r is not None])

    @staticmethod
    def worker_state(api: Addr) -> dict[str, int] | None:
        """One worker's gauges and counters from its /metrics, or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://{api}/metrics", timeout=3) as r:
                text = r.read().decode()
        except OSError:
            return None
        out: dict[str, int] = {}
        for line in text.splitlines():
            m = re.fullmatch(r'stirgate_(active_calls|transactions|sip_events_total\{event="(\w+)"\}) ([0-9.e+]+)',
                             line)
            if m:
                out[m.group(2) or m.group(1)] = int(float(m.group(3)))
        if "active_calls" not in out:
            return None
        established = out.get("answered", 0) - out.get("calls_ended", 0)
        return {"established": max(0, min(established, out["active_calls"])), "live": out["active_calls"],
                "transactions": out.get("transactions", 0), "answered": out.get("answered", 0),
                "calls_ended": out.get("calls_ended", 0), "invites": out.get("invites", 0),
                "overload_rejected": out.get("overload_rejected", 0), **ended_by_verstat(text)}


def ended_by_verstat(metrics: str) -> dict[str, int]:
    """Ended calls from stirgate's `stirgate_calls_total` counter: `ended_verified` (verstat
    TN-Validation-Passed) and `ended_other` (any other verstat, "none" included): hold mode verify's proof."""
    verified = other = 0
    for m in re.finditer(r'^stirgate_calls_total\{([^}]*)\} ([0-9.e+]+)$', metrics, re.M):
        n = int(float(m.group(2)))
        if f'verstat="{VERIFIED}"' in m.group(1):
            verified += n
        else:
            other += n
    return {"ended_verified": verified, "ended_other": other}


class HoldKamailio(Kamailio):
    """The peers template with the dialog module managing every call (a transaction-stateful relay holds
    nothing per dialog: without it there would be nothing to compare)."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.label = "Kamailio 5.6 + dialog (dlg_manage)"

    def set_mode(self, mode: Any, pki: Any) -> None:
        super().set_mode(mode, pki)
        self.label = "Kamailio 5.6 + dialog (dlg_manage)"

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text()
        for old, new in (
            ('loadmodule "ctl.so"\n',
             'loadmodule "ctl.so"\nloadmodule "dialog.so"\nmodparam("dialog", "default_timeout", 7200)\n'
             'modparam("dialog", "hash_size", 65536)\n'),
            ("\tif (has_totag()) {\n", "\tif (has_totag()) {\n\t\tdlg_manage();\n"),
            ("\t\trecord_route();\n", "\t\trecord_route();\n\t\tdlg_manage();\n"),
        ):
            if old not in text:
                raise RuntimeError(f"kamailio template: {old.strip()!r} not found")
            text = text.replace(old, new, 1)
        self.config.write_text(text)

    def kamcmd(self, *cmd: str) -> str | None:
        try:
            r = subprocess.run(["kamcmd", "-s", f"unix:{self.workdir / 'kamailio-ctl.sock'}", *cmd],
                               capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None

    def state(self) -> dict[str, int] | None:
        out = self.kamcmd("dlg.stats_active")
        if out is None:
            return None
        v = {k: int(n) for k, n in re.findall(r"(\w+):\s*(\d+)", out)}
        tm = self.kamcmd("tm.stats") or ""
        t = {k: int(n) for k, n in re.findall(r"(\w+):\s*(\d+)", tm)}
        shm = self.kamcmd("core.shmmem") or ""
        s = {k: int(n) for k, n in re.findall(r"(\w+):\s*(\d+)", shm)}
        return {"established": v.get("ongoing", 0), "live": v.get("all", 0), "transactions": t.get("current", 0),
                "shm_used_kb": s.get("used", 0) // 1024, "shm_real_used_kb": s.get("real_used", 0) // 1024}


# --- SIPp -------------------------------------------------------------------------------------------------------

class HoldSipp:
    """One SIPp (UAC or UAS) of the concurrency run, bounded by -timeout, stopped by PID."""

    def __init__(self, name: str, cmd: list[str], d: Path) -> None:
        self.name = name
        self.dir = d
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu = 0.0

    def start(self) -> None:
        out = open(self.dir / "screen.txt", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_raise_nofile)
        out.close()

    def stat(self) -> dict[str, str]:
        return _last_row(self.dir / "stat.csv")

    def running(self) -> bool:
        """Alive, checked without reaping it (wait() reaps it with wait4 for its CPU time)."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def wait(self, timeout: float) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.cpu = _rusage_wait(self.proc, timeout)

    def stop(self) -> None:
        """SIGUSR1 (SIPp: stop, dump statistics, quit), SIGKILL after 8 s."""
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            self.proc.send_signal(signal.SIGUSR1)
        except ProcessLookupError:
            pass
        self.cpu = _rusage_wait(self.proc, timeout=8.0)

    def rss_kb(self) -> int:
        return tree_memory(self.proc.pid)[0] if self.running() and self.proc is not None else 0


def sipp_common(limit: int, timeout_s: float) -> list[str]:
    return ["-buff_size", BUFF, "-nostdin", "-l", str(limit), "-timeout", f"{int(timeout_s)}s",
            "-trace_stat", "-stf", "stat.csv", "-fd", "1", "-trace_counts", "-trace_err", "-error_file", "errors.log"]


# --- the run ----------------------------------------------------------------------------------------------------

@dataclass
class HoldResult:
    sut: str
    label: str
    dialogs: int
    setup_rate: float
    hold_s: float
    memory_basis: str = "rss"                                  # which figure the projection and target use
    idle: Sample | None = None
    growth: list[Sample] = field(default_factory=list)        # first poll past each 10 % of N
    at_n: Sample | None = None
    settled: Sample | None = None
    reinvited: Sample | None = None                            # --hold-reinvite during: after the re-INVITEs
    reinvites_acked: int = 0                                   # re-INVITEs the UACs had ACKed by then
    ended: Sample | None = None                                # every call ended
    after: Sample | None = None                                # and their transactions expired
    reached: bool = False
    max_established: int = 0
    setup_s: float | None = None
    transport: str = "udp"                                     # the SIPp trunks'
    identities_signed: int = 0                                 # hold mode verify: PASSporTs in the UAC's pool
    all_verified: bool | None = None                           # every ended call verified, none failed (verify)
    uac: dict[str, int] = field(default_factory=dict)
    uas: dict[str, int] = field(default_factory=dict)
    sipp_peak_rss_kb: dict[str, int] = field(default_factory=dict)
    bytes_per_dialog: float | None = None                      # (settled - idle) / established, RSS
    bytes_per_dialog_pss: float | None = None
    bytes_per_dialog_reinvited: float | None = None            # (re-INVITEd - idle) / established, RSS
    shm_bytes_per_dialog: float | None = None                  # Kamailio: shm real_used, settled - idle
    bytes_per_dialog_at_n: float | None = None                 # (at N - idle) / established: txns included
    slope_bytes_per_dialog: float | None = None                # least squares over the growth samples
    late_slope_bytes_per_dialog: float | None = None           # same, build-up polls after the first 35 s
    late_transactions: list[int] = field(default_factory=list)  # the SUT's transactions over those: min, max
    projected_100k_mb: float | None = None                     # MiB
    target_met: bool | None = None                             # 100,000 dialogs under 1 GiB (2**30 bytes)
    peak_kb: int = 0                                           # highest RSS (PSS for Kamailio) of any poll
    log_warnings: int = 0
    log_sample: list[str] = field(default_factory=list)
    timeline: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def sipp_counts(p: HoldSipp) -> dict[str, int]:
    """A SIPp's final counters (calls, failures, retransmissions), its per-message counts and CPU time."""
    st = p.stat()
    keys = ("TotalCallCreated", "IncomingCall(C)", "SuccessfulCall(C)", "FailedCall(C)", "Retransmissions(C)",
            "FailedTimeoutOnRecv(C)", "FailedUnexpectedMessage(C)", "OutOfCallMsgs(C)", "DeadCallMsgs(C)")
    counts = {k: _int(st, k) for k in keys if k in st}
    counts.update({f"msg_{k}": v for k, v in _counts(p.dir).items()})
    counts["cpu_ms"] = int(p.cpu * 1000)
    return counts


def hold_scenarios(verifying: bool, reinvite: str | None) -> tuple[str, str]:
    """The UAC's and the UAS's scenarios: the plain hold, the one carrying the caller's Identity from the -inf
    pool, or the one with a re-INVITE `before` the hold or `during` it."""
    if reinvite == "during":
        return "uac_hold_reinvite_during.xml", "uas_hold_reinvite.xml"
    if reinvite:
        return "uac_hold_reinvite.xml", "uas_hold_reinvite.xml"
    return ("uac_hold_identity.xml" if verifying else "uac_hold.xml"), "uas_hold.xml"


def reinvites_acked(uacs: list[HoldSipp]) -> int:
    """How many re-INVITEs the UACs have ACKed (`--hold-reinvite`): the second ACK of their scenario, from
    SIPp's per-message counts (-trace_counts, written every second)."""
    return sum(second_ack_sent(u.dir) for u in uacs)


def second_ack_sent(d: Path) -> int:
    """The sent count of the second ACK in a SIPp's last -trace_counts row (0 before it has one: `_counts` keeps
    only the counts above 0, and the first ACK is always sent before the second)."""
    counts = _counts(d)
    acks = sorted((int(k.split("_", 1)[0]), k) for k in counts if k.endswith("_ACK_Sent"))
    return counts[acks[1][1]] if len(acks) > 1 else 0


def ended_counts(res: HoldResult) -> dict[str, int]:
    """The SUT's counters at the last sample, once the calls ended (`ended_verified`, `ended_other`, ...)."""
    last = res.after or res.ended
    return last.extra if last is not None else {}


def every_call_verified(res: HoldResult) -> bool:
    """Hold mode verify: no call failed at the UAC (a 403/438 would), N were established, and every call that
    ended had its PASSporT pass (stirgate's calls counter by verstat, read after the calls ended)."""
    ended = ended_counts(res)
    return (res.uac.get("FailedCall(C)", 0) == 0 and res.max_established >= res.dialogs
            and ended.get("ended_other", 0) == 0 and ended.get("ended_verified", 0) >= res.dialogs)


def _slope(samples: list[Sample], pss: bool = False) -> float | None:
    """Bytes per established dialog, least squares over the samples (RSS, or PSS for a multi-process SUT)."""
    pts = [(s.established, (s.pss_kb if pss else s.rss_kb) * 1024) for s in samples if s.established > 0]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


def split_calls(n: int, rate: float, parts: int) -> list[tuple[int, float]]:
    """(calls, calls/s) of each of `parts` UACs sharing N calls at `rate`: as even as whole calls allow."""
    return [(n // parts + (1 if i < n % parts else 0), rate / parts) for i in range(parts)]


def summed(rows: list[dict[str, int]]) -> dict[str, int]:
    """Counters added up key by key (several SIPp UACs, or stirgate's workers)."""
    out: dict[str, int] = {}
    for row in rows:
        for k, v in row.items():
            out[k] = out.get(k, 0) + v
    return out


def run_hold(sut: SUT, args: argparse.Namespace, rundir: Path, uac_addrs: list[Addr], uas_addr: Addr) -> HoldResult:
    """One SUT holding `args.dialogs` calls, from one SIPp UAC per address (stirgate --workers 2: one per worker);
    every wait bounded, SIPp and the SUT stopped by PID at the end."""
    n, rate = args.dialogs, args.setup_rate
    setup_s = n / rate
    hold_s = setup_s * 1.25 + SETTLE_S + MARGIN_S
    during = args.hold_reinvite == "during"  # the hold twice: before the re-INVITE and after it
    total_s = hold_s * (2 if during else 1) + setup_s * 1.5 + SETTLE_S + 60
    tcp = args.hold_transport == "tcp"
    res = HoldResult(sut=sut.name, label=sut.label, dialogs=n, setup_rate=rate, hold_s=round(hold_s, 1),
                     memory_basis="pss" if isinstance(sut, Kamailio) else "rss", transport=args.hold_transport)
    d = rundir / "concurrency" / sut.name
    d.mkdir(parents=True, exist_ok=True)
    state = sut.state  # type: ignore[attr-defined]

    busy = wait_free([sut.listen, uas_addr, *uac_addrs], args.busy_wait)
    if busy:
        res.error = f"address busy: {', '.join(map(str, busy))}"
        return res
    tcp_needed = sut.apis() if isinstance(sut, HoldStirgate) else []
    tcp_needed += [sut.listen, uas_addr, *uac_addrs] if tcp else []
    busy = [a for a in tcp_needed if not tcp_free(a)]
    if busy:
        res.error = f"TCP address busy: {', '.join(map(str, busy))}"
        return res

    verifying = sut.mode.identity_pool and sut.pki is not None
    transport = ["-t", "t1"] if tcp else []  # one connection each way
    uac_scenario, uas_scenario = hold_scenarios(verifying, args.hold_reinvite)
    uas = HoldSipp("uas", [SIPP, "-sf", str(SCENARIOS / uas_scenario), "-i", uas_addr.host, *transport,
                           "-p", str(uas_addr.port), *sipp_common(2 * n + 1000, total_s + 30)], d / "uas")
    uacs: list[HoldSipp] = []  # made once the SUT runs: stirgate --workers 2 places them on its workers
    pools: list[tuple[Path, int]] = []  # hold mode verify: each UAC's -inf file and its calls

    def make_uacs(addrs: list[Addr]) -> None:
        for i, (a, (calls, cps)) in enumerate(zip(addrs, split_calls(n, rate, len(addrs)), strict=True)):
            name = "uac" if len(addrs) == 1 else f"uac{i}"
            pool = d / f"identities-{name}.csv"
            if verifying:
                pools.append((pool, calls))
            uacs.append(HoldSipp(name, [
                SIPP, str(sut.listen), "-sf", str(SCENARIOS / uac_scenario), *transport,
                *(["-inf", str(pool)] if verifying else []), "-i", a.host, "-p", str(a.port), "-s", "12025550199",
                "-r", f"{cps:g}", "-rp", "1000", "-m", str(calls), "-d", str(int(hold_s * 1000)),
                *sipp_common(calls + 1000, total_s)], d / name))

    t0 = time.monotonic()

    def sample(label: str = "") -> Sample | None:
        st = state()
        if st is None or sut.proc is None:
            return None
        rss, pss = tree_memory(sut.pid)
        stats = [u.stat() for u in uacs]
        s = Sample(t=round(time.monotonic() - t0, 1), established=st["established"], live=st["live"],
                   transactions=st["transactions"], rss_kb=rss, pss_kb=pss,
                   uac_created=sum(_int(u, "TotalCallCreated") for u in stats),
                   uac_failed=sum(_int(u, "FailedCall(C)") for u in stats), label=label,
                   extra={k: v for k, v in st.items() if k not in ("established", "live", "transactions")})
        res.timeline.append(s)
        res.max_established = max(res.max_established, s.established)
        for p in (*uacs, uas):
            res.sipp_peak_rss_kb[p.name] = max(res.sipp_peak_rss_kb.get(p.name, 0), p.rss_kb())
        return s

    def poll_until(cond: Any, limit: float, label: str) -> Sample | None:
        """Poll once a second until cond(sample) or `limit` seconds; the last sample."""
        deadline = time.monotonic() + limit
        last: Sample | None = None
        while True:
            s = sample(label)
            if s is not None:
                last = s
                if cond(s):
                    return s
            if time.monotonic() > deadline:
                return last
            if sut.proc is not None and sut.proc.poll() is not None:
                raise RuntimeError(f"{sut.name} exited (code {sut.proc.returncode})")
            time.sleep(POLL_S)

    try:
        sut.start(d, ready_timeout=30.0)
        # one scrape first (the API's own first-use allocations), then idle once RSS is steady
        prev = -1
        for _ in range(10):
            s = sample("idle")
            if s is not None and abs(s.rss_kb - prev) < 64:
                break
            prev = s.rss_kb if s is not None else -1
            time.sleep(0.5)
        res.idle = res.timeline[-1] if res.timeline else None
        if res.idle is None:
            raise RuntimeError(f"cannot read {sut.name}'s state")
        res.timeline.clear()
        make_uacs(sut.step_uacs or uac_addrs)
        if verifying:
            assert sut.pki is not None
            for pool, calls in pools:
                signed, took = write_identity_pool(sut.pki, pool, calls, cap=None)  # iat: now
                res.identities_signed += signed
                print(f"  {signed:,} Identity values signed in {took:.1f} s ({pool.name})", flush=True)
        uas.start()
        time.sleep(0.5)
        if not uas.running():
            raise RuntimeError(f"SIPp UAS exited at start: {uas.dir / 'screen.txt'}")
        t0 = time.monotonic()
        for u in uacs:
            u.start()
        print(f"  {sut.name}: {n} calls at {rate:g} cps (set-up ~{setup_s:.0f} s), held {hold_s:.0f} s each",
              flush=True)

        # 1. build-up: until N established, or every call placed and no progress for 10 s, or the deadline
        marks = [round(n * k / 10) for k in range(1, 10)]
        stalled_since: float | None = None
        last_est = -1
        deadline = time.monotonic() + build_up_bound_s(n, rate)
        while time.monotonic() < deadline:
            s = sample("build-up")
            if sut.proc is not None and sut.proc.poll() is not None:
                raise RuntimeError(f"{sut.name} exited during set-up (code {sut.proc.returncode})")
            if s is not None:
                if marks and s.established >= marks[0]:
                    while marks and s.established >= marks[0]:
                        marks.pop(0)
                    s.label = "growth"
                    res.growth.append(s)
                    print(f"    {s.established:>7} established  RSS {s.rss_kb / 1024:7.1f} MiB  "
                          f"transactions {s.transactions}  t {s.t:.0f} s", flush=True)
                if s.established >= n:
                    res.reached = True
                    break
                if s.uac_created >= n and s.established == last_est:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 10:
                        res.notes.append(f"set-up stalled at {s.established} established")
                        break
                else:
                    stalled_since = None
                last_est = s.established
            time.sleep(POLL_S)
        at_n = res.timeline[-1] if res.timeline else None
        if at_n is None:
            raise RuntimeError("no sample during the set-up")
        at_n.label = "at N" if res.reached else "set-up end"
        res.at_n = at_n
        res.setup_s = at_n.t
        if not res.growth or res.growth[-1] is not at_n:
            res.growth.append(at_n)
        print(f"    {at_n.established:>7} established  RSS {at_n.rss_kb / 1024:7.1f} MiB  "
              f"transactions {at_n.transactions}  t {at_n.t:.0f} s ({at_n.label})", flush=True)

        # 2. settled: the set-up transactions expired (bounded; stop early if the BYEs have begun)
        settled = poll_until(lambda s: s.transactions <= max(50, n // 1000) or s.established < at_n.established,
                             SETTLE_S, "settled")
        if settled is not None:
            res.settled = settled
            if settled.established < at_n.established:
                res.notes.append("calls began to end before the transactions expired: settled sample early")
            print(f"    {settled.established:>7} established  RSS {settled.rss_kb / 1024:7.1f} MiB  "
                  f"transactions {settled.transactions}  t {settled.t:.0f} s (set-up transactions expired)",
                  flush=True)

        # 2b. --hold-reinvite during: the re-INVITEs (each call's one hold after its ACK, so at the set-up rate in
        # the set-up order) all answered and ACKed, then their transactions expired, before the BYEs begin
        if during and settled is not None:
            held = settled.established
            wave_end = hold_s + at_n.t + 30  # the last call's re-INVITE, since the UACs started, and a margin
            wave = poll_until(lambda s: reinvites_acked(uacs) >= held or s.established < held,
                              max(10.0, wave_end - (time.monotonic() - t0)), "re-INVITEs")
            if wave is not None:
                print(f"    {reinvites_acked(uacs):>7} re-INVITEs ACKed  RSS {wave.rss_kb / 1024:7.1f} MiB  "
                      f"transactions {wave.transactions}  t {wave.t:.0f} s", flush=True)
            reinvited = poll_until(lambda s: s.transactions <= max(50, n // 1000) or s.established < held,
                                   SETTLE_S, "re-INVITEd")
            if reinvited is not None:
                res.reinvited = reinvited
                res.reinvites_acked = reinvites_acked(uacs)
                if reinvited.established < held:
                    res.notes.append("calls began to end before the re-INVITEs' transactions expired")
                print(f"    {reinvited.established:>7} established  RSS {reinvited.rss_kb / 1024:7.1f} MiB  "
                      f"transactions {reinvited.transactions}  t {reinvited.t:.0f} s (re-INVITE transactions "
                      f"expired)", flush=True)

        # 3. the calls end (SIPp sends the BYEs at the set-up rate once each hold is over)
        left = total_s - (time.monotonic() - t0)
        ended = poll_until(lambda s: s.live == 0 or not any(u.running() for u in uacs), max(10.0, left), "ending")
        for u in uacs:
            u.wait(timeout=30)
        ended = poll_until(lambda s: s.live == 0, 15.0, "ended") or ended
        res.ended = ended
        res.after = poll_until(lambda s: s.transactions == 0, SETTLE_S, "after")
    except Exception as e:  # reported in the results; the run goes on to the next SUT
        res.error = str(e)
    finally:
        for p in (*uacs, uas):
            if p.running():
                p.stop()
            else:
                p.wait(timeout=5)  # exited: reap it, with its CPU time
        sut.stop()

    res.uac = summed([sipp_counts(p) for p in uacs])
    res.uas = sipp_counts(uas)
    res.log_warnings, res.log_sample = _log_warnings(sut.log_path)
    if verifying:
        res.all_verified = every_call_verified(res)
    if res.idle and res.settled and res.settled.established:
        res.bytes_per_dialog = round((res.settled.rss_kb - res.idle.rss_kb) * 1024 / res.settled.established)
        res.bytes_per_dialog_pss = round((res.settled.pss_kb - res.idle.pss_kb) * 1024 / res.settled.established)
        if "shm_real_used_kb" in res.settled.extra:
            res.shm_bytes_per_dialog = round((res.settled.extra["shm_real_used_kb"]
                                              - res.idle.extra.get("shm_real_used_kb", 0)) * 1024
                                             / res.settled.established)
    if res.idle and res.reinvited and res.reinvited.established:
        res.bytes_per_dialog_reinvited = round((res.reinvited.rss_kb - res.idle.rss_kb) * 1024
                                               / res.reinvited.established)
    if res.idle and res.at_n and res.at_n.established:
        res.bytes_per_dialog_at_n = round((res.at_n.rss_kb - res.idle.rss_kb) * 1024 / res.at_n.established)
    pss = res.memory_basis == "pss"
    slope = _slope(res.growth, pss)
    res.slope_bytes_per_dialog = round(slope) if slope is not None else None
    # From 64*T1 = 32 s on, set-up transactions should expire as fast as new ones come: with the pool steady and
    # new dialogs reusing the memory freed, the slope of the later polls is the dialogs' own cost.
    late = [s for s in res.timeline if s.label in ("build-up", "growth", "at N") and s.t >= LATE_S]
    late_slope = _slope(late, pss)
    res.late_slope_bytes_per_dialog = round(late_slope) if late_slope is not None else None
    if late:
        res.late_transactions = [min(s.transactions for s in late), max(s.transactions for s in late)]
    res.peak_kb = max(((s.pss_kb if pss else s.rss_kb) for s in res.timeline), default=0)
    # The target is RSS of one process (stirgate); Kamailio's processes share memory, so its sum of RSS counts
    # the shared pages once per process: PSS is its figure.
    per_dialog = res.bytes_per_dialog_pss if pss else res.bytes_per_dialog
    if res.idle and res.settled and per_dialog is not None:
        res.projected_100k_mb = round(((res.idle.pss_kb if pss else res.idle.rss_kb) * 1024
                                       + 100_000 * per_dialog) / 2**20, 1)
        if res.settled.established >= 100_000:
            res.target_met = res.peak_kb * 1024 < 2**30
    return res


def mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:,.1f} MiB"


def mem(s: Sample | None) -> str:
    return "n/a" if s is None else f"{s.rss_kb / 1024:,.1f} / {s.pss_kb / 1024:,.1f} MiB"


def per(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def print_results(results: list[HoldResult], args: argparse.Namespace) -> None:
    print()
    print(f"Results, mode concurrency ({time.strftime('%Y-%m-%d %H:%M')}): {args.dialogs:,} calls held, set up at "
          f"{args.setup_rate:g} cps, {args.uacs} UAC(s), {args.hold_transport.upper()}")
    print("Memory as RSS / PSS of the SUT's process tree (PSS counts shared pages once: Kamailio's processes "
          "share its memory); bytes per dialog = (set-up transactions expired - idle) / established.")
    print("| system | established (of N) | failed calls | idle | at N | set-up txns expired | "
          "bytes/dialog RSS / PSS | after calls ended |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.error and r.idle is None:
            print(f"| {r.label} | error: {r.error} |||||||")
            continue
        failed = r.uac.get("FailedCall(C)", 0)
        est = r.at_n.established if r.at_n else 0
        after = r.after or r.ended
        print(f"| {r.label} | {est:,} of {r.dialogs:,} | {failed} | {mem(r.idle)} | {mem(r.at_n)} | "
              f"{mem(r.settled)} | {per(r.bytes_per_dialog)} / {per(r.bytes_per_dialog_pss)} | {mem(after)} |")
    for r in results:
        print(f"{r.label}: growth (established, RSS, PSS, transactions, t):")
        for s in r.growth:
            print(f"  {s.established:>8,}  {mb(s.rss_kb):>11}  {mb(s.pss_kb):>11}  {s.transactions:>7,} txns  "
                  f"{s.t:6.1f} s  {s.label}")
        bits = []
        if r.bytes_per_dialog_at_n is not None:
            bits.append(f"at N with set-up transactions {r.bytes_per_dialog_at_n:,} B/dialog")
        if r.shm_bytes_per_dialog is not None:
            bits.append(f"Kamailio shared memory in use (core.shmmem real_used) {r.shm_bytes_per_dialog:,} B/dialog")
        if r.slope_bytes_per_dialog is not None:
            bits.append(f"slope over the growth samples {r.slope_bytes_per_dialog:,} B/dialog "
                        f"({r.memory_basis.upper()})")
        if r.late_slope_bytes_per_dialog is not None:
            lt = r.late_transactions
            steady = "" if not lt else (f"; transactions between {lt[0]:,} and {lt[1]:,}: "
                                        f"{'steady' if lt[1] - lt[0] <= 0.05 * lt[1] else 'NOT steady'}")
            bits.append(f"slope after {LATE_S:g} s {r.late_slope_bytes_per_dialog:,} B/dialog (64*T1 passed, the "
                        f"set-up transactions should expire as fast as they come{steady})")
        if r.projected_100k_mb is not None:
            bits.append(f"idle + 100,000 x per-dialog = {r.projected_100k_mb:,.0f} MiB ({r.memory_basis.upper()})")
        if r.target_met is not None:
            bits.append(f"100,000 under 1 GiB: {'met' if r.target_met else 'NOT met'} (peak "
                        f"{r.peak_kb * 1024 / 1e9:.3f} GB)")
        if r.sipp_peak_rss_kb:
            bits.append("SIPp peak RSS " + ", ".join(f"{k} {mb(v)}" for k, v in r.sipp_peak_rss_kb.items()))
        if bits:
            print("  " + "; ".join(bits))
        if r.reinvited is not None:
            grew = (f", {r.bytes_per_dialog_reinvited - r.bytes_per_dialog:+,} B/dialog against before them"
                    if r.bytes_per_dialog_reinvited is not None and r.bytes_per_dialog is not None else "")
            print(f"  after {r.reinvites_acked:,} re-INVITEs during the hold and their transactions: RSS "
                  f"{mb(r.reinvited.rss_kb)}, {r.reinvited.transactions:,} transactions at {r.reinvited.t:.0f} s; "
                  f"{per(r.bytes_per_dialog_reinvited)} B/dialog{grew}")
        if r.ended:
            print(f"  after the BYEs: {r.ended.live} calls left, RSS {mb(r.ended.rss_kb)} at {r.ended.t:.0f} s"
                  + (f"; {r.after.transactions} transactions, RSS {mb(r.after.rss_kb)} at {r.after.t:.0f} s"
                     if r.after else ""))
        if r.all_verified is not None:
            print(f"  verification: {r.identities_signed:,} PASSporTs signed (one per call); "
                  f"{verified_summary(r)}")
        for note in r.notes:
            print(f"  note: {note}")
        if r.error:
            print(f"  error: {r.error}")
        if r.log_warnings:
            print(f"  {r.log_warnings} warning/error log lines, e.g. {r.log_sample[:2]}")


def verified_summary(r: HoldResult) -> str:
    """What hold mode verify found: every call verified, or what was not."""
    extra = ended_counts(r)
    counts = (f"{extra.get('ended_verified', 0):,} ended calls {VERIFIED}, {extra.get('ended_other', 0):,} "
              f"with another verstat, {r.uac.get('FailedCall(C)', 0)} failed calls at the UAC")
    return f"{'every call verified' if r.all_verified else 'NOT every call verified'} ({counts})"


def run_concurrency(args: argparse.Namespace, rundir: Path, names: list[str], uacs: list[Addr], uas: Addr,
                    skipped: dict[str, str], pki: Pki | None = None) -> dict[str, Any]:
    """--mode concurrency: each named SUT in turn (stirgate, optionally kamailio); the JSON entry. stirgate holds
    the calls as `--hold-mode` says (relay, or sign / verify with `pki`), writing their records with `--records`,
    over `--hold-transport`."""
    off = args.port_offset
    results: list[HoldResult] = []
    for name in names:
        sut: SUT
        if name == "stirgate":
            sut = HoldStirgate(Addr.parse(args.stirgate_listen).offset(off), uas, uacs, rundir, workers=args.workers,
                               log_level=args.log_level, worker_port_base=5100 + off,
                               api=Addr.parse(args.api_listen).offset(off), dialogs=args.dialogs,
                               records=args.records, transport=args.hold_transport, reinvite=args.hold_reinvite)
            if args.hold_mode != "relay":
                sut.set_mode(MODES[args.hold_mode], pki)
            if args.hold_mode == "verify":
                sut.iat_max_age = iat_window_s(args.dialogs, args.setup_rate)
        elif name == "kamailio" and args.hold_transport != "udp":
            print(f"{name}: its dialog config listens on UDP only: not run with --hold-transport "
                  f"{args.hold_transport}", flush=True)
            skipped.setdefault(name, f"concurrency over {args.hold_transport}")
            continue
        elif name == "kamailio":
            sut = HoldKamailio(Addr.parse(args.peer_listen).offset(off), uas, uacs, rundir, pike=False)
        else:
            print(f"{name}: no dialog count to read: not run in mode concurrency", flush=True)
            skipped.setdefault(name, "not in mode concurrency")
            continue
        why = sut.available()
        if why:
            print(f"{name}: skipped: {why}", flush=True)
            skipped[name] = why
            continue
        if udp_bound(sut.listen.host, sut.listen.port):
            print(f"{name}: {sut.listen} is busy; waiting up to {args.busy_wait:g} s", flush=True)
        print(f"{sut.label} [mode concurrency]:", flush=True)
        results.append(run_hold(sut, args, rundir, uacs, uas))
    print_results(results, args)
    return {"dialogs": args.dialogs, "setup_rate_cps": args.setup_rate, "hold_mode": args.hold_mode,
            "hold_transport": args.hold_transport, "hold_reinvite": args.hold_reinvite, "records": args.records,
            "results": {r.sut: asdict(r) for r in results}}

