"""The shipped production configs pin gateway.public_url (what a DPoP proof's `htu` must name) from a
required variable: without it every service refuses to start, so no deployment accepts a proof made
out for another origin because the client chose the Host header."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import COMPOSE_CONFIG, DEPLOY, K8S, K8S_CONFIG, PUBLIC_URL_ENV, env_example

from dynaseal.config import ConfigError, load_config

SHIPPED = [COMPOSE_CONFIG, K8S_CONFIG]


def test_every_shipped_config_names_the_public_url() -> None:
    shipped = sorted(p for p in DEPLOY.rglob("*.yaml")
                     if any(isinstance(doc, dict) and "tenants" in doc for doc in yaml.safe_load_all(p.read_text())))
    assert set(SHIPPED) <= set(shipped)
    for path in shipped:
        gateway = yaml.safe_load(path.read_text())["gateway"]
        assert gateway.get("public_url") or gateway.get("public_url_env") == PUBLIC_URL_ENV, path


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_refuses_to_load_without_the_public_url(config: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for unset in (None, "", "   "):
        if unset is None:
            monkeypatch.delenv(PUBLIC_URL_ENV, raising=False)
        else:
            monkeypatch.setenv(PUBLIC_URL_ENV, unset)
        with pytest.raises(ConfigError, match=f"{PUBLIC_URL_ENV}, which is not set"):
            load_config(config)


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_takes_the_public_url_from_its_variable(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PUBLIC_URL_ENV, "https://llm.example.org/gw/")
    assert load_config(config).gateway.public_url == "https://llm.example.org/gw"
    for bad in ("llm.example.org", "https://llm.example.org/?x=1", "ftp://llm.example.org", "https://a b"):
        monkeypatch.setenv(PUBLIC_URL_ENV, bad)
        with pytest.raises(ConfigError, match="public_url must be"):
            load_config(config)


def test_authz_refuses_to_start_without_it() -> None:
    env = {k: v for k, v in os.environ.items() if k != PUBLIC_URL_ENV} | env_example()
    env.pop(PUBLIC_URL_ENV)
    proc = subprocess.run([sys.executable, "-m", "dynaseal_launcher.cli", "authz", "--config", str(COMPOSE_CONFIG)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"{PUBLIC_URL_ENV}, which is not set" in proc.stderr


def test_compose_and_k8s_require_the_variable() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["x-dynaseal"]["environment"][PUBLIC_URL_ENV].startswith(f"${{{PUBLIC_URL_ENV}:?")
    assert env_example()[PUBLIC_URL_ENV]
    # The Kubernetes placeholder stays empty: the pods refuse to start until an overlay sets it.
    secrets = dict(line.split("=", 1) for line in (K8S / "secrets.env").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert secrets[PUBLIC_URL_ENV] == ""
