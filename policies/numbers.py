"""Compact, fast sets of telephone numbers, prefixes, CIDRs and strings, loaded from list files.

Ten million TNs as Python strings in a set would take ~1 GB; here each number is one int64 in a sorted
`array('q')` (8 bytes) found by bisect, with a bucket index that narrows the bisect to a few dozen entries.
Numbers that do not fit the int form (a leading 0, `*`/`#`) go to a small frozenset beside it.
Measured (tests/unit/policies/test_numbers.py, bench/policy_chain.py): 10 M numbers take ~82 MB
(8.2 bytes/number), a lookup ~0.5 us, loading a sorted file ~3 s, a shuffled one ~8 s.

List file format: one entry per line; blank lines and `#` comments are ignored; numbers may be written
in any form `canonical_tn` accepts (`+1 555 010 0000`, `tel:+1...`).
"""

from __future__ import annotations

import bisect
import ipaddress
import os
import threading
import weakref
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

from proxy.stir.errors import TNError
from proxy.stir.tn import DEFAULT_TN_POLICY, TNPolicy, canonical_tn

__all__ = [
    "CidrSet",
    "ListFileError",
    "NumberSet",
    "PrefixSet",
    "StringSet",
    "load_cidrs",
    "load_numbers",
    "load_prefixes",
    "load_strings",
]

_BLOCK = 1 << 23  # bytes read at a time (~700 k numbers)
_MAX_INT_DIGITS = 18  # int64 holds every 18-digit number
_BUCKET_SIZE = 32  # entries per index bucket (on average)
_FAST_DELETE = b"0123456789\r\n"
_RUN = 50_000  # sorted in cache-sized runs (a 50 k sort is ~2x faster per item than a 1 M one), then merged
_PART = 1_000_000  # merge slice: bounds the transient Python ints while merging


class ListFileError(ValueError):
    """A bad line in a list file: `file:line: problem`."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, problem: str) -> None:
        where = f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
        super().__init__(f"{where}: {problem}")
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem


class NumberSet:
    """An immutable set of canonical TNs: sorted int64 array + bucket index, plus odd ones as strings."""

    __slots__ = ("__weakref__", "_base", "_extra", "_index", "_n", "_scale", "_values")

    def __init__(self, values: array[int], extra: Iterable[str] = ()) -> None:
        """`values` must be sorted ascending (duplicates allowed)."""
        self._values = values
        self._n = len(values)
        self._extra = frozenset(extra)
        self._base = values[0] if self._n else 0
        buckets = max(1, self._n // _BUCKET_SIZE)
        span = (values[-1] - self._base + 1) if self._n else 1
        # bucket(x) = (x - base) // scale; index[b] = first position whose value is in bucket >= b
        self._scale = max(1, -(-span // buckets))
        nb = (span - 1) // self._scale + 1 if self._n else 0
        index = array("q", bytes(8 * (nb + 1)))
        lo = 0
        for b in range(nb + 1):
            lo = bisect.bisect_left(values, self._base + b * self._scale, lo)
            index[b] = lo
        self._index = index

    @classmethod
    def from_iterable(cls, tns: Iterable[str], tn_policy: TNPolicy = DEFAULT_TN_POLICY) -> NumberSet:
        ints: list[int] = []
        extra: list[str] = []
        for raw in tns:
            tn = canonical_tn(raw, tn_policy)
            if tn.isdigit() and tn[0] != "0":
                ints.append(int(tn))
            else:
                extra.append(tn)
        ints.sort()
        return cls(array("q", ints), extra)

    def __len__(self) -> int:
        return self._n + len(self._extra)

    def __contains__(self, tn: object) -> bool:
        if not isinstance(tn, str) or not tn:
            return False
        if tn.isdigit() and tn[0] != "0" and len(tn) <= _MAX_INT_DIGITS:
            if not self._n:
                return False
            x = int(tn)
            b = (x - self._base) // self._scale
            index = self._index
            if b < 0 or b >= len(index) - 1:
                return False
            hi = index[b + 1]
            i = bisect.bisect_left(self._values, x, index[b], hi)
            return i < hi and self._values[i] == x
        return tn in self._extra

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (the frozenset of odd entries is small and not counted)."""
        return self._values.itemsize * len(self._values) + self._index.itemsize * len(self._index)


