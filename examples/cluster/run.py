"""`make cluster`: the whole stirgate cluster of examples/cluster/ on one machine, until Ctrl-C.

    PostgreSQL 127.0.0.1:5439 and Redis 127.0.0.1:6389 (own processes, data in a temporary folder),
    the demo x5u server https://127.0.0.1:8443, stirgate node1 (127.0.0.1) and node2 (127.0.0.2) with
    --workers N each, and Kamailio (examples/cluster/kamailio.cfg) on 127.0.0.3:5060 in front of them.

While it runs it prints every change of the dispatcher's view of the workers (kill a node and watch it leave
the rotation, start it again and watch it come back). Ctrl-C (or SIGTERM) stops it in order: Kamailio first
(no new calls), then the nodes (they drain), then the x5u server, Redis and PostgreSQL. A second Ctrl-C stops
the nodes at once. Logs: var/cluster/. Run from the repository root (make cluster does).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.integration.cluster import EXAMPLE, Front, destinations, interleave, uri, wait_workers  # noqa: E402
from tests.services import Postgres, Redis  # noqa: E402

NODES = (("node1", "127.0.0.1"), ("node2", "127.0.0.2"))
PG_PORT, REDIS_PORT = 5439, 6389  # what node1.yaml and node2.yaml name


class Stop(Exception):
    pass


def interrupted(_signum: int, _frame: object) -> None:
    raise Stop


def main() -> int:
    p = argparse.ArgumentParser(prog="make cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="stirgate workers per node (default 2)")
    args = p.parse_args()
    var = ROOT / "var" / "cluster"  # the node configs put their spill files here too
    var.mkdir(parents=True, exist_ok=True)
    stirgate = Path(sys.executable).with_name("stirgate")
    if not (ROOT / "demo-certs" / "sp.key").exists():
        print("demo-certs/ missing: run `make certs` (make cluster does)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    pg = redis = front = None
    try:
        pg = Postgres(port=PG_PORT).start()
        pg.create_database("stirgate")
        redis = Redis(port=REDIS_PORT).start()
        print(f"PostgreSQL {pg.dsn('stirgate')} (PID {pg.proc.pid if pg.proc else '?'}), "
              f"Redis {redis.url} (PID {redis.proc.pid if redis.proc else '?'})", flush=True)
        procs["x5u"] = spawn([sys.executable, "-m", "proxy.stir.x5u_server", "--dir", "demo-certs",
                              "--listen", "127.0.0.1:8443"], var / "x5u.log")  # fmt: skip
        for name, _ip in NODES:
            procs[name] = spawn([str(stirgate), "run", "-c", str(EXAMPLE / f"{name}.yaml"),
                                 "--workers", str(args.workers)], var / f"{name}.log")  # fmt: skip
        dests = interleave([destinations(ip, args.workers) for _name, ip in NODES])
        wait_workers(dests, seconds=60)
        shipped = EXAMPLE / "dispatcher.list"  # as shipped when it names these workers, else one written
        front = Front(var / "kamailio", dests, ping_interval=2, children=4, shm_mb=256,
                      list_file=shipped if args.workers == 2 else None).start()
        front.wait_state(dests, active=True)
        print_ready(procs, dests, front, var)
        watch(front, procs)
    except Stop:
        pass
    except FileNotFoundError as exc:
        print(f"{exc}: `make sysdeps-test` installs it", file=sys.stderr)
        return 2
    finally:
        shutdown(front, procs, redis, pg)
    return 0


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A child in a session of its own: Ctrl-C reaches this script only, which stops them in order."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip


def print_ready(procs: dict[str, subprocess.Popen[bytes]], dests: list[tuple[str, int]], front: Front,
                var: Path) -> None:  # fmt: skip
    pids = ", ".join(f"{name} {p.pid}" for name, p in procs.items())
    if front.proc is not None:
        pids += f", kamailio {front.proc.pid}"
    print(f"""
cluster ready: Kamailio udp:127.0.0.3:5060 -> {len(dests)} stirgate workers ({', '.join(map(uri, dests))})
processes: {pids}; logs in {var}
a carrier and a customer to call through it (two more terminals):
  sipp -sf sipp_scenarios/uas_answer.xml -i 127.0.0.20 -p 5060 -nostdin
  sipp -sf sipp_scenarios/rec_uac_hold.xml -i 127.0.0.10 -p 5070 -s 15551230002 -r 20 -m 400 -d 500 127.0.0.3:5060
then:   kill -TERM {procs['node1'].pid}  (node1 drains: the dispatcher moves new calls to node2 first)
        kill -KILL -{procs['node2'].pid}  (node2 and its workers die: its calls lose their BYE, new calls go on)
        kamcmd -s unix:{front.ctl} dispatcher.list
        psql postgresql://stirgate@127.0.0.1:{PG_PORT}/stirgate -c "SELECT split_part(b_call_id, '-', 1) AS worker, count(*) FROM calls GROUP BY 1"
        .venv/bin/stirgate traceback -c examples/cluster/node1.yaml --orig +15551230001 --dest 15551230002 --at now
Ctrl-C stops everything.
""", flush=True)  # noqa: E501


def watch(front: Front, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Print the dispatcher's state changes and children that exit, until interrupted."""
    last: dict[str, str] = front.flags()
    gone: set[str] = set()
    while True:
        time.sleep(1.0)
        if front.proc is None or front.proc.poll() is not None:
            print("kamailio exited: stopping", flush=True)
            return
        try:
            now = front.flags()
        except (RuntimeError, subprocess.TimeoutExpired):
            continue
        for dest, flags in now.items():
            if last.get(dest) != flags:
                state = {"A": "up", "I": "down", "T": "trying", "D": "disabled"}.get(flags[:1], flags)
                print(f"{time.strftime('%H:%M:%S')} dispatcher: {dest} {state} ({flags})", flush=True)
        last = now
        for name, p in procs.items():
            if name not in gone and p.poll() is not None:
                gone.add(name)
                print(f"{time.strftime('%H:%M:%S')} {name} exited with {p.returncode}", flush=True)


def shutdown(front: Front | None, procs: dict[str, subprocess.Popen[bytes]], redis: Redis | None,
             pg: Postgres | None) -> None:  # fmt: skip
    print("stopping: kamailio, then the nodes (draining), x5u, Redis, PostgreSQL", flush=True)
    if front is not None:
        front.stop()
    nodes = [p for name, p in procs.items() if name.startswith("node")]
    for p in nodes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # the main process forwards it to its workers once
        else:
            signal_group(p.pid, signal.SIGTERM)  # workers left behind by a main process killed with SIGKILL
    try:
        for p in nodes:
            p.wait(timeout=60)
            deadline = time.monotonic() + 60
            while signal_group(p.pid, 0) and time.monotonic() < deadline:
                time.sleep(0.2)
    except (Stop, subprocess.TimeoutExpired):
        print("nodes stopped at once", flush=True)
    for p in nodes:
        signal_group(p.pid, signal.SIGKILL)
        if p.poll() is None:
            p.wait(timeout=10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the services stop cleanly whatever is pressed now
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    x5u = procs.get("x5u")
    if x5u is not None and x5u.poll() is None:
        x5u.terminate()
        x5u.wait(timeout=10)
    if redis is not None:
        redis.cleanup()
    if pg is not None:
        pg.cleanup()
    print("stopped", flush=True)


def signal_group(pgid: int, sig: int) -> bool:
    """Signal every process of a node's group (each node was started in a session of its own); whether any
    was left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
