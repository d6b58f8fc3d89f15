"""The settings layer: YAML configuration -> typed, validated objects. Every error names file, line and key.

Every component's settings type lives here, at the bottom of the layers, so that loading a config never
imports the components themselves (`proxy.yamlfile` does the located YAML reading).
"""

from __future__ import annotations

import ipaddress
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from proxy.yamlfile import ConfigError, YamlDoc, compose

__all__ = [
    "ApiSettings",
    "Config",
    "ConfigError",
    "HepSettings",
    "Listen",
    "RecordsSettings",
    "Route",
    "SipSettings",
    "StateSettings",
    "StiApiSettings",
    "StiClient",
    "Trunk",
    "TrunkLimits",
    "TrunkTlsSettings",
    "client_token",
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
    #: Seconds between SIGTERM and refusing new INVITEs, during which OPTIONS probes are answered 503 and calls
    #: still taken: a load balancer probing every few seconds (Kamailio's dispatcher) moves new calls to other
    #: nodes before this one refuses any. Set it above the balancer's probe interval; 0: refuse at once.
    drain_probe_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    #: Header names stirgate adds as `Server`/`User-Agent`; empty means none (no product fingerprint).
    server_header: str = ""
    #: Seconds before the first full cyclic-GC pass (automatic ones are off: they stall the loop), and between
    #: passes while they find garbage; 0: never.
    gc_full_interval: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    #: A pass that finds (almost) no garbage doubles the wait for the next, up to this many seconds: a pass
    #: stalls the loop while it walks every object (~20 ms per 1,000 established dialogs), and a process that
    #: makes no garbage should run it rarely.
    gc_full_max_interval: Annotated[float, msgspec.Meta(ge=0)] = 21600.0
    #: RFC 5626 3.5.1 keep-alive on the TCP/TLS connections stirgate opens: a CRLFCRLF ping after this many quiet
    #: seconds; no answer (any byte) within `keepalive_timeout` closes the connection, if its peer answered a
    #: ping before (pongs are optional: a peer that never sends one is left to the kernel's TCP keepalive, set
    #: to the same interval). 0: no pings, no TCP keepalive.
    keepalive_interval: float = 30.0
    keepalive_timeout: float = 10.0


class AttestationSettings(_Base, frozen=True):
    """What a customer trunk may claim: A for the TNs it owns, B (known customer) or C for the rest."""

    numbers: list[str] = []
    prefixes: list[str] = []
    numbers_file: str | None = None
    prefixes_file: str | None = None
    known_customer: bool = True


class RcdSettings(_Base, frozen=True):
    """Rich Call Data (RFC 9795) signed for the customer's numbers: `numbers`/`prefixes`/`numbers_file` select
    the calling TNs (none: every call of the trunk)."""

    #: The caller's name as the called party should see it.
    nam: str
    #: https URL of an icon (logo); `icn_file`: the same bytes locally, to put their digest in `rcdi`.
    icn: str | None = None
    icn_file: str | None = None
    #: An inline jCard (RFC 7095 array), or the https URL of one (`jcl`, with `jcl_file` for its digest).
    jcd: list[Any] | None = None
    jcl: str | None = None
    jcl_file: str | None = None
    apn: str | None = None
    #: Call reason (the `crn` claim).
    crn: str | None = None
    numbers: list[str] = []
    prefixes: list[str] = []
    numbers_file: str | None = None


class TrunkSignSettings(_Base, frozen=True):
    """STI-AS for calls from this (customer) trunk that leave through a carrier trunk."""

    profile: str
    #: No attestation rules: gateway traffic, attested C.
    attestation: AttestationSettings | None = None
    origid: str | None = None
    add_date: bool = False
    #: An Identity already on the INVITE: keep it (transit) or replace it with ours.
    existing_identity: Literal["keep", "replace"] = "keep"
    #: RCD for this customer (one block) or per number list (several; the first matching the caller wins).
    rcd: RcdSettings | list[RcdSettings] | None = None
    #: Put the rcd claims in the shaken PASSporT instead of a separate ppt=rcd one.
    rcd_in_shaken: bool = False
    #: RFC 8946: a call arriving signed and forwarded gets a div PASSporT after its own: `owned` when Diversion
    #: or History-Info shows a redirect by a number the customer owns (its attestation numbers/prefixes),
    #: `always` for a trunk that forwards (diverting number from Diversion/History-Info, else To), `off`.
    div: Literal["off", "owned", "always"] = "owned"


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
    #: Show the verified RCD caller name (RFC 9795 `nam`) as the display name towards the customer.
    rcd_display_name: bool = False


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
    #: (0.25 shed a lone trunk at 2,500 calls/s whenever the worker was descheduled for ~60 ms on a shared machine.)
    max_receive_queue: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
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
    #: A TLS handshake (either direction) not done in this many seconds is cut; other calls never wait on it.
    tls_handshake_timeout: float = 5.0


TlsVersion = Literal["TLSv1.2", "TLSv1.3"]
_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TrunkTlsSettings(_Base, frozen=True):
    """`tls:` of a trunk with `transport: tls`: how stirgate proves itself to this peer and checks it.

    `cert_file`/`key_file` are stirgate's certificate towards this trunk: the server certificate when the peer
    connects in, the client certificate (mutual TLS) when stirgate connects out. `ca_file` is the only trust
    for this peer: its certificate must chain to it, in both directions. `server_name` is the name the peer's
    certificate must carry (SNI and hostname check when stirgate connects; checked on the client certificate
    when the peer connects in); default: the destination host, and no name check on inbound connections.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: Off only in labs: the peer's certificate is then not checked at all (and a client needs none).
    verify_peer: bool = True
    server_name: str | None = None
    min_version: TlsVersion = "TLSv1.2"
    #: OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults); empty: OpenSSL's defaults.
    ciphers: str = ""

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        server = purpose is ssl.Purpose.CLIENT_AUTH
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = _TLS_VERSIONS[self.min_version]
        if self.ciphers:
            ctx.set_ciphers(self.ciphers)
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.verify_peer:
            if self.ca_file is not None:
                ctx.load_verify_locations(cafile=self.ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """For connections stirgate opens to this trunk: the peer's certificate and name are checked."""
        return self._context(ssl.Purpose.SERVER_AUTH)

    def server_context(self) -> ssl.SSLContext:
        """For connections this trunk opens to stirgate: with `verify_peer`, a client certificate chaining to
        `ca_file` is required (mutual TLS); a client without one fails the handshake."""
        return self._context(ssl.Purpose.CLIENT_AUTH)


class HepSettings(_Base, frozen=True):
    """`hep:`: a HEPv3 copy of every SIP message stirgate receives or sends, to Homer or sngrep."""

    #: host:port of the capture server (heplify-server, Homer, sngrep -L udp:HOST:PORT).
    address: Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):\d{1,5}$")]
    capture_id: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] = 2001
    #: Sent in the auth-key chunk when set (the capture server's password).
    auth_key: str | None = None
    transport: Literal["udp", "tcp"] = "udp"
    #: TCP only: bytes waiting for the capture server beyond which copies are dropped (and counted).
    max_queue_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 4 * 1024 * 1024

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


