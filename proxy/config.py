"""The settings layer: YAML configuration -> typed, validated objects. Every error names file, line and key.

Every component's settings type lives here, at the bottom of the layers, so that loading a config never
imports the components themselves (`proxy.yamlfile` does the located YAML reading).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from proxy.yamlfile import ConfigError, YamlDoc, compose

__all__ = [
    "ApiSettings",
    "Config",
    "ConfigError",
    "Listen",
    "RecordsSettings",
    "Route",
    "SipSettings",
    "Trunk",
    "TrunkLimits",
    "load_config",
    "load_config_text",
]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class SipSettings(_Base, frozen=True):
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: No response at all from a trunk within this many seconds: try the next trunk.
    failover_timeout: float = 2.0
    #: A B-leg ringing longer than this is cancelled and the caller gets 408.
    no_answer_timeout: float = 120.0
    max_udp_message: int = 16384
    #: Kernel receive buffer of the UDP sockets (bytes; Linux doubles it, capped by net.core.rmem_max). Larger
    #: absorbs bursts and scheduling gaps but hides overload as queueing (4 MB let an overload queue seconds).
    udp_recv_buffer: int = 2 * 1024 * 1024
    max_tcp_message: int = 65536
    max_ruri_length: int = 512
    #: With several workers each binds its own port (base + worker index) for the dialogs it owns.
    worker_port_base: int = 5100
    #: Seconds SIGTERM waits for calls in progress before stopping.
    drain_grace: float = 30.0
    #: Header names stirgate adds as `Server`/`User-Agent`; empty means none (no product fingerprint).
    server_header: str = ""
    #: Seconds between full cyclic-GC passes (automatic full passes are off: they stall the loop); 0: never.
    gc_full_interval: float = 600.0


class AttestationSettings(_Base, frozen=True):
    """What a customer trunk may claim: A for the TNs it owns, B (known customer) or C for the rest."""

    numbers: list[str] = []
    prefixes: list[str] = []
    numbers_file: str | None = None
    prefixes_file: str | None = None
    known_customer: bool = True


class TrunkSignSettings(_Base, frozen=True):
    """STI-AS for calls from this (customer) trunk that leave through a carrier trunk."""

    profile: str
    #: No attestation rules: gateway traffic, attested C.
    attestation: AttestationSettings | None = None
    origid: str | None = None
    add_date: bool = False
    #: An Identity already on the INVITE: keep it (transit) or replace it with ours.
    existing_identity: Literal["keep", "replace"] = "keep"


class TrunkVerifySettings(_Base, frozen=True):
    """STI-VS for calls from this (carrier) trunk."""

    #: off: no verification; tag: verstat towards the customer, call forwarded; reject: failures get the
    #: REFERENCE.md SIP code with an RFC 9410 Reason header.
    mode: Literal["off", "tag", "reject"] = "tag"
    #: A call with no Identity at all: tag it No-TN-Validation, or reject it 428.
    on_missing: Literal["tag", "reject"] = "tag"
    #: Some carriers pass TN-Validation-Passed only for attestation A (others get No-TN-Validation).
    passed_only_for_attest_a: bool = False
    #: Also add P-Attestation-Indicator and P-Origination-Id towards the customer.
    attestation_headers: bool = False


class OverloadSettings(_Base, frozen=True):
    """Beyond any of these, new INVITEs get 503 with Retry-After at once, statelessly; calls already taken carry
    on (in-dialog requests are never shed). Past `soft_fraction` of a bound, or on a slow loop or a filling
    receive queue, only the trunks offering more than their fair share of recent INVITEs are shed
    (docs/RELIABILITY.md, "Fair overload")."""

    max_calls_in_setup: Annotated[int, msgspec.Meta(ge=1)] = 5000
    #: The most of that pool one source address may hold, so one flooding peer cannot starve the others.
    max_setup_share_per_source: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    max_dialogs: Annotated[int, msgspec.Meta(ge=1)] = 200_000
    max_pending_fetches: Annotated[int, msgspec.Meta(ge=1)] = 1000
    #: Live SIP transactions (each lingers up to 64*T1 after its answer): the state a flood of admitted calls
    #: leaves behind, bounded by count so that memory stays flat whatever the rate.
    max_transactions: Annotated[int, msgspec.Meta(ge=1)] = 250_000
    #: Event-loop lag (measured every 100 ms) above which the process is overloaded (fair shedding).
    max_loop_lag_ms: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    #: Share of a UDP socket's receive buffer in use (sampled every 10 ms) above which the process is overloaded
    #: (fair shedding): the kernel queue fills long before the loop lags, and once full it drops every trunk alike.
    max_receive_queue: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.25
    #: Fraction of max_calls_in_setup / max_dialogs / max_transactions / max_pending_fetches from which only
    #: trunks over their fair share are shed (at the bound itself every new call is).
    soft_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8
    #: Seconds of recent INVITEs over which a trunk's share of the offered load is measured.
    fair_window: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    retry_after: Annotated[int, msgspec.Meta(ge=0)] = 5
    #: INVITEs answered 503 (or dropped) remembered so that a retransmission gets the same answer; the oldest
    #: are forgotten first (memory bounded by count, not by rate x 64*T1).
    shed_memory: Annotated[int, msgspec.Meta(ge=0)] = 65536


class ProtectionSettings(_Base, frozen=True):
    """Per-source limits, in the spirit of Kamailio's pike: a source sending more than `pike_max_requests`
    requests in `pike_window` seconds is ignored for `pike_ban` seconds. Trunk peers run at carrier rates and
    are exempt unless `pike_trunks` is set."""

    pike_window: float = 2.0
    pike_max_requests: int = 50
    pike_ban: float = 60.0
    pike_trunks: bool = False
    pike_table_size: int = 100_000
    tcp_max_connections_per_source: int = 64
    tcp_idle_timeout: float = 300.0
    #: A TCP connection holding a partial message longer than this is closed (slowloris).
    tcp_message_timeout: float = 10.0


class TrunkLimits(_Base, frozen=True):
    """A trunk's contracted call rate: new INVITEs beyond it are refused at the door, before any parsing beyond
    the source address and the method, statelessly (503 + Retry-After, or nothing with `action: drop`).
    Limits hold per worker process (SO_REUSEPORT keeps one source address on one worker)."""

    #: New calls per second (token bucket refill); 0: no rate limit.
    max_cps: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: Bucket depth: calls accepted at once after a quiet spell; 0: one second's worth (max_cps, at least 1).
    burst: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Calls from this trunk in progress at once (set up or answered); 0: no limit.
    max_calls: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: reject: 503 with Retry-After; drop: no answer at all (the peer's retransmissions are dropped too).
    action: Literal["reject", "drop"] = "reject"
    #: Retry-After of those 503s; none: overload.retry_after.
    retry_after: Annotated[int, msgspec.Meta(ge=0)] | None = None


class Trunk(_Base, frozen=True):
    name: str
    role: Literal["customer", "carrier"]
    sources: list[str] = []
    destination: str | None = None
    transport: Literal["udp", "tcp"] = "udp"
    sign: TrunkSignSettings | None = None
    verify: TrunkVerifySettings = TrunkVerifySettings()
    limits: TrunkLimits | None = None


class SigningProfileSettings(_Base, frozen=True):
    name: str
    key: str
    x5u: str


class StirVerifySettings(_Base, frozen=True):
    iat_max_age: int = 60
    iat_future_skew: int = 5
    date_iat_tolerance: int = 60
    require_date: bool = False
    multi_header: Literal["any", "all"] = "any"
    fetch_timeout: float = 2.0
    max_cert_bytes: int = 65536
    cache_ttl: float = 86400.0
    failure_ttl: float = 10.0
    cache_size: int = 10000
    #: The longest a call waits for its x5u certificate before the fetch counts as failed (436).
    wait_timeout: float = 3.0
    x5u_allowed_hosts: list[str] = []
    #: Labs and tests only: x5u on loopback/private addresses and any port.
    x5u_allow_private: bool = False
    x5u_allow_any_port: bool = False
    #: CA bundle for the x5u https server's certificate (default: the system's).
    x5u_ca_file: str | None = None
    #: Accept a TNAuthList without an SPC (the libstirshaken test vectors have one).
    lenient_tnauthlist: bool = False


class StirSettings(_Base, frozen=True):
    #: Completes national numbers (e.g. "1" for NANP 10-digit numbers); empty: no completion.
    country_code: str = ""
    #: Which header's user part is the calling TN, first match wins.
    orig_order: list[Literal["pai", "from"]] = msgspec.field(default_factory=lambda: ["pai", "from"])
    #: STI-CA roots: PEM files or folders of them.
    trust_anchors: list[str] = []
    crl_dir: str | None = None
    #: Seconds between re-reads of crl_dir (the files are refreshed by a cron job or the STI-CA's CDP fetcher).
    crl_refresh: float = 3600.0
    signing_profiles: list[SigningProfileSettings] = []
    verify: StirVerifySettings = StirVerifySettings()


class Route(_Base, frozen=True, rename={"from_": "from"}, kw_only=True):
    from_: list[str] | None = None
    prefix: str = ""
    trunks: list[str]


LogLevel = Literal["debug", "info", "warning", "error"]


class LoggingSettings(_Base, frozen=True):
    level: LogLevel = "info"
    #: Per component (`call`, `transport`, `records`, `server`), overriding `level`: e.g. {call: warning}.
    components: dict[Literal["call", "transport", "records", "server"], LogLevel] = {}


class RecordsSettings(_Base, frozen=True):
    """`records:` in the YAML. Constraints live in the types so config errors come located, like the rest."""

    #: Record calls at all; off keeps the metrics (they do not need the database).
    enabled: bool = True
    #: SQLite file (its folder is created). Several workers may share one file: WAL and a busy timeout.
    path: str = "var/records.sqlite3"
    #: Records waiting for the writer; beyond this a call's record is dropped and counted, never waited for.
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    #: Records per transaction.
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 2_000
    #: Longest a record waits in the queue before its batch is committed (seconds).
    flush_interval: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    #: Records older than this are deleted; 0 keeps them for ever.
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 90.0
    #: Seconds between pruning passes.
    prune_interval: Annotated[float, msgspec.Meta(gt=0)] = 3600.0


class ApiSettings(_Base, frozen=True):
    """`api:` in the YAML."""

    enabled: bool = True
    #: host:port; loopback by default: traceback data is personal data, put a TLS proxy in front to expose it.
    listen: Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):\d{1,5}$")] = "127.0.0.1:8080"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class _RawConfig(_Base, frozen=True):
    listen: list[str] = msgspec.field(default_factory=lambda: ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"])
    unknown_source: Literal["reject", "drop"] = "reject"
    sip: SipSettings = SipSettings()
    trunks: list[Trunk] = []
    routes: list[Route] = []
    stir: StirSettings = StirSettings()
    logging: LoggingSettings = LoggingSettings()
    records: RecordsSettings = RecordsSettings()
    api: ApiSettings = ApiSettings()
    #: Policy YAML file (docs/POLICIES.md); none: every call continues as routed.
    policies: str | None = None
    overload: OverloadSettings = OverloadSettings()
    protection: ProtectionSettings = ProtectionSettings()


@dataclass(frozen=True, slots=True)
class Listen:
    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration the rest of stirgate reads."""

    path: str
    listen: tuple[Listen, ...]
    unknown_source: str
    sip: SipSettings
    trunks: tuple[Trunk, ...]
    routes: tuple[Route, ...]
    stir: StirSettings
    logging: LoggingSettings
    records: RecordsSettings
    api: ApiSettings
    overload: OverloadSettings
    protection: ProtectionSettings
    policies: str | None = None

    def trunk(self, name: str) -> Trunk:
        for t in self.trunks:
            if t.name == name:
                return t
        raise KeyError(name)


