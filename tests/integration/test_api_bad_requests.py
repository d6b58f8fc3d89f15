"""What the API does with requests it cannot serve (a wrong path or method, bytes that are not HTTP), over real
sockets under uvloop as stirgate runs it: the right answer, one JSON log line instead of a traceback, and (with
the automatic cyclic GC off, as in stirgate) little or no garbage for the periodic full pass."""

from __future__ import annotations

import asyncio
import gc
import json

import pytest
import uvloop

from proxy.api import start_api
from proxy.config import ApiSettings
from proxy.logsink import sink

N = 20


pytestmark = pytest.mark.usefixtures("json_logging")


async def _ask(port: int, raw: bytes) -> bytes:
    """The head of the answer to `raw`, sent on a connection of its own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        answer = await reader.read(65536)
    finally:
        writer.close()
        await writer.wait_closed()
    return answer.split(b"\r\n\r\n", 1)[0]


def _garbage_per_request(raw: bytes) -> tuple[bytes, float]:
    """(the head of the answer, objects the cyclic GC found per request after N of them)."""
    async def main() -> tuple[bytes, float]:
        runner = await start_api(ApiSettings(listen="127.0.0.1:0"), None, None)
        try:
            port = runner.addresses[0][1]
            head = await _ask(port, raw)  # what is made once (the parser, the router's caches)
            gc.collect()
            gc.disable()
            try:
                for _ in range(N):
                    assert (await _ask(port, raw)).split(b"\r\n", 1)[0] == head.split(b"\r\n", 1)[0]
                found = gc.collect()
            finally:
                gc.enable()
        finally:
            await runner.cleanup()
        return head, found / N

    return uvloop.run(main())


def test_malformed_requests_get_400_one_log_line_and_leave_no_garbage(capfd: pytest.CaptureFixture[str]) -> None:
    head, per_request = _garbage_per_request(b"GET /healthz HTTP/1.1\r\nHost example\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ")
    assert per_request == 0  # before: 18 (aiohttp's traceback kept by its frames)
    sink.flush()
    events = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(events) == N + 1
    assert {(e["event"], e["level"], e["component"], e["peer"], e["status"]) for e in events} == {
        ("api_bad_request", "warning", "api", "127.0.0.1", 400)}
    assert "Invalid header token" in str(events[0]["error"])


def test_non_http_bytes_get_400_and_leave_no_garbage(capfd: pytest.CaptureFixture[str]) -> None:
    """Not HTTP at all (here the start of a TLS ClientHello, as from an https client on the API's http port):
    aiohttp logs it at debug, below the level here; its traceback is let go all the same."""
    head, per_request = _garbage_per_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ")
    assert per_request == 0  # before: 18
    sink.flush()
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"405"),
])
def test_wrong_paths_and_methods_leave_little_garbage(raw: bytes, status: bytes) -> None:
    head, per_request = _garbage_per_request(raw)
    assert head.split(b" ", 2)[1] == status
    if status == b"405":
        assert b"\r\nAllow: GET" in head
    # before: 30 (404) and 32 (405); what is left (~7) is aiohttp's error route, which refers to itself
    assert per_request < 10