class PrefixSet:
    """Digit prefixes; a TN matches when one of its leading substrings is in the set."""

    __slots__ = ("__weakref__", "_lengths", "_set")

    def __init__(self, prefixes: Iterable[str]) -> None:
        self._set = frozenset(prefixes)
        self._lengths = tuple(sorted({len(p) for p in self._set}))

    def __len__(self) -> int:
        return len(self._set)

    def __contains__(self, tn: object) -> bool:
        if not isinstance(tn, str):
            return False
        s = self._set
        for n in self._lengths:
            if n > len(tn):
                return False
            if tn[:n] in s:
                return True
        return False


class StringSet:
    """Case-insensitive strings (SPCs, origid UUIDs)."""

    __slots__ = ("__weakref__", "_set")

    def __init__(self, values: Iterable[str]) -> None:
        self._set = frozenset(v.strip().lower() for v in values if v.strip())

    def __len__(self) -> int:
        return len(self._set)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value.lower() in self._set


class CidrSet:
    """Source addresses: IPv4/IPv6 networks as merged integer ranges, looked up by bisect; results for the
    few distinct trunk peers are memoised."""

    __slots__ = ("__weakref__", "_cache", "_ends", "_starts")

    def __init__(self, networks: Iterable[str]) -> None:
        ranges: list[tuple[int, int]] = []
        for text in networks:
            net = ipaddress.ip_network(text.strip(), strict=False)
            offset = 0 if net.version == 4 else 1 << 32  # IPv6 above every IPv4 (v4-mapped aside)
            ranges.append((int(net.network_address) + offset, int(net.broadcast_address) + offset))
        ranges.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        self._starts = [lo for lo, _ in merged]
        self._ends = [hi for _, hi in merged]
        self._cache: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._starts)

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        x = int(addr) + (0 if addr.version == 4 else 1 << 32)
        i = bisect.bisect_right(self._starts, x) - 1
        hit = i >= 0 and x <= self._ends[i]
        if len(self._cache) < 4096:
            self._cache[ip] = hit
        return hit


# --- loading ------------------------------------------------------------------------------------------------

_cache_lock = threading.Lock()
_loaded: weakref.WeakValueDictionary[tuple[object, ...], object] = weakref.WeakValueDictionary()