#: inline: stirgate is the B2BUA in the call path. redirect: an INVITE is never relayed; stirgate answers it
#: with 302 (a Contact carrying the Identity, or the verstat-tagged identity) or with the reject code.
Mode = Literal["inline", "redirect"]


class TrunkLimits(_Base, frozen=True):
    """A trunk's contracted call rate: new INVITEs beyond it are refused at the door, before any parsing beyond
    the source address and the method, statelessly (503 + Retry-After, or nothing with `action: drop`).
    The processes that take the trunk's calls hold it together (`state.trunk_limits: shared`, the default: the
    workers of a node, and with Redis state every node; `proxy.limit_shares`)."""

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
    transport: Literal["udp", "tcp", "tls"] = "udp"
    #: Required with `transport: tls`.
    tls: TrunkTlsSettings | None = None
    sign: TrunkSignSettings | None = None
    verify: TrunkVerifySettings = TrunkVerifySettings()
    #: redirect: INVITEs from this trunk are answered 302/reject, never relayed (docs/STI_SERVICE.md).
    mode: Mode = "inline"
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
    #: RCD (RFC 9795): content pinned by `rcdi` (icons, jCards) is fetched under the x5u rules, up to this size,
    #: and its digest kept this long.
    rcd_max_bytes: int = 262144
    rcd_content_ttl: float = 3600.0


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
    #: ATIS-1000080: fetch the CRL each certificate's CRL Distribution Point names (cached until nextUpdate).
    crl_fetch: bool = True
    #: Where fetched CRLs are kept across restarts.
    crl_cache_dir: str = "var/crl-cache"
    #: A certificate whose CRL cannot be obtained: pass (with a note on the verdict) or fail 437.
    crl_unavailable: Literal["pass", "fail"] = "pass"
    crl_max_bytes: int = 1048576
    #: Certificates that sign indirect CRLs (the STI-PA's CRL signer named by cRLIssuer), PEM files.
    crl_signers: list[str] = []
    #: The STI-PA's list of approved STI-CA roots (https), refreshed every `trust_list_refresh` seconds and on
    #: SIGHUP; the token (or the file holding it) is sent as `Authorization: Bearer`. Anchors are
    #: `trust_anchors` plus the list; the last good list is kept in `trust_list_cache`.
    trust_list_url: str | None = None
    trust_list_token: str | None = None
    trust_list_token_file: str | None = None
    trust_list_refresh: float = 3600.0
    trust_list_cache: str = "var/sti-trust-list.pem"
    signing_profiles: list[SigningProfileSettings] = []
    verify: StirVerifySettings = StirVerifySettings()


