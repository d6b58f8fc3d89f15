"""Rich Call Data (RFC 9795, ATIS-1000094): the `rcd` claim's rules and its integrity digests (`rcdi`). Pure.

`rcd` holds `nam` (the caller's name), optionally `icn` (URL of an icon), `jcd` (an inline jCard) or `jcl` (URL
of a jCard), `apn`; `crn` (call reason) is a claim of its own. `rcdi` maps JSON pointers into `rcd` (RFC 6901:
`/icn`, `/jcl`, `/jcd`, `/jcd/1/3/3`) to digests written `<alg>-<base64 digest>` (W3C Subresource Integrity
form: sha256, sha384, sha512). A pointer to a URL is checked against the bytes the URL serves (fetched by
`content_fetcher.py` under the x5u fetch limits); a pointer to anything else against its JSON form (compact,
keys sorted). When `rcdi` is present it must cover every URL of `icn` and `jcl`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from .claims import Claims, Rcd
from .errors import Failure, Outcome

DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class ContentEntry:
    """Digests of the bytes one URL served (every supported algorithm), or the failure that prevented it."""

    url: str
    digests: Mapping[str, bytes] | None = None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.digests is not None


def digests_of(body: bytes) -> dict[str, bytes]:
    return {name: fn(body).digest() for name, fn in DIGESTS.items()}


def integrity(body: bytes, alg: str = "sha256") -> str:
    """The `rcdi` value for content: `sha256-<base64>`."""
    return f"{alg}-" + base64.b64encode(DIGESTS[alg](body).digest()).decode("ascii")


def json_bytes(value: Any) -> bytes:
    """The JSON form a non-URL `rcdi` target is digested in: compact, keys sorted."""
    return _encoder.encode(value)


def parse_integrity(value: str) -> tuple[str, bytes]:
    """(`sha256`, digest) from `sha256-<base64>`; base64 or base64url, padding optional. ValueError else."""
    alg, sep, b64 = value.partition("-")
    alg = alg.lower()
    if not sep or alg not in DIGESTS:
        raise ValueError(f"rcdi value {value[:40]!r} is not <sha256|sha384|sha512>-<base64>")
    text = b64.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"rcdi digest {b64[:40]!r} is not base64") from None
    if len(raw) != DIGESTS[alg](b"").digest_size:
        raise ValueError(f"rcdi {alg} digest has {len(raw)} bytes")
    return alg, raw


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """RFC 6901 JSON pointer into doc; KeyError when it names nothing."""
    if pointer == "":
        return doc
    if not pointer.startswith("/"):
        raise KeyError(pointer)
    node = doc
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node) and str(int(token)) == token:
            node = node[int(token)]
        else:
            raise KeyError(pointer)
    return node


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("https://", "http://"))


def rcd_doc(rcd: Rcd) -> dict[str, Any]:
    doc = msgspec.to_builtins(rcd)
    assert isinstance(doc, dict)
    return doc


def content_urls(claims: Claims) -> tuple[str, ...]:
    """URLs whose bytes `rcdi` pins (what must be fetched before the PASSporT can be judged)."""
    if claims.rcd is None or not claims.rcdi:
        return ()
    doc = rcd_doc(claims.rcd)
    out: list[str] = []
    for pointer in claims.rcdi:
        try:
            target = resolve_pointer(doc, pointer)
        except KeyError:
            continue
        if is_url(target) and target not in out:
            out.append(target)
    return tuple(out)


def _bad(check: str, detail: str, outcome: Outcome = Outcome.INVALID) -> Failure:
    return Failure(check, detail, outcome)


def rcd_failures(claims: Claims, contents: Callable[[str], ContentEntry | None]) -> list[Failure]:
    """Every RFC 9795 rule the rcd/rcdi claims break (438), and content that could not be fetched (436).
    `contents(url)`: the digests fetched for a URL, None when it was not fetched."""
    rcd = claims.rcd
    if rcd is None:
        if claims.rcdi:
            return [_bad("rcdi-without-rcd", "rcdi claim without an rcd claim")]
        return []
    out: list[Failure] = []
    if not rcd.nam.strip():
        out.append(_bad("rcd-nam-empty", "rcd nam is empty"))
    if rcd.jcd is not None and rcd.jcl is not None:
        out.append(_bad("rcd-jcd-jcl", "rcd carries both jcd and jcl"))
    for key, value in (("icn", rcd.icn), ("jcl", rcd.jcl)):
        if value is not None and not is_url(value):
            out.append(_bad("rcd-url", f"rcd {key} is not an http(s) URL"))
    if not claims.rcdi:
        return out
    doc = rcd_doc(rcd)
    covered: set[str] = set()
    for pointer, value in claims.rcdi.items():
        try:
            alg, digest = parse_integrity(value)
        except ValueError as exc:
            out.append(_bad("rcdi-format", str(exc)))
            continue
        try:
            target = resolve_pointer(doc, pointer)
        except KeyError:
            out.append(_bad("rcdi-pointer", f"rcdi pointer {pointer!r} names nothing in rcd"))
            continue
        if is_url(target):
            covered.add(pointer)
            entry = contents(target)
            if entry is None:
                out.append(_bad("rcd-content-not-fetched", f"{target} was not fetched", Outcome.BAD_INFO))
            elif entry.digests is None:
                failure = entry.failure or _bad("rcd-content-unreachable", target, Outcome.BAD_INFO)
                out.append(failure)
            elif entry.digests.get(alg) != digest:
                out.append(_bad("rcdi-mismatch", f"content of {target} does not match rcdi {pointer}"))
        elif DIGESTS[alg](json_bytes(target)).digest() != digest:
            out.append(_bad("rcdi-mismatch", f"rcd{pointer} does not match its rcdi digest"))
    for pointer in ("/icn", "/jcl"):
        if pointer[1:] in doc and is_url(doc[pointer[1:]]) and pointer not in covered:
            out.append(_bad("rcdi-incomplete", f"rcdi has no digest for {pointer}"))
    return out
