"""Real HTTPS on 127.0.0.1 for what STIR fetches besides x5u (issue 17): CRLs from distribution points, the STI-PA
trust list, RCD content pinned by rcdi.

Each test runs its own event loop and its own test-CA https server on a random port (the x5u tests' pattern);
cache clocks are fakes, so nextUpdate and TTLs are tested without sleeping. A server that never answers shows the
wait is bounded by the fetch timeouts (an outer wait_for only guards the suite against a hang).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web

from proxy.stir.certs import TrustStore
from proxy.stir.content_fetcher import ContentFetcher
from proxy.stir.crl import Unavailable
from proxy.stir.crl_fetcher import CrlFetcher
from proxy.stir.demo_certs import build_demo_set, issue, pem
from proxy.stir.fetcher import CertFetcher, FetchSettings
from proxy.stir.passport import Rcd
from proxy.stir.rcd import integrity
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.trust_list import TrustListFetcher
from proxy.stir.verifier import VERSTAT_FAILED, VERSTAT_PASSED, Verifier, VerifierSettings
from proxy.stir.x5u import X5uPolicy
from proxy.stir.x5u_server import server_ssl_context
from tests.integration.test_x5u_https import LOOPBACK, Clock, Handler
from tests.unit.stir.crl_helpers import make_crl, sp_with_cdp
from tests.unit.stir.helpers import DEST, ORIG, ORIGID, Pki, make_pki, utc

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("fetches")), now=time.time())


class Site:
    """An https server on 127.0.0.1 serving `files` (path -> bytes or handler); counts requests per path."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.files: dict[str, bytes | Handler] = {}
        self.seen: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return self.seen.count(path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path)
        self.headers.append(dict(request.headers))
        item = self.files.get(request.path)
        if item is None:
            raise web.HTTPNotFound()
        if callable(item):
            return await item(request)
        return web.Response(body=item)

    async def __aenter__(self) -> Site:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        ctx = server_ssl_context(self.pki.directory / "x5u-server.pem", self.pki.directory / "x5u-server.key")
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


class Hanging:
    """Accepts TCP connections and never answers (not even the TLS handshake)."""

    def __init__(self) -> None:
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}{path}"

    async def __aenter__(self) -> Hanging:
        async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.held.append(w)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for w in self.held:
            w.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _settings(pki: Pki, **over: float) -> FetchSettings:
    return FetchSettings(ca_file=str(pki.directory / "ca.pem"), **over)  # type: ignore[arg-type]


def _fetchers(pki: Pki, clock: Clock, *, cache_dir: Path | None = None, unavailable: Unavailable = "pass",
              **over: float) -> tuple[CertFetcher, CrlFetcher]:  # fmt: skip
    settings = _settings(pki, **over)
    crls = CrlFetcher(LOOPBACK, settings, cache_dir=cache_dir, unavailable=unavailable, clock=clock)
    return CertFetcher(pki.trust, LOOPBACK, settings, clock=clock, revocation=crls), crls


def _signed(key_holder: Signer, now: float) -> str:
    return key_holder.sign(ORIG, [DEST], "A", ORIGID, now)


async def _verify(fetcher: CertFetcher, value: str, now: float) -> tuple[int | None, str, str | None]:
    result = await Verifier(VerifierSettings(x5u_policy=LOOPBACK), fetcher).verify_call([value], ORIG, [DEST],
                                                                                       None, now)  # fmt: skip
    return result.sip_code, result.verstat, result.failures[0].check if result.failures else None


# ------------------------------------------------------------------------------------------------------ CRL
@pytest.mark.parametrize("revoked", [False, True], ids=["not-revoked", "revoked"])
def test_crl_from_the_distribution_point(pki: Pki, revoked: bool) -> None:
    async def main() -> None:
        async with Site(pki) as site:
            now = time.time()
            cdp = sp_with_cdp(pki.demo, [site.url("/sti.crl")], now)
            site.files["/sp.pem"] = cdp.body
            site.files["/sti.crl"] = make_crl(pki.demo.intermediate, now, revoked=[cdp.sp.cert] if revoked else [])
            fetcher, crls = _fetchers(pki, Clock())
            signer = Signer(SigningProfile("t", "", site.url("/sp.pem")), key=cdp.sp.key)
            try:
                for _ in range(3):
                    got = await _verify(fetcher, _signed(signer, now), now)
                    assert got == ((437, VERSTAT_FAILED, "cert-revoked") if revoked else (None, VERSTAT_PASSED, None))
                entry = fetcher.cached(site.url("/sp.pem")) or await fetcher.get(site.url("/sp.pem"))
                assert "crl-checked" in entry.notes or revoked
                assert site.count("/sti.crl") == 1 and crls.requests == 1
            finally:
                await fetcher.close()

    asyncio.run(main())


