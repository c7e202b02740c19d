"""Build tokens by hand for adversarial tests: any header, any payload, any signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from dynaseal.keys.mint import SigningKey


def b64(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any] | str, payload: dict[str, Any] | str, sign: Any = None) -> str:
    """A compact JWS from raw parts; `sign(signing_input) -> bytes` or no signature."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(h.encode())}.{b64(p.encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64(signature)}"


def hs256(secret: bytes) -> Any:
    """An HMAC-SHA256 signer."""
    return lambda msg: hmac.new(secret, msg, hashlib.sha256).digest()


def ed25519(key: SigningKey) -> Any:
    """An Ed25519 signer."""
    return key.private_key.sign


def native_claims(tenant: str, **overrides: Any) -> dict[str, Any]:
    """A valid native claim set."""
    now = int(time.time())
    claims = {"iss": tenant, "aud": "dynaseal", "iat": now, "nbf": now, "exp": now + 300, "jti": f"t-{now}",
              "models": ["gpt-4o-mini"], "max_tokens": 100}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}
