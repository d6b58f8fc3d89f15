"""The PASSporT JSON shapes (RFC 8225, 8588, 8946, 9795) as msgspec structs.

A module of their own because msgspec reads these annotations at run time: it stays interpreted while
passport.py, which uses them on every call, is compiled (proxy/compiled.py).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Claims", "Dest", "JwsHeader", "Rcd", "TnOrUri"]


class JwsHeader(msgspec.Struct, frozen=True, omit_defaults=True):
    """JOSE header; fields declared in canonical order (alg, ppt, typ, x5u)."""

    alg: str
    ppt: str | None = None
    typ: str | None = None
    x5u: str | None = None


class TnOrUri(msgspec.Struct, frozen=True, omit_defaults=True):
    """`orig` and `div` claims: one TN or one URI."""

    tn: str | None = None
    uri: str | None = None


class Dest(msgspec.Struct, frozen=True, omit_defaults=True):
    """`dest` claim: arrays of TNs and/or URIs."""

    tn: tuple[str, ...] | None = None
    uri: tuple[str, ...] | None = None


class Rcd(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9795 `rcd` claim: display name, optional icon, jCard (inline or by URL)."""

    nam: str
    apn: str | None = None
    icn: str | None = None
    jcd: Any = None
    jcl: str | None = None


class Claims(msgspec.Struct, frozen=True, omit_defaults=True):
    """Union of the shaken/div/rcd claims; `claim_failures` enforces what each ppt requires.

    Everything is optional at the type level so that a missing claim is reported by name (attest-missing)
    rather than as a generic decode error; wrong *types* still fail at decode.
    """

    attest: str | None = None
    crn: str | None = None
    dest: Dest | None = None
    div: TnOrUri | None = None
    iat: int | None = None
    orig: TnOrUri | None = None
    origid: str | None = None
    rcd: Rcd | None = None
    rcdi: dict[str, str] | None = None
