"""`when:` on a policy entry: the calls the entry applies to. An entry whose filter does not match neither
counts the call (a filtered velocity counts only matching calls) nor decides it.

Every condition given must hold (AND); a list matches when any of its values does (OR):

    when: {verification: [passed], attest: [C], trunk_role: carrier, dest_prefixes: ["1212"]}
    when: {verification: [missing, failed]}          # unsigned or failed calls only
    when: {neighbor: true, display_name: false}
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from .base import CallContext, Params
from .keys import national

__all__ = ["Filter", "FilterSpec"]

Status = Literal["passed", "failed", "missing", "none"]


class FilterSpec(Params, frozen=True, kw_only=True):
    """The conditions; `verification: none` means the trunk does not verify (customer trunks)."""

    verification: list[Status] | None = None
    attest: list[Literal["A", "B", "C"]] | None = None
    verstat: list[str] | None = None
    trunk: list[str] | None = None
    trunk_role: Literal["customer", "carrier"] | None = None
    #: orig and dest share NPA-NXX (neighbour spoofing's signature).
    neighbor: bool | None = None
    orig_prefixes: list[str] | None = None
    dest_prefixes: list[str] | None = None
    #: Source addresses or CIDRs.
    sources: list[str] | None = None
    display_name: bool | None = None
    identity: bool | None = None

    def __post_init__(self) -> None:
        for name in ("orig_prefixes", "dest_prefixes"):
            for prefix in getattr(self, name) or ():
                if not prefix.isdigit():
                    raise ValueError(f"{name}: a prefix is digits only (no '+'): {prefix!r}")
        for src in self.sources or ():
            ipaddress.ip_network(src, strict=False)


def status_of(ctx: CallContext) -> str:
    v = ctx.verification
    if v is None:
        return "none"
    return "passed" if v.status == "passed" else ("missing" if v.status == "missing" else "failed")


def is_neighbor(ctx: CallContext) -> bool:
    o, d = national(ctx.orig_tn), national(ctx.dest_tn)
    return o is not None and d is not None and o[:6] == d[:6]


Check = Callable[[CallContext], bool]


def _checks(spec: FilterSpec) -> list[Check]:
    checks: list[Check] = []
    if spec.verification is not None:
        wanted = frozenset(spec.verification)
        checks.append(lambda ctx: status_of(ctx) in wanted)
    if spec.attest is not None:
        attests = frozenset(spec.attest)
        checks.append(lambda ctx: ctx.verified and ctx.attest in attests)
    if spec.verstat is not None:
        verstats = frozenset(spec.verstat)
        checks.append(lambda ctx: ctx.verstat in verstats)
    if spec.trunk is not None:
        trunks = frozenset(spec.trunk)
        checks.append(lambda ctx: ctx.trunk in trunks)
    if spec.trunk_role is not None:
        role = spec.trunk_role
        checks.append(lambda ctx: ctx.trunk_role == role)
    if spec.neighbor is not None:
        neighbor = spec.neighbor
        checks.append(lambda ctx: is_neighbor(ctx) == neighbor)
    if spec.orig_prefixes is not None:
        orig = tuple(spec.orig_prefixes)
        checks.append(lambda ctx: ctx.orig_tn is not None and ctx.orig_tn.startswith(orig))
    if spec.dest_prefixes is not None:
        dest = tuple(spec.dest_prefixes)
        checks.append(lambda ctx: ctx.dest_tn is not None and ctx.dest_tn.startswith(dest))
    if spec.sources is not None:
        nets = tuple(ipaddress.ip_network(s, strict=False) for s in spec.sources)
        checks.append(lambda ctx: _in_networks(ctx.source_ip, nets))
    if spec.display_name is not None:
        has_name = spec.display_name
        checks.append(lambda ctx: bool(ctx.display_name) == has_name)
    if spec.identity is not None:
        identity = spec.identity
        checks.append(lambda ctx: ctx.identity_present == identity)
    return checks


def _in_networks(ip: str, nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in nets)


class Filter:
    """A compiled `when:`; `id` is its canonical text (entries with different filters count separately)."""

    __slots__ = ("_checks", "id", "spec")

    def __init__(self, spec: FilterSpec) -> None:
        self.spec = spec
        self._checks = tuple(_checks(spec))
        self.id = json.dumps(msgspec.to_builtins(spec), sort_keys=True, separators=(",", ":"))

    def matches(self, ctx: CallContext) -> bool:
        for check in self._checks:  # noqa: SIM110 (a plain loop: no generator object per call)
            if not check(ctx):
                return False
        return True

    @classmethod
    def parse(cls, raw: Any) -> Filter:
        return cls(msgspec.convert(raw, FilterSpec))
