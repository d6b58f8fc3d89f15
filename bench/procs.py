"""Process and socket helpers: CPU time of a process tree, busy UDP addresses, stopping by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read_stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, utime+stime, stime in seconds) of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    ppid = int(rest[1])
    utime, stime = int(rest[11]), int(rest[12])
    return ppid, (utime + stime) / CLK_TCK, stime / CLK_TCK


def descendants(root: int) -> set[int]:
    """The PID `root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _read_stat(int(name))
        if st is not None:
            children.setdefault(st[0], []).append(int(name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu(root: int, known: set[int] | None = None) -> tuple[float, set[int]]:
    """Summed utime+stime (s) of `root`'s process tree (plus any PID in `known` still alive)."""
    total, _, alive = tree_cpu_split(root, known)
    return total, alive


def tree_cpu_split(root: int, known: set[int] | None = None) -> tuple[float, float, set[int]]:
    """As `tree_cpu`, with the stime (s) of that total apart: the kernel's share (syscalls, and on loopback the
    receiving side's network processing, which the sender pays for). On a kernel with tick-based CPU accounting
    (this bench's VM) the total is exact but the split is sampled at the tick: good over many steps, not one."""
    pids = descendants(root) | (known or set())
    total = kernel = 0.0
    alive = set()
    for pid in pids:
        st = _read_stat(pid)
        if st is not None:
            total += st[1]
            kernel += st[2]
            alive.add(pid)
    return total, kernel, alive


def system_busy() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def _hex_addr(ip: str, port: int) -> str:
    packed = socket.inet_aton(ip)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def udp_bound(ip: str, port: int) -> int:
    """How many UDP sockets are bound to ip:port (or to 0.0.0.0:port)."""
    wanted = {_hex_addr(ip, port), _hex_addr("0.0.0.0", port)}
    n = 0
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                if line.split()[1] in wanted:
                    n += 1
    except OSError:
        return 0
    return n


@dataclass
class Addr:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int = 5060) -> Addr:
        host, _, port = text.rpartition(":")
        if not host:
            return cls(text, default_port)
        return cls(host, int(port))

    def offset(self, n: int) -> Addr:
        return Addr(self.host, self.port + n)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def stop_process(proc: subprocess.Popen[bytes], term_wait: float = 5.0, group: bool = True) -> None:
    """SIGTERM the process we started, then SIGKILL it (and its own process group) if it lingers."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=term_wait)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    if proc.poll() is None:
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)  # the SUT runs in its own session: pgid == pid
            else:
                proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
    if group:
        # workers left behind by a parent that died first
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
