"""Signing-key rotation without restart: old and new keys verify through Envoy; a removed key stops."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import DEMO_TENANT

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import mint
from dynaseal.keys.signing_keystore import SigningKeyStore

pytestmark = pytest.mark.integration


def status(cfg: DynasealConfig, key: str) -> int:
    reply = httpx.post(f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions",
                       headers={"authorization": f"Bearer {key}"},
                       json={"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 4}, timeout=10)
    return reply.status_code


def eventually(cfg: DynasealConfig, key: str, expected: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if status(cfg, key) == expected:
            return True
        time.sleep(0.2)
    return False


def cli(config_path: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dynaseal_launcher.cli", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=60, check=True)
    return proc.stdout


def test_rotate_then_remove(cfg: DynasealConfig, config_path: Path, stack: object) -> None:
    store = SigningKeyStore(Path(cfg.gateway.data_dir) / "issuer")
    old = store.active()
    before = mint(old, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=8, ttl=600)
    assert status(cfg, before) == 200

    cli(config_path, "keys", "rotate")
    new = store.active()
    assert new.kid != old.kid
    after = mint(new, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=8, ttl=600)
    assert eventually(cfg, after, 200), "authz did not pick up the rotated JWKS"
    assert status(cfg, before) == 200  # keys signed before the rotation keep working

    # Remove the key this test created (others in this session may still hold `old`).
    cli(config_path, "keys", "rotate")
    newest = store.active()
    cli(config_path, "keys", "remove", new.kid)
    fresh = mint(new, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=8, ttl=600)
    assert eventually(cfg, fresh, 401), "a removed signing key still verifies"
    assert status(cfg, mint(newest, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=8, ttl=600)) == 200
    assert status(cfg, before) == 200
