"""Real HTTPS x5u fetches over 127.0.0.1 with the demo test CA: cache, single flight, timeouts, size cap.

Each test runs its own event loop (asyncio.run) and its own server on a random free port; the cache clock is a
fake so max-age is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from proxy.stir.fetcher import CertFetcher, FetchSettings
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.verifier import VERSTAT_FAILED, VERSTAT_PASSED, Verifier, VerifierSettings
from proxy.stir.x5u import X5uPolicy
from proxy.stir.x5u_server import REQUESTS, make_app, server_ssl_context
from tests.services import free_tcp_port
from tests.unit.stir.helpers import DEST, ORIG, ORIGID, Pki, make_pki

pytestmark = pytest.mark.integration

LOOPBACK = X5uPolicy(allow_private=True, allow_any_port=True)  # explicit test override (SSRF guard, port)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    # TLS checks the server certificate against the real clock, so this PKI is built at the real time.
    return make_pki(Path(tmp_path_factory.mktemp("x5u")), now=time.time())


def _server_ssl(pki: Pki) -> ssl.SSLContext:
    return server_ssl_context(pki.directory / "x5u-server.pem", pki.directory / "x5u-server.key")


async def _serve(pki: Pki, handler: Handler) -> tuple[web.AppRunner, int, list[str]]:
    app = web.Application()
    seen: list[str] = []

    async def counting(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app.router.add_get("/{name}", counting)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_server_ssl(pki))
    await site.start()
    port = runner.addresses[0][1]
    return runner, port, seen


def _fetcher(pki: Pki, clock: Clock | None = None, **settings: float) -> CertFetcher:
    fetch = FetchSettings(ca_file=str(pki.directory / "ca.pem"), **settings)  # type: ignore[arg-type]
    return CertFetcher(pki.trust, LOOPBACK, fetch, clock=clock or Clock())


def _pem_handler(pki: Pki, headers: dict[str, str] | None = None) -> Handler:
    body = (pki.directory / "sp.pem").read_bytes()

    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/x-pem-file", headers=headers or {})

    return handler


def test_fetch_verify_and_cache(pki: Pki) -> None:
    async def main() -> None:
        runner, port, seen = await _serve(pki, _pem_handler(pki))
        fetcher = _fetcher(pki)
        try:
            url = f"https://127.0.0.1:{port}/sp.pem"
            now = time.time()
            value = _signed(pki, url, now)
            verifier = Verifier(VerifierSettings(x5u_policy=LOOPBACK), fetcher)
            assert verifier.cached_certs([value]) is None
            for _ in range(5):
                result = await verifier.verify_call([value], ORIG, [DEST], None, now)
                assert (result.status, result.verstat, result.spc) == ("passed", VERSTAT_PASSED, "9999"), (
                    result.failures
                )
            assert seen == ["/sp.pem"]
            assert fetcher.requests == 1
            certs = verifier.cached_certs([value])
            assert certs is not None and certs[url].ok
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


def test_max_age_honoured(pki: Pki) -> None:
    async def main() -> None:
        runner, port, seen = await _serve(pki, _pem_handler(pki, {"Cache-Control": "max-age=100"}))
        clock = Clock()
        fetcher = _fetcher(pki, clock)
        url = f"https://127.0.0.1:{port}/sp.pem"
        try:
            assert (await fetcher.get(url)).ok
            clock.offset = 99
            assert (await fetcher.get(url)).ok
            assert len(seen) == 1
            clock.offset = 101
            assert fetcher.cached(url) is None
            assert (await fetcher.get(url)).ok
            assert len(seen) == 2
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


def test_cache_never_outlives_not_after(pki: Pki) -> None:
    async def main() -> None:
        runner, port, seen = await _serve(pki, _pem_handler(pki, {"Cache-Control": "max-age=99999999"}))
        clock = Clock()
        fetcher = _fetcher(pki, clock, max_ttl=1e9)
        url = f"https://127.0.0.1:{port}/sp.pem"
        try:
            entry = await fetcher.get(url)
            assert entry.ok
            clock.offset = entry.not_after - time.time() - 10
            assert fetcher.cached(url) is not None
            clock.offset = entry.not_after - time.time() + 10
            assert fetcher.cached(url) is None
            assert len(seen) == 1
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


def test_concurrent_fetches_share_one_request(pki: Pki) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        inner = _pem_handler(pki)

        async def slow(request: web.Request) -> web.StreamResponse:
            await gate.wait()  # hold the first request until every caller is waiting on it
            return await inner(request)

        runner, port, seen = await _serve(pki, slow)
        fetcher = _fetcher(pki)
        url = f"https://127.0.0.1:{port}/sp.pem"
        try:
            tasks = [asyncio.create_task(fetcher.get(url)) for _ in range(20)]
            while not seen and not all(t.done() for t in tasks):
                await asyncio.sleep(0)  # yield until the server has the request (no timing assumption)
            gate.set()
            entries = await asyncio.gather(*tasks)
            assert all(e.ok for e in entries)
            assert seen == ["/sp.pem"]
            assert fetcher.requests == 1
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


def test_hanging_server_is_436_within_timeout(pki: Pki) -> None:
    async def main() -> None:
        held: list[asyncio.StreamWriter] = []

        async def accept_and_hang(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            held.append(w)  # never answer, not even the TLS handshake

        server = await asyncio.start_server(accept_and_hang, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"https://127.0.0.1:{port}/sp.pem"
        fetcher = _fetcher(pki, connect_timeout=0.2, read_timeout=0.2, total_timeout=0.3)
        verifier = Verifier(VerifierSettings(x5u_policy=LOOPBACK), fetcher)
        signer_value = _signed(pki, url)
        try:
            # the outer bound only guards the test suite against a hang; the fetcher's own timeout must fire
            result = await asyncio.wait_for(verifier.verify_call([signer_value], ORIG, [DEST], None, time.time()), 10)
            assert (result.sip_code, result.verstat) == (436, VERSTAT_FAILED)
            assert result.failures[0].check == "x5u-unreachable"
            assert held, "the server never saw the connection"
        finally:
            await fetcher.close()
            for w in held:
                w.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def _signed(pki: Pki, url: str, now: float | None = None) -> str:
    signer = Signer(SigningProfile("t", str(pki.directory / "sp.key"), url))
    return signer.sign(ORIG, [DEST], "A", ORIGID, time.time() if now is None else now)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversize_body_refused(pki: Pki, chunked: bool) -> None:
    async def main() -> None:
        async def big(request: web.Request) -> web.StreamResponse:
            if not chunked:
                return web.Response(body=b"x" * 5000)
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(10):
                await resp.write(b"x" * 1000)
            await resp.write_eof()
            return resp

        runner, port, _seen = await _serve(pki, big)
        fetcher = _fetcher(pki, max_bytes=4096)
        try:
            entry = await fetcher.get(f"https://127.0.0.1:{port}/sp.pem")
            assert not entry.ok
            assert [(f.check, f.sip_code) for f in entry.failures] == [("x5u-too-large", 436)]
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


def test_404_is_436_and_failure_cached_briefly(pki: Pki) -> None:
    async def main() -> None:
        async def missing(_request: web.Request) -> web.StreamResponse:
            raise web.HTTPNotFound()

        runner, port, seen = await _serve(pki, missing)
        clock = Clock()
        fetcher = _fetcher(pki, clock, failure_ttl=10)
        url = f"https://127.0.0.1:{port}/sp.pem"
        try:
            entry = await fetcher.get(url)
            assert [(f.check, f.sip_code) for f in entry.failures] == [("x5u-http-status", 436)]
            await fetcher.get(url)
            assert len(seen) == 1
            clock.offset = 11
            await fetcher.get(url)
            assert len(seen) == 2
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


def test_untrusted_https_server_is_436(pki: Pki) -> None:
    async def main() -> None:
        runner, port, seen = await _serve(pki, _pem_handler(pki))
        fetcher = CertFetcher(pki.trust, LOOPBACK, FetchSettings())  # no test CA for TLS
        try:
            entry = await fetcher.get(f"https://127.0.0.1:{port}/sp.pem")
            assert [(f.check, f.sip_code) for f in entry.failures] == [("x5u-unreachable", 436)]
            assert seen == []
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


def test_ssrf_guard_blocks_loopback_without_override(pki: Pki) -> None:
    async def main() -> None:
        runner, port, seen = await _serve(pki, _pem_handler(pki))
        policy = X5uPolicy(allow_any_port=True)  # only the SSRF guard stands in the way
        fetcher = CertFetcher(pki.trust, policy, FetchSettings(ca_file=str(pki.directory / "ca.pem")))
        try:
            entry = await fetcher.get(f"https://127.0.0.1:{port}/sp.pem")
            assert [f.check for f in entry.failures] == ["x5u-ssrf"]
            assert seen == [] and fetcher.requests == 0
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


def test_x5u_server_app_serves_certs_not_keys(pki: Pki) -> None:
    async def main() -> None:
        app = make_app(pki.directory, max_age=123)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_server_ssl(pki))
        await site.start()
        port = runner.addresses[0][1]
        fetcher = _fetcher(pki)
        try:
            entry = await fetcher.get(f"https://127.0.0.1:{port}/sp.pem")
            assert entry.ok and entry.spc == "9999"
            key = await fetcher.get(f"https://127.0.0.1:{port}/sp.key")
            assert [f.check for f in key.failures] == ["x5u-http-status"]
            assert app[REQUESTS] == ["/sp.pem", "/sp.key"]
        finally:
            await fetcher.close()
            await runner.cleanup()

    asyncio.run(main())


@pytest.mark.parametrize("failure", ["refused", "closed", "untrusted"])
def test_failed_fetches_leave_no_reference_cycles(pki: Pki, failure: str) -> None:
    """stirgate runs with the automatic cyclic GC off: a failed fetch must not leave garbage that only the
    periodic full pass could free (an exception chain whose frames refer back to it). Run as stirgate runs
    (uvloop), against servers that make no garbage of their own in this process (plain accept-and-close)."""
    async def main() -> None:
        server: asyncio.Server | None = None
        # "untrusted": no test CA for TLS, so the handshake fails on our side
        ca = None if failure == "untrusted" else str(pki.directory / "ca.pem")
        settings = FetchSettings(failure_ttl=0, ca_file=ca)
        if failure == "refused":
            port = free_tcp_port()
        else:
            def close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.close()

            # "closed": the connection ends before TLS
            server = await asyncio.start_server(close, "127.0.0.1", 0,
                                                ssl=_server_ssl(pki) if failure == "untrusted" else None)
            port = server.sockets[0].getsockname()[1]
        fetcher = CertFetcher(pki.trust, LOOPBACK, settings)
        url = f"https://127.0.0.1:{port}/sp.pem"
        try:
            await fetcher.get(url)  # the session, its connector and the like, made once
            gc.collect()
            gc.disable()
            try:
                for _ in range(20):
                    entry = await fetcher.get(url)
                    assert [f.check for f in entry.failures] == ["x5u-unreachable"]
                assert gc.collect() == 0
            finally:
                gc.enable()
        finally:
            await fetcher.close()
            if server is not None:
                server.close()

    uvloop.run(main())
