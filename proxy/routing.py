"""Which trunk a packet came from, and which trunks a dialled number goes to. Built once per config."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from proxy.config import Config, Trunk, parse_hostport
from proxy.sip.transaction import Target

__all__ = ["Router", "TrunkTarget", "dialled_digits"]


@dataclass(frozen=True, slots=True)
class TrunkTarget:
    trunk: Trunk
    host: str
    port: int
    transport: str


def dialled_digits(user: str | None) -> str:
    """R-URI user part as a routing key: user parameters and a leading '+' dropped, separators removed."""
    if not user:
        return ""
    if ";" in user:
        user = user.split(";", 1)[0]
    if user.startswith("+"):
        user = user[1:]
    if user.isdigit():
        return user  # the common case: nothing to remove
    return "".join(c for c in user if c not in "-.() ")


class Router:
    __slots__ = ("_by_destination", "_by_host", "_by_network_cache", "_networks", "_routes", "_tls_only", "targets")

    def __init__(self, config: Config) -> None:
        self._by_host: dict[str, Trunk] = {}
        nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Trunk]] = []
        for trunk in config.trunks:
            for src in trunk.sources:
                net = ipaddress.ip_network(src, strict=False)
                if net.num_addresses == 1:
                    self._by_host.setdefault(str(net.network_address), trunk)
                else:
                    nets.append((net, trunk))
        nets.sort(key=lambda item: item[0].prefixlen, reverse=True)
        self._networks = nets
        #: Addresses already matched against the CIDR sources (peers repeat); bounded, cleared when full.
        self._by_network_cache: dict[str, Trunk | None] = {}
        self.targets: dict[str, TrunkTarget] = {}
        self._by_destination: dict[tuple[str, int], Trunk] = {}
        for trunk in config.trunks:
            if trunk.destination is not None:
                host, port = parse_hostport(trunk.destination)
                self.targets[trunk.name] = TrunkTarget(trunk, host, port, trunk.transport)
                self._by_destination.setdefault((host, port), trunk)
        #: Some trunk takes TLS only: requests from its addresses over anything else are not its own.
        self._tls_only = any(t.transport == "tls" for t in config.trunks)
        # Per ingress trunk: (prefix, targets) longest prefix first.
        self._routes: dict[str, list[tuple[str, tuple[TrunkTarget, ...]]]] = {}
        for trunk in config.trunks:
            table = [
                (r.prefix, tuple(self.targets[n] for n in r.trunks))
                for r in config.routes
                if r.from_ is None or trunk.name in r.from_
            ]
            table.sort(key=lambda item: len(item[0]), reverse=True)
            self._routes[trunk.name] = table

    def trunk_for_source(self, host: str) -> Trunk | None:
        trunk = self._by_host.get(host)
        if trunk is not None or not self._networks:
            return trunk
        cache = self._by_network_cache
        if host in cache:
            return cache[host]
        trunk = self._match_networks(host)
        if len(cache) >= 65536:
            cache.clear()
        cache[host] = trunk
        return trunk

    def trunk_for(self, source: Target) -> Trunk | None:
        """The trunk a message from `source` belongs to. A TLS trunk is identified by its address and its
        certificate (checked at the handshake), so the same address over UDP or TCP is not that trunk."""
        trunk = self.trunk_for_source(source[1])
        if trunk is not None and self._tls_only and trunk.transport == "tls" and source[0] != "tls":
            return None
        return trunk

    def trunk_for_target(self, host: str, port: int) -> Trunk | None:
        """The trunk stirgate reaches at host:port: its destination, else the trunk owning that address (a
        caller's Contact), for the TLS settings of a connection stirgate opens."""
        trunk = self._by_destination.get((host, port))
        return trunk if trunk is not None else self.trunk_for_source(host)

    def _match_networks(self, host: str) -> Trunk | None:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return None
        for net, t in self._networks:
            if addr in net:
                return t
        return None

    def route(self, ingress: Trunk, dialled: str) -> tuple[TrunkTarget, ...]:
        for prefix, targets in self._routes.get(ingress.name, ()):
            if dialled.startswith(prefix):
                return targets
        return ()