def test_concurrent_validations_share_one_crl_fetch(pki: Pki) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with Site(pki) as site:
            now = time.time()
            urls = [site.url(f"/sp{i}.pem") for i in range(5)]
            crl_body = make_crl(pki.demo.intermediate, now)

            async def slow_crl(_request: web.Request) -> web.StreamResponse:
                await gate.wait()
                return web.Response(body=crl_body)

            site.files["/sti.crl"] = slow_crl
            for i in range(len(urls)):  # five different SP certificates, one CRL
                site.files[f"/sp{i}.pem"] = sp_with_cdp(pki.demo, [site.url("/sti.crl")], now, spc=f"70{i}").body
            fetcher, crls = _fetchers(pki, Clock())
            try:
                tasks = [asyncio.create_task(fetcher.get(u)) for u in urls]
                while site.count("/sti.crl") == 0 and not all(t.done() for t in tasks):
                    await asyncio.sleep(0)
                gate.set()
                entries = await asyncio.gather(*tasks)
                assert all(e.ok for e in entries), [e.failures for e in entries]
                assert site.count("/sti.crl") == 1 and crls.requests == 1
            finally:
                await fetcher.close()

    asyncio.run(main())


def test_expired_crl_is_refetched_and_the_new_one_applies(pki: Pki, tmp_path: Path) -> None:
    async def main() -> None:
        async with Site(pki) as site:
            now = time.time()
            cdp = sp_with_cdp(pki.demo, [site.url("/sti.crl")], now)
            site.files["/sp.pem"] = cdp.body
            site.files["/sti.crl"] = make_crl(pki.demo.intermediate, now, next_in=100)
            clock = Clock()
            fetcher, _crls = _fetchers(pki, clock, cache_dir=tmp_path / "crl", max_ttl=1e9)
            url = site.url("/sp.pem")
            try:
                assert (await fetcher.get(url)).ok
                clock.offset = 99
                assert fetcher.cached(url) is not None  # cached no longer than the CRL is current
                clock.offset = 101
                assert fetcher.cached(url) is None
                site.files["/sti.crl"] = make_crl(pki.demo.intermediate, now + 101, revoked=[cdp.sp.cert])
                again = await fetcher.get(url)
                assert [(f.check, f.sip_code) for f in again.failures] == [("cert-revoked", 437)]
                assert site.count("/sti.crl") == 2
            finally:
                await fetcher.close()

    asyncio.run(main())


def test_crl_kept_on_disk_survives_a_restart(pki: Pki, tmp_path: Path) -> None:
    async def main() -> None:
        async with Site(pki) as site:
            now = time.time()
            cdp = sp_with_cdp(pki.demo, [site.url("/sti.crl")], now)
            site.files["/sp.pem"] = cdp.body
            site.files["/sti.crl"] = make_crl(pki.demo.intermediate, now, revoked=[cdp.sp.cert])
            first, _ = _fetchers(pki, Clock(), cache_dir=tmp_path / "crl")
            try:
                assert [f.check for f in (await first.get(site.url("/sp.pem"))).failures] == ["cert-revoked"]
            finally:
                await first.close()
            assert len(list((tmp_path / "crl").glob("*.crl"))) == 1
            del site.files["/sti.crl"]  # the distribution point is down now
            second, crls = _fetchers(pki, Clock(), cache_dir=tmp_path / "crl", unavailable="fail")
            try:
                assert [f.check for f in (await second.get(site.url("/sp.pem"))).failures] == ["cert-revoked"]
                assert crls.requests == 0 and site.count("/sti.crl") == 1
            finally:
                await second.close()

    asyncio.run(main())


