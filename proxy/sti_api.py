"""The ATIS-1000082 STI-AS/VS REST API for SBCs that call out: POST /stir/v1/signing and /stir/v1/verification.

A thin adapter: the signer, verifier, trunk settings and policy chains are the engine's own (read per request,
so a reload applies at once), and every request that is answered leaves a call record and feeds the metrics
like a call does. Clients are named in `sti_api.clients` and authenticate with a bearer token or a client
certificate (mutual TLS on the API's own https listener); each may sign with one profile up to an attestation,
and/or verify as calls from one carrier trunk. Errors carry `reasonCode` (the HTTP status) and `reasonText`
naming the field at fault; a verification that fails is still a 200 whose body says so (verstat, reasonCode =
the SIP code, and the decision a call from the mapped trunk would get).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import web

from proxy.config import StiApiSettings, StiClient, client_token
from proxy.engine import Engine
from proxy.http_answers import plain_http_errors
from proxy.metrics import Metrics
from proxy.records import CallRecord, WriterBase
from proxy.service import NumbersVerdict, verify_numbers
from proxy.stir.atis import (
    RequestError,
    ResponseDecision,
    SigningResponse,
    VerificationResponse,
    decode_signing,
    decode_verification,
    encode_signing,
    encode_verification,
)
from proxy.stir.certs import CertEntry
from proxy.stir.errors import SigningError
from proxy.stir.identity import split_identity_values
from proxy.stir.tn import try_canonical_tn

__all__ = ["StiApi", "server_ssl_context", "start_sti_api"]

log = structlog.get_logger("stirgate.sti_api", component="server")

SIGNING_PATH: Final = "/stir/v1/signing"
VERIFICATION_PATH: Final = "/stir/v1/verification"
_ATTEST_RANK: Final = {"A": 3, "B": 2, "C": 1}
_JSON: Final = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_ssl_context(cert: str, key: str, client_ca: str | None = None, require: bool = False) -> ssl.SSLContext:
    """https for the API; with `client_ca`, client certificates are asked for (and required with `require`)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
    return ctx


def _cert_names(peercert: Any) -> list[str]:
    """CN and DNS subjectAltNames of a verified peer certificate (ssl's getpeercert() dict)."""
    if not isinstance(peercert, dict):
        return []
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"]
    return names


