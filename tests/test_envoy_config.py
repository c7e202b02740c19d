"""Every Envoy config the launcher renders passes `envoy --mode validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dynaseal import envoy_config
from dynaseal.config import DynasealConfig, load_config


@pytest.mark.parametrize("base_url", [None, "https://api.openai.com/v1", "http://10.0.0.7:8080",
                                      "https://llm.internal.example:8443/openai/v1"])
def test_rendered_config_validates(tmp_path: Path, cfg: DynasealConfig, config_path: Path,
                                   base_url: str | None) -> None:
    raw = yaml.safe_load(config_path.read_text())
    raw["gateway"]["upstream"]["base_url"] = base_url
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(envoy_config.render(load_config(path), tmp_path / "access.log"))
    ok, output = envoy_config.validate(rendered)
    assert ok, output[-3000:]
    parsed = yaml.safe_load(rendered.read_text())
    filters = parsed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = filters["http_filters"][0]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False
    assert ext_authz["with_request_body"]["pack_as_bytes"] is True
    if base_url and base_url.startswith("https"):  # the provider key only goes to a verified upstream
        cluster = next(c for c in parsed["static_resources"]["clusters"] if c["name"] == "upstream_llm")
        tls = cluster["transport_socket"]["typed_config"]
        assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"]
        assert tls["sni"] in base_url


def test_upstream_path_prefix_is_kept() -> None:
    cfg = DynasealConfig.model_validate({"gateway": {"upstream": {"base_url": "https://h.example/openai/v1"}},
                                         "tenants": [{"id": "a", "keys": [{"alg": "HS256", "secret_env": "S"}]}]})
    upstream = envoy_config.upstream_of(cfg)
    assert (upstream.scheme, upstream.host, upstream.port, upstream.path_prefix) == (
        "https", "h.example", 443, "/openai/v1")


def test_invalid_template_output_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "envoy.yaml"
    bad.write_text("static_resources: {listeners: [{name: x}]}")
    ok, _ = envoy_config.validate(bad)
    assert not ok
