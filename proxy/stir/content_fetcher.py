"""Content referenced by Rich Call Data (RFC 9795 `icn`, `jcl`, URLs inside `jcd`), fetched to check `rcdi`.

The same limits as an x5u fetch (`HttpGetter`, the x5u URL rules and SSRF guard) with its own size cap. Only the
digests are kept: `rcdi` pins the bytes, so a digest stays true however the server labels its cacheability;
entries live `ttl` seconds, failures `failure_ttl`. One fetch in flight per URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import Failure, Outcome
from .fetcher import FETCH_ERRORS, CachingFetcher, FetchSettings, TooLarge, error_detail
from .rcd import ContentEntry, digests_of
from .x5u import X5uPolicy, check_x5u


def _unusable(url: str, check: str, detail: str) -> ContentEntry:
    return ContentEntry(url, failure=Failure(check, detail, Outcome.BAD_INFO))


class ContentFetcher(CachingFetcher[ContentEntry]):
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
        super().__init__(policy, settings, clock, max_bytes)
        self.ttl = ttl

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
