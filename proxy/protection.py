"""Per-source flood protection (Kamailio pike's idea): too many requests from one address in a window gets it
ignored for a while. Silent on purpose: answering a flood is how a proxy becomes a reflector."""

from __future__ import annotations

from collections import OrderedDict

from proxy.config import ProtectionSettings

__all__ = ["Pike"]


class Pike:
    __slots__ = ("_ban", "_max", "_sources", "_table_size", "_window", "covers_trunks")

    def __init__(self, settings: ProtectionSettings) -> None:
        self._window = settings.pike_window
        self._max = settings.pike_max_requests
        self._ban = settings.pike_ban
        self._table_size = settings.pike_table_size
        self.covers_trunks = settings.pike_trunks
        #: source ip -> [window start, requests in window, banned until]; least recently seen first.
        self._sources: OrderedDict[str, list[float]] = OrderedDict()

    def blocked(self, ip: str, now: float) -> bool:
        """Count one request from `ip`; True when it must be ignored."""
        if self._max <= 0:
            return False
        sources = self._sources
        entry = sources.get(ip)
        if entry is None:
            if len(sources) >= self._table_size:
                sources.popitem(last=False)  # bounded: the oldest quiet source is forgotten
            sources[ip] = [now, 1.0, 0.0]
            return False
        sources.move_to_end(ip)
        if entry[2] > now:
            return True
        if now - entry[0] >= self._window:
            entry[0] = now
            entry[1] = 0.0
        entry[1] += 1
        if entry[1] > self._max:
            entry[2] = now + self._ban
            return True
        return False

    def banned(self, now: float) -> list[str]:
        return [ip for ip, e in self._sources.items() if e[2] > now]
