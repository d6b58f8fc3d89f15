"""What a counter is kept per: the caller's number, or the gateway behind it (origid, SPC, source, trunk),
a numbering block, or a combination such as `origid+trunk`.

Campaigns rotate caller IDs, so per-number counters rarely fill; the evidence sits with the gateway and the
blocks it dials (docs/POLICIES.md). SPC and origid count only from a passed verification: a failed PASSporT's
claims are not trusted.
"""

from __future__ import annotations

from collections.abc import Callable

from .context import CallContext

__all__ = ["KEY_KINDS", "KeyGetter", "key_getter", "national"]

KeyGetter = Callable[[CallContext], str | None]


def national(tn: str | None) -> str | None:
    """The 10 national digits of a NANP number (`1NXXNXXXXXX` or `NXXNXXXXXX`), else None."""
    if tn is None:
        return None
    if len(tn) == 11 and tn[0] == "1":
        return tn[1:]
    return tn if len(tn) == 10 else None


def _orig_npa_nxx(ctx: CallContext) -> str | None:
    n = national(ctx.orig_tn)
    return n[:6] if n is not None else None


def _dest_npa_nxx(ctx: CallContext) -> str | None:
    n = national(ctx.dest_tn)
    return n[:6] if n is not None else None


def _dest_block(ctx: CallContext) -> str | None:
    """The thousands-block dialled (NPA-NXX-X), the unit number pools are assigned in."""
    n = national(ctx.dest_tn)
    return n[:7] if n is not None else None


_SIMPLE: dict[str, KeyGetter] = {
    "orig_tn": lambda ctx: ctx.orig_tn,
    "dest_tn": lambda ctx: ctx.dest_tn,
    "origid": lambda ctx: ctx.origid if ctx.verified else None,
    "spc": lambda ctx: ctx.spc if ctx.verified else None,
    "trunk": lambda ctx: ctx.trunk,
    "source_ip": lambda ctx: ctx.source_ip or None,
    "orig_npa_nxx": _orig_npa_nxx,
    "dest_npa_nxx": _dest_npa_nxx,
    "dest_block": _dest_block,
}
KEY_KINDS: tuple[str, ...] = tuple(_SIMPLE)


def key_getter(kind: str) -> KeyGetter:
    """The getter for `kind`: a simple kind, or kinds joined with `+` (None when any part is None).

    Raises ValueError naming the kinds there are."""
    parts = kind.split("+")
    unknown = [p for p in parts if p not in _SIMPLE]
    if unknown or not kind:
        raise ValueError(f"unknown key {kind!r} (keys: {', '.join(KEY_KINDS)}, or several joined with '+')")
    if len(parts) == 1:
        return _SIMPLE[kind]
    getters = tuple(_SIMPLE[p] for p in parts)

    def combined(ctx: CallContext) -> str | None:
        values = []
        for get in getters:
            value = get(ctx)
            if value is None:
                return None
            values.append(value)
        return "|".join(values)

    return combined
