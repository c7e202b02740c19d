"""The JavaScript client (clients/js): its own node tests, and what it makes accepted by the gateway's
verifier (the interop vectors' keys: proofs and children made in JavaScript, checked in Python).

Skipped with the reason when `node` is not installed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import DEMO_TENANT, REPO

from dynaseal.config import DynasealConfig
from dynaseal.keys.dpop import verify_proof
from dynaseal.keys.mint import HolderKey, mint
from dynaseal.keys.signing_keystore import SigningKeyStore
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer, AuthRequest

JS = REPO / "clients" / "js"
VECTORS = json.loads((REPO / "contracts" / "interop" / "vectors.json").read_text())
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (the JS client's tests need node >= 20)")
URL = "http://gw.test/v1/chat/completions"


@pytest.fixture(scope="module")
def node_modules() -> bool:
    """`npm ci` once when the package's dev dependencies (the SDKs) are missing; False if it cannot."""
    if (JS / "node_modules" / "openai").is_dir():
        return True
    npm = shutil.which("npm")
    if npm is None:
        return False
    run = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True,
                         timeout=600, check=False)
    return run.returncode == 0


def node_tests() -> list[str]:
    return sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.js"))


def test_the_js_package_own_tests_pass(node_modules: bool) -> None:
    """Without the SDKs (no registry) their three tests skip; every other test runs."""
    assert node_tests(), "no node tests found"
    run = subprocess.run([str(NODE), "--test", *node_tests()], cwd=JS, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# fail 0" in run.stdout


def made_in_js(alg: str, parent: str, child: dict[str, Any]) -> dict[str, Any]:
    job = {"alg": alg, "private_jwk": VECTORS["holders"][alg]["private_jwk"], "parent": parent, "method": "POST",
           "url": URL, "child": child}
    run = subprocess.run([str(NODE), "test/make-interop.js"], cwd=JS, input=json.dumps(job), capture_output=True,
                         text=True, timeout=60, check=True)
    made: dict[str, Any] = json.loads(run.stdout)
    return made


def the_holder(alg: str) -> HolderKey:
    """The vectors' holder key, loaded on the Python side."""
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm

    raw = json.dumps(VECTORS["holders"][alg]["private_jwk"])
    return HolderKey((ECAlgorithm if alg == "ES256" else OKPAlgorithm).from_jwk(raw))  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_proofs_and_children_made_in_js_pass_the_gateways_verifier(cfg: DynasealConfig, alg: str) -> None:
    issuer = SigningKeyStore(cfg.data_path / "issuer").ensure()
    holder = the_holder(alg)
    assert holder.jkt() == VECTORS["holders"][alg]["jkt"]
    parent = mint(issuer, tenant=DEMO_TENANT, models=["deepseek-chat", "gpt-4o-mini"], max_tokens=100, ttl=300,
                  uses=5, cnf=holder.cnf_jwk())
    made = made_in_js(alg, parent, {"models": ["deepseek-chat"], "max_tokens": 20, "uses": 1})
    assert made["refused"] is None
    proof = verify_proof(made["proof"], method="POST", url=URL, now=time.time(), leeway_s=0, access_token=parent,
                         jkt=holder.jkt())
    assert proof.jkt == holder.jkt()

    authorizer = Authorizer(build_registry(cfg), quota=None)
    body = orjson.dumps({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})

    def decide(headers: dict[str, str]) -> Any:
        return asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions",
                                                         {":authority": "gw.test", ":scheme": "http", **headers},
                                                         body)))

    bound = decide({"authorization": f"DPoP {parent}", "dpop": made["proof"]})
    assert bound.allowed, bound.message
    child = decide({"authorization": f"Bearer {made['child']}"})
    assert child.allowed, child.message
    assert child.metadata.get("chain") and json.loads(str(child.metadata["chain"]))[-1] != parent
    # The child's limits are in force: a model it dropped is refused.
    other = asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", {
        "authorization": f"Bearer {made['child']}"}, body.replace(b"deepseek-chat", b"gpt-4o-mini"))))
    assert (other.status, other.code) == (403, "model_not_allowed")
    # A lifted parent without the device key: no proof, or a proof by another key, is a 401.
    thief = HolderKey.generate(alg)
    assert decide({"authorization": f"Bearer {parent}"}).code == "invalid_dpop_proof"
    assert decide({"authorization": f"DPoP {parent}",
                   "dpop": thief.proof("POST", URL, parent)}).code == "invalid_dpop_proof"


def test_the_js_client_refuses_a_widening_child_the_gateway_would_refuse(cfg: DynasealConfig) -> None:
    issuer = SigningKeyStore(cfg.data_path / "issuer").ensure()
    holder = the_holder("ES256")
    parent = mint(issuer, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=100, ttl=300, uses=5,
                  cnf=holder.cnf_jwk())
    for widening in ({"uses": 6}, {"models": ["gpt-4o"]}, {"max_tokens": 101}, {"ttl": 3600}):
        made = made_in_js("ES256", parent, widening)
        assert made["child"] is None and made["refused"].startswith("ChildKeyError"), widening
        # The gateway refuses the same child made by the Python helper, which does not check.
        if "ttl" not in widening:
            forged = holder.child(parent, **widening)
            decision = asyncio.run(Authorizer(build_registry(cfg), quota=None).decide(AuthRequest(
                "POST", "/v1/chat/completions", {"authorization": f"Bearer {forged}"},
                b'{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":5}')))
            assert decision.status == 401 and "child key" in decision.message, decision.message


@pytest.mark.integration
def test_the_sdks_work_through_the_real_gateway(node_modules: bool, cfg: DynasealConfig, stack: object) -> None:
    """openai (plain and streaming) and the Vercel AI SDK with client.fetch; the key alone in a plain SDK: 401."""
    if not node_modules:
        pytest.skip("the SDKs are not installed and npm ci could not install them")
    env = {"PATH": os.environ.get("PATH", ""), "DYNASEAL_ISSUER": f"http://127.0.0.1:{cfg.gateway.ports.issuer}",
           "DYNASEAL_GATEWAY": f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1"}
    run = subprocess.run([str(NODE), "test/sdk-live.js"], cwd=JS, capture_output=True, text=True, timeout=120,
                         check=False, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["openai"]["text"] and result["openai"]["usage"]["total_tokens"] > 0
    assert result["openaiStream"] and result["vercel"]
    assert result["lifted"] == "AuthenticationError 401 invalid_dpop_proof"


def test_the_vectors_file_is_what_the_generator_writes() -> None:
    """Every Python-made vector still verifies here (the JS tests check the same ones)."""
    for alg, vector in VECTORS["holders"].items():
        proof = verify_proof(vector["proof"], method="POST", url=VECTORS["url"], now=VECTORS["iat"], leeway_s=0,
                             access_token=vector["parent"], jkt=vector["jkt"])
        assert proof.jti == f"interop-proof-{alg}"
    assert Path(REPO / "contracts" / "interop" / "generate.py").exists()