class _Refused(Exception):
    def __init__(self, status: int, text: str, field: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.field = field
        self.headers = headers or {}


class StiApi:
    """The two endpoints over one engine. `add_routes` puts them on an aiohttp app."""

    def __init__(self, settings: StiApiSettings, engine: Engine, metrics: Metrics | None = None,
                 writer: WriterBase | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.writer = writer
        self.settings = settings
        #: sha256(token) -> (client, token): found by digest, then compared in constant time.
        self._by_token: dict[bytes, tuple[StiClient, str]] = {}
        self._by_tls: dict[str, StiClient] = {}
        self.reconfigure(settings)

    def reconfigure(self, settings: StiApiSettings) -> None:
        """A reloaded config's clients, tokens and limits (the listener and its TLS need a restart)."""
        by_token: dict[bytes, tuple[StiClient, str]] = {}
        by_tls: dict[str, StiClient] = {}
        for client in settings.clients:
            token = client_token(client)  # token files are read here, not per request
            if token:
                by_token[hashlib.sha256(token.encode()).digest()] = (client, token)
            if client.tls_name:
                by_tls[client.tls_name.lower()] = client
        self.settings, self._by_token, self._by_tls = settings, by_token, by_tls

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(SIGNING_PATH, self._wrap("signing", self.signing))
        app.router.add_post(VERIFICATION_PATH, self._wrap("verification", self.verification))

    # --- shared request handling --------------------------------------------------------------------------------
    def _wrap(self, op: str, handler: Callable[[web.Request, StiClient, bytes, str], Awaitable[tuple[int, bytes]]],
              ) -> Handler:
        def error_body(code: int, text: str, field: str) -> bytes:
            if op == "signing":
                return encode_signing(SigningResponse(reasonCode=code, reasonText=text, field=field or None))
            return encode_verification(VerificationResponse(reasonCode=code, reasonText=text, field=field or None))

        async def handle(request: web.Request) -> web.StreamResponse:
            request_id = _request_id(request)
            headers = {"X-RequestID": request_id}
            try:
                client = self._client(request)
                body = await self._body(request)
                status, data = await handler(request, client, body, request_id)
            except _Refused as exc:
                status, data = exc.status, error_body(exc.status, exc.text, exc.field)
                headers.update(exc.headers)
            except RequestError as exc:
                status, data = exc.status, error_body(exc.status, exc.text, exc.field)
            except Exception:
                log.exception("sti_api_error", op=op, request_id=request_id)
                status, data = 500, error_body(500, "internal error", "")
            if self.metrics is not None:
                self.metrics.observe_api(op, status)
            return web.Response(body=data, status=status, content_type=_JSON, headers=headers)

        return handle

    def _client(self, request: web.Request) -> StiClient:
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, token = auth.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise _Refused(401, "Authorization: expected a Bearer token", "",
                               {"WWW-Authenticate": 'Bearer error="invalid_request"'})
            found = self._by_token.get(hashlib.sha256(token.encode()).digest())
            if found is None or not hmac.compare_digest(found[1].encode(), token.encode()):
                raise _Refused(401, "unknown bearer token", "", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return found[0]
        transport = request.transport
        if transport is not None and self._by_tls:
            for name in _cert_names(transport.get_extra_info("peercert")):
                client = self._by_tls.get(name.lower())
                if client is not None:
                    return client
        raise _Refused(401, "authentication required (Authorization: Bearer, or a client certificate)", "",
                       {"WWW-Authenticate": "Bearer"})

    async def _body(self, request: web.Request) -> bytes:
        if request.content_type != _JSON:
            raise _Refused(415, f"Content-Type must be {_JSON} (got {request.content_type or 'none'})")
        limit = self.settings.max_body
        if request.content_length is not None and request.content_length > limit:
            raise _Refused(413, f"body larger than {limit} bytes")
        body = bytearray()
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                break
            body += chunk
            if len(body) > limit:
                raise _Refused(413, f"body larger than {limit} bytes")
        if not body:
            raise _Refused(400, "empty body")
        return bytes(body)

    # --- POST /stir/v1/signing -----------------------------------------------------------------------------------
    async def signing(self, request: web.Request, client: StiClient, body: bytes, request_id: str) -> tuple[int, bytes]:
        if client.sign is None:
            raise _Refused(403, f"client {client.name!r} may not sign")
        req = decode_signing(body)
        if _ATTEST_RANK[req.attest] > _ATTEST_RANK[client.sign.max_attest]:
            raise _Refused(403, f"client {client.name!r} may attest {client.sign.max_attest} at most",
                           "signingRequest.attest")
        now = time.time()
        if abs(req.iat - now) > self.settings.iat_tolerance:
            raise RequestError(400, f"signingRequest.iat: {req.iat} is more than {self.settings.iat_tolerance} s "
                                    f"from now ({int(now)})", "signingRequest.iat")
        auth = self.engine.auth
        try:
            identity = auth.signers[client.sign.profile].sign(req.orig.tn, req.dest.tn, req.attest, req.origid,
                                                              req.iat)
        except SigningError as exc:
            raise RequestError(400, f"signingRequest: {exc}") from None
        policy = auth.tn_policy
        self._record(request, client, request_id, now, orig=req.orig.tn, dest=req.dest.tn[0], status=200,
                     end_reason="api:signed", signed=True, attest=req.attest, origid=req.origid,
                     orig_tn=try_canonical_tn(req.orig.tn, policy), dest_tn=try_canonical_tn(req.dest.tn[0], policy))
        return 200, encode_signing(SigningResponse(identity=identity))

    # --- POST /stir/v1/verification ------------------------------------------------------------------------------
    async def verification(self, request: web.Request, client: StiClient, body: bytes,
                           request_id: str) -> tuple[int, bytes]:
        if client.verify is None:
            raise _Refused(403, f"client {client.name!r} may not verify")
        req = decode_verification(body)
        engine = self.engine
        auth = engine.auth
        verifier = auth.verifier
        if verifier is None:
            raise _Refused(503, "verification is not configured (stir.trust_anchors)")
        try:
            trunk = engine.config.trunk(client.verify.trunk)
        except KeyError:
            raise _Refused(503, f"trunk {client.verify.trunk!r} is no longer configured") from None
        values = split_identity_values(req.identity)
        fetched: dict[str, CertEntry] | None = auth.cached_certs(values)
        waited = fetched is None
        if fetched is None:
            started = time.perf_counter()
            try:
                fetched = await asyncio.wait_for(verifier.prepare(values), timeout=auth.wait_timeout)
                if self.metrics is not None:
                    self.metrics.observe_x5u_fetch(time.perf_counter() - started)
            except TimeoutError:
                fetched = {}  # then 436, as for a call
        now = time.time()
        peer = _peer(request)
        verdict = verify_numbers(auth, engine.policies, trunk, call_id=request_id, source=peer, values=values,
                                 orig=req.from_.tn, dests=req.to.tn, time=req.time, wall_now=now, fetched=fetched,
                                 state=engine.state, on_error=engine.config.state.on_error,
                                 writes=engine.state_writes)
        response = _verification_response(verdict)
        result = verdict.result
        policy = auth.tn_policy
        code = verdict.reject[0] if verdict.reject is not None else 200
        self._record(request, client, request_id, now, orig=req.from_.tn, dest=req.to.tn[0], status=code,
                     end_reason=f"rejected:{code}" if verdict.reject is not None else "api:verified",
                     orig_tn=try_canonical_tn(req.from_.tn, policy), dest_tn=try_canonical_tn(req.to.tn[0], policy),
                     verification=result.status, verstat=verdict.verstat, attest=result.attest,
                     origid=result.origid, spc=result.spc, cert_subject=result.cert_subject,
                     failures=tuple(f.check for f in result.failures), x5u_fetched=waited,
                     policy_decisions=verdict.steps, identity_present=True)
        return 200, encode_verification(response)

    # --- records ---------------------------------------------------------------------------------------------------
    def _record(self, request: web.Request, client: StiClient, request_id: str, now: float, *, orig: str, dest: str,
                orig_tn: str | None, dest_tn: str | None, status: int, end_reason: str, **fields: Any) -> None:
        peer = _peer(request)
        rec = CallRecord(
            a_call_id=request_id, ingress=client.name, source_ip=peer[0], source_port=peer[1],
            transport="https" if request.secure else "http", orig_signaled=orig, orig=orig_tn, dest_signaled=dest,
            dest=dest_tn, status=status, invite_at=now, ended_at=now, end_reason=end_reason, **fields,
        )
        if self.metrics is not None:
            self.metrics.observe_call(rec)
        if self.writer is not None:
            self.writer.put(rec)


def _verification_response(v: NumbersVerdict) -> VerificationResponse:
    r = v.result
    decision = _decision(v)
    if r.passed:
        return VerificationResponse(verstat=v.verstat, attest=r.attest, origid=r.origid, spc=r.spc, decision=decision)
    return VerificationResponse(verstat=v.verstat, reasonCode=r.sip_code, reasonText=r.reason,
                                attest=r.attest, origid=r.origid, decision=decision)


def _decision(v: NumbersVerdict) -> ResponseDecision:
    policies = [list(step) for step in v.steps] or None
    if v.reject is not None:
        hdrs = dict(v.reject_headers)
        retry = hdrs.get("Retry-After")
        return ResponseDecision(action="reject", code=v.reject[0], reason=v.reject[1],
                                reasonHeader=hdrs.get("Reason"), callInfo=hdrs.get("Call-Info"),
                                retryAfter=int(retry) if retry and retry.isdigit() else None, policies=policies)
    d = v.decision
    action = d.outcome if d is not None else ("tag" if v.headers else "continue")
    return ResponseDecision(
        action=action,
        displayPrefix=d.display_prefix if d is not None else None,
        trunks=list(d.trunks) if d is not None and d.trunks else None,
        headers=[list(h) for h in v.headers] or None,
        policies=policies,
    )


def _request_id(request: web.Request) -> str:
    """The client's X-RequestID (echoed) when it is a sane token, else a new UUID."""
    given = request.headers.get("X-RequestID")
    if given and len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return str(uuid.uuid4())


def _peer(request: web.Request) -> tuple[str, int]:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return request.remote or "", 0


async def start_sti_api(api: StiApi, *, reuse_port: bool = False) -> web.AppRunner:
    """The API on its own listener (`sti_api.listen`, https with `sti_api.tls`); stop it with `runner.cleanup()`."""
    settings = api.settings
    where = settings.host_port
    assert where is not None
    app = web.Application(middlewares=[plain_http_errors])
    api.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tls = settings.tls
    ctx = server_ssl_context(tls.cert, tls.key, tls.client_ca, tls.require_client_cert) if tls is not None else None
    site = web.TCPSite(runner, where[0], where[1], ssl_context=ctx, reuse_address=True, reuse_port=reuse_port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
