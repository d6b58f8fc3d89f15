"""Policy YAML -> an immutable PolicySet of per-trunk chains. Every error names file, line and key.

The file is read with proxy.config's line-remembering YAML reader; each entry's `params` are converted
with the policy's own msgspec schema and a failure's path is re-rooted at that entry, so a third-party
policy's bad parameter is located as precisely as a built-in's.

A PolicySet never changes once built: the engine swaps the whole object on reload, and a call keeps the
Chain it was admitted with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec

from proxy.stir.tn import DEFAULT_TN_POLICY, TNPolicy
from proxy.yamlfile import ConfigError, YamlDoc, compose, key_text

from .base import DEFAULT_HEADERS, DataFile
from .chain import Chain, ChainEntry, Counters, Mode
from .filters import Filter, FilterSpec

__all__ = ["BUILTINS", "PolicyEnv", "PolicyError", "PolicySet", "load_policies", "load_policies_text"]

#: Built-in policy names -> `module:Class`.
BUILTINS: Mapping[str, str] = MappingProxyType(
    {
        name: f"policies.{name}:{''.join(p.title() for p in name.split('_'))}"
        for name in (
            "require_identity",
            "verification",
            "min_attestation",
            "lists",
            "dnc",
            "invalid_numbers",
            "neighbor_spoofing",
            "replay",
            "velocity",
            "anonymous",
            "display_tag",
            "route_by_verstat",
            "own_numbers",
            "risk_score",
        )
    }
)

_ENTRY_KEYS = ("policy", "name", "mode", "params", "when")
_TOP_KEYS = ("trunks", "default")


class PolicyError(ConfigError):
    """A policy file problem, located: `file:line: key: what is wrong`."""


@dataclass(frozen=True, slots=True)
class PolicyEnv:
    """What a policy constructor may ask for (by naming a second parameter `env`)."""

    file: str
    base_dir: Path
    tn_policy: TNPolicy = DEFAULT_TN_POLICY
    #: The entry's `when:` as canonical text ("" without one): stateful policies keep the calls of different
    #: filters apart.
    filter_id: str = ""


class _Entry(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    policy: str
    name: str | None = None
    mode: Mode = "enforce"
    params: dict[str, Any] = {}
    when: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every trunk's chain, immutable. `chain_for(trunk)` is what a call keeps for its lifetime."""

    path: str
    chains: Mapping[str, Chain]
    default: Chain
    counters: Counters
    #: Header names the policies read: pass to `CallContext.build(header_names=...)`.
    header_names: frozenset[str] = DEFAULT_HEADERS
    _pending: tuple[tuple[ChainEntry, Any], ...] = field(default=(), repr=False)

    def chain_for(self, trunk: str) -> Chain:
        return self.chains.get(trunk, self.default)

    async def setup(self) -> None:
        """Run every new policy's `setup()` (loading list files, in threads). A failure raises PolicyError
        naming the entry; the engine then keeps its old PolicySet."""
        for entry, _ in self._pending:
            setup = getattr(entry.policy, "setup", None)
            if setup is None:
                continue
            try:
                await setup()
            except (OSError, ValueError, RuntimeError) as exc:
                file, line, key = entry.location
                raise PolicyError(file, line, f"{key}.params", str(exc)) from None

    def setup_sync(self) -> None:
        """`setup()` for code without an event loop (check-config, tests, benchmarks)."""
        asyncio.run(self.setup())

    def describe(self) -> dict[str, list[dict[str, str]]]:
        """Trunk -> [{name, policy, mode}] (for logs at load time and `check-config`)."""
        out = {t: [{"name": e.name, "policy": e.policy_name, "mode": e.mode} for e in c.entries]
               for t, c in self.chains.items()}
        if self.default.entries:
            out["*default*"] = [{"name": e.name, "policy": e.policy_name, "mode": e.mode}
                                for e in self.default.entries]
        return out

    def entries(self) -> Iterable[ChainEntry]:
        yield from self.default.entries
        for chain in self.chains.values():
            yield from chain.entries


