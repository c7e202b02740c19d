"""Every Envoy config the launcher renders passes `envoy --mode validate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dynaseal.config import DynasealConfig, load_config
from dynaseal_launcher import envoy_config


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
    ext_authz = next(f for f in filters["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")["typed_config"]
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


def _rendered(tmp_path: Path, config_path: Path, **gateway: object) -> dict[str, object]:
    raw = yaml.safe_load(config_path.read_text())
    raw["gateway"].update(gateway)
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(envoy_config.render(load_config(path), tmp_path / "access.log"))
    ok, output = envoy_config.validate(rendered)
    assert ok, output[-3000:]
    return dict(yaml.safe_load(rendered.read_text()))


def _hcm(doc: dict[str, object]) -> dict[str, Any]:
    listener = doc["static_resources"]["listeners"][0]  # type: ignore[index]
    return dict(listener["filter_chains"][0]["filters"][0]["typed_config"])


def test_edge_limits_and_trusted_hops_come_from_the_config(tmp_path: Path, config_path: Path) -> None:
    doc = _rendered(tmp_path, config_path, xff_trusted_hops=2, limits={
        "max_connections": 123, "request_headers_timeout_s": 7, "request_timeout_s": 33, "idle_timeout_s": 44,
        "stream_idle_timeout_s": 55, "max_stream_duration_s": 1200})
    hcm = _hcm(doc)
    assert (hcm["use_remote_address"], hcm["xff_num_trusted_hops"]) == (True, 2)
    assert (hcm["generate_request_id"], hcm["preserve_external_request_id"]) == (True, False)
    assert (hcm["request_headers_timeout"], hcm["request_timeout"], hcm["stream_idle_timeout"]) == ("7s", "33s", "55s")
    assert hcm["common_http_protocol_options"] == {"idle_timeout": "44s", "max_stream_duration": "1200s",
                                                   "headers_with_underscores_action": "DROP_HEADER"}
    [monitor] = doc["overload_manager"]["resource_monitors"]  # type: ignore[index]
    assert monitor["typed_config"]["max_active_downstream_connections"] == 123
    chat = [r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if "chat" in r["match"].get("path", "")]
    assert {r["route"]["timeout"] for r in chat} == {"1200s"}  # a long stream is not cut by the route
    assert {r["route"]["idle_timeout"] for r in chat} == {"55s"}


def test_routes_are_exactly_the_served_paths(tmp_path: Path, config_path: Path) -> None:
    vhost = _hcm(_rendered(tmp_path, config_path))["route_config"]["virtual_hosts"][0]
    # The two OPTIONS routes first (CORS preflights, answered by Envoy; tests/test_cors_e2e.py).
    preflight, other_options, *served = vhost["routes"]
    assert preflight["match"]["prefix"] == other_options["match"]["prefix"] == "/"
    assert other_options["direct_response"] == {"status": 204}
    assert other_options["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True
    assert "typed_per_filter_config" not in preflight  # were it ever passed on, authz would refuse it
    # The seed's backend registration goes to the admin service, without ext_authz (it carries no key).
    seed = [r for r in served if r.get("route", {}).get("cluster") == "dynaseal_admin"]
    assert {r["match"]["path"] for r in seed} == {"/api/v1/user/login", "/api/v1/api_key/create", "/api/v1/user/me"}
    assert all(r["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True for r in seed)
    served = [r for r in served if r not in seed]
    vhost["routes"] = [preflight, *served]
    paths = {r["match"]["path"]: r["match"].get("headers") for r in served}
    get_only = [{"name": ":method", "string_match": {"exact": "GET"}}]
    post_only = [{"name": ":method", "string_match": {"exact": "POST"}}]
    endpoints = {f"{prefix}/{path}": post_only for prefix in ("/v1", "/api/v1")
                 for path in ("responses", "messages", "messages/count_tokens", "embeddings")}
    assert paths == {"/v1/chat/completions": post_only, "/api/v1/chat/completions": post_only,
                     "/client-side/chat/completions": post_only, "/v1/models": get_only, "/api/v1/models": get_only,
                     "/_dynaseal/give-back": None, **endpoints}
    # every one through ext_authz; the give-back only reaches authz (it answers it), never an upstream
    assert {r["route"]["cluster"] for r in vhost["routes"] if "route" in r} == {"upstream_llm"}
    assert [r["direct_response"] for r in vhost["routes"] if "route" not in r] == [{"status": 404}]
    assert vhost["request_headers_to_add"] == [{"header": {"key": "accept-encoding", "value": "identity"},
                                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    assert "access-control-allow-origin" in vhost["response_headers_to_remove"]  # the provider's CORS: never
    [request_id] = vhost["response_headers_to_add"]
    assert request_id["header"] == {"key": "x-dynaseal-request-id",
                                    "value": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:request_id)%"}


def test_lua_filter_sits_between_ext_authz_and_the_usage_readers(tmp_path: Path, config_path: Path) -> None:
    """Response filters run in reverse: the strip must come after sse_to_metadata has read the usage."""
    names = [f["name"] for f in _hcm(_rendered(tmp_path, config_path))["http_filters"]]
    assert names == ["envoy.filters.http.cors",
                     "envoy.filters.http.ext_authz", "envoy.filters.http.lua", "envoy.filters.http.sse_to_metadata",
                     "envoy.filters.http.json_to_metadata", "envoy.filters.http.router"]


def test_every_local_reply_names_a_request_id(tmp_path: Path, config_path: Path) -> None:
    mappers = _hcm(_rendered(tmp_path, config_path))["local_reply_config"]["mappers"]
    for mapper in mappers:
        assert mapper["headers_to_add"] == [{"header": {"key": "x-dynaseal-request-id", "value": "%REQ(X-REQUEST-ID)%"},
                                             "append_action": "ADD_IF_ABSENT"}]
    catch_all = mappers[-1]["filter"]["status_code_filter"]["comparison"]
    assert (catch_all["op"], catch_all["value"]["default_value"]) == ("GE", 0)
