"""Running SIPp as UAS and UAC(s) for one step, and reading back its statistics."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Addr

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
BUFF = "4194304"


def _rusage_wait(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for a child we started and return its CPU seconds (utime+stime) from wait4()."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        time.sleep(0.05)


def _last_row(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _int(row: dict[str, str], key: str) -> int:
    try:
        return int(float(row.get(key, "0") or 0))
    except ValueError:
        return 0


def _repartition(row: dict[str, str]) -> list[tuple[float, float, int]]:
    """SIPp's ResponseTimeRepartition1 (INVITE->200, every answered call) as (from, to, count) buckets."""
    out: list[tuple[float, float, int]] = []
    lo = 0.0
    for k in row:
        m = re.fullmatch(r"ResponseTimeRepartition1_(<|>=)(\d+)", k)
        if not m:
            continue
        bound = float(m.group(2))
        if m.group(1) == "<":
            out.append((lo, bound, _int(row, k)))
            lo = bound
        else:
            out.append((bound, float("inf"), _int(row, k)))
    return out


class UAS:
    def __init__(self, addr: Addr, stepdir: Path) -> None:
        self.addr = addr
        self.dir = stepdir / "uas"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu = 0.0

    def start(self) -> None:
        cmd = [
            SIPP, "-sf", str(SCENARIOS / "uas.xml"), "-i", self.addr.host, "-p", str(self.addr.port),
            "-buff_size", BUFF, "-nostdin", "-trace_stat", "-stf", "stat.csv", "-fd", "1",
            "-trace_counts", "-trace_err", "-error_file", "errors.log",
        ]
        out = open(self.dir / "screen.txt", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"SIPp UAS on {self.addr} exited at start: {self.dir / 'screen.txt'}")

    def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)  # SIPp: stop placing calls, dump statistics, quit
        except ProcessLookupError:
            pass
        self.cpu = _rusage_wait(self.proc, timeout=8.0)  # calls still in their final 4 s pause

    def results(self) -> dict[str, object]:
        stat = _last_row(self.dir / "stat.csv")
        counts = _counts(self.dir)
        return {
            "calls": _int(stat, "IncomingCall(C)"),
            "successful": _int(stat, "SuccessfulCall(C)"),
            "failed": _int(stat, "FailedCall(C)"),
            "retransmissions_sent": _int(stat, "Retransmissions(C)"),
            "out_of_call_msgs": _int(stat, "OutOfCallMsgs(C)"),
            "dead_call_msgs": _int(stat, "DeadCallMsgs(C)"),
            "failed_timeout_on_recv": _int(stat, "FailedTimeoutOnRecv(C)"),
            "failed_unexpected": _int(stat, "FailedUnexpectedMessage(C)"),
            "counts": counts,
            "cpu_s": round(self.cpu, 3),
        }


def _counts(d: Path) -> dict[str, int]:
    """Last row of SIPp's -trace_counts file: per scenario message, sent/recv/retrans/timeout/unexp."""
    files = sorted(d.glob("*_counts.csv"))
    if not files:
        return {}
    row = _last_row(files[-1])
    return {k: _int(row, k) for k in row if re.match(r"\d+_", k) and _int(row, k)}


@dataclass
class UACResult:
    target_calls: int
    created: int = 0
    successful: int = 0
    failed_reported: int = 0
    retransmissions: int = 0
    timeouts_on_recv: int = 0
    unexpected: int = 0
    out_of_call_msgs: int = 0
    dead_call_msgs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    rtts_ms: list[int] = field(default_factory=list)
    by_second: dict[int, tuple[int, int]] = field(default_factory=dict)  # second -> (answers, max ms)
    rt_buckets: list[tuple[float, float, int]] = field(default_factory=list)  # (from ms, to ms, calls)
    answered_rate: float = 0.0  # INVITE->200 answers per second over the answering span
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    returncode: int | None = None


class UAC:
    def __init__(self, idx: int, addr: Addr, target: Addr, rate: float, calls: int, stepdir: Path,
                 time_limit: float, keep_traces: bool = False, scenario: Path | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.keep_traces = keep_traces
        self.scenario = scenario or SCENARIOS / "uac.xml"
        self.extra_args = extra_args or []
        self.addr = addr
        self.target = target
        self.rate = rate
        self.calls = calls
        self.dir = stepdir / f"uac{idx}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.time_limit = time_limit
        self.proc: subprocess.Popen[bytes] | None = None
        self.result = UACResult(target_calls=calls)

    def start(self) -> None:
        cmd = [
            SIPP, str(self.target), "-sf", str(self.scenario), *self.extra_args,
            "-i", self.addr.host, "-p", str(self.addr.port), "-s", "12025550199",
            "-r", f"{self.rate:g}", "-rp", "1000", "-m", str(self.calls),
            "-l", str(min(15000, max(1000, int(self.rate * 30)))),
            "-buff_size", BUFF, "-nostdin", "-timeout", f"{int(self.time_limit)}s",
            "-trace_stat", "-stf", "stat.csv", "-fd", "1",
            # SIPp writes the RTT file every rtt_freq calls and drops the remainder at exit: keep it small.
            "-trace_rtt", "-rtt_freq", str(max(1, min(1000, self.calls // 50))), "-trace_counts",
            "-trace_err", "-error_file", "errors.log",
        ]
        out = open(self.dir / "screen.txt", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()

    def wait(self) -> UACResult:
        assert self.proc is not None
        t0 = time.monotonic()
        r = self.result
        r.cpu_s = _rusage_wait(self.proc, timeout=self.time_limit + 15)
        r.returncode = self.proc.returncode
        r.elapsed_s = time.monotonic() - t0
        stat = _last_row(self.dir / "stat.csv")
        r.created = _int(stat, "TotalCallCreated")
        r.successful = _int(stat, "SuccessfulCall(C)")
        r.failed_reported = _int(stat, "FailedCall(C)")
        r.retransmissions = _int(stat, "Retransmissions(C)")
        r.timeouts_on_recv = _int(stat, "FailedTimeoutOnRecv(C)")
        r.unexpected = _int(stat, "FailedUnexpectedMessage(C)")
        r.out_of_call_msgs = _int(stat, "OutOfCallMsgs(C)")
        r.dead_call_msgs = _int(stat, "DeadCallMsgs(C)")
        r.counts = _counts(self.dir)
        r.rt_buckets = _repartition(stat)
        times: list[float] = []
        for f in self.dir.glob("*_rtt.csv"):
            with open(f) as fh:
                next(fh, None)
                for line in fh:
                    parts = line.strip().split(";")
                    if len(parts) >= 3 and parts[2] == "1":
                        t, rt = float(parts[0]), int(float(parts[1]))
                        times.append(t)
                        r.rtts_ms.append(rt)
                        sec = int(t // 1000)
                        n, mx = r.by_second.get(sec, (0, 0))
                        r.by_second[sec] = (n + 1, max(mx, rt))
            if not self.keep_traces:
                f.unlink()  # large at high rates; the statistics above are kept
        if len(times) >= 2:
            span = (max(times) - min(times)) / 1000.0
            r.answered_rate = (len(times) - 1) / span if span > 0 else 0.0
        err = self.dir / "errors.log"
        if err.exists() and err.stat().st_size > 65536:
            with open(err, "rb") as fh:
                head = fh.read(65536)
            err.write_bytes(head + b"\n[... truncated by bench ...]\n")
        return r
