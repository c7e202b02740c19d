"""Adversarial dynamic keys by name, for comparing verification outcomes across revisions.

Imports nothing of the gateway: the same cases can be verified by any revision of it (the differential
test, tests/test_key_differential.py, holds the outcomes revision 4bddeff gave). Keys are generated per
run; every case is built so that its outcome depends on its name only, never on the random key bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

NOW = 1_800_000_000
AUDIENCE = "dynaseal"
SEED_SECRET = "t1-seed-secret-0123456789abcdef-xyz"
HS1_SECRET = "t1-kid-hs1-secret-0123456789abcdef"
HOST = "gw.example"
PATH = "/v1/chat/completions"
MAX_TOKEN_CHARS = 16384
Signer = Callable[[bytes], bytes]
# The environment the config's secrets are read from.
SECRET_ENV = {"KEYDIFF_T1_SEED": SEED_SECRET, "KEYDIFF_T1_HS1": HS1_SECRET}


def b64(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(value: int) -> str:
    return b64(value.to_bytes(32, "big"))


@dataclass
class Key:
    """A signing key (Ed25519 or P-256) and its public JWK."""

    alg: str
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def ed(cls) -> Key:
        """A new Ed25519 key."""
        return cls("EdDSA", ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def es(cls) -> Key:
        """A new P-256 key."""
        return cls("ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, str]:
        """The public JWK (OKP or EC)."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            raw = self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
        numbers = self.private.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _int_b64(numbers.x), "y": _int_b64(numbers.y)}

    def thumbprint(self) -> str:
        """RFC 7638 thumbprint of the public JWK."""
        jwk = self.jwk()
        members = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
        canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
        return b64(hashlib.sha256(canonical.encode()).digest())

    def public_pem(self) -> bytes:
        """The public key as PEM (what an HS/asymmetric confusion attack would use as an HMAC secret)."""
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, message: bytes) -> bytes:
        """A JWS signature (raw r||s for ES256)."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(message)
        r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def hs256(secret: bytes) -> Signer:
    """An HMAC-SHA256 signer."""
    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


def jws(header: dict[str, Any] | str, payload: dict[str, Any] | str, sign: Signer | None) -> str:
    """A compact JWS from raw parts (a str part is used as written: duplicate members, odd spacing)."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(h.encode())}.{b64(p.encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()) if sign else b'')}"


@dataclass
class Keys:
    """Every key the cases use."""

    ed1: Key = field(default_factory=Key.ed)
    es1: Key = field(default_factory=Key.es)
    ed2: Key = field(default_factory=Key.ed)
    ed3: Key = field(default_factory=Key.ed)
    holder_ed: Key = field(default_factory=Key.ed)
    holder_es: Key = field(default_factory=Key.es)
    holder_ed2: Key = field(default_factory=Key.ed)
    holder_es2: Key = field(default_factory=Key.es)
    stranger: Key = field(default_factory=Key.ed)
    dpop: Key = field(default_factory=Key.ed)

    def labels(self) -> dict[str, str]:
        """Thumbprint -> key name, so an outcome names the key a cnf binds, not its random bytes."""
        return {getattr(self, name).thumbprint(): name for name in self.__dataclass_fields__}


def write_config(directory: Path, keys: Keys) -> Path:
    """A config both revisions load: t1 (seed, EdDSA, ES256, HS256 by kid; depth 4), t2 (DPoP only, depth 1),
    t3 (no seed secret, no children). Its secrets are read from SECRET_ENV's variables."""
    tenants = [
        {"id": "t1", "keys": [{"alg": "HS256", "secret_env": "KEYDIFF_T1_SEED"},
                              {"kid": "ed1", "alg": "EdDSA", "public_jwk": keys.ed1.jwk()},
                              {"kid": "es1", "alg": "ES256", "public_jwk": keys.es1.jwk()},
                              {"kid": "hs1", "alg": "HS256", "secret_env": "KEYDIFF_T1_HS1"}],
         "limits": {"models": ["m1", "m2", "m3"], "max_tokens": 1000, "max_ttl": 3600, "rpm": 100,
                    "budget": 50000, "params": {"temperature": {"min": 0, "max": 1.5}},
                    "max_chain_depth": 4, "budget_cost": "10"}},
        {"id": "t2", "keys": [{"kid": "ed2", "alg": "EdDSA", "public_jwk": keys.ed2.jwk()}],
         "limits": {"models": ["*"], "max_ttl": 3600, "require_dpop": True, "max_chain_depth": 1}},
        {"id": "t3", "keys": [{"kid": "ed3", "alg": "EdDSA", "public_jwk": keys.ed3.jwk()}],
         "limits": {"models": ["m1"], "max_ttl": 3600}},
    ]
    raw = {"gateway": {"data_dir": str(directory / "data")}, "tenants": tenants}
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@dataclass(frozen=True)
class Case:
    """One token as presented on one request."""

    token: str
    via_dpop: bool = False
    proof: str | None = None


