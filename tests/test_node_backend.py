"""examples/node-backend: keys minted in Node with `jose` (native EdDSA, and DPoP-bound) are accepted by the
real gateway (Envoy + authz + Redis; the LLM a mock) and match contracts/dynamic-key.schema.json.

Skipped with the reason when node/npm are missing or `npm ci` cannot fetch `jose`."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from typing import Any

import httpx
import jsonschema
import pytest
from conftest import OTHER_TENANT, REPO, TenantKeys

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import HolderKey

EXAMPLE = REPO / "examples" / "node-backend"
SCHEMA = json.loads((REPO / "contracts" / "dynamic-key.schema.json").read_text())
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                 reason="node and npm are not installed")]


@pytest.fixture(scope="module")
def node_example() -> None:
    """`npm ci` once when the example's node_modules is missing (the lock file pins jose)."""
    if not (EXAMPLE / "node_modules" / "jose").is_dir():
        run = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, capture_output=True, text=True,
                             timeout=300, check=False)
        if run.returncode != 0:
            pytest.skip(f"npm ci failed (no registry?): {run.stderr[-300:]}")


def mint_in_node(job: dict[str, Any]) -> dict[str, Any]:
    run = subprocess.run(["node", "mint.js"], cwd=EXAMPLE, input=json.dumps(job), capture_output=True, text=True,
                         timeout=60, check=True)
    minted: dict[str, Any] = json.loads(run.stdout)
    return minted


def claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload


def test_keys_minted_with_jose_are_accepted_by_the_gateway(node_example: None, cfg: DynasealConfig, stack: object,
                                                           test_keys: TenantKeys) -> None:
    gw = f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"
    holder = HolderKey.generate("ES256")
    minted = mint_in_node({"private_jwk": test_keys.acme_ed25519.private_jwk(), "tenant": OTHER_TENANT,
                           "models": ["gpt-4o-mini"], "max_tokens": 50, "ttl": 300, "sub": "node-user",
                           "holder_jwk": holder.public_jwk()})
    for token in minted.values():
        jsonschema.validate(claims(token), SCHEMA)
    native = httpx.post(gw, headers={"authorization": f"Bearer {minted['native']}"}, json=BODY, timeout=30)
    assert native.status_code == 200, native.text
    assert claims(minted["bound"])["cnf"] == {"jkt": holder.jkt()}
    bound = httpx.post(gw, headers=holder.headers(minted["bound"], "POST", gw), json=BODY, timeout=30)
    assert bound.status_code == 200, bound.text
    lifted = httpx.post(gw, headers={"authorization": f"Bearer {minted['bound']}"}, json=BODY, timeout=30)
    assert (lifted.status_code, lifted.json()["error"]["code"]) == (401, "invalid_dpop_proof")
    # A key signed by a tenant key the gateway does not know is refused.
    stranger = json.loads(subprocess.run(["node", "mint.js", "keygen", test_keys.acme_ed25519.kid], cwd=EXAMPLE,
                                         capture_output=True, text=True, timeout=60, check=True).stdout)
    forged = mint_in_node({"private_jwk": stranger["private_jwk"], "tenant": OTHER_TENANT, "models": ["gpt-4o-mini"],
                           "max_tokens": 50, "ttl": 300})
    refused = httpx.post(gw, headers={"authorization": f"Bearer {forged['native']}"}, json=BODY, timeout=30)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