def _cache_key(kind: str, path: Path, extra: object) -> tuple[object, ...]:
    st = path.stat()
    return (kind, str(path.resolve()), st.st_mtime_ns, st.st_size, extra)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, entry) for every non-blank, non-comment line."""
    with open(path, encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if text:
                yield n, text


def load_numbers(path: str | os.PathLike[str], tn_policy: TNPolicy = DEFAULT_TN_POLICY) -> NumberSet:
    """A NumberSet from a list file; a file already loaded and unchanged is shared, not loaded again
    (a reload does not double the memory of big lists)."""
    p = Path(path)
    try:
        key = _cache_key("numbers", p, (tn_policy.country_code, tn_policy.national_length, tn_policy.max_length))
    except OSError as exc:
        raise ListFileError(p, None, exc.strerror or str(exc)) from None
    with _cache_lock:
        hit = _loaded.get(key)
    if isinstance(hit, NumberSet):
        return hit
    result = _load_numbers(p, tn_policy)
    with _cache_lock:
        _loaded[key] = result
    return result


def _load_numbers(path: Path, tn_policy: TNPolicy) -> NumberSet:
    runs: list[array[int]] = []
    extra: list[str] = []
    national_low = 10 ** (tn_policy.national_length - 1)
    national_high = 10**tn_policy.national_length
    complete = int(tn_policy.country_code) * national_high if tn_policy.country_code else 0
    max_value = 10 ** min(tn_policy.max_length, _MAX_INT_DIGITS)
    line_no = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; the block loop reads it incrementally)
    except OSError as exc:
        raise ListFileError(path, None, exc.strerror or str(exc)) from None
    with f:
        rest = b""
        while True:
            data = f.read(_BLOCK)
            block = rest + data
            if data:
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
            else:
                rest = b""
            if block:
                chunk = _fast_block(block, national_low, national_high, complete, max_value)
                if chunk is None:
                    chunk = _slow_block(block, line_no, path, tn_policy, extra)
                for i in range(0, len(chunk), _RUN):
                    run = chunk[i : i + _RUN]
                    run.sort()
                    runs.append(array("q", run))
                line_no += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
            if not data:
                break
    return NumberSet(_merge_runs(runs), extra)


def _fast_block(block: bytes, low: int, high: int, complete: int, max_value: int) -> list[int] | None:
    """Digits-and-newlines blocks (the common case for huge lists) parse at C speed; None: use the slow path."""
    if block.translate(None, _FAST_DELETE) or block.startswith(b"0") or b"\n0" in block:
        return None
    values = list(map(int, block.split()))
    if not values:
        return values
    if max(values) >= max_value:
        return None
    if complete and min(values) < high:
        values = [v + complete if low <= v < high else v for v in values]
    return values


def _slow_block(block: bytes, first_line: int, path: Path, tn_policy: TNPolicy, extra: list[str]) -> list[int]:
    out: list[int] = []
    for n, raw in enumerate(block.split(b"\n"), first_line + 1):
        text = raw.split(b"#", 1)[0].strip()
        if not text:
            continue
        try:
            tn = canonical_tn(text.decode("utf-8"), tn_policy)
        except (TNError, UnicodeDecodeError) as exc:
            raise ListFileError(path, n, f"not a telephone number: {text[:40]!r} ({exc})") from None
        if tn.isdigit() and tn[0] != "0" and len(tn) <= _MAX_INT_DIGITS:
            out.append(int(tn))
        else:
            extra.append(tn)
    return out


def _merge_runs(runs: list[array[int]]) -> array[int]:
    """Sorted runs -> one sorted array. Already-ordered runs (a sorted file) are concatenated; otherwise
    the value range is cut at sampled quantiles and each slice (~1 M values) gathered from every run and
    sorted on its own (Timsort merges the pre-sorted pieces), so transient Python ints stay bounded."""
    runs = [r for r in runs if len(r)]
    if not runs:
        return array("q")
    if len(runs) == 1:
        return runs[0]
    out = array("q")
    if all(runs[i][-1] <= runs[i + 1][0] for i in range(len(runs) - 1)):
        for r in runs:
            out.extend(r)
        return out
    sample = sorted(v for r in runs for v in r[:: max(1, len(r) // 64)])
    total = sum(len(r) for r in runs)
    parts = max(1, -(-total // _PART))
    cuts = [sample[len(sample) * k // parts] for k in range(1, parts)]
    lows = [0] * len(runs)
    for bound in [*cuts, None]:
        pieces: list[int] = []
        for j, r in enumerate(runs):
            hi = len(r) if bound is None else bisect.bisect_left(r, bound, lows[j])
            pieces.extend(r[lows[j] : hi])
            lows[j] = hi
        pieces.sort()
        out.fromlist(pieces)
    return out


def load_prefixes(path: str | os.PathLike[str]) -> PrefixSet:
    p = Path(path)
    out: list[str] = []
    for n, text in _lines_checked(p):
        try:
            out.append(canonical_tn(text))
        except TNError as exc:
            raise ListFileError(p, n, f"not a number prefix: {text[:40]!r} ({exc.detail})") from None
    return PrefixSet(out)


def load_strings(path: str | os.PathLike[str]) -> StringSet:
    return StringSet(text for _, text in _lines_checked(Path(path)))


def load_cidrs(path: str | os.PathLike[str]) -> CidrSet:
    p = Path(path)
    nets: list[str] = []
    for n, text in _lines_checked(p):
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ListFileError(p, n, f"not an address or CIDR: {text[:60]!r}") from None
        nets.append(text)
    return CidrSet(nets)


def _lines_checked(path: Path) -> list[tuple[int, str]]:
    try:
        return list(_lines(path))
    except OSError as exc:
        raise ListFileError(path, None, exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ListFileError(path, None, f"not UTF-8 text ({exc.reason})") from None
