"""The CLI subcommands through a tiny argparse harness (proxy.cli registers them the same way)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from proxy.stir.commands import register

from .helpers import DEST, NOW, ORIG, ORIGID, VECTORS, Pki

URL = "https://127.0.0.1:8443/sp.pem"


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="stirgate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    result: int = args.func(args)
    return result


def test_certs_init(tmp_path: Path) -> None:
    assert cli("certs", "init", str(tmp_path / "demo")) == 0
    names = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert names == ["ca.pem", "intermediate.pem", "sp.key", "sp.pem", "x5u-server.key", "x5u-server.pem"]
    assert (tmp_path / "demo" / "sp.pem").read_text().count("BEGIN CERTIFICATE") == 2
    assert (tmp_path / "demo" / "sp.key").stat().st_mode & 0o777 == 0o600


def _sign(pki: Pki, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    key = str(pki.directory / "sp.key")
    rc = cli("sign", "--orig", ORIG, "--dest", DEST, "--attest", "B", "--key", key, "--x5u", URL,
             "--origid", ORIGID, "--iat", str(NOW), *extra)  # fmt: skip
    assert rc == 0
    return capsys.readouterr().out.strip()


def _verify(pki: Pki, value: str, *extra: str) -> int:
    return cli("verify", value, "--orig", ORIG, "--dest", DEST, "--ca", str(pki.directory / "ca.pem"),
               "--cert-file", str(pki.directory / "sp.pem"), "--allow-private", *extra)  # fmt: skip


def test_sign_then_verify(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    value = _sign(pki, capsys)
    assert value.endswith(f";info=<{URL}>;alg=ES256;ppt=shaken")
    assert _verify(pki, value, "--now", str(NOW)) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["verstat"], out["attest"], out["origid"], out["spc"]) == ("TN-Validation-Passed", "B", ORIGID, "9999")


def test_verify_failure_exits_non_zero(pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    value = _sign(pki, capsys)
    assert _verify(pki, value, "--now", str(NOW + 3600)) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["sip_code"], out["verstat"]) == (403, "TN-Validation-Failed")
    assert _verify(pki, "garbage", "--now", str(NOW)) == 1
    assert json.loads(capsys.readouterr().out)["sip_code"] == 438


def test_sign_with_bad_key_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "k").write_text("x")
    assert cli("sign", "--orig", ORIG, "--dest", DEST, "--key", str(tmp_path / "k"), "--x5u", URL) == 2


@pytest.mark.skipif(not VECTORS.is_dir(), reason=f"libstirshaken vectors not found at {VECTORS}")
def test_verify_vector_lenient(capsys: pytest.CaptureFixture[str]) -> None:
    lines = [ln for ln in (VECTORS / "identity-headers.txt").read_text().splitlines() if ln and ln[0] != "#"]
    args = ["verify", lines[0], "--orig", "01256500600", "--dest", "01256700800", "--ca", str(VECTORS / "ca.pem"),
            "--cert-file", str(VECTORS / "sp.pem"), "--now", "1616442523"]  # fmt: skip
    assert cli(*args) == 1  # strict TNAuthList: 437
    assert json.loads(capsys.readouterr().out)["sip_code"] == 437
    assert cli(*args, "--lenient-tnauthlist") == 0