class Route(_Base, frozen=True, rename={"from_": "from"}, kw_only=True):
    from_: list[str] | None = None
    prefix: str = ""
    trunks: list[str]


LogLevel = Literal["debug", "info", "warning", "error"]


class StateSettings(_Base, frozen=True):
    """`state:` where policies keep what they remember across calls (replay, velocity, campaign signals).

    memory: in this process (one node; workers of one host each keep their own). redis: one Redis shared by
    every worker and node, so a PASSporT replayed through another node is caught and a caller's velocity is
    not split between nodes."""

    backend: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    #: The longest a call waits for its state; then `on_error` decides.
    timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    #: open: the stateful policies count as `continue` (the miss is counted); closed: their action applies.
    on_error: Literal["open", "closed"] = "open"
    #: Prefix of every Redis key (several deployments may share one Redis).
    key_prefix: str = "stirgate:"
    #: Memory backend: entries kept per table (least recently active dropped first).
    max_keys: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000
    #: Redis backend: after a failure, calls skip Redis (and count a miss) for this long before it is tried again.
    retry_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    #: Redis backend: when calls come faster than one per window, a call's state request waits up to this long
    #: for others to share its round trip (one write, one wake-up for the reply); a call after a quiet spell goes
    #: at once. 0: each loop iteration's requests go together, no waiting. Less than `timeout_ms`.
    batch_window_ms: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    #: shared: the processes that take a trunk's calls hold its `limits` together, each its share of the trunk's
    #: offered INVITEs (`proxy.limit_shares`): with redis every worker of every node, with memory the workers of
    #: this node. per_worker: each process holds the whole contract.
    trunk_limits: Literal["shared", "per_worker"] = "shared"


class LoggingSettings(_Base, frozen=True):
    level: LogLevel = "info"
    #: Per component, overriding `level`: e.g. {call: warning} (docs/RECORDS.md, "Logs": `policies` and `api`
    #: are the standard library's records of the policy chain and of aiohttp; `redis` and `psycopg` those
    #: libraries').
    components: dict[Literal["call", "transport", "records", "server", "policies", "api", "redis", "psycopg"],
                     LogLevel] = {}


class RecordsSettings(_Base, frozen=True):
    """`records:` in the YAML. Constraints live in the types so config errors come located, like the rest."""

    #: Record calls at all; off keeps the metrics (they do not need the database).
    enabled: bool = True
    #: sqlite: a local file per host (the embedded default); postgresql: one database every node writes and every
    #: traceback reads (docs/RECORDS.md).
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    #: SQLite file (its folder is created). Several workers may share one file: WAL and a busy timeout.
    path: str = "var/records.sqlite3"
    #: PostgreSQL: a libpq connection string or URI (postgresql://user@host:5432/db); a password is better kept
    #: in PGPASSWORD or ~/.pgpass than here.
    dsn: str = ""
    #: Records waiting for the writer; beyond this a call's record is dropped and counted, never waited for.
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    #: Records per transaction.
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 2_000
    #: Longest a record waits in the queue before its batch is committed (seconds).
    flush_interval: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    #: Records older than this are deleted (PostgreSQL: whole day partitions dropped); 0 keeps them for ever.
    retention_days: Annotated[float, msgspec.Meta(ge=0)] = 90.0
    #: Seconds between pruning passes (PostgreSQL: also creating the partitions ahead).
    prune_interval: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    #: PostgreSQL: day partitions created ahead of today (a missing one is also created when a record needs it).
    partitions_ahead: Annotated[int, msgspec.Meta(ge=1, le=60)] = 3
    #: PostgreSQL: seconds a connection attempt may take.
    connect_timeout: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    #: PostgreSQL: seconds between reconnection attempts while the database is unreachable.
    retry_interval: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    #: PostgreSQL: while the database is unreachable records go to this local append-only file, and are replayed
    #: in order when it returns (worker i > 0 appends ".i").
    spill_path: str = "var/records.spill"
    #: Largest the spill file may grow (bytes); beyond it records are dropped and counted. 0: no spill.
    spill_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1 << 30
    #: fsync the spill after each batch appended: a power cut loses none of it (costs a disk flush per batch).
    spill_fsync: bool = True