def resolve_policy(spec: str) -> type:
    """A built-in name or `package.module:Class` -> the class. Raises ValueError saying what is wrong."""
    target = BUILTINS.get(spec)
    if target is None:
        if ":" not in spec:
            known = ", ".join(BUILTINS)
            raise ValueError(
                f"unknown policy {spec!r} (built-ins: {known}; a third-party policy is `package.module:Class`)"
            )
        target = spec
    module_name, _, attr = target.partition(":")
    if not module_name or not attr or ":" in attr or not all(p.isidentifier() for p in module_name.split(".")):
        raise ValueError(f"bad dotted path {spec!r}: expected `package.module:Class`")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"bad dotted path {spec!r}: cannot import {module_name!r} ({exc})") from None
    except Exception as exc:  # a third-party module that fails while importing
        raise ValueError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    cls = module
    for part in attr.split("."):
        cls = getattr(cls, part, None)  # type: ignore[assignment]
        if cls is None:
            raise ValueError(f"bad dotted path {spec!r}: {module_name!r} has no {attr!r}")
    if not isinstance(cls, type):
        raise ValueError(f"{spec!r} is not a class")
    if not callable(getattr(cls, "evaluate", None)):
        raise ValueError(f"{spec!r} has no evaluate(ctx) method")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, msgspec.Struct)):
        raise ValueError(f"{spec!r} has no `Params` schema (a msgspec.Struct class attribute)")
    return cls


class _Builder:
    def __init__(self, doc: YamlDoc, env: PolicyEnv, known_trunks: frozenset[str] | None,
                 counters: Counters) -> None:
        self.doc = doc
        self.env = env
        self.known_trunks = known_trunks
        self.counters = counters
        self.pending: list[tuple[ChainEntry, Any]] = []
        self.headers: set[str] = set(DEFAULT_HEADERS)

    def error(self, path: str, problem: str) -> ConfigError:
        return self.doc.error(path, problem, PolicyError)

    def located(self, exc: msgspec.ValidationError, root: str) -> ConfigError:
        return self.doc.validation_error(exc, root, PolicyError)

    def dec_hook(self, typ: type, obj: Any) -> Any:
        if typ is DataFile:
            if not isinstance(obj, str) or not obj:
                raise ValueError("expected a file name")
            path = Path(obj)
            if not path.is_absolute():
                path = self.env.base_dir / path
            if not path.is_file():
                raise ValueError(f"no such file: {path}")
            return DataFile(path)
        raise NotImplementedError(typ)

    def chain(self, trunk: str, root: str, raw: Any) -> Chain:
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise self.error(root, "expected a list of policy entries")
        entries: list[ChainEntry] = []
        names: set[str] = set()
        for i, item in enumerate(raw):
            entries.append(self.entry(trunk, f"{root}[{i}]", item, names))
        return Chain(trunk, entries, self.counters)

    def entry(self, trunk: str, path: str, item: Any, names: set[str]) -> ChainEntry:
        if not isinstance(item, dict):
            raise self.error(path, "expected a mapping with `policy:` (and optional params, mode, name)")
        try:
            raw = msgspec.convert(item, _Entry)
        except msgspec.ValidationError as exc:
            raise self.located(exc, path) from None
        try:
            cls = resolve_policy(raw.policy)
        except ValueError as exc:
            raise self.error(f"{path}.policy", str(exc)) from None
        try:
            params = msgspec.convert(raw.params, cls.Params, dec_hook=self.dec_hook)  # type: ignore[attr-defined]
        except msgspec.ValidationError as exc:
            raise self.located(exc, f"{path}.params") from None
        name = raw.name or raw.policy.rpartition(":")[2]
        if name in names:
            if raw.name:
                raise self.error(f"{path}.name", f"duplicate name {name!r} in this chain")
            n = 2
            while f"{name}#{n}" in names:
                n += 1
            name = f"{name}#{n}"
        names.add(name)
        when = None
        if raw.when is not None:
            try:
                when = Filter(msgspec.convert(raw.when, FilterSpec))
            except msgspec.ValidationError as exc:
                raise self.located(exc, f"{path}.when") from None
        env = self.env if when is None else dataclasses.replace(self.env, filter_id=when.id)
        try:
            policy = self.construct(cls, params, env)
        except (ValueError, TypeError, OSError) as exc:
            raise self.error(f"{path}.params", str(exc)) from None
        for target in getattr(policy, "route_targets", lambda: ())():
            if self.known_trunks is not None and target not in self.known_trunks:
                raise self.error(f"{path}.params", f"unknown trunk {target!r} to route to")
        self.headers.update(getattr(policy, "headers", ()) or ())
        location = (self.doc.file, self.doc.line_for(path), key_text(path))
        entry = ChainEntry(name, raw.policy, raw.mode, policy, location, when)
        self.pending.append((entry, params))
        return entry

    def construct(self, cls: type, params: Any, env: PolicyEnv) -> Any:
        try:
            wants_env = "env" in inspect.signature(cls).parameters
        except (TypeError, ValueError):
            wants_env = False
        return cls(params, env=env) if wants_env else cls(params)


