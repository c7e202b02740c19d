"""The one request every benchmark sends, and the config, key and token that admit it.

The bench tenant has an Ed25519 verification key (a fresh one per run) and no rpm, and its
tokens carry no `budget` or `uses`: the Redis reservation still runs on every request (one
EVALSHA), but nothing is ever refused, so the numbers measure the decision, not refusals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from dynaseal.keys.mint import SigningKey, mint

TENANT = "bench"
KID = "bench-ed25519"
AUDIENCE = "dynaseal"
PROVIDER_KEY_ENV = "DYNASEAL_BENCH_PROVIDER_KEY"
PROVIDER_KEY = "sk-bench-provider-key-0123456789"
MODEL = "gpt-4o-mini"
PATH = "/v1/chat/completions"

# 330 bytes of chat-completions JSON, like a short real prompt.
BODY = orjson.dumps({
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a concise assistant for a banking app."},
        {"role": "user", "content": "Summarise my last three transactions in one sentence and say "
                                    "whether any of them looks unusual on a weekday."},
    ],
    "max_tokens": 64,
    "temperature": 0.7,
    "stream": False,
    "user": "bench-user-0000000001",  # = the key's sub: a key may speak only for its own end user
})


def stream_body(max_tokens: int = 32) -> bytes:
    """The same request asking for an SSE stream (with usage, as dynaseal requires)."""
    body = orjson.loads(BODY)
    body.update(stream=True, stream_options={"include_usage": True}, max_tokens=max_tokens)
    return orjson.dumps(body)


@dataclass(frozen=True)
class BenchKeys:
    """The bench tenant's signing key and the dynamic key every request carries."""

    signing_key: SigningKey
    token: str

    def jwks(self) -> str:
        """The public JWKS (for Envoy's jwt_authn)."""
        return json.dumps({"keys": [self.signing_key.public_jwk()]})


def make_keys(ttl: int = 6 * 3600) -> BenchKeys:
    """A fresh Ed25519 key and a ~414-character EdDSA token without budget or uses limits."""
    signing_key = SigningKey.generate(KID)
    token = mint(signing_key, tenant=TENANT, models=[MODEL, "gpt-4o"], max_tokens=1024, ttl=ttl,
                 audience=AUDIENCE, sub="bench-user-0000000001")
    return BenchKeys(signing_key, token)


def write_config(directory: Path, ports: dict[str, int], keys: BenchKeys) -> Path:
    """A dynaseal config with only the bench tenant, on the given ports."""
    raw = {
        "gateway": {
            "audience": AUDIENCE,
            "host": "127.0.0.1",
            "ports": ports,
            "data_dir": str(directory / "data"),
            "max_body_bytes": 65536,
            # The streaming bench paces the mock's chunks with this header; authz strips every other one.
            "upstream": {"base_url": None, "api_key_env": PROVIDER_KEY_ENV,
                         "forward_headers": ["x-mock-chunk-delay-ms"]},
        },
        "tenants": [{
            "id": TENANT,
            "name": "Benchmark tenant",
            "keys": [{"kid": KID, "alg": "EdDSA", "public_jwk": keys.signing_key.public_jwk()}],
            "limits": {"models": [MODEL, "gpt-4o"], "max_tokens": 1024, "max_ttl": 86400},
        }],
    }
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