# --- semantic checks ----------------------------------------------------------------------------------------


def _parse_listen(text: str) -> Listen:
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("udp", "tcp") or not parts[2].isdigit():
        raise ValueError("expected transport:host:port, e.g. udp:127.0.0.1:5060")
    ipaddress.ip_address(parts[1])
    port = int(parts[2])
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return Listen(parts[0], parts[1], port)


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError("expected host:port, e.g. 127.0.0.20:5060")
    if not 0 < int(port) < 65536:
        raise ValueError("port out of range")
    return host, int(port)


def _validate(raw: _RawConfig, doc: YamlDoc) -> Config:
    fail = doc.error

    listens: list[Listen] = []
    for i, text in enumerate(raw.listen):
        try:
            listens.append(_parse_listen(text))
        except ValueError as exc:
            raise fail(f"$.listen[{i}]", str(exc)) from None
    if not listens:
        raise fail("$.listen", "at least one listen address is needed")
    names: set[str] = set()
    for i, trunk in enumerate(raw.trunks):
        if trunk.name in names:
            raise fail(f"$.trunks[{i}].name", f"duplicate trunk name {trunk.name!r}")
        names.add(trunk.name)
        for j, src in enumerate(trunk.sources):
            try:
                ipaddress.ip_network(src, strict=False)
            except ValueError:
                raise fail(f"$.trunks[{i}].sources[{j}]", f"not an address or CIDR: {src!r}") from None
        if trunk.destination is not None:
            try:
                parse_hostport(trunk.destination)
            except ValueError as exc:
                raise fail(f"$.trunks[{i}].destination", str(exc)) from None
    for i, route in enumerate(raw.routes):
        for j, name in enumerate(route.from_ or []):
            if name not in names:
                raise fail(f"$.routes[{i}].from[{j}]", f"unknown trunk {name!r}")
        if not route.trunks:
            raise fail(f"$.routes[{i}].trunks", "a route needs at least one trunk")
        for j, name in enumerate(route.trunks):
            if name not in names:
                raise fail(f"$.routes[{i}].trunks[{j}]", f"unknown trunk {name!r}")
            trunk = next(t for t in raw.trunks if t.name == name)
            if trunk.destination is None:
                raise fail(f"$.routes[{i}].trunks[{j}]", f"trunk {name!r} has no destination")
        if not all(c.isdigit() or c in "*#" for c in route.prefix):
            raise fail(f"$.routes[{i}].prefix", "a prefix is digits only (no '+')")
    _validate_stir(raw, fail)
    s = raw.sip
    for key in ("t1", "t2", "t4", "failover_timeout", "no_answer_timeout"):
        if getattr(s, key) <= 0:
            raise fail(f"$.sip.{key}", "must be positive")
    return Config(
        path=doc.file,
        listen=tuple(listens),
        unknown_source=raw.unknown_source,
        sip=raw.sip,
        trunks=tuple(raw.trunks),
        routes=tuple(raw.routes),
        stir=raw.stir,
        logging=raw.logging,
        records=raw.records,
        api=raw.api,
        policies=raw.policies,
        overload=raw.overload,
        protection=raw.protection,
    )


