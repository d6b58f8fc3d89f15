"""`sti_api:` and redirect settings: the shipped example loads; each mistake is reported at its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, client_token, load_config, load_config_text

from .sipfake import ROOT

EXAMPLE = ROOT / "examples" / "sti-service.yaml"
TOKEN = "t0k3n-0123456789abcdef"


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert [x.mode for x in cfg.listen] == ["inline", "inline", "redirect"]
    assert {t.name: t.mode for t in cfg.trunks} == {"customer": "inline", "carrier": "inline", "sbc": "redirect",
                                                    "sbc-peering": "redirect"}
    (client,) = cfg.sti_api.clients
    assert cfg.sti_api.enabled and client.sign is not None and client.verify is not None
    assert client_token(client) == "demo-token-change-me-0123"


def base(**sti: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    cfg["sti_api"] = {"clients": [{"name": "a", "token": TOKEN, "sign": {"profile": "demo"}}], **sti}
    return cfg


def err(cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config_text(yaml.safe_dump(cfg, sort_keys=False), "sti.yaml")
    return str(ei.value)


def client(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "a", "token": TOKEN, "sign": {"profile": "demo"}}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


@pytest.mark.parametrize(("clients", "key", "problem"), [
    ([client(sign={"profile": "nope"})], "sti_api.clients[0].sign.profile", "unknown signing profile 'nope'"),
    ([client(sign=None, verify={"trunk": "customer"})], "sti_api.clients[0].verify.trunk", "not a carrier trunk"),
    ([client(sign=None, verify={"trunk": "ghost"})], "sti_api.clients[0].verify.trunk", "unknown trunk 'ghost'"),
    ([client(token="short")], "sti_api.clients[0].token", "at least 16 printable characters"),
    ([client(), client(name="b")], "sti_api.clients[1].token", "another client has the same token"),
    ([client(), client(token="x" * 20)], "sti_api.clients[1].name", "duplicate client name 'a'"),
    ([client(token=None)], "sti_api.clients[0]", "needs a token, a token_file or a tls_name"),
    ([client(sign=None)], "sti_api.clients[0]", "needs sign: and/or verify:"),
    ([client(tls_name="sbc.example")], "sti_api.clients[0].tls_name", "need sti_api.tls.client_ca"),
    ([client(token_file="/nonexistent/token")], "sti_api.clients[0].token_file", "give token or token_file"),
    ([client(sign={"profile": "demo", "max_attest": "D"})], "sti_api.clients[0].sign.max_attest",
     "Invalid enum value 'D'"),
])
def test_client_mistakes(clients: list[dict[str, Any]], key: str, problem: str) -> None:
    cfg = base()
    cfg["sti_api"]["clients"] = clients
    message = err(cfg)
    assert f": {key}: " in message and problem in message, message
    assert message.startswith("sti.yaml:")


def test_token_file(tmp_path: Path) -> None:
    cfg = base()
    cfg["sti_api"]["clients"] = [client(token=None, token_file=str(tmp_path / "missing"))]
    assert "sti_api.clients[0].token_file: No such file" in err(cfg)
    (tmp_path / "tok").write_text(TOKEN + "\n")
    cfg["sti_api"]["clients"] = [client(token=None, token_file=str(tmp_path / "tok"))]
    loaded = load_config_text(yaml.safe_dump(cfg))
    assert client_token(loaded.sti_api.clients[0]) == TOKEN


def test_listener_and_tls_mistakes(tmp_path: Path) -> None:
    cfg = base(tls={"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")}, listen="127.0.0.1:8443")
    assert "sti_api.tls.cert: no such file" in err(cfg)
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    cfg["sti_api"].pop("listen")
    assert "sti_api.tls: https needs a listener of its own" in err(cfg)
    cfg = base(listen="127.0.0.1")
    assert "sti_api.listen" in err(cfg)
    cfg = base()
    cfg["api"] = {"enabled": False}
    assert "sti_api: without a listener of its own (sti_api.listen) the API needs api.enabled" in err(cfg)