def test_forged_crl_never_replaces_the_good_one(pki: Pki, tmp_path: Path) -> None:
    async def main() -> None:
        async with Site(pki) as site:
            now = time.time()
            cdp = sp_with_cdp(pki.demo, [site.url("/sti.crl")], now)
            site.files["/sti.crl"] = make_crl(pki.demo.intermediate, now, next_in=100)
            clock = Clock()
            crls = CrlFetcher(LOOPBACK, _settings(pki), cache_dir=tmp_path / "crl", clock=clock)
            issuer = [pki.demo.intermediate.cert]
            try:
                good = await crls.get(site.url("/sti.crl"), issuer)
                assert good.crl is not None
                stored = next((tmp_path / "crl").glob("*.crl")).read_bytes()
                forger = issue("stirgate demo STI-CA intermediate", None, ca=True, not_before=utc(now - 60),
                               not_after=utc(now + 86400))  # fmt: skip
                site.files["/sti.crl"] = make_crl(forger, now + 101, revoked=[cdp.sp.cert])
                clock.offset = 101
                bad = await crls.get(site.url("/sti.crl"), issuer)
                assert bad.crl is None and bad.error is not None and "signature" in bad.error
                assert next((tmp_path / "crl").glob("*.crl")).read_bytes() == stored
            finally:
                await crls.close()

    asyncio.run(main())


@pytest.mark.parametrize(("unavailable", "expected"), [
    ("pass", (None, VERSTAT_PASSED, None)),
    ("fail", (437, VERSTAT_FAILED, "crl-unavailable")),
])  # fmt: skip
def test_hanging_crl_server_costs_a_bounded_wait(pki: Pki, unavailable: Unavailable,
                                                 expected: tuple[int | None, str, str | None]) -> None:  # fmt: skip
    async def main() -> None:
        async with Site(pki) as site, Hanging() as hang:
            now = time.time()
            cdp = sp_with_cdp(pki.demo, [hang.url("/sti.crl")], now)
            site.files["/sp.pem"] = cdp.body
            fetcher, crls = _fetchers(pki, Clock(), unavailable=unavailable, connect_timeout=0.2, read_timeout=0.2,
                                      total_timeout=0.3)  # fmt: skip
            signer = Signer(SigningProfile("t", "", site.url("/sp.pem")), key=cdp.sp.key)
            try:
                got = await asyncio.wait_for(_verify(fetcher, _signed(signer, now), now), 10)
                assert got == expected
                assert hang.held, "the CRL server never saw the connection"
                entry = await fetcher.get(site.url("/sp.pem"))
                if unavailable == "pass":
                    assert "crl-unavailable" in entry.notes
                # the failure is remembered: the next validation does not wait on the dead server again
                assert crls.requests == 1
            finally:
                await fetcher.close()

    asyncio.run(main())


def test_crl_url_under_the_ssrf_guard(pki: Pki) -> None:
    """A CRL URL on loopback is refused without the explicit test override, like an x5u."""

    async def main() -> None:
        now = time.time()
        cdp = sp_with_cdp(pki.demo, ["https://127.0.0.1:9/sti.crl"], now)
        crls = CrlFetcher(X5uPolicy(allow_any_port=True), _settings(pki), unavailable="fail")
        try:
            entry, chain = pki.trust.validate_body_chain("https://cert.example.com/sp.pem", cdp.body, now)
            checked, _ = await crls.check(entry, chain, pki.trust.anchors, now)
            assert [f.check for f in checked.failures] == ["crl-unavailable"]
            assert "x5u-ssrf" not in str(checked.failures) and "not public" in checked.failures[0].detail
            assert crls.requests == 0
        finally:
            await crls.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------------ trust list
