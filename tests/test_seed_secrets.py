"""Several seed-format secrets at once (a rotation): each verifies a kid-less key, none of them is ever
tried for a key that names a kid, and a secret taken out of the config verifies nothing from that load on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from key_cases_support import AUDIENCE, NOW, Key, child, hs256, jws, native, seed_claims

from dynaseal.config import ConfigError, load_config
from dynaseal.errors import Refusal
from dynaseal.keys.tenants import Registry, build_registry
from dynaseal.keys.verification import verify_token

SECRETS = ("seed-one-0123456789abcdef-padded-x", "seed-two-0123456789abcdef-padded-x",
           "seed-three-0123456789abcdef-padded")
KID_SECRET = "kid-hs-0123456789abcdef-padded-xx"
ENV = {f"SEED_{i}": s for i, s in enumerate(SECRETS)} | {"KID_HS": KID_SECRET}


def registry_of(tmp_path: Path, seeds: tuple[int, ...], extra_keys: list[dict[str, Any]] | None = None) -> Registry:
    """Tenant t1 with the seed secrets numbered `seeds` (kid-less HS256), plus `extra_keys`."""
    keys = [{"alg": "HS256", "secret_env": f"SEED_{i}"} for i in seeds]
    keys.append({"kid": "hs1", "alg": "HS256", "secret_env": "KID_HS"})
    raw = {"gateway": {"data_dir": str(tmp_path / "data")},
           "tenants": [{"id": "t1", "keys": keys + (extra_keys or []),
                        "limits": {"models": ["m1", "m2"], "max_ttl": 3600, "max_chain_depth": 1}}]}
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    return build_registry(load_config(path), fetch_new_jwks=False, env=ENV)


def refusal(token: str, registry: Registry) -> str:
    """The refusal's message ('' when the key verifies)."""
    try:
        verify_token(token, registry, NOW)
    except Refusal as refused:
        return refused.message
    return ""


def test_a_kidless_key_verifies_with_any_of_the_seed_secrets_and_is_one_key(tmp_path: Path) -> None:
    registry = registry_of(tmp_path, (0, 1, 2))
    verified = [verify_token(jws({"alg": "HS256"}, seed_claims(), hs256(s.encode())), registry, NOW) for s in SECRETS]
    # The seed format's id hashes the signed content: one key whatever secret signed it.
    assert len({key.jti for key in verified}) == 1
    assert {(key.tenant.id, key.models, key.max_tokens, key.exp) for key in verified} == {
        ("t1", frozenset({"m1"}), 50, NOW + 600)}
    native_key = jws({"alg": "HS256"}, native(), hs256(SECRETS[2].encode()))
    assert verify_token(native_key, registry, NOW).jti == "root-1"


def test_no_secret_outside_the_tenants_seed_secrets_verifies_a_kidless_key(tmp_path: Path) -> None:
    registry = registry_of(tmp_path, (0, 1, 2))
    for secret in (KID_SECRET, "not-a-secret", ""):
        assert refusal(jws({"alg": "HS256"}, seed_claims(), hs256(secret.encode())), registry) == \
            "dynamic key signature is invalid"
    # A kid picks its one key: a seed secret never verifies a key naming another kid.
    assert refusal(jws({"alg": "HS256", "kid": "hs1"}, native(), hs256(SECRETS[1].encode())), registry) == \
        "dynamic key signature is invalid"
    assert refusal(jws({"alg": "EdDSA"}, native(), Key.ed().sign), registry) == \
        "dynamic key algorithm does not match its verification key"


def test_another_spelling_of_a_valid_signature_is_refused_under_every_secret(tmp_path: Path) -> None:
    registry = registry_of(tmp_path, (0, 1, 2))
    token = jws({"alg": "HS256"}, native(), hs256(SECRETS[1].encode()))
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other = alphabet[alphabet.index(sig[-1]) ^ 1]  # a 32-byte HMAC leaves two unused bits in its last character
    assert refusal(f"{head}.{body}.{sig[:-1]}{other}", registry) == "dynamic key is not canonical base64url"


def test_a_secret_taken_out_verifies_nothing_from_that_load_on(tmp_path: Path) -> None:
    token = jws({"alg": "HS256"}, seed_claims(), hs256(SECRETS[0].encode()))
    assert refusal(token, registry_of(tmp_path, (0, 1))) == ""
    assert refusal(token, registry_of(tmp_path, (1, 2))) == "dynamic key signature is invalid"


def test_a_chain_whose_root_is_signed_with_a_later_seed_secret_verifies(tmp_path: Path) -> None:
    registry = registry_of(tmp_path, (0, 1))
    holder = Key.ed()
    root = jws({"alg": "HS256"}, native(cnf={"jwk": holder.jwk()}), hs256(SECRETS[1].encode()))
    leaf = child(root, holder, models=["m1"], aud=AUDIENCE)
    key = verify_token(leaf, registry, NOW)
    assert key.depth == 1 and key.models == frozenset({"m1"}) and key.root.jti == "root-1"


def test_several_kidless_keys_must_all_be_hs256_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keys without kid are seed-format HS256 secrets"):
        registry_of(tmp_path, (0,), [{"alg": "EdDSA", "public_jwk": Key.ed().jwk()}])
