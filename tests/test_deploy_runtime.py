"""Every container of every deploy layout builds its service's runtime view with exactly its own
mounts and environment, as compose and Kubernetes give them (no other folder, no other variable)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, K8S, REPO, env_example, interpolate, secret_env_names
from test_deploy_k8s import containers, generated, pod_specs

from dynaseal.config import ConfigError, DynasealConfig, load_config
from dynaseal.keys.tenants import build_registry
from dynaseal.runtime.views import Runtime
from dynaseal_launcher import cli

SERVICES = {"authz", "issuer", "shipper", "consumer"}
# Stand-ins for the empty placeholders of deploy/k8s/secrets.env (what an overlay fills in).
K8S_SECRET_VALUES = {"PUBLIC_URL": "https://llm.example.com",
                     "WEBHOOK": "whsec_dGVzdC1vbmx5LXdlYmhvb2stc2VjcmV0LTAwMDE=", "": "k8s-test-secret-" + "x" * 32}


@dataclass
class Mount:
    """One mount: a target path in the container and where its content comes from."""

    target: str
    volume: str | None = None  # a shared volume (named volume, PVC) or a per-pod emptyDir
    files: dict[str, str] = field(default_factory=dict)  # a ConfigMap/Secret: file name -> text
    bind_file: Path | None = None  # compose bind mount of one file


@dataclass
class Container:
    """What a container starts with: its dynaseal arguments, environment and mounts."""

    name: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]


def image_dirs() -> list[str]:
    """The directories the Dockerfile creates in the image (an unmounted one is there, empty)."""
    match = re.search(r"mkdir -p ([^&\\]+)", (REPO / "Dockerfile").read_text())
    assert match
    return match.group(1).split()


def compose_containers() -> list[Container]:
    """deploy/compose.yaml's Dynaseal services, the init job first (the others wait for it)."""
    compose = yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env_example()))
    found = []
    for name, service in compose["services"].items():
        if not str(service.get("image", "")).startswith("dynaseal"):
            continue
        mounts = []
        for spec in service.get("volumes", []):
            source, target = spec.split(":")[:2]
            if source.startswith("."):
                mounts.append(Mount(target, bind_file=DEPLOY / source))
            else:
                mounts.append(Mount(target, volume=source))
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        found.append(Container(f"compose/{name}", list(service["command"]), env, mounts))
    return sorted(found, key=lambda c: c.name != "compose/init")


def _k8s_env(container: dict[str, Any], objects: dict[tuple[str, str], dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        for key in objects[("Secret", source["secretRef"]["name"])]:
            env[key] = next(v for part, v in K8S_SECRET_VALUES.items() if part in key)
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def k8s_containers() -> list[Container]:
    """Every container of the kustomize base's Deployments running the dynaseal image."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [d for r in kustomization["resources"] for d in yaml.safe_load_all((K8S / r).read_text()) if d]
    objects = {}
    for obj in generated(kustomization):
        files = {name: text for name, text in obj["data"].items()}
        if obj["kind"] == "Secret":
            import base64

            files = {name: base64.b64decode(text).decode() for name, text in files.items()}
        objects[(obj["kind"], obj["metadata"]["name"])] = files
    found = []
    for pod_name, pod in pod_specs(docs).items():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in containers(pod).values():
            if container["image"] != "dynaseal" or "command" in container:  # a shell step, not a service
                continue
            mounts = []
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if "configMap" in volume:
                    mounts.append(Mount(mount["mountPath"], files=objects[("ConfigMap", volume["configMap"]["name"])]))
                elif "secret" in volume:
                    mounts.append(Mount(mount["mountPath"], files=objects[("Secret", volume["secret"]["secretName"])]))
                elif "persistentVolumeClaim" in volume:
                    mounts.append(Mount(mount["mountPath"], volume=volume["persistentVolumeClaim"]["claimName"]))
                else:
                    mounts.append(Mount(mount["mountPath"], volume=f"{pod_name}/{mount['name']}"))
            found.append(Container(f"k8s/{pod_name}/{container['name']}", list(container["args"]),
                                   _k8s_env(container, objects), mounts))
    return found


def materialize(container: Container, tmp: Path) -> Path:
    """The container's file system under tmp: the image's directories, then its mounts on top."""
    root = tmp / "containers" / container.name.replace("/", "_")
    for directory in image_dirs():
        (root / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for mount in container.mounts:
        target = root / mount.target.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            target.rmdir()  # a mount hides what the image has there
        if mount.bind_file is not None:
            target.symlink_to(mount.bind_file)
        elif mount.volume is not None:
            shared = tmp / "volumes" / mount.volume.replace("/", "_")
            shared.mkdir(parents=True, exist_ok=True)
            target.symlink_to(shared)
        else:
            target.mkdir()
            for name, text in mount.files.items():
                (target / name).write_text(text)
    return root


def only_env(monkeypatch: pytest.MonkeyPatch, cfg_text: str, env: dict[str, str]) -> None:
    """The process environment as the container has it: no variable the config names unless given."""
    for name in set(os.environ):
        if name in secret_env_names(yaml.safe_load(cfg_text)) or name.startswith(("DYNASEAL_", "REDIS_", "KAFKA_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def start(container: Container, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, DynasealConfig]:
    """Load the container's config from its own mounts and build its service's view; (service, config)."""
    root = materialize(container, tmp)
    argv = list(container.argv)
    config_at = argv[argv.index("--config") + 1]
    config_file = root / config_at.lstrip("/")
    assert config_file.is_file(), f"{container.name}: {config_at} is not mounted"
    text = config_file.read_text()
    only_env(monkeypatch, text, container.env)
    # The same file with its data_dir inside this container's root, so every service and the CLI
    # (which take no data_dir override) read and write there, never on this machine's /var/lib.
    raw = yaml.safe_load(text)
    raw["gateway"]["data_dir"] = str(root / str(raw["gateway"]["data_dir"]).lstrip("/"))
    config_file.unlink()
    config_file.write_text(yaml.safe_dump(raw))
    cfg = load_config(config_file)
    runtime = Runtime.from_config(cfg)
    service = argv[0] if argv[0] in SERVICES else argv[2]
    if service == "keys":  # the init job: `dynaseal --config ... keys init`
        assert cli.main(["--config", str(config_file), *argv[2:]]) == 0
    elif service == "authz":
        assert runtime.authz(fetch_new_jwks=False).registry.tenants
    elif service == "consumer":
        assert runtime.consumer().targets
    elif service == "shipper":
        view = runtime.shipper()
        assert view.access_log.parent.is_dir(), f"{container.name}: the access log's directory is not mounted"
        assert view.checkpoint.parent.is_dir(), f"{container.name}: the checkpoint's directory is not mounted"
    elif service == "issuer":
        from issuer_api.state import build_state

        build_state(cfg).close()  # the issuer's real start: its view, database and signing key
    return service, cfg


@pytest.mark.parametrize("layout", ["compose", "k8s"])
def test_every_container_starts_with_only_its_own_mounts_and_env(layout: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, list[str]] = {}
    for container in compose_containers() if layout == "compose" else k8s_containers():
        if container.argv[0] == "mock-llm":  # reads no Dynaseal config
            continue
        with monkeypatch.context() as env:
            service, cfg = start(container, tmp_path, env)
            if service == "consumer":
                # What loading the whole registry here did: every tenant's jwks_file is read, and the
                # consumer has no <data_dir>/issuer mount (exit 2, restart loop).
                with pytest.raises(ConfigError, match="jwks_file"):
                    build_registry(cfg)
        started.setdefault(service, []).append(container.name)
    assert set(started) >= SERVICES, started
