"""python -m bench.crypto: sign/s and verify/s of stirgate's STIR code against bare `cryptography` ECDSA P-256.

One process, one core, the demo PKI built in memory. The floor is `cryptography` alone: ECDSA P-256/SHA-256 over
a PASSporT-sized signing input, with the key objects loaded once. stirgate's figures are the whole call:
`Signer.sign` (TN canonicalisation, claims, canonical JSON, base64url, DER -> raw R||S, Identity header) and
`Verifier.verify` with the certificate already cached (Identity parse, JWS decode, every header/claim check,
x5u rules, freshness, orig/dest match, raw R||S -> DER, ECDSA verify). CPU is `time.process_time`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.stir.certs import TrustStore
from proxy.stir.demo_certs import build_demo_set, pem
from proxy.stir.signer import Signer, SigningProfile
from proxy.stir.verifier import Verifier, VerifierSettings
from proxy.stir.x5u import X5uPolicy

X5U = "https://127.0.0.1:8443/sp.pem"
ORIG, DEST = "+12025550100", "12025550199"


@dataclass
class Row:
    what: str
    ops_per_s: float
    us_per_op: float


def timed(what: str, fn: Callable[[], object], seconds: float) -> Row:
    """Run `fn` in batches for about `seconds` of CPU; ops/s and µs/op from process CPU time."""
    for _ in range(200):
        fn()  # warm-up
    n, t0 = 0, time.process_time()
    while True:
        for _ in range(500):
            fn()
        n += 500
        spent = time.process_time() - t0
        if spent >= seconds:
            break
    return Row(what, n / spent, 1e6 * spent / n)


def run(seconds: float) -> list[Row]:
    demo = build_demo_set()
    key = demo.sp.key
    pub = demo.sp.cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    signer = Signer(SigningProfile("bench", "", X5U), key=key)
    now = time.time()
    origid = str(uuid.uuid4())
    identity = signer.sign(ORIG, [DEST], "A", origid, now)
    signing_input = identity.split(";", 1)[0].rsplit(".", 1)[0].encode()  # header.payload as signed
    der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))

    store = TrustStore([demo.root.cert])
    entry = store.validate_body(X5U, pem(demo.sp.cert) + pem(demo.intermediate.cert), now)
    if not entry.ok:
        raise SystemExit(f"demo certificate does not validate: {entry.failures}")
    policy = X5uPolicy(allow_private=True, allow_any_port=True)
    verifier = Verifier(VerifierSettings(x5u_policy=policy))
    certs = {X5U: entry}
    check = verifier.verify([identity], ORIG, [DEST], None, now, certs)
    if not check.passed:
        raise SystemExit(f"stirgate does not verify its own header: {check.failures}")

    def bare_sign() -> object:
        return key.sign(signing_input, ec.ECDSA(hashes.SHA256()))

    def bare_verify() -> object:
        pub.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        return None

    def sg_sign() -> object:
        return signer.sign(ORIG, [DEST], "A", origid, now)

    def sg_verify() -> object:
        return verifier.verify([identity], ORIG, [DEST], None, now, certs)

    return [
        timed("cryptography ECDSA P-256 sign (floor)", bare_sign, seconds),
        timed("stirgate Signer.sign (Identity header)", sg_sign, seconds),
        timed("cryptography ECDSA P-256 verify (floor)", bare_verify, seconds),
        timed("stirgate Verifier.verify (cached cert)", sg_verify, seconds),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.crypto", description=__doc__)
    p.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measurement (default 2)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    rows = run(a.seconds)
    floor = {"sign": rows[0].us_per_op, "verify": rows[2].us_per_op}
    print(f"Crypto micro-benchmark ({datetime.datetime.now():%Y-%m-%d %H:%M}, one core, "
          f"{a.seconds:g} CPU-s each):")
    print("| operation | per second | µs per operation | over the floor |")
    print("|---|---|---|---|")
    for r in rows:
        base = floor["sign" if "sign" in r.what.lower() else "verify"]
        extra = "—" if "floor" in r.what else f"+{r.us_per_op - base:.1f} µs ({r.us_per_op / base:.2f}x)"
        print(f"| {r.what} | {r.ops_per_s:,.0f} | {r.us_per_op:.1f} | {extra} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump([r.__dict__ for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