class ApiSettings(_Base, frozen=True):
    """`api:` in the YAML."""

    enabled: bool = True
    #: host:port; loopback by default: traceback data is personal data, put a TLS proxy in front to expose it.
    listen: Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):\d{1,5}$")] = "127.0.0.1:8080"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class StiClientSign(_Base, frozen=True):
    """What one API client may sign."""

    profile: str
    #: The highest attestation the client may ask for; a request above it is refused with 403.
    max_attest: Literal["A", "B", "C"] = "A"


class StiClientVerify(_Base, frozen=True):
    """Whose rules one API client's verification requests follow."""

    #: A carrier trunk: its `verify:` settings and its policy chain decide, as for a call from that trunk.
    trunk: str


class StiClient(_Base, frozen=True):
    """One SBC (or other system) allowed to call the ATIS-1000082 API."""

    name: str
    #: Bearer token (at least 16 characters), given here or read from `token_file` (first line).
    token: str | None = None
    token_file: str | None = None
    #: Mutual TLS: the CN or a DNS subjectAltName of the client's certificate (needs `sti_api.tls.client_ca`).
    tls_name: str | None = None
    sign: StiClientSign | None = None
    verify: StiClientVerify | None = None


class StiTlsSettings(_Base, frozen=True):
    cert: str
    key: str
    #: CA bundle for client certificates; with it, clients may authenticate by certificate (`tls_name`).
    client_ca: str | None = None
    #: Refuse the TLS handshake without a client certificate signed by `client_ca`.
    require_client_cert: bool = False


