"""Write contracts/interop/vectors.json: keys, proofs and child keys made by the Python side, which the
JavaScript client's tests verify (clients/js/test/); the JavaScript side's own, made from the same keys,
are verified by tests/test_js_client.py. Test-only keys: never use them for anything else.

    python contracts/interop/generate.py
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from dynaseal.keys.dpop import access_token_hash
from dynaseal.keys.mint import HolderKey, SigningKey, mint

HERE = Path(__file__).resolve().parent
TENANT = "interop-tenant"
URL = "https://gw.example/v1/chat/completions"
IAT = 1_800_000_000  # fixed, so the file is stable; verifiers of these vectors pass this as "now"

# RFC 9449 Figure 2 (the example proof) with its §6.1 jkt and the §7.1 example access token and ath.
RFC9449 = {
    "proof": "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpD"
             "a0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6"
             "IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUu"
             "Y29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-F"
             "NyJK70nfbV37xRZT3Lg",
    "method": "POST", "url": "https://server.example.com/token", "iat": 1562262616, "jti": "-BwC3ESc6acc2lTc",
    "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
    "access_token": "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU",
    "ath": "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo",
}
THUMBPRINTS = [  # RFC 7638 §3.1 (RSA) and RFC 8037 §A.3 (Ed25519)
    {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
     "jkt": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"},
]


def main() -> None:
    """Make fresh test keys and everything signed with them; write the file."""
    issuer = SigningKey.generate("interop-issuer")
    holders = {"ES256": HolderKey(generate_private_key(SECP256R1())), "EdDSA": HolderKey(Ed25519PrivateKey.generate())}
    private = {"ES256": json.loads(ECAlgorithm.to_jwk(holders["ES256"].private_key)),
               "EdDSA": json.loads(OKPAlgorithm.to_jwk(holders["EdDSA"].private_key))}
    vectors: dict[str, object] = {"rfc9449": RFC9449, "thumbprints": THUMBPRINTS, "tenant": TENANT,
                                  "issuer": {"private_jwk": issuer.private_jwk(), "public_jwk": issuer.public_jwk()},
                                  "url": URL, "iat": IAT, "holders": {}}
    for alg, holder in holders.items():
        parent = mint(issuer, tenant=TENANT, models=["gpt-4o-mini", "gpt-4o"], max_tokens=200, ttl=3600,
                      uses=10, params={"temperature": {"min": 0, "max": 1.0}}, cnf=holder.cnf_jwk(),
                      jti=f"interop-parent-{alg}", now=IAT)
        vectors["holders"][alg] = {  # type: ignore[index]
            "private_jwk": private[alg], "public_jwk": holder.public_jwk(), "jkt": holder.jkt(),
            "parent": parent, "ath": access_token_hash(parent),
            "proof": holder.proof("POST", URL + "?q=1", parent, now=IAT, jti=f"interop-proof-{alg}"),
            "child": holder.child(parent, models=["gpt-4o-mini"], max_tokens=50, uses=1,
                                  jti=f"interop-child-{alg}", now=IAT),
        }
    (HERE / "vectors.json").write_text(json.dumps(vectors, indent=2) + "\n")


if __name__ == "__main__":
    main()
