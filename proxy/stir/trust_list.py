"""The STI-PA trust list: the approved STI-CA root certificates, downloaded and kept (ATIS-1000080 §5.1.1).

`stir.trust_list_url` (https, with an optional token sent as `Authorization: Bearer ...`) is fetched at start,
every `trust_list_refresh` seconds and on SIGHUP. The last good list is kept on disk (`trust_list_cache`) and
loaded at start-up, so a restart while the STI-PA is unreachable still verifies.

A download replaces the list only when it is good: HTTP 200, and every entry a parseable CA certificate (a PEM
bundle, or JSON holding PEM strings: a list, or an object with a list under `trustList`/`certificates`/`cas`).
An empty, truncated or otherwise bad download is reported and the previous list stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .fetcher import FETCH_ERRORS, FetchSettings, HttpGetter, TooLarge, error_detail
from .x5u import X5uPolicy, check_x5u

_JSON_KEYS = ("trustList", "trust_list", "certificates", "cas", "caList")


class TrustListError(ValueError):
    """The trust list body is not a usable list of CA certificates."""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What one refresh did: `anchors` is the new list when it changed, else None; `error` why it failed."""

    anchors: tuple[x509.Certificate, ...] | None = None
    error: str | None = None
    unchanged: bool = False


def _pem_strings(data: Any) -> list[str]:
    if isinstance(data, dict):
        for key in _JSON_KEYS:
            if key in data:
                return _pem_strings(data[key])
        raise TrustListError(f"JSON trust list without any of {', '.join(_JSON_KEYS)}")
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return list(data)
    raise TrustListError("JSON trust list is not a list of PEM strings")


def parse_trust_list(body: bytes) -> tuple[x509.Certificate, ...]:
    """CA certificates of a trust list; TrustListError for anything that is not a non-empty list of them."""
    text = body.strip()
    if not text:
        raise TrustListError("trust list is empty")
    try:
        if text[:1] in (b"{", b"["):
            pems = _pem_strings(json.loads(text))
            certs = [c for p in pems for c in x509.load_pem_x509_certificates(p.encode())]
        else:
            certs = list(x509.load_pem_x509_certificates(text))
    except (ValueError, UnicodeError) as exc:
        raise TrustListError(f"trust list does not parse: {exc}") from None
    if not certs:
        raise TrustListError("trust list holds no certificate")
    for cert in certs:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise TrustListError(f"{cert.subject.rfc4514_string()} in the trust list is not a CA certificate")
    return tuple(certs)


def to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


class TrustListFetcher:
    """Downloads the STI-PA list, keeps the last good one on disk, never swaps in a bad one."""

    def __init__(
        self,
        url: str,
        settings: FetchSettings,
        *,
        token: str | None = None,
        cache_path: str | Path | None = None,
        allow_private: bool = False,
        allow_any_port: bool = False,
        max_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        # Operator-configured, so the URL rules are the x5u ones with the operator's own relaxations.
        self.policy = X5uPolicy(allow_private=allow_private, allow_any_port=allow_any_port, allow_query=True)
        self.token = token
        self.cache_path = Path(cache_path) if cache_path else None
        self._http = HttpGetter(self.policy, settings, max_bytes)
        self._clock = clock
        self.anchors: tuple[x509.Certificate, ...] = ()
        self.last_success: float | None = None
        self.last_error: str | None = None

    @property
    def requests(self) -> int:
        return self._http.requests

    def load_cached(self) -> tuple[x509.Certificate, ...]:
        """The last good list from disk (empty when there is none or it is unusable)."""
        if self.cache_path is None:
            return ()
        try:
            self.anchors = parse_trust_list(self.cache_path.read_bytes())
        except (OSError, TrustListError):
            return ()
        return self.anchors

    async def refresh(self) -> RefreshResult:
        """Download the list; on success keep it (memory and disk) and return it when it changed."""
        refused = check_x5u(self.url, self.policy)
        if refused is not None:
            return self._failed(f"trust list URL refused: {refused.detail}")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            status, _h, body = await self._http.get(self.url, headers)
        except TooLarge:
            return self._failed(f"trust list over {self._http.max_bytes} bytes")
        except FETCH_ERRORS as exc:
            return self._failed(f"trust list fetch failed: {error_detail(exc)}")
        if status != 200:
            return self._failed(f"trust list server answered HTTP {status}")
        try:
            anchors = parse_trust_list(body)
        except TrustListError as exc:
            return self._failed(str(exc))
        self.last_success = self._clock()
        self.last_error = None
        if to_pem(anchors) == to_pem(self.anchors):
            return RefreshResult(unchanged=True)
        self.anchors = anchors
        self._store(anchors)
        return RefreshResult(anchors=anchors)

    def _failed(self, error: str) -> RefreshResult:
        self.last_error = error
        return RefreshResult(error=error)

    def _store(self, anchors: Sequence[x509.Certificate]) -> None:
        if self.cache_path is None:
            return
        with contextlib.suppress(OSError):
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_name(self.cache_path.name + f".tmp{os.getpid()}")
            tmp.write_bytes(to_pem(anchors))
            os.replace(tmp, self.cache_path)

    async def close(self) -> None:
        await self._http.close()