def _validate_stir(raw: _RawConfig, fail: Callable[[str, str], ConfigError]) -> None:
    stir = raw.stir
    profiles: set[str] = set()
    for i, prof in enumerate(stir.signing_profiles):
        if prof.name in profiles:
            raise fail(f"$.stir.signing_profiles[{i}].name", f"duplicate profile {prof.name!r}")
        profiles.add(prof.name)
        if not prof.x5u.startswith("https://"):
            raise fail(f"$.stir.signing_profiles[{i}].x5u", "an x5u URL must be https://")
    for i, trunk in enumerate(raw.trunks):
        if trunk.sign is not None:
            if trunk.sign.profile not in profiles:
                raise fail(f"$.trunks[{i}].sign.profile", f"unknown signing profile {trunk.sign.profile!r}")
            if trunk.sign.origid is not None:
                try:
                    uuid.UUID(trunk.sign.origid)
                except ValueError:
                    raise fail(f"$.trunks[{i}].sign.origid", "origid must be a UUID") from None
    if stir.country_code and not stir.country_code.isdigit():
        raise fail("$.stir.country_code", "digits only, e.g. \"1\"")


def load_config_text(text: str, file: str = "<config>") -> Config:
    doc = compose(text, file)
    if not isinstance(doc.data, dict):
        raise ConfigError(file, doc.lines.get("$"), "(top level)", "expected a mapping of settings")
    try:
        raw = msgspec.convert(doc.data, _RawConfig)
    except msgspec.ValidationError as exc:
        raise doc.validation_error(exc) from None
    return _validate(raw, doc)


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), None, "(file)", exc.strerror or str(exc)) from None
    return load_config_text(text, str(p))
