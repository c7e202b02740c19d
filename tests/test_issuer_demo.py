"""issuer_api's demo page route: served only by dev configs, only the named files, never a path."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from test_issuer_support import issuer_config

from issuer_api.app import create_app


def test_the_page_its_script_and_the_client_modules_are_served(tmp_path: Path) -> None:
    cfg = issuer_config(tmp_path)
    with TestClient(create_app(cfg)) as client:
        page = client.get("/demo/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'src="/demo/demo.js"' in page.text
        for path in ("/demo/demo.js", "/demo/client/index.js", "/demo/client/dpop.js"):
            reply = client.get(path)
            assert reply.status_code == 200, path
            assert reply.headers["content-type"].startswith("text/javascript")
            assert reply.headers["x-content-type-options"] == "nosniff"
        config = client.get("/demo/config.json").json()
        assert cfg.issuer is not None
        assert config == {"gateway": f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1", "tenant": cfg.issuer.tenant}


def test_nothing_outside_the_two_folders_can_be_named(tmp_path: Path) -> None:
    with TestClient(create_app(issuer_config(tmp_path))) as client:
        for path in ("/demo/..%2Fapp.py", "/demo/client/..%2F..%2Fpyproject.toml", "/demo/client/%2e%2e%2fchild.js",
                     "/demo/app.py", "/demo/client/index.d.ts", "/demo/.hidden.js", "/demo/client/README.md",
                     "/demo/client/../routes_demo.py", "/demo/missing.js"):
            reply = client.get(path)
            assert reply.status_code == 404, path
            assert reply.json()["error"]["code"] == "not_found"


def test_a_config_without_demo_users_serves_no_demo(tmp_path: Path) -> None:
    cfg = issuer_config(tmp_path)
    assert cfg.issuer is not None
    cfg = cfg.model_copy(update={"issuer": cfg.issuer.model_copy(update={"demo_users": False})})
    with TestClient(create_app(cfg)) as client:
        for path in ("/demo/", "/demo/demo.js", "/demo/client/index.js", "/demo/config.json"):
            assert client.get(path).status_code == 404, path
