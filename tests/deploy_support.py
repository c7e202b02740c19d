"""Shared helpers of the deploy tests: paths, compose interpolation, manifest walking."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dynaseal.config import DynasealConfig

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_CONFIG = DEPLOY / "dynaseal.compose.yaml"
K8S_CONFIG = K8S / "dynaseal.yaml"
CONFIG_MOUNT = "/etc/dynaseal/dynaseal.yaml"
APP_UID = 10001
# (committed Envoy config, the Dynaseal config it is rendered from, authz host)
ENVOY_RENDERS = [(DEPLOY / "envoy" / "envoy.compose.yaml", COMPOSE_CONFIG, "authz"),
                 (K8S / "envoy.yaml", K8S_CONFIG, "127.0.0.1")]
DYNASEAL_SERVICES = {"init", "authz", "issuer", "log-shipper", "callback-consumer", "admin", "usage-recorder",
                     "mock-llm"}
# The compose services that poll the tenant store (and so must all open the same one).
STORE_READERS = {"authz", "issuer", "log-shipper", "callback-consumer", "admin", "usage-recorder"}
ONE_COMMAND = ("docker compose -f deploy/compose.yaml --env-file deploy/.env.example "
               "--profile mock up -d --build --wait")
# The shipped configs take gateway.public_url from this required variable (its refusal when unset is
# tested in tests/test_deploy_public_url.py); the other deploy tests load them with it set.
PUBLIC_URL_ENV = "DYNASEAL_PUBLIC_URL"
os.environ.setdefault(PUBLIC_URL_ENV, "https://llm.example.com")
VAR_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    """KEY=VALUE pairs of deploy/.env.example."""
    pairs = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style `${VAR}`, `${VAR:-default}`, `${VAR:?error}` substitution; `$$` stays `$`."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"${{{name}}} is not defined")
    return VAR_PATTERN.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def secret_env_names(node: Any) -> set[str]:
    """Every environment variable a config names through a `*_env` key."""
    if isinstance(node, dict):
        found = {v for k, v in node.items() if k.endswith("_env") and isinstance(v, str)}
        return found.union(*(secret_env_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(secret_env_names(v) for v in node))
    return set()


def access_log_of(cfg: DynasealConfig) -> str:
    """Where the services expect Envoy's access log."""
    return f"{cfg.gateway.data_dir}/envoy/access.log"


def clusters(envoy_doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Envoy clusters by name."""
    return {c["name"]: c for c in envoy_doc["static_resources"]["clusters"]}


def endpoint(cluster: dict[str, Any]) -> tuple[str, int]:
    """The single endpoint of a static-resources cluster."""
    sock = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    return sock["address"], sock["port_value"]


def host_port(url: str) -> tuple[str | None, int | None]:
    """Host and port of a URL (`kafka:9092` alone counts as a URL too)."""
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    return parts.hostname, parts.port


