"""The layer contract (pyproject.toml, checked by `lint-imports` in `make lint`) names every module of proxy and
policies: a new module outside every layer would escape the one-way rule without anyone noticing."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layer_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [name.strip() for layer in layers["layers"] for name in layer.split("|")]


def _modules(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _covered(module: str, layers: list[str]) -> bool:
    return any(module == layer or module.startswith(layer + ".") for layer in layers)


def test_every_module_is_in_a_layer() -> None:
    layers = _layer_modules()
    modules = _modules("proxy") + _modules("policies")
    assert "proxy.engine" in modules and "policies.base" in modules
    outside = [m for m in modules if m != "proxy" and not _covered(m, layers)]
    assert outside == [], f"add these to a layer in pyproject.toml [tool.importlinter]: {outside}"


def test_layers_name_real_modules() -> None:
    modules = set(_modules("proxy") + _modules("policies"))
    assert [layer for layer in _layer_modules() if layer not in modules] == []
