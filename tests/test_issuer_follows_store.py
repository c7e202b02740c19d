"""The issuer follows its tenant in the tenant store: a webhook secret rotated there verifies without a restart."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import wait_until
from fastapi.testclient import TestClient
from test_issuer_support import signed_callback, usage_body

from dynaseal.config import bundled_dev_config, config_environment, load_config
from dynaseal.tenancy.store import PURPOSE_CALLBACK
from issuer_api.app import create_app
from issuer_api.tenant_follow import follow_tenant

DEMO = "671249a93f1cf2f8bf9b2b82"
NEW_HOOK = "whsec_" + base64.b64encode(b"issuer-follows-new-secret-0123456789").decode()


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[tuple[TestClient, threading.Event, Path]]:
    """The issuer app of a config with an admin store, following it every 0.1 s."""
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    app = create_app(load_config(path))
    stop = threading.Event()
    with TestClient(app) as client:
        follow_tenant(app, path, stop, poll_s=0.1)
        yield client, stop, path
    stop.set()


def test_a_rotated_webhook_secret_verifies_at_the_issuer_without_a_restart(
        issuer: tuple[TestClient, threading.Event, Path]) -> None:
    client, _, path = issuer
    old = config_environment(load_config(path))["DYNASEAL_DEMO_WEBHOOK_SECRET"]
    body, headers = signed_callback(old, usage_body("e-old", "jti-old", None))
    assert client.post("/v1/callback/usage", content=body, headers=headers).status_code == 200
    from dynaseal.tenancy.source import TenancySource

    cfg = load_config(path)
    store = TenancySource(path).store(cfg)
    assert store is not None
    generation = store.rotate_secret(DEMO, PURPOSE_CALLBACK, NEW_HOOK, grace_s=0)
    assert wait_until(lambda: client.get("/healthz").json().get("generation") == generation, 10)
    body, headers = signed_callback(NEW_HOOK, usage_body("e-new", "jti-new", None))
    assert client.post("/v1/callback/usage", content=body, headers=headers).status_code == 200
    body, headers = signed_callback(old, usage_body("e-stale", "jti-stale", None))
    assert client.post("/v1/callback/usage", content=body, headers=headers).status_code == 401
