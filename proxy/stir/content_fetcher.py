"""Content referenced by Rich Call Data (RFC 9795 `icn`, `jcl`, URLs inside `jcd`), fetched to check `rcdi`.

The same limits as an x5u fetch (`HttpGetter`, the x5u URL rules and SSRF guard) with its own size cap. Only the
digests are kept: `rcdi` pins the bytes, so a digest stays true however the server labels its cacheability;
entries live `ttl` seconds, failures `failure_ttl`. One fetch in flight per URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from cachetools import TLRUCache

from .errors import Failure, Outcome
from .fetcher import FETCH_ERRORS, FetchSettings, HttpGetter, SingleFlight, TooLarge, error_detail
from .rcd import ContentEntry, digests_of
from .x5u import X5uPolicy, check_x5u


def _unusable(url: str, check: str, detail: str) -> ContentEntry:
    return ContentEntry(url, failure=Failure(check, detail, Outcome.BAD_INFO))


class ContentFetcher:
    """Digests of RCD content by URL."""

    def __init__(
        self,
        policy: X5uPolicy,
        settings: FetchSettings,
        *,
        max_bytes: int = 256 * 1024,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.ttl = ttl
        self._clock = clock
        self._http = HttpGetter(policy, settings, max_bytes)
        self._cache: TLRUCache[str, tuple[ContentEntry, float]] = TLRUCache(
            maxsize=settings.cache_size, ttu=lambda _k, v, _now: v[1], timer=clock
        )
        self._flight: SingleFlight[ContentEntry] = SingleFlight()

    @property
    def requests(self) -> int:
        return self._http.requests

    def cached(self, url: str) -> ContentEntry | None:
        hit = self._cache.get(url)
        return hit[0] if hit is not None else None

    async def get(self, url: str) -> ContentEntry:
        hit = self.cached(url)
        if hit is not None:
            return hit
        return await self._flight.run(url, lambda: self._fetch(url))

    async def get_many(self, urls: Iterable[str]) -> dict[str, ContentEntry]:
        unique = list(dict.fromkeys(urls))
        entries = await asyncio.gather(*(self.get(u) for u in unique))
        return dict(zip(unique, entries, strict=True))

    async def _fetch(self, url: str) -> ContentEntry:
        refused = check_x5u(url, self.policy)
        if refused is not None:
            entry = _unusable(url, "rcd-content-refused", f"RCD content URL refused: {refused.detail}")
        else:
            try:
                status, _headers, body = await self._http.get(url)
            except TooLarge:
                entry = _unusable(url, "rcd-content-too-large", f"{url} is over {self._http.max_bytes} bytes")
            except FETCH_ERRORS as exc:
                entry = _unusable(url, "rcd-content-unreachable", f"{url}: {error_detail(exc)}")
            else:
                if status == 200:
                    entry = ContentEntry(url, digests_of(body))
                else:
                    entry = _unusable(url, "rcd-content-unreachable", f"{url} answered HTTP {status}")
        ttl = self.ttl if entry.ok else self.settings.failure_ttl
        if ttl > 0:
            self._cache[url] = (entry, self._clock() + ttl)
        return entry

    async def close(self) -> None:
        await self._http.close()