def load_policies_text(
    text: str,
    file: str = "<policies>",
    *,
    trunks: Iterable[str] | None = None,
    tn_policy: TNPolicy = DEFAULT_TN_POLICY,
    counters: Counters | None = None,
    base_dir: Path | None = None,
) -> PolicySet:
    """Parse and validate; policies are constructed but their data is not loaded: `await result.setup()`.

    `trunks`: the configured trunk names (chains for others and routes to others are errors).
    `counters`: the engine's Counters (kept across reloads). What stateful policies remember lives in the
    engine's state store, so a reload keeps it for entries that count the same thing.
    """
    try:
        doc = compose(text, file)
    except ConfigError as exc:
        raise PolicyError(exc.file, exc.line, exc.key, exc.problem) from None
    data, lines = doc.data, doc.lines
    if data is None or data == {}:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(file, lines.get("$"), "(top level)", "expected a mapping with `trunks:` and `default:`")
    known = frozenset(trunks) if trunks is not None else None
    env = PolicyEnv(file, base_dir or (Path(file).parent if not file.startswith("<") else Path.cwd()), tn_policy)
    b = _Builder(doc, env, known, counters or Counters())
    for key in data:
        if key not in _TOP_KEYS:
            raise b.error(f"$.{key}", f"unknown key (expected one of: {', '.join(_TOP_KEYS)})")
    raw_trunks = data.get("trunks") or {}
    if not isinstance(raw_trunks, dict):
        raise b.error("$.trunks", "expected a mapping of trunk name -> list of policy entries")
    chains: dict[str, Chain] = {}
    for trunk, raw in raw_trunks.items():
        if not isinstance(trunk, str):
            raise b.error(f"$.trunks.{trunk}", "a trunk name is a string")
        if known is not None and trunk not in known:
            raise b.error(f"$.trunks.{trunk}", f"unknown trunk {trunk!r}")
        chains[trunk] = b.chain(trunk, f"$.trunks.{trunk}", raw)
    default = b.chain("", "$.default", data.get("default"))
    return PolicySet(
        path=file,
        chains=MappingProxyType(chains),
        default=default,
        counters=b.counters,
        header_names=frozenset(b.headers),
        _pending=tuple(b.pending),
    )


def load_policies(
    path: str | Path,
    *,
    trunks: Iterable[str] | None = None,
    tn_policy: TNPolicy = DEFAULT_TN_POLICY,
    counters: Counters | None = None,
) -> PolicySet:
    """Read a policy file (see load_policies_text); relative data-file names are resolved from its folder."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PolicyError(str(p), None, "(file)", exc.strerror or str(exc)) from None
    return load_policies_text(text, str(p), trunks=trunks, tn_policy=tn_policy, counters=counters,
                              base_dir=p.parent)
