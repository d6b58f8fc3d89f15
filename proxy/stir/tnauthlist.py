"""TNAuthList (RFC 8226 §9, OID 1.3.6.1.5.5.7.1.26) from a certificate extension's DER value.

`TNAuthorizationList ::= SEQUENCE SIZE (1..MAX) OF TNEntry`,
`TNEntry ::= CHOICE { spc [0] ServiceProviderCode, range [1] TelephoneNumberRange, one [2] TelephoneNumber }`.
The module uses EXPLICIT tags (what ATIS certificates carry); implicit primitive tags are accepted too because
some CAs emit them. A minimal DER reader is enough: the structure is tiny and fixed, and no general ASN.1
library is among the dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

TNAUTHLIST_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.26")

_SEQUENCE = 0x30
_IA5STRING = 0x16
_INTEGER = 0x02


class TNAuthListError(ValueError):
    """The extension is not a DER TNAuthorizationList."""


@dataclass(frozen=True, slots=True)
class TNAuthList:
    """Decoded entries; `bare` marks the non-standard bare-IA5String form (libstirshaken test certs)."""

    spcs: tuple[str, ...] = ()
    ranges: tuple[tuple[str, int], ...] = ()
    tns: tuple[str, ...] = ()
    bare: str | None = None

    @property
    def spc(self) -> str | None:
        return self.spcs[0] if self.spcs else None

    @property
    def limited(self) -> bool:
        """True when the list names telephone numbers (ranges or TNs): the certificate covers only those
        (ATIS-1000092 delegate certificates). An SPC-only list covers every number of that provider."""
        return bool(self.ranges or self.tns)

    def covers(self, tn: str) -> bool:
        """Whether the canonical TN (digits) is one of the listed TNs or inside a listed range.

        A range is `count` consecutive numbers from `start`, of the same length (RFC 8226 §9)."""
        if tn in self.tns:
            return True
        if not tn.isdigit():
            return False
        value = int(tn)
        for start, count in self.ranges:
            if len(start) == len(tn) and start.isdigit() and int(start) <= value < int(start) + count:
                return True
        return False

    def within(self, parent: TNAuthList) -> bool:
        """Every number this list names is covered by `parent` (a delegate's scope inside its issuer's).

        A parent without numbers (SPC only) covers everything; a range must fit in one parent range or, when
        small, be covered number by number."""
        if not parent.limited:
            return True
        if not all(parent.covers(tn) for tn in self.tns):
            return False
        for start, count in self.ranges:
            if not start.isdigit():
                return False
            first, last = int(start), int(start) + count - 1
            inside = any(
                len(p) == len(start) and p.isdigit() and int(p) <= first and last < int(p) + n
                for p, n in parent.ranges
            )
            if not inside and not (
                count <= 10_000 and all(parent.covers(str(v).zfill(len(start))) for v in range(first, last + 1))
            ):
                return False
        return True


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER element at pos."""
    if pos + 2 > len(data):
        raise TNAuthListError("truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise TNAuthListError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise TNAuthListError("DER element overruns its container")
    return tag, pos, end


def _ia5(data: bytes, start: int, end: int) -> str:
    raw = data[start:end]
    if any(b > 0x7F for b in raw):
        raise TNAuthListError("IA5String with non-ASCII byte")
    return raw.decode("ascii")


def _string_entry(data: bytes, start: int, end: int, explicit: bool) -> str:
    if not explicit:
        return _ia5(data, start, end)
    tag, s, e = _tlv(data, start)
    if tag != _IA5STRING or e != end:
        raise TNAuthListError("expected IA5String inside explicit tag")
    return _ia5(data, s, e)


def _range(data: bytes, start: int, end: int, explicit: bool) -> tuple[str, int]:
    # [1] is constructed either way: EXPLICIT wraps a SEQUENCE, IMPLICIT holds its elements directly.
    if explicit and start < end and data[start] == _SEQUENCE:
        tag, start, e = _tlv(data, start)
        if tag != _SEQUENCE or e != end:
            raise TNAuthListError("range is not a SEQUENCE")
    tag, s, e = _tlv(data, start)
    if tag != _IA5STRING:
        raise TNAuthListError("range start is not an IA5String")
    first = _ia5(data, s, e)
    tag, s, e2 = _tlv(data, e)
    if tag != _INTEGER or e2 != end or s == e2:
        raise TNAuthListError("range count is not an INTEGER")
    count = int.from_bytes(data[s:e2], "big", signed=True)
    if count < 2 or not first.isdigit():
        raise TNAuthListError(f"TN range {first!r}+{count}: start must be digits and count at least 2")
    return first, count


def parse_tnauthlist(der: bytes) -> TNAuthList:
    """Decode the extension value; raise TNAuthListError on anything else."""
    tag, start, end = _tlv(der, 0)
    if end != len(der):
        raise TNAuthListError("trailing bytes after TNAuthList")
    if tag == _IA5STRING:
        return TNAuthList(bare=_ia5(der, start, end))
    if tag != _SEQUENCE:
        raise TNAuthListError(f"TNAuthList is not a SEQUENCE (tag 0x{tag:02x})")
    spcs: list[str] = []
    ranges: list[tuple[str, int]] = []
    tns: list[str] = []
    pos = start
    while pos < end:
        tag, s, e = _tlv(der, pos)
        number = tag & 0x1F
        explicit = bool(tag & 0x20)
        if tag & 0xC0 != 0x80:
            raise TNAuthListError(f"TNEntry with non-context tag 0x{tag:02x}")
        if number == 0:
            spcs.append(_string_entry(der, s, e, explicit))
        elif number == 1:
            ranges.append(_range(der, s, e, explicit))
        elif number == 2:
            tns.append(_string_entry(der, s, e, explicit))
        else:
            raise TNAuthListError(f"unknown TNEntry [{number}]")
        pos = e
    if not (spcs or ranges or tns):
        raise TNAuthListError("empty TNAuthList")
    return TNAuthList(tuple(spcs), tuple(ranges), tuple(tns))


def encode_spc_tnauthlist(spc: str) -> bytes:
    """DER of a TNAuthList holding one SPC (explicit [0] IA5String): what ATIS SP certificates carry."""
    return encode_tnauthlist(spcs=(spc,))


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _der_int(value: int) -> bytes:
    return _der(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def encode_tnauthlist(
    spcs: tuple[str, ...] = (), ranges: tuple[tuple[str, int], ...] = (), tns: tuple[str, ...] = ()
) -> bytes:
    """DER of a TNAuthList with explicit tags: SPCs [0], TN ranges [1] (start, count), TNs [2].

    Delegate certificates (ATIS-1000092) carry ranges and/or TNs instead of an SPC."""
    if not (spcs or ranges or tns):
        raise ValueError("a TNAuthList needs at least one entry")
    entries = b"".join(_der(0xA0, _der(_IA5STRING, s.encode("ascii"))) for s in spcs)
    for start, count in ranges:
        if not start.isdigit() or count < 2:
            raise ValueError(f"bad TN range {start}+{count} (digits, count >= 2)")
        entries += _der(0xA1, _der(_SEQUENCE, _der(_IA5STRING, start.encode("ascii")) + _der_int(count)))
    for tn in tns:
        if not tn or any(c not in "0123456789*#" for c in tn):
            raise ValueError(f"bad TN {tn!r}")
        entries += _der(0xA2, _der(_IA5STRING, tn.encode("ascii")))
    return _der(_SEQUENCE, entries)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def certificate_tnauthlist(cert: x509.Certificate) -> TNAuthList | None:
    """The certificate's TNAuthList, None when absent; TNAuthListError when present but undecodable."""
    try:
        ext = cert.extensions.get_extension_for_oid(TNAUTHLIST_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise TNAuthListError("unexpected TNAuthList extension type")
    return parse_tnauthlist(value.value)