def native(tenant: str = "t1", **overrides: Any) -> dict[str, Any]:
    """A valid native claim set at NOW (None drops a claim)."""
    claims: dict[str, Any] = {"iss": tenant, "aud": AUDIENCE, "iat": NOW, "nbf": NOW, "exp": NOW + 600,
                              "jti": "root-1", "models": ["m1", "m2"], "max_tokens": 500}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def seed_claims(**overrides: Any) -> dict[str, Any]:
    """The seed's own claim names, valid at NOW."""
    claims: dict[str, Any] = {"api-key": "t1", "model": "m1", "max_tokens": 50, "expiring": NOW + 600,
                              "event_id": "ev-1"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def proof(key: Key, token: str, **overrides: Any) -> str:
    """A DPoP proof for POST https://HOST/PATH at NOW bound to `token`."""
    claims: dict[str, Any] = {"jti": "p-1", "htm": "POST", "htu": f"https://{HOST}{PATH}", "iat": NOW,
                              "ath": b64(hashlib.sha256(token.encode()).digest())}
    claims.update(overrides)
    header = {"typ": "dpop+jwt", "alg": key.alg, "jwk": key.jwk()}
    return jws(header, {k: v for k, v in claims.items() if v is not None}, key.sign)


def _ed1(claims: dict[str, Any] | str, keys: Keys, **header: Any) -> str:
    return jws({"alg": "EdDSA", "kid": "ed1", "typ": "JWT", **header}, claims, keys.ed1.sign)


def _seed(claims: dict[str, Any] | str, **header: Any) -> str:
    return jws({"alg": "HS256", "typ": "JWT", **header}, claims, hs256(SEED_SECRET.encode()))


def child(parent: str, holder: Key, **overrides: Any) -> str:
    """A child of `parent` signed by `holder` (None drops a claim; `_header` replaces header members)."""
    header: dict[str, Any] = {"alg": holder.alg, "typ": "dynaseal-child+jwt"}
    header.update(overrides.pop("_header", {}))
    claims: dict[str, Any] = {"iss": "t1", "aud": AUDIENCE, "exp": NOW + 300, "jti": "c-1", "prn": parent}
    claims.update(overrides)
    return jws({k: v for k, v in header.items() if v is not None},
               {k: v for k, v in claims.items() if v is not None}, holder.sign)


def _roots(keys: Keys) -> dict[str, Case]:
    ed = keys.ed1
    pub_raw = ed.jwk()["x"]
    valid = _ed1(native(), keys)
    head, body, sig = valid.split(".")
    cases = {
        "root.ed1": valid,
        "root.es1": jws({"alg": "ES256", "kid": "es1", "typ": "JWT"}, native(), keys.es1.sign),
        "root.hs1_kid": jws({"alg": "HS256", "kid": "hs1"}, native(), hs256(HS1_SECRET.encode())),
        "root.seed_native": _seed(native()),
        "root.seed_native_kid_null": jws('{"alg":"HS256","kid":null}', native(), hs256(SEED_SECRET.encode())),
        # Algorithm confusion.
        "alg.hs256_with_ed1_pem": jws({"alg": "HS256", "kid": "ed1"}, native(), hs256(ed.public_pem())),
        "alg.hs256_with_ed1_raw": jws({"alg": "HS256", "kid": "ed1"}, native(), hs256(pub_raw.encode())),
        "alg.hs256_kidless_with_ed1_pem": jws({"alg": "HS256"}, native(), hs256(ed.public_pem())),
        "alg.none": jws({"alg": "none", "kid": "ed1"}, native(), None).rstrip(".") + ".AA",
        "alg.none_kidless": jws({"alg": "none"}, native(), None) + "AA",
        "alg.None_case": jws({"alg": "None"}, native(), hs256(SEED_SECRET.encode())),
        "alg.es256_header_on_ed1": jws({"alg": "ES256", "kid": "ed1"}, native(), keys.es1.sign),
        "alg.eddsa_header_on_es1": jws({"alg": "EdDSA", "kid": "es1"}, native(), ed.sign),
        "alg.hs384_seed": jws({"alg": "HS384"}, native(), hs256(SEED_SECRET.encode())),
        "alg.lowercase": jws({"alg": "hs256"}, native(), hs256(SEED_SECRET.encode())),
        "alg.list": jws({"alg": ["HS256"]}, native(), hs256(SEED_SECRET.encode())),
        "alg.missing": jws({"kid": "ed1"}, native(), ed.sign),
        "alg.eddsa_kidless_seed": jws({"alg": "EdDSA"}, native(), ed.sign),
        "alg.hs256_kid_hs1_signed_with_seed": jws({"alg": "HS256", "kid": "hs1"}, native(),
                                                 hs256(SEED_SECRET.encode())),
        "alg.hs256_kidless_signed_with_hs1": jws({"alg": "HS256"}, native(), hs256(HS1_SECRET.encode())),
        # kid tricks.
        "kid.path": _ed1(native(), keys, kid="../ed1"),
        "kid.trailing_space": _ed1(native(), keys, kid="ed1 "),
        "kid.unknown": _ed1(native(), keys, kid="zz"),
        "kid.empty": _ed1(native(), keys, kid=""),
        "kid.int": _ed1(native(), keys, kid=5),
        "kid.list": _ed1(native(), keys, kid=["ed1"]),
        "kid.nul": _ed1(native(), keys, kid="ed1\u0000"),
        "kid.url": _ed1(native(), keys, kid="https://evil.example/ed1"),
        "kid.other_tenants": jws({"alg": "EdDSA", "kid": "ed2"}, native(), keys.ed2.sign),
        "kid.other_tenant_iss": jws({"alg": "EdDSA", "kid": "ed2"}, native("t2"), ed.sign),
        "kid.case": _ed1(native(), keys, kid="ED1"),
        # Duplicate members.
        "dup.header_alg": jws('{"alg":"HS256","alg":"EdDSA","kid":"ed1"}', native(), ed.sign),
        "dup.header_kid": jws('{"alg":"EdDSA","kid":"zz","kid":"ed1"}', native(), ed.sign),
        "dup.payload_models": _ed1(json.dumps(native())[:-1] + ', "models": ["m3"]}', keys),
        "dup.payload_iss": _ed1('{"iss":"t2",' + json.dumps(native())[1:], keys),
        # Encodings.
        "b64.padded_payload": f"{head}.{body}{'=' * (-len(body) % 4) or '=='}.{sig}",
        "b64.std_alphabet_sig": f"{head}.{body}.{sig.replace('-', '+').replace('_', '/')}"
        if ("-" in sig or "_" in sig) else f"{head}.{body}.{sig}+",
        "b64.noncanonical_sig": f"{head}.{body}.{sig[:-1]}{_flip_unused_bits(sig)}",
        "b64.noncanonical_header": _noncanonical_segment_token(valid, 0),
        "b64.noncanonical_payload": _noncanonical_segment_token(valid, 1),
        "b64.whitespace": f"{head}.{body}.{sig} ",
        "b64.four_segments": f"{valid}.x",
        "b64.empty_sig": f"{head}.{body}.",
        "b64.bom_payload": _ed1("\ufeff" + json.dumps(native()), keys),
        "json.payload_array": _ed1("[1]", keys),
        "json.header_not_object": jws('"x"', native(), ed.sign),
        "json.nan_exp": _ed1(json.dumps(native())[:-1] + ', "exp": NaN}', keys),
        "json.deep": _ed1(json.dumps({**native(), "cb": _nested(400)}), keys),
        "json.lone_surrogate": _ed1(json.dumps(native(sub="\ud800")), keys),
        # Header parameters that would let a token choose its key.
        "hdr.crit": _ed1(native(), keys, crit=["exp"]),
        "hdr.jku": _ed1(native(), keys, jku="https://evil.example/jwks"),
        "hdr.jwk": _ed1(native(), keys, jwk=keys.stranger.jwk()),
        "hdr.x5u": _ed1(native(), keys, x5u="https://evil.example/x5"),
        "hdr.x5c": _ed1(native(), keys, x5c=["MIIB"]),
        "hdr.typ_child_on_root": _ed1(native(), keys, typ="dynaseal-child+jwt"),
        "hdr.jwk_stranger_signed": jws({"alg": "EdDSA", "kid": "ed1", "jwk": keys.stranger.jwk()}, native(),
                                       keys.stranger.sign),
        "sig.stranger": jws({"alg": "EdDSA", "kid": "ed1"}, native(), keys.stranger.sign),
        "sig.swapped_payload": f"{head}.{b64(json.dumps(native(models=['m3'])).encode())}.{sig}",
    }
    return {name: Case(token) for name, token in cases.items()}


def _flip_unused_bits(segment: str) -> str:
    """The last character of a segment with one unused low bit set (same bytes, another spelling)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 4, 3: 2}.get(len(segment) % 4, 0)
    index = alphabet.index(segment[-1])
    return alphabet[index ^ 1] if unused else segment[-1] + "A"


def _noncanonical_segment_token(token: str, which: int) -> str:
    parts = token.split(".")
    segment = parts[which]
    if len(segment) % 4 in (2, 3):
        parts[which] = segment[:-1] + _flip_unused_bits(segment)
    else:
        parts[which] = segment + "="
    return ".".join(parts)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _claims(keys: Keys) -> dict[str, Case]:
    k = keys
    cases = {
        # Times (leeway 30 s, max_ttl 3600 s).
        "time.expired_31": _ed1(native(exp=NOW - 31), k),
        "time.expired_30_in_leeway": _ed1(native(exp=NOW - 30), k),
        "time.nbf_31_ahead": _ed1(native(nbf=NOW + 31), k),
        "time.nbf_30_ahead": _ed1(native(nbf=NOW + 30), k),
        "time.iat_31_ahead": _ed1(native(iat=NOW + 31), k),
        "time.ttl_at_max": _ed1(native(exp=NOW + 3600), k),
        "time.ttl_over_max": _ed1(native(exp=NOW + 3601), k),
        "time.ttl_iat_in_leeway": _ed1(native(iat=NOW + 30, exp=NOW + 3630), k),
        "time.ttl_iat_past": _ed1(native(iat=NOW - 1000, exp=NOW + 3600), k),
        "time.exp_missing": _ed1(native(exp=None), k),
        "time.exp_float": _ed1(native(exp=NOW + 600.5), k),
        "time.exp_string": _ed1(native(exp=str(NOW + 600)), k),
        "time.exp_bool": _ed1(native(exp=True), k),
        "time.exp_huge_int": _ed1(native(exp=10**400), k),
        "time.exp_1e308": _ed1(native(exp=1e308), k),
        "time.nbf_string": _ed1(native(nbf="soon"), k),
        # Audience.
        "aud.list_with": _ed1(native(aud=["other", AUDIENCE]), k),
        "aud.list_without": _ed1(native(aud=["other"]), k),
        "aud.missing": _ed1(native(aud=None), k),
        "aud.space": _ed1(native(aud=AUDIENCE + " "), k),
        "aud.nested": _ed1(native(aud=[[AUDIENCE]]), k),
        "aud.seed_native_missing": _seed(native(aud=None)),
        # Limits and their shapes.
        "lim.max_tokens_over_tenant": _ed1(native(max_tokens=5000), k),
        "lim.max_tokens_zero": _ed1(native(max_tokens=0), k),
        "lim.max_tokens_missing": _ed1(native(max_tokens=None), k),
        "lim.max_tokens_float": _ed1(native(max_tokens=10.0), k),
        "lim.budget_over_tenant": _ed1(native(budget=10**9), k),
        "lim.budget_under": _ed1(native(budget=100), k),
        "lim.uses": _ed1(native(uses=3), k),
        "lim.uses_negative": _ed1(native(uses=-1), k),
        "lim.rpm_over_tenant": _ed1(native(rpm=1000), k),
        "lim.models_string": _ed1(native(models="m1"), k),
        "lim.models_outside_tenant": _ed1(native(models=["m9"]), k),
        "lim.models_missing": _ed1(native(models=None), k),
        "lim.params_widen_tenant": _ed1(native(params={"temperature": {"min": -5, "max": 9}}), k),
        "lim.params_allow": _ed1(native(params={"allow": ["top_p"], "top_p": {"max": 0.5}}), k),
        "lim.params_bad_member": _ed1(native(params={"temperature": {"maximum": 1}}), k),
        "lim.budget_cost": _ed1(native(budget_cost={"amount": "2.5", "currency": "USD"}), k),
        "lim.budget_cost_over_tenant": _ed1(native(budget_cost={"amount": "500", "currency": "USD"}), k),
        "lim.budget_cost_currency": _ed1(native(budget_cost={"amount": "2.5", "currency": "EUR"}), k),
        "lim.budget_cost_decimals": _ed1(native(budget_cost={"amount": "0.0000001", "currency": "USD"}), k),
        "lim.budget_cost_float": _ed1(native(budget_cost={"amount": 2.5, "currency": "USD"}), k),
        "lim.cb": _ed1(native(cb={"order": 7}), k),
        "lim.cb_too_big": _ed1(native(cb={"x": "a" * 1100}), k),
        "lim.sub_int": _ed1(native(sub=5), k),
        "lim.sub": _ed1(native(sub="user-9"), k),
        "lim.jti_129": _ed1(native(jti="j" * 129), k),
        "lim.jti_missing": _ed1(native(jti=None), k),
        "lim.event_id_bool": _ed1(native(event_id=True), k),
        "lim.event_id_int": _ed1(native(event_id=42), k),
        "lim.origins": _ed1(native(origins=["https://app.example"]), k),
        "lim.origins_bad": _ed1(native(origins=["javascript:alert(1)"]), k),
        "lim.unknown_claim": _ed1(native(tier="gold"), k),
        "iss.unknown": _ed1(native("t9"), k),
        "iss.int": _ed1(native(iss=7), k),
        "iss.bool": _ed1(native(iss=True), k),
        "iss.missing": _ed1(native(iss=None), k),
        # The seed's format.
        "seed.valid": _seed(seed_claims()),
        "seed.valid_no_typ": jws({"alg": "HS256"}, seed_claims(), hs256(SEED_SECRET.encode())),
        "seed.event_id_int": _seed(seed_claims(event_id=9)),
        "seed.model_list": _seed(seed_claims(model=["m1", "m2"])),
        "seed.model_outside_tenant": _seed(seed_claims(model="m9")),
        "seed.native_uses": _seed(seed_claims(uses=1)),
        "seed.native_budget": _seed(seed_claims(budget=10)),
        "seed.native_cnf": _seed(seed_claims(cnf={"jkt": k.dpop.thumbprint()})),
        "seed.native_aud": _seed(seed_claims(aud=AUDIENCE)),
        "seed.native_prn": _seed(seed_claims(prn=_ed1(native(), k))),
        "seed.with_iss": _seed(seed_claims(iss="t1")),
        "seed.kid_hs1": jws({"alg": "HS256", "kid": "hs1"}, seed_claims(), hs256(HS1_SECRET.encode())),
        "seed.eddsa_kid": _ed1(seed_claims(), k),
        "seed.expired": _seed(seed_claims(expiring=NOW - 31)),
        "seed.no_expiring": _seed(seed_claims(expiring=None)),
        "seed.ttl_over_max": _seed(seed_claims(expiring=NOW + 3601)),
        "seed.wrong_secret": jws({"alg": "HS256"}, seed_claims(), hs256(b"not-the-secret")),
        "seed.other_tenant": _seed(seed_claims(**{"api-key": "t3"})),
        "seed.api_key_int": _seed(seed_claims(**{"api-key": 7})),
        "seed.max_tokens_over": _seed(seed_claims(max_tokens=99999)),
        "seed.t3_no_secret": jws({"alg": "HS256"}, native("t3"), hs256(SEED_SECRET.encode())),
    }
    return {name: Case(token) for name, token in cases.items()}


def _dpop(keys: Keys) -> dict[str, Case]:
    k = keys
    jkt = {"jkt": k.dpop.thumbprint()}
    bound = _ed1(native(cnf=jkt), k)
    holder_bound = _ed1(native(cnf={"jwk": k.dpop.jwk()}), k)
    t2_bound = jws({"alg": "EdDSA", "kid": "ed2"}, native("t2", cnf=jkt), k.ed2.sign)
    t2_plain = jws({"alg": "EdDSA", "kid": "ed2"}, native("t2"), k.ed2.sign)
    plain = _ed1(native(), k)
    return {
        "dpop.bound_valid": Case(bound, True, proof(k.dpop, bound)),
        "dpop.holder_bound_valid": Case(holder_bound, True, proof(k.dpop, holder_bound)),
        "dpop.bound_as_bearer": Case(bound),
        "dpop.bound_as_bearer_with_proof": Case(bound, False, proof(k.dpop, bound)),
        "dpop.no_proof": Case(bound, True, None),
        "dpop.wrong_ath": Case(bound, True, proof(k.dpop, plain)),
        "dpop.no_ath": Case(bound, True, proof(k.dpop, bound, ath=None)),
        "dpop.wrong_htm": Case(bound, True, proof(k.dpop, bound, htm="GET")),
        "dpop.wrong_htu": Case(bound, True, proof(k.dpop, bound, htu="https://evil.example/v1/chat/completions")),
        "dpop.htu_query": Case(bound, True, proof(k.dpop, bound, htu=f"https://{HOST}{PATH}?x=1")),
        "dpop.old_iat": Case(bound, True, proof(k.dpop, bound, iat=NOW - 400)),
        "dpop.future_iat": Case(bound, True, proof(k.dpop, bound, iat=NOW + 400)),
        "dpop.other_key": Case(bound, True, proof(k.stranger, bound)),
        "dpop.two_proofs": Case(bound, True, proof(k.dpop, bound) + "," + proof(k.dpop, bound)),
        "dpop.proof_hs256": Case(bound, True, jws({"typ": "dpop+jwt", "alg": "HS256", "jwk": k.dpop.jwk()},
                                                  {"jti": "p", "htm": "POST", "htu": f"https://{HOST}{PATH}",
                                                   "iat": NOW}, hs256(b"x"))),
        "dpop.proof_private_jwk": Case(bound, True, jws({"typ": "dpop+jwt", "alg": "EdDSA",
                                                         "jwk": {**k.dpop.jwk(), "d": "AAAA"}},
                                                        {"jti": "p", "htm": "POST", "iat": NOW,
                                                         "htu": f"https://{HOST}{PATH}"}, k.dpop.sign)),
        "dpop.unbound_via_dpop": Case(plain, True, proof(k.dpop, plain)),
        "dpop.require_unbound": Case(t2_plain),
        "dpop.require_bound_valid": Case(t2_bound, True, proof(k.dpop, t2_bound)),
        "dpop.cnf_both": Case(_ed1(native(cnf={**jkt, "jwk": k.dpop.jwk()}), k)),
        "dpop.cnf_x5t": Case(_ed1(native(cnf={"x5t#S256": "abc"}), k)),
        "dpop.cnf_jkt_bad": Case(_ed1(native(cnf={"jkt": "short"}), k)),
        "dpop.cnf_jwk_private": Case(_ed1(native(cnf={"jwk": {**k.dpop.jwk(), "d": "AAAA"}}), k)),
        "dpop.cnf_empty": Case(_ed1(native(cnf={}), k)),
    }


def chain(keys: Keys, depth: int, root: dict[str, Any] | None = None, **leaf: Any) -> tuple[str, Key]:
    """A chain `depth` levels below a t1 root, each level bound (cnf.jwk) to the next holder; the leaf token
    (its claims overridden by `leaf`) and the key its own cnf names."""
    holders = [keys.holder_ed, keys.holder_es, keys.holder_ed2, keys.holder_es2, keys.dpop]
    token = _ed1(native(cnf={"jwk": holders[0].jwk()}, budget=1000, uses=10, rpm=50, exp=NOW + 900,
                        **(root or {})), keys)
    for level in range(1, depth + 1):
        claims: dict[str, Any] = {"jti": f"c-{level}", "cnf": {"jwk": holders[level].jwk()},
                                  "exp": NOW + 900 - 60 * level}
        if level == depth:
            claims.update(leaf)
        token = child(token, holders[level - 1], **claims)
    return token, holders[depth]


def _bound(keys: Keys, depth: int, root: dict[str, Any] | None = None, **leaf: Any) -> Case:
    token, holder = chain(keys, depth, root, **leaf)
    return Case(token, True, proof(holder, token))


def _children(keys: Keys) -> dict[str, Case]:
    k = keys
    cases = {f"chain.depth{n}": _bound(k, n) for n in range(1, 5)}
    cases.update({
        "chain.root_alone": _bound(k, 0),
        "chain.depth4_es_leaf_narrow": _bound(k, 4, models=["m1"], max_tokens=10, budget=5, uses=1, rpm=1),
        "chain.depth2_inherits": _bound(k, 2, models=None),
        "widen.models": _bound(k, 1, models=["m3"]),
        "widen.models_tenant_only": _bound(k, 1, models=["m9"]),
        "widen.max_tokens": _bound(k, 1, max_tokens=501),
        "widen.max_tokens_equal": _bound(k, 1, max_tokens=500),
        "widen.budget": _bound(k, 1, budget=1001),
        "widen.uses": _bound(k, 1, uses=11),
        "widen.rpm": _bound(k, 1, rpm=51),
        "widen.exp": _bound(k, 1, exp=NOW + 901),
        "widen.exp_equal": _bound(k, 1, exp=NOW + 900),
        "widen.budget_cost": _bound(k, 1, budget_cost={"amount": "11", "currency": "USD"}),
        "widen.budget_cost_under_root": _bound(k, 1, root={"budget_cost": {"amount": "1", "currency": "USD"}},
                                               budget_cost={"amount": "2", "currency": "USD"}),
        "widen.budget_cost_ok": _bound(k, 1, budget_cost={"amount": "1", "currency": "USD"}),
        "widen.params_range": _bound(k, 1, params={"temperature": {"max": 2}}),
        "widen.params_range_min_null": _bound(k, 1, params={"temperature": {"min": None}}),
        "widen.params_new_name_under_allow": _bound(k, 1, root={"params": {"allow": ["top_p"]}},
                                                    params={"seed": {"max": 5}}),
        "widen.params_allow": _bound(k, 1, root={"params": {"allow": ["top_p"]}}, params={"allow": ["top_p", "n"]}),
        "widen.params_narrow_ok": _bound(k, 1, params={"temperature": {"max": 1.0}}),
        "widen.deep_budget": _bound(k, 3, budget=999),
        "widen.deep_budget_over_grandparent": _bound(k, 3, budget=1001),
        "child.cnf_removed": Case(chain(k, 1, cnf=None)[0]),
        "child.cnf_removed_depth3": Case(chain(k, 3, cnf=None)[0]),
        "child.cnf_jkt": _bound(k, 1, cnf={"jkt": k.holder_es.thumbprint()}),
        "child.as_bearer": Case(chain(k, 1)[0]),
        "child.typ_missing": _bound(k, 1, _header={"typ": None}),
        "child.typ_jwt": _bound(k, 1, _header={"typ": "JWT"}),
        "child.alg_mismatch": _bound(k, 1, _header={"alg": "ES256"}),
        "child.alg_none": _bound(k, 1, _header={"alg": "none"}),
        "child.hdr_jwk": _bound(k, 1, _header={"jwk": k.stranger.jwk()}),
        "child.hdr_crit": _bound(k, 1, _header={"crit": ["exp"]}),
        "child.hdr_kid": _bound(k, 1, _header={"kid": "ed1"}),
        "child.iss_other": _bound(k, 1, iss="t3"),
        "child.iss_missing": _bound(k, 1, iss=None),
        "child.aud_missing": _bound(k, 1, aud=None),
        "child.aud_list": _bound(k, 1, aud=["x", AUDIENCE]),
        "child.exp_missing": _bound(k, 1, exp=None),
        "child.expired": _bound(k, 1, exp=NOW - 31),
        "child.expired_in_leeway": _bound(k, 1, exp=NOW - 30),
        "child.nbf_future": _bound(k, 1, nbf=NOW + 31),
        "child.iat_future_in_leeway": _bound(k, 1, iat=NOW + 30),
        "child.jti_missing": _bound(k, 1, jti=None),
        "child.jti_reuse_root": _bound(k, 1, jti="root-1"),
        "child.jti_reuse_parent": _bound(k, 2, jti="c-1"),
        "child.sub_change": _bound(k, 1, sub="someone"),
        "child.sub_same_absent": _bound(k, 1, sub=None),
        "child.event_id": _bound(k, 1, event_id="x"),
        "child.cb": _bound(k, 1, cb={}),
        "child.origins": _bound(k, 1, origins=["https://a.example"]),
        "child.unknown_claim": _bound(k, 1, scope="admin"),
        "child.seed_claim": _bound(k, 1, expiring=NOW + 10),
        "child.prn_int": _bound(k, 1, prn=5),
        "child.prn_garbage": _bound(k, 1, prn="a.b.c"),
        "child.prn_empty": _bound(k, 1, prn=""),
        "child.wrong_holder": Case(*_signed_by(k, k.stranger)),
        "child.of_unbound_parent": _child_of(k, _ed1(native(), k)),
        "child.of_jkt_parent": _child_of(k, _ed1(native(cnf={"jkt": k.holder_ed.thumbprint()}), k)),
        "child.of_seed_parent": _child_of(k, _seed(native(cnf={"jwk": k.holder_ed.jwk()}))),
        "child.of_seed_format_parent": _child_of(k, _seed(seed_claims())),
        "child.of_expired_parent": _child_of(k, _ed1(native(cnf={"jwk": k.holder_ed.jwk()}, exp=NOW - 31), k)),
        "child.of_forged_parent": _child_of(k, jws({"alg": "EdDSA", "kid": "ed1"},
                                                   native(cnf={"jwk": k.holder_ed.jwk()}), k.stranger.sign)),
        "child.t3_no_depth": _child_of(k, jws({"alg": "EdDSA", "kid": "ed3"},
                                              native("t3", cnf={"jwk": k.holder_ed.jwk()}), k.ed3.sign), iss="t3"),
        "child.t2_depth2": _t2_chain(k, 2),
        "child.t2_depth1": _t2_chain(k, 1),
        "bomb.depth5": Case(_deep(k, 5)),
        "bomb.depth8": Case(_deep(k, 8)),
        "bomb.self_prn_loop": Case(child("x.y.z", k.holder_ed, prn=child("a.b.c", k.holder_ed))),
    })
    return cases


def _signed_by(keys: Keys, signer: Key) -> tuple[str, bool, str]:
    root = _ed1(native(cnf={"jwk": keys.holder_ed.jwk()}), keys)
    token = child(root, signer, cnf={"jwk": keys.dpop.jwk()})
    return token, True, proof(keys.dpop, token)


def _child_of(keys: Keys, parent: str, **claims: Any) -> Case:
    token = child(parent, keys.holder_ed, cnf={"jwk": keys.dpop.jwk()}, **claims)
    return Case(token, True, proof(keys.dpop, token))


def _t2_chain(keys: Keys, depth: int) -> Case:
    token = jws({"alg": "EdDSA", "kid": "ed2"}, native("t2", cnf={"jwk": keys.holder_ed.jwk()}), keys.ed2.sign)
    for level in range(1, depth + 1):
        token = child(token, keys.holder_ed, iss="t2", jti=f"c-{level}", cnf={"jwk": keys.holder_ed.jwk()},
                      exp=NOW + 300 - level)
    return Case(token, True, proof(keys.holder_ed, token))


def _deep(keys: Keys, depth: int) -> str:
    """A chain deeper than any tenant allows, every level signed by one holder (a depth bomb)."""
    token = _ed1(native(cnf={"jwk": keys.holder_ed.jwk()}), keys)
    for level in range(1, depth + 1):
        token = child(token, keys.holder_ed, jti=f"c-{level}", cnf={"jwk": keys.holder_ed.jwk()})
    return token


def _sized(keys: Keys, length: int) -> str:
    """A valid ed1 key padded (in `sub`, and a header member for the last characters) to exactly `length`."""
    def make(pad: int, extra: int) -> str:
        return _ed1(native(sub="s" * pad), keys, cty="x" * extra)
    pad = (length - len(make(0, 0))) * 3 // 4
    while len(make(pad, 0)) > length:
        pad -= 1
    for extra in range(8):
        token = make(pad, extra)
        if len(token) == length:
            return token
    raise AssertionError(f"no key of exactly {length} characters")


def build_cases(keys: Keys) -> dict[str, Case]:
    """Every case by name."""
    cases: dict[str, Case] = {}
    for group in (_roots, _claims, _dpop, _children):
        cases.update(group(keys))
    at_limit = _sized(keys, MAX_TOKEN_CHARS)
    cases["size.at_limit"] = Case(at_limit)
    cases["size.over_limit"] = Case(_sized(keys, MAX_TOKEN_CHARS + 1))
    cases["size.empty"] = Case("")
    cases["size.dots"] = Case("..")
    return cases
