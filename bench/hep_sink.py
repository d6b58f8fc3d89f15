"""A HEP capture server stand-in for the bench: receives HEPv3 over UDP or TCP and discards it, counting.

    python -m bench.hep_sink --listen 127.0.0.1:9060 --transport udp

Prints one JSON line (packets, bytes) when it gets SIGTERM. Its CPU is not the SUT's: the bench measures what
sending the copies costs stirgate, with a receiver that keeps up (a real Homer would be on another machine). On
this shared 2-core machine the sink must not take the CPU the SUT and SIPp need: it wakes every 10 ms and
drains its (8 MB) socket buffer, instead of waking for each of the ~11 datagrams per call.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import time
import types


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hep_sink")
    ap.add_argument("--listen", default="127.0.0.1:9060")
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    counts = {"packets": 0, "bytes": 0}
    running = True

    def stop(_sig: int, _frame: types.FrameType | None) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sel = selectors.DefaultSelector()
    if a.transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        sock.bind((host, int(port)))
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, "udp")
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(16)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, "accept")
    print(json.dumps({"listening": a.listen, "transport": a.transport}), flush=True)
    while running:
        time.sleep(0.01)  # batch the wake-ups (see above)
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if key.data == "accept":
                c, _ = s.accept()
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ, "tcp")
                continue
            while True:
                try:
                    data = s.recv(262144)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    if key.data == "tcp":
                        sel.unregister(s)
                        s.close()
                    break
                counts["bytes"] += len(data)
                # UDP: one packet per datagram; TCP: count packets by their "HEP3" starts (approximate).
                counts["packets"] += 1 if key.data == "udp" else data.count(b"HEP3")
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
