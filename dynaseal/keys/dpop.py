"""Sender-constrained keys (RFC 9449 DPoP): JWK thumbprints, the `cnf` claim and proof checks.

A key whose `cnf` names a public key (`jkt`, its RFC 7638 thumbprint, or `jwk`, the key itself) is
useless to whoever lifts it: each request must carry a fresh `DPoP` proof signed by the private
half, for this method and URL, this access token (`ath`), now (`iat`), and never seen before
(`jti`; the replay cache is in Redis, in the admit script's round trip).

Proofs are checked in the order of RFC 9449 §4.3; every failure is a 401 `invalid_dpop_proof`
with a `WWW-Authenticate: DPoP` challenge.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from jwt.algorithms import get_default_algorithms

from dynaseal.config import MAX_LEEWAY_S  # replay ids are kept long enough for any config's leeway
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.jsonsafe import loads_strict
from dynaseal.keys.tenants import VerificationKey, jwk_to_key

DPOP_ALGS = ("EdDSA", "ES256")
# |now - iat| may be at most this plus the gateway's clock leeway.
PROOF_WINDOW_S = 60
MAX_PROOF_CHARS = 4096
# RFC 7638 §3.2: the required members of each key type, the only ones hashed.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_JKT = re.compile(r"^[A-Za-z0-9_-]{43}$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
# Asymmetric algorithms only: a proof (or a child key) must show possession of a private key.
ALGORITHMS = {name: alg for name, alg in get_default_algorithms().items() if name in DPOP_ALGS}
_DEFAULT_PORTS = {"http": 80, "https": 443}


class DpopRefusal(Refusal):
    """A missing or invalid proof: 401 with the RFC 9449 §7.1 challenge."""

    def __init__(self, message: str) -> None:
        # A header value: printable ASCII only, bounded (messages may quote what the client sent).
        safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in message)[:200]
        super().__init__(ErrorCode.INVALID_DPOP_PROOF, message, headers={
            "www-authenticate": f'DPoP error="invalid_dpop_proof", error_description="{safe}", '
                                f'algs="{" ".join(DPOP_ALGS)}"'})


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A key's `cnf` claim: the thumbprint a proof must match, and the holder key when it is given whole."""

    jkt: str
    holder: VerificationKey | None = None


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A proof that passed every stateless check; its `jti` still has to be new (Redis decides)."""

    jkt: str
    jti: str
    iat: float

    def replay_id(self) -> str:
        """The proof's member in the replay set: a fixed-size digest of its jti, whatever the client sent."""
        return hashlib.sha256(self.jti.encode()).hexdigest()[:32]

    def keep_until_ms(self) -> int:
        """When the replay set may forget this proof: once its iat is out of the window, plus one more
        window of margin for authz processes whose clocks disagree."""
        return int((self.iat + 2 * PROOF_WINDOW_S + MAX_LEEWAY_S) * 1000)


def replay_set_ttl_ms() -> int:
    """How long the replay set lives past its last write: longer than any member's keep-until."""
    return (3 * PROOF_WINDOW_S + 2 * MAX_LEEWAY_S) * 1000


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC, OKP or RSA public key."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise ValueError("a thumbprint needs an EC, OKP or RSA JWK with its required members")
    # Sorted member names, no whitespace, UTF-8 (§3.3): orjson with sorted keys writes exactly that.
    canonical = orjson.dumps({m: jwk[m] for m in members}, option=orjson.OPT_SORT_KEYS)
    return b64url(hashlib.sha256(canonical).digest())


def access_token_hash(token: str) -> str:
    """`ath`: base64url(SHA-256(ASCII of the access token)) (RFC 9449 §4.2)."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def public_key_of(jwk: Any) -> VerificationKey:
    """A public OKP/Ed25519 or EC/P-256 JWK as a verification key; ValueError for anything else."""
    if not isinstance(jwk, dict):
        raise ValueError("not a JWK object")
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        raise ValueError("the JWK carries private key material")
    try:
        return jwk_to_key({k: v for k, v in jwk.items() if k != "kid"})
    except ValueError:
        raise
    except Exception as exc:  # PyJWK's own errors: a point not on the curve, a wrong length
        raise ValueError(f"the JWK is not a valid public key ({type(exc).__name__})") from None


def confirmation(cnf: Any) -> Confirmation:
    """Parse a key's `cnf` claim (RFC 7800): exactly one of `jkt` or `jwk`; ValueError otherwise.

    A confirmation method this gateway cannot enforce (`x5t#S256`, `jwe`, `jku`, `kid`) makes the key
    unusable rather than a bearer key.
    """
    if not isinstance(cnf, dict) or len(cnf) != 1:
        raise ValueError("cnf must hold exactly one of jkt or jwk")
    if "jkt" in cnf:
        if not isinstance(cnf["jkt"], str) or not _JKT.match(cnf["jkt"]):
            raise ValueError("cnf.jkt must be a base64url SHA-256 thumbprint")
        return Confirmation(cnf["jkt"])
    if "jwk" in cnf:
        holder = public_key_of(cnf["jwk"])
        return Confirmation(thumbprint(cnf["jwk"]), holder)
    raise ValueError("cnf must hold jkt or jwk")


def normalize_url(url: str) -> str | None:
    """scheme://authority/path of an absolute http(s) URL, RFC 3986 §6.2.2-normalised; None if it is not one.

    Query and fragment are dropped (RFC 9449 §4.3 item 9); scheme and host are lowercased, a default
    port removed, an empty path becomes "/", and percent-encodings get uppercase hex.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None \
            or parts.password is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = re.sub(r"%[0-9a-fA-F]{2}", lambda m: m.group(0).upper(), parts.path or "/")
    return urlunsplit((scheme, netloc, path, "", ""))


