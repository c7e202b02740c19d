"""The Vercel AI SDK (`ai`, `@ai-sdk/openai`, `@ai-sdk/anthropic`) from Node through the real stack: its
node:test suite (tests/node/) run against the session's gateway, each stream billed in its callback."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_clients_sdks import jti_of, stored_callback
from test_endpoints_e2e import CHAT, CLAUDE, key_for

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey

pytestmark = pytest.mark.integration
NODE_DIR = Path(__file__).resolve().parent / "node"


def _node_major() -> int:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        return 0
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
    return int(version.lstrip("v").split(".")[0] or 0)


@pytest.mark.skipif(_node_major() < 20, reason="Node.js 20+ and npm are not installed")
def test_vercel_ai_sdk_stream_text(cfg: DynasealConfig, stack: object, issuer_key: SigningKey) -> None:
    if not (NODE_DIR / "node_modules").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300,
                       capture_output=True)
    openai_key, anthropic_key = key_for(issuer_key, models=[CHAT]), key_for(issuer_key, models=[CLAUDE])
    env = {**os.environ, "DYNASEAL_GATEWAY": f"http://127.0.0.1:{cfg.gateway.ports.envoy}",
           "DYNASEAL_OPENAI_KEY": openai_key, "DYNASEAL_ANTHROPIC_KEY": anthropic_key}
    run = subprocess.run(["node", "--test", "clients.test.js"], cwd=NODE_DIR, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert stored_callback(cfg, jti_of(openai_key))["endpoint"] == "responses"
    assert stored_callback(cfg, jti_of(anthropic_key))["endpoint"] == "messages"