def test_trust_list_refresh_keeps_the_last_good_list(pki: Pki, tmp_path: Path) -> None:
    async def main() -> None:
        other = build_demo_set(utc(time.time()))
        good = pem(pki.demo.root.cert) + pem(other.root.cert)

        async def guarded(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization") != "Bearer s3cret":
                raise web.HTTPUnauthorized()
            return web.Response(body=site.files["/body"] if isinstance(site.files["/body"], bytes) else b"")

        async with Site(pki) as site:
            site.files["/list"] = guarded
            site.files["/body"] = good
            cache = tmp_path / "trust.pem"
            fetcher = TrustListFetcher(site.url("/list"), _settings(pki), token="s3cret", cache_path=cache,
                                       allow_private=True, allow_any_port=True)  # fmt: skip
            no_token = TrustListFetcher(site.url("/list"), _settings(pki), allow_private=True, allow_any_port=True)
            try:
                first = await fetcher.refresh()
                assert first.anchors is not None and len(first.anchors) == 2
                assert (await fetcher.refresh()).unchanged
                for bad in (b"", b"<html>down for maintenance</html>", pem(pki.demo.sp.cert)):
                    site.files["/body"] = bad
                    result = await fetcher.refresh()
                    assert result.anchors is None and result.error, bad
                    assert len(fetcher.anchors) == 2 and cache.read_bytes() == good
                refused = await no_token.refresh()
                assert refused.error is not None and "401" in refused.error and no_token.anchors == ()
                restarted = TrustListFetcher(site.url("/list"), _settings(pki), cache_path=cache)
                assert [c.subject for c in restarted.load_cached()] == [pki.demo.root.cert.subject,
                                                                       other.root.cert.subject]  # fmt: skip
                TrustStore(restarted.anchors)  # usable as anchors
            finally:
                await fetcher.close()
                await no_token.close()

    asyncio.run(main())


def test_trust_list_server_that_hangs_is_bounded(pki: Pki) -> None:
    async def main() -> None:
        async with Hanging() as hang:
            fetcher = TrustListFetcher(hang.url("/list"), _settings(pki, connect_timeout=0.2, read_timeout=0.2,
                                                                    total_timeout=0.3),
                                       allow_private=True, allow_any_port=True)  # fmt: skip
            try:
                result = await asyncio.wait_for(fetcher.refresh(), 10)
                assert result.error is not None and "fetch failed" in result.error
            finally:
                await fetcher.close()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------------ RCD content
LOGO = b"\x89PNG\r\n\x1a\nacme logo bytes"


@pytest.mark.parametrize(("served", "expected"), [
    (LOGO, (None, VERSTAT_PASSED, None)),
    (LOGO + b" changed", (438, VERSTAT_FAILED, "rcdi-mismatch")),
    (None, (436, VERSTAT_FAILED, "rcd-content-unreachable")),  # 404
])  # fmt: skip
def test_rcdi_checked_against_the_logo_served(pki: Pki, served: bytes | None,
                                              expected: tuple[int | None, str, str | None]) -> None:  # fmt: skip
    async def main() -> None:
        async with Site(pki) as site:
            site.files["/sp.pem"] = (pki.directory / "sp.pem").read_bytes()
            if served is not None:
                site.files["/logo.png"] = served
            now = time.time()
            settings = _settings(pki)
            contents = ContentFetcher(LOOPBACK, settings, max_bytes=4096)
            fetcher = CertFetcher(pki.trust, LOOPBACK, settings)
            verifier = Verifier(VerifierSettings(x5u_policy=LOOPBACK), fetcher, contents)
            signer = Signer(SigningProfile("t", str(pki.directory / "sp.key"), site.url("/sp.pem")))
            logo = site.url("/logo.png")
            value = signer.sign_rcd(ORIG, [DEST], Rcd(nam="Acme Corp", icn=logo), now, rcdi={"/icn": integrity(LOGO)})
            try:
                assert verifier.cached_certs([value]) is None  # the logo must be fetched first, like an x5u
                for _ in range(2):
                    result = await verifier.verify_call([value], ORIG, [DEST], None, now)
                    check = result.failures[0].check if result.failures else None
                    assert (result.sip_code, result.verstat, check) == expected
                    assert result.rcd_name == ("Acme Corp" if expected[0] is None else None)
                assert site.count("/logo.png") == 1
                assert verifier.cached_certs([value]) is not None
            finally:
                await fetcher.close()
                await contents.close()

    asyncio.run(main())


def test_rcd_content_limits(pki: Pki) -> None:
    """Same limits as x5u: size cap, bounded wait on a hanging server, SSRF guard."""

    async def main() -> None:
        async with Site(pki) as site, Hanging() as hang:
            site.files["/big.png"] = b"x" * 5000
            tight = _settings(pki, connect_timeout=0.2, read_timeout=0.2, total_timeout=0.3)
            contents = ContentFetcher(LOOPBACK, tight, max_bytes=4096)
            guarded = ContentFetcher(X5uPolicy(allow_any_port=True), tight)
            try:
                big = await contents.get(site.url("/big.png"))
                assert big.failure is not None and big.failure.check == "rcd-content-too-large"
                hung = await asyncio.wait_for(contents.get(hang.url("/logo.png")), 10)
                assert hung.failure is not None and (hung.failure.check, hung.failure.sip_code) == (
                    "rcd-content-unreachable", 436)
                refused = await guarded.get(site.url("/big.png"))
                assert refused.failure is not None and refused.failure.check == "rcd-content-refused"
                assert guarded.requests == 0
            finally:
                await contents.close()
                await guarded.close()

    asyncio.run(main())