class StiApiSettings(_Base, frozen=True):
    """`sti_api:` in the YAML: the ATIS-1000082 STI-AS/VS REST API (POST /stir/v1/signing, /stir/v1/verification)."""

    #: host:port of a listener of its own (shared by the workers); none: served on `api.listen`.
    listen: Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):\d{1,5}$")] | None = None
    #: https on the own listener (and mutual TLS with `client_ca`).
    tls: StiTlsSettings | None = None
    #: Largest request body accepted (bytes); larger ones get 413.
    max_body: Annotated[int, msgspec.Meta(ge=256, le=1_048_576)] = 8192
    #: A signing request's iat may be this many seconds from the service's clock (else 400).
    iat_tolerance: Annotated[int, msgspec.Meta(ge=1)] = 60
    clients: list[StiClient] = []

    @property
    def enabled(self) -> bool:
        return bool(self.clients)

    @property
    def host_port(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def client_token(client: StiClient) -> str | None:
    """The client's bearer token: `token`, or the first line of `token_file`."""
    if client.token is not None:
        return client.token
    if client.token_file is not None:
        lines = Path(client.token_file).read_text().splitlines()
        return lines[0].strip() if lines else ""
    return None


class ListenSpec(_Base, frozen=True):
    """A listen entry in its long form: `{address: udp:HOST:PORT, mode: redirect}`."""

    address: str
    mode: Mode = "inline"


class _RawConfig(_Base, frozen=True):
    listen: list[str | ListenSpec] = msgspec.field(
        default_factory=lambda: ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"])
    unknown_source: Literal["reject", "drop"] = "reject"
    sip: SipSettings = SipSettings()
    trunks: list[Trunk] = []
    routes: list[Route] = []
    stir: StirSettings = StirSettings()
    logging: LoggingSettings = LoggingSettings()
    records: RecordsSettings = RecordsSettings()
    api: ApiSettings = ApiSettings()
    state: StateSettings = StateSettings()
    #: Policy YAML file (docs/POLICIES.md); none: every call continues as routed.
    policies: str | None = None
    overload: OverloadSettings = OverloadSettings()
    protection: ProtectionSettings = ProtectionSettings()
    sti_api: StiApiSettings = StiApiSettings()
    #: HEPv3 capture (Homer, sngrep); none: off.
    hep: HepSettings | None = None


@dataclass(frozen=True, slots=True)
class Listen:
    transport: str
    host: str
    port: int
    #: redirect: every INVITE arriving here is answered 302/reject (whatever its trunk's own mode).
    mode: str = "inline"


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
    state: StateSettings
    sti_api: StiApiSettings
    policies: str | None = None
    hep: HepSettings | None = None

    def trunk(self, name: str) -> Trunk:
        for t in self.trunks:
            if t.name == name:
                return t
        raise KeyError(name)


# --- semantic checks ----------------------------------------------------------------------------------------


def _parse_listen(text: str, mode: str = "inline") -> Listen:
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("udp", "tcp", "tls") or not parts[2].isdigit():
        raise ValueError("expected transport:host:port (udp, tcp or tls), e.g. udp:127.0.0.1:5060")
    ipaddress.ip_address(parts[1])
    port = int(parts[2])
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return Listen(parts[0], parts[1], port, mode)


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
    for i, entry in enumerate(raw.listen):
        text, mode, where = (entry, "inline", f"$.listen[{i}]") if isinstance(entry, str) else (
            entry.address, entry.mode, f"$.listen[{i}].address")
        try:
            listens.append(_parse_listen(text, mode))
        except ValueError as exc:
            raise fail(where, str(exc)) from None
    if not listens:
        raise fail("$.listen", "at least one listen address is needed")
    if all(x.mode == "redirect" for x in listens):
        raise fail("$.listen", "at least one listen address must be inline (the B-legs and dialogs use it)")
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
    if not raw.state.url.startswith(("redis://", "rediss://", "unix://")):
        raise fail("$.state.url", "a Redis URL: redis://host:port/db, rediss://... or unix:///path")
    if raw.state.batch_window_ms >= raw.state.timeout_ms:
        raise fail("$.state.batch_window_ms", f"must be less than timeout_ms ({raw.state.timeout_ms:g}); "
                   f"batch_window_ms is {raw.state.batch_window_ms:g} (default 5): lower it as well")
    if raw.records.enabled and raw.records.backend == "postgresql" and not raw.records.dsn.strip():
        raise fail("$.records.dsn", "backend postgresql needs a dsn, e.g. postgresql://stirgate@db.example/stirgate")
    _validate_sti_api(raw, fail)
    _validate_tls(raw, listens, fail)
    if raw.hep is not None:
        host, port = raw.hep.host_port
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise fail("$.hep.address", "an IP address and port, e.g. 127.0.0.1:9060 (no DNS here)") from None
        if not 0 < port < 65536:
            raise fail("$.hep.address", "port out of range")
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
        state=raw.state,
        sti_api=raw.sti_api,
        hep=raw.hep,
    )


def _validate_tls(raw: _RawConfig, listens: list[Listen], fail: Callable[[str, str], ConfigError]) -> None:
    """TLS trunks: settings present, files readable, contexts buildable (errors located at the key)."""
    tls_listen = any(x.transport == "tls" for x in listens)
    for i, trunk in enumerate(raw.trunks):
        where = f"$.trunks[{i}]"
        tls = trunk.tls
        if trunk.transport != "tls":
            if tls is not None:
                raise fail(f"{where}.tls", "tls settings need `transport: tls`")
            continue
        if tls is None:
            raise fail(f"{where}.transport", "a TLS trunk needs a `tls:` block (ca_file, cert_file, key_file)")
        if tls.verify_peer and tls.ca_file is None:
            raise fail(f"{where}.tls.ca_file", "needed to check the peer's certificate (or verify_peer: false)")
        if (tls.cert_file is None) != (tls.key_file is None):
            raise fail(f"{where}.tls.cert_file", "cert_file and key_file go together")
        if tls_listen and trunk.sources and tls.cert_file is None:
            raise fail(f"{where}.tls.cert_file", "needed to accept TLS connections from this trunk's sources")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path is not None and not Path(path).is_file():
                raise fail(f"{where}.tls.{key}", f"no such file: {path}")
        for build in (tls.client_context, tls.server_context):
            try:
                build()
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise fail(f"{where}.tls", f"cannot use these TLS settings: {exc}") from None


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
            rcd = trunk.sign.rcd
            rules = [rcd] if isinstance(rcd, RcdSettings) else rcd or []
            for j, rule in enumerate(rules):
                at = f"$.trunks[{i}].sign.rcd" + (f"[{j}]" if isinstance(rcd, list) else "")
                _validate_rcd(rule, at, fail)
    if stir.country_code and not stir.country_code.isdigit():
        raise fail("$.stir.country_code", "digits only, e.g. \"1\"")
    if stir.trust_list_url is not None and not stir.trust_list_url.startswith("https://"):
        raise fail("$.stir.trust_list_url", "the trust list URL must be https://")
    if stir.trust_list_token_file is not None and not Path(stir.trust_list_token_file).is_file():
        raise fail("$.stir.trust_list_token_file", f"no such file: {stir.trust_list_token_file}")
    for i, path in enumerate(stir.crl_signers):
        if not Path(path).is_file():
            raise fail(f"$.stir.crl_signers[{i}]", f"no such file: {path}")
    for key in ("trust_list_refresh", "crl_max_bytes"):
        if getattr(stir, key) <= 0:
            raise fail(f"$.stir.{key}", "must be positive")


def _validate_rcd(rule: RcdSettings, at: str, fail: Callable[[str, str], ConfigError]) -> None:
    if not rule.nam.strip():
        raise fail(f"{at}.nam", "the caller name is empty")
    for key in ("icn", "jcl"):
        url = getattr(rule, key)
        if url is not None and not url.startswith("https://"):
            raise fail(f"{at}.{key}", "must be an https:// URL")
    if rule.jcd is not None and rule.jcl is not None:
        raise fail(f"{at}.jcl", "jcd and jcl are exclusive (RFC 9795)")
    for key, url_key in (("icn_file", "icn"), ("jcl_file", "jcl"), ("numbers_file", None)):
        path = getattr(rule, key)
        if path is None:
            continue
        if url_key is not None and getattr(rule, url_key) is None:
            raise fail(f"{at}.{key}", f"{key} without {url_key}")
        if not Path(path).is_file():
            raise fail(f"{at}.{key}", f"no such file: {path}")


def _validate_sti_api(raw: _RawConfig, fail: Callable[[str, str], ConfigError]) -> None:
    api = raw.sti_api
    profiles = {p.name for p in raw.stir.signing_profiles}
    trunks = {t.name: t for t in raw.trunks}
    names: set[str] = set()
    tokens: set[str] = set()
    if api.tls is not None:
        for key in ("cert", "key", "client_ca"):
            path = getattr(api.tls, key)
            if path is not None and not Path(path).is_file():
                raise fail(f"$.sti_api.tls.{key}", f"no such file: {path}")
        if api.listen is None:
            raise fail("$.sti_api.tls", "https needs a listener of its own (sti_api.listen)")
    if api.clients and api.listen is None and not raw.api.enabled:
        raise fail("$.sti_api", "without a listener of its own (sti_api.listen) the API needs api.enabled")
    for i, client in enumerate(api.clients):
        at = f"$.sti_api.clients[{i}]"
        if client.name in names:
            raise fail(f"{at}.name", f"duplicate client name {client.name!r}")
        names.add(client.name)
        if client.token is not None and client.token_file is not None:
            raise fail(f"{at}.token_file", "give token or token_file, not both")
        try:
            token = client_token(client)
        except OSError as exc:
            raise fail(f"{at}.token_file", exc.strerror or str(exc)) from None
        if token is not None:
            if len(token) < 16 or not token.isprintable() or " " in token:
                raise fail(f"{at}.token" if client.token is not None else f"{at}.token_file",
                           "a token is at least 16 printable characters without spaces")
            if token in tokens:
                raise fail(f"{at}.token", "another client has the same token")
            tokens.add(token)
        if client.tls_name is not None and (api.tls is None or api.tls.client_ca is None):
            raise fail(f"{at}.tls_name", "client certificates need sti_api.tls.client_ca")
        if token is None and client.tls_name is None:
            raise fail(at, "a client needs a token, a token_file or a tls_name to authenticate with")
        if client.sign is None and client.verify is None:
            raise fail(at, "a client needs sign: and/or verify:")
        if client.sign is not None and client.sign.profile not in profiles:
            raise fail(f"{at}.sign.profile", f"unknown signing profile {client.sign.profile!r}")
        if client.verify is not None:
            trunk = trunks.get(client.verify.trunk)
            if trunk is None:
                raise fail(f"{at}.verify.trunk", f"unknown trunk {client.verify.trunk!r}")
            if trunk.role != "carrier":
                raise fail(f"{at}.verify.trunk", f"trunk {trunk.name!r} is not a carrier trunk")
            if not raw.stir.trust_anchors:
                raise fail(f"{at}.verify", "verification needs stir.trust_anchors")


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