def request_url(headers: Mapping[str, str], path: str, public_url: str | None) -> str | None:
    """The URL of this request as the client addressed it, normalised.

    With `public_url` the origin is the configured one. Without it, it is built from the `:scheme` and
    `:authority` Envoy passes on, which the client chooses itself: then only method and path bind a proof
    to this gateway (its ath, iat and jti still bind it to this key, now and once).
    """
    path_only = path.split("?", 1)[0].split("#", 1)[0] or "/"
    if public_url is not None:
        return normalize_url(public_url + path_only)
    authority = headers.get(":authority") or headers.get("host") or ""
    scheme = headers.get(":scheme") or "http"
    if not authority or any(c in authority for c in "/?#@ \t"):
        return None
    return normalize_url(f"{scheme}://{authority}{path_only}")


def _segment(segment: str) -> bytes:
    if not _B64URL.match(segment):
        raise DpopRefusal("DPoP proof is not a compact JWS")
    decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if b64url(decoded) != segment:
        raise DpopRefusal("DPoP proof is not canonical base64url")
    return decoded


def _json(segment: str) -> dict[str, Any]:
    try:
        value = loads_strict(_segment(segment))
    except Refusal:
        raise
    except (ValueError, RecursionError):
        raise DpopRefusal("DPoP proof is not valid JSON") from None
    if not isinstance(value, dict):
        raise DpopRefusal("DPoP proof is not a JSON object")
    return value


def verify_proof(proof: str, *, method: str, url: str | None, now: float, leeway_s: int,
                 access_token: str | None = None, jkt: str | None = None) -> DpopProof:
    """Check one `DPoP` header value against this request (RFC 9449 §4.3); raise DpopRefusal otherwise.

    `access_token` set: the proof must carry its `ath`. `jkt` set: the proof's key must have that thumbprint.
    """
    try:
        return _verify_proof(proof, method, url, now, leeway_s, access_token, jkt)
    except Refusal:
        raise
    except Exception:  # any shape no check anticipated is still the client's malformed proof
        raise DpopRefusal("DPoP proof is malformed") from None


def _verify_proof(proof: str, method: str, url: str | None, now: float, leeway_s: int,
                  access_token: str | None, jkt: str | None) -> DpopProof:
    parts = _proof_parts(proof)
    header, claims = _json(parts[0]), _json(parts[1])
    proof_jkt = _check_signature(parts, header)
    jti, iat = _check_request_claims(claims, method, url, now, leeway_s)
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise DpopRefusal("DPoP proof ath does not match the access token")
    if jkt is not None and proof_jkt != jkt:
        raise DpopRefusal("DPoP proof is signed by a key this dynamic key is not bound to")
    return DpopProof(proof_jkt, jti, iat)


def _proof_parts(proof: str) -> list[str]:
    """The three segments of the one proof the request sent."""
    if not proof:
        raise DpopRefusal("this key is sender-constrained: send a DPoP proof header (RFC 9449)")
    if "," in proof or len(proof) > MAX_PROOF_CHARS:  # Envoy joins repeated headers with commas
        raise DpopRefusal("send exactly one DPoP proof header")
    parts = proof.split(".")
    if len(parts) != 3 or not all(parts):
        raise DpopRefusal("DPoP proof is not a compact JWS")
    return parts


def _check_signature(parts: list[str], header: Mapping[str, Any]) -> str:
    """The proof's header is acceptable and its signature verifies with its own jwk; that jwk's thumbprint."""
    if header.get("typ") != "dpop+jwt":
        raise DpopRefusal("DPoP proof typ must be dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise DpopRefusal(f"DPoP proof alg must be one of {', '.join(DPOP_ALGS)}")
    if "crit" in header or "jku" in header or "x5u" in header or "x5c" in header:
        raise DpopRefusal("DPoP proof header carries parameters that are not accepted")
    try:
        key = public_key_of(header.get("jwk"))
        proof_jkt = thumbprint(header["jwk"])
    except (ValueError, TypeError) as exc:
        raise DpopRefusal(f"DPoP proof jwk is not usable: {exc}") from None
    if key.alg != alg:
        raise DpopRefusal("DPoP proof alg does not match its jwk")
    try:
        valid = ALGORITHMS[alg].verify(f"{parts[0]}.{parts[1]}".encode("ascii"), key.key, _segment(parts[2]))
    except DpopRefusal:
        raise
    except Exception:
        valid = False
    if not valid:
        raise DpopRefusal("DPoP proof signature is invalid")
    return proof_jkt


def _check_request_claims(claims: Mapping[str, Any], method: str, url: str | None, now: float,
                          leeway_s: int) -> tuple[str, float]:
    """The proof's jti, htm, htu and iat fit this request, now; its jti and iat."""
    jti, htm, htu, iat = claims.get("jti"), claims.get("htm"), claims.get("htu"), claims.get("iat")
    if not isinstance(jti, str) or not 1 <= len(jti) <= 256:
        raise DpopRefusal("DPoP proof needs a jti (at most 256 characters)")
    if htm != method:
        raise DpopRefusal(f"DPoP proof htm does not match the request method {method}")
    if not isinstance(htu, str) or url is None or normalize_url(htu) != url:
        raise DpopRefusal("DPoP proof htu does not match the request URL")
    if isinstance(iat, bool) or not isinstance(iat, int | float) or iat != iat:
        raise DpopRefusal("DPoP proof needs a numeric iat")
    if abs(now - float(iat)) > PROOF_WINDOW_S + leeway_s:
        raise DpopRefusal(f"DPoP proof iat is more than {PROOF_WINDOW_S + leeway_s} s from now")
    return jti, float(iat)
