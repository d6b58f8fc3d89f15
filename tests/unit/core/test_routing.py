"""Router: source address -> trunk, dialled number -> ordered trunk targets."""

from __future__ import annotations

import pytest

from proxy.config import load_config_text
from proxy.routing import Router, dialled_digits

from .sipfake import loopback_config

CFG = """\
trunks:
  - {name: pbx, role: customer, sources: [10.0.0.0/8, 10.1.2.3], destination: "10.1.2.3:5060"}
  - {name: pbx2, role: customer, sources: [10.1.0.0/16], destination: "10.1.9.9:5080"}
  - {name: c1, role: carrier, sources: [192.0.2.1], destination: "192.0.2.1:5060"}
  - {name: c2, role: carrier, sources: ["2001:db8::/32"], destination: "192.0.2.2:5070", transport: tcp}
routes:
  - {from: [pbx, pbx2], prefix: "", trunks: [c1, c2]}
  - {from: [pbx], prefix: "44", trunks: [c2]}
  - {from: [pbx], prefix: "4420", trunks: [c1]}
  - {prefix: "", trunks: [pbx]}
"""


@pytest.fixture
def router() -> Router:
    return Router(load_config_text(CFG, "r.yaml"))


def test_source_exact_beats_cidr_and_longest_cidr_wins(router: Router) -> None:
    t = router.trunk_for_source
    assert t("10.1.2.3").name == "pbx"  # type: ignore[union-attr]
    assert t("10.1.5.5").name == "pbx2"  # type: ignore[union-attr]  # /16 beats /8
    assert t("10.200.0.1").name == "pbx"  # type: ignore[union-attr]
    assert t("2001:db8::7").name == "c2"  # type: ignore[union-attr]
    assert t("192.0.2.1").name == "c1"  # type: ignore[union-attr]
    assert t("192.0.2.3") is None
    assert t("not-an-ip") is None


def test_longest_prefix_for_ingress(router: Router) -> None:
    pbx = router.trunk_for_source("10.1.2.3")
    assert pbx is not None
    assert [x.trunk.name for x in router.route(pbx, "442071234567")] == ["c1"]
    assert [x.trunk.name for x in router.route(pbx, "4430")] == ["c2"]
    assert [x.trunk.name for x in router.route(pbx, "15551234567")] == ["c1", "c2"]
    assert [x.trunk.name for x in router.route(pbx, "")] == ["c1", "c2"]


def test_routes_filtered_by_ingress(router: Router) -> None:
    pbx2 = router.trunk_for_source("10.1.5.5")
    c1 = router.trunk_for_source("192.0.2.1")
    assert pbx2 is not None and c1 is not None
    assert [x.trunk.name for x in router.route(pbx2, "442071234567")] == ["c1", "c2"]  # pbx-only routes skipped
    assert [x.trunk.name for x in router.route(c1, "15551234567")] == ["pbx"]


def test_targets_carry_host_port_transport(router: Router) -> None:
    c2 = router.targets["c2"]
    assert (c2.host, c2.port, c2.transport) == ("192.0.2.2", 5070, "tcp")


def test_no_route() -> None:
    cfg = load_config_text(CFG.replace('  - {prefix: "", trunks: [pbx]}\n', ""), "r.yaml")
    r = Router(cfg)
    c1 = r.trunk_for_source("192.0.2.1")
    assert c1 is not None and r.route(c1, "1555") == ()


@pytest.mark.parametrize("user,digits", [
    ("+1-555-123.4567", "15551234567"),
    ("+15551234567;npdi;rn=+15550000000", "15551234567"),
    ("(555) 123 4567", "5551234567"),
    (None, ""),
    ("", ""),
    ("*67#", "*67#"),
])
def test_dialled_digits(user: str | None, digits: str) -> None:
    assert dialled_digits(user) == digits


def test_loopback_routes() -> None:
    r = Router(loopback_config())
    customer = r.trunk_for_source("127.0.0.10")
    carrier = r.trunk_for_source("127.0.0.20")
    assert customer is not None and carrier is not None
    assert [x.trunk.name for x in r.route(customer, "1555")] == ["carrier", "carrier2"]
    assert [x.trunk.name for x in r.route(carrier, "1555")] == ["customer"]
