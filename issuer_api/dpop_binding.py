"""Binding a minted key to the client's key (RFC 9449 §10, as for a token request): `cnf` from the body's
`dpop_jkt` or `holder_jwk`, or from a `DPoP` proof on the `/key/create` request itself.

A proof here is checked like the gateway checks one (typ, alg, jwk, signature, htm, htu, iat), without
`ath` (the request presents a session token, not a dynamic key), and its jti is remembered in this
process for the proof window so it cannot be replayed to mint a second key.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from starlette.requests import Request

from dynaseal.keys.dpop import (
    PROOF_WINDOW_S,
    DpopProof,
    DpopRefusal,
    confirmation,
    normalize_url,
    public_key_of,
    verify_proof,
)
from issuer_api.errors import ApiError, IssuerError, invalid_request
from issuer_api.scope import ScopeRequest

MAX_REMEMBERED = 100_000


class ProofJtis:
    """The jtis of proofs this process accepted, each kept until its iat is out of the window (bounded)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_use(self, jti: str, iat: float, now: float) -> bool:
        """Record the jti; False if it was already used."""
        digest = hashlib.sha256(jti.encode()).hexdigest()
        with self._lock:
            if len(self._seen) > MAX_REMEMBERED:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            if self._seen.get(digest, 0) > now:
                return False
            self._seen[digest] = iat + 2 * PROOF_WINDOW_S + 30
            return True


_PROOFS = ProofJtis()


def _invalid_proof(message: str) -> ApiError:
    return ApiError(400, IssuerError.INVALID_DPOP_PROOF, message,
                    headers={"WWW-Authenticate": 'DPoP error="invalid_dpop_proof"'})


def requested_binding(request: Request, body: ScopeRequest | None, leeway_s: int,
                      require_dpop: bool) -> dict[str, Any] | None:
    """The `cnf` claim for the key this request mints, or None for a bearer key; 400 ApiError if unusable."""
    proof = _request_proof(request, leeway_s)
    cnf = _named_binding(body, proof)
    if cnf is not None:
        try:
            jkt = confirmation(cnf).jkt
        except ValueError as exc:
            raise invalid_request(f"the key to bind to is not usable: {exc}", "holder_jwk") from None
        if proof is not None and jkt != proof.jkt:
            raise invalid_request("the DPoP proof is signed by another key than the one named", "dpop_jkt",
                                  IssuerError.DPOP_KEY_MISMATCH)
    elif require_dpop:
        raise invalid_request("this tenant accepts only sender-constrained keys: send dpop_jkt, holder_jwk or "
                              "a DPoP proof header", "dpop_jkt", IssuerError.DPOP_REQUIRED)
    return cnf


def _request_proof(request: Request, leeway_s: int) -> DpopProof | None:
    """The request's own DPoP proof, verified and first used now; None without one."""
    proofs = request.headers.getlist("dpop")
    if len(proofs) > 1:
        raise _invalid_proof("send exactly one DPoP proof header")
    if not proofs:
        return None
    now = time.time()
    try:
        proof = verify_proof(proofs[0], method=request.method, url=normalize_url(str(request.url)), now=now,
                             leeway_s=leeway_s)
    except DpopRefusal as refusal:
        raise _invalid_proof(refusal.message) from None
    if not _PROOFS.first_use(proof.jti, proof.iat, now):
        raise _invalid_proof("DPoP proof has been used before")
    return proof


def _named_binding(body: ScopeRequest | None, proof: DpopProof | None) -> dict[str, Any] | None:
    """The holder key the request names: its `holder_jwk`, its `dpop_jkt`, else its proof's key."""
    if body is not None and body.holder_jwk is not None:
        try:  # checked whole first: a private member means the client leaked its key, never strip it silently
            public_key_of(body.holder_jwk)
        except ValueError as exc:
            raise invalid_request(f"holder_jwk is not a usable public key: {exc}", "holder_jwk") from None
        if body.dpop_jkt is not None:
            raise invalid_request("give dpop_jkt or holder_jwk, not both", "dpop_jkt")
        return {"jwk": {k: v for k, v in body.holder_jwk.items() if k in ("kty", "crv", "x", "y")}}
    if body is not None and body.dpop_jkt is not None:
        return {"jkt": body.dpop_jkt}
    if proof is not None:
        return {"jkt": proof.jkt}
    return None

