"""Every container of every deploy layout builds its service's runtime view with exactly its own
mounts and environment, as compose and Kubernetes give them (no other folder, no other variable)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
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
from dynaseal.tenancy.source import TenancySource
from dynaseal.tenancy.store import store_url
from dynaseal_launcher import cli

SERVICES = {"authz", "issuer", "shipper", "consumer", "admin", "usage-recorder"}
# Stand-ins for the empty placeholders of deploy/k8s/secrets.env (what an overlay fills in); the database URL is
# the test's own PostgreSQL server's (DATABASE_URL_STAND_IN is replaced by it).
DATABASE_URL_STAND_IN = "postgresql+psycopg://stand-in"
K8S_SECRET_VALUES = {"PUBLIC_URL": "https://llm.example.com", "DATABASE_URL": DATABASE_URL_STAND_IN,
                     "WEBHOOK": "whsec_dGVzdC1vbmx5LXdlYmhvb2stc2VjcmV0LTAwMDE=", "": "k8s-test-secret-" + "x" * 32}
# The admin token Secret's stand-in (its file in the base is an empty placeholder).
K8S_ADMIN_TOKEN = "k8s-test-admin-token-" + "y" * 16


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
        # Compose secrets: files under /run/secrets, each the value of its variable in the env file.
        secrets = {secret: env_example()[compose["secrets"][secret]["environment"]]
                   for secret in service.get("secrets", [])}
        if secrets:
            mounts.append(Mount("/run/secrets", files=secrets))
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


def _k8s_mount(target: str, volume: dict[str, Any], objects: dict[tuple[str, str], dict[str, str]],
               pod_volume: str) -> Mount:
    """One volume mount of a k8s container: a ConfigMap's or Secret's files, a claim, or the pod's emptyDir."""
    if "configMap" in volume:
        return Mount(target, files=objects[("ConfigMap", volume["configMap"]["name"])])
    if "secret" in volume:
        files = objects[("Secret", volume["secret"]["secretName"])]
        if volume["secret"]["secretName"] == "dynaseal-admin-token":  # what an overlay fills in
            files = {name: K8S_ADMIN_TOKEN for name in files}
        return Mount(target, files=files)
    if "persistentVolumeClaim" in volume:
        return Mount(target, volume=volume["persistentVolumeClaim"]["claimName"])
    return Mount(target, volume=pod_volume)


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
            mounts = [_k8s_mount(m["mountPath"], volumes[m["name"]], objects, f"{pod_name}/{m['name']}")
                      for m in container.get("volumeMounts", [])]
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


def start(container: Container, tmp: Path, monkeypatch: pytest.MonkeyPatch,
          database_url: str | None = None) -> tuple[str, DynasealConfig, str]:
    """Load the container's config from its own mounts and build its service's view as the service does at
    start, the tenant store included; (service, config, the tenant store's URL)."""
    root = materialize(container, tmp)
    argv = list(container.argv)
    config_at = argv[argv.index("--config") + 1]
    config_file = root / config_at.lstrip("/")
    assert config_file.is_file(), f"{container.name}: {config_at} is not mounted"
    text = config_file.read_text()
    env = {k: (database_url or v) if v == DATABASE_URL_STAND_IN else v for k, v in container.env.items()}
    only_env(monkeypatch, text, env)
    # The same file with its data_dir inside this container's root, so every service and the CLI
    # (which take no data_dir override) read and write there, never on this machine's /var/lib.
    raw = yaml.safe_load(text)
    raw["gateway"]["data_dir"] = str(root / str(raw["gateway"]["data_dir"]).lstrip("/"))
    if raw.get("admin", {}).get("token_file"):  # a mounted secret: inside this container's root too
        raw["admin"]["token_file"] = str(root / raw["admin"]["token_file"].lstrip("/"))
    config_file.unlink()
    config_file.write_text(yaml.safe_dump(raw))
    cfg = load_config(config_file)
    service = argv[0] if argv[0] in SERVICES else argv[2]
    # Every service polls the tenant store from its first load on (dynaseal.tenancy.source).
    url = "" if service == "keys" else tenant_store_of(config_file)
    build_view(service, cfg, config_file, container)
    return service, cfg, url


def tenant_store_of(config_file: Path) -> str:
    """The tenant store a service of this config opens (a SQLite URL names the file itself, wherever the
    container's mounts lead)."""
    source = TenancySource(config_file)
    loaded = source.load().cfg
    url = store_url(loaded)
    store = source.store(loaded)
    assert store is not None
    store.close()
    if url.startswith("sqlite:///"):
        url = f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    return url


def build_view(service: str, cfg: DynasealConfig, config_file: Path, container: Container) -> None:
    """What the service builds at start from its config (raises what it would refuse to start with)."""
    runtime = Runtime.from_config(cfg)
    if service == "keys":  # the init job: `dynaseal --config ... keys init`
        assert cli.main(["--config", str(config_file), *container.argv[2:]]) == 0
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
    elif service == "admin":
        from admin_api.service import admin_token, build_app

        admin_token(cfg)  # the token first: a refusal leaves nothing open
        app = build_app(config_file, follow=False)  # token, tenant store, usage store, console
        app.state.console.engine.dispose()
        app.state.admin.store().close()
    elif service == "usage-recorder":
        from dynaseal.usage_store.schema import database_url as usage_url
        from dynaseal.usage_store.schema import make_engine

        make_engine(usage_url(cfg)).dispose()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL server: the k8s layout's shared tenant store."""
    from postgres_support import postgres_server

    with postgres_server() as url:
        yield url


def run_layout(layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               database_url: str | None = None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Start every container of a layout; (containers by service, tenant store URL by container)."""
    started: dict[str, list[str]] = {}
    stores: dict[str, str] = {}
    for container in compose_containers() if layout == "compose" else k8s_containers():
        if container.argv[0] == "mock-llm":  # reads no Dynaseal config
            continue
        with monkeypatch.context() as env:
            service, cfg, url = start(container, tmp_path, env, database_url)
            if url:
                stores[container.name] = url
            if service == "consumer":
                # What loading the whole registry here did: every tenant's jwks_file is read, and the
                # consumer has no <data_dir>/issuer mount (exit 2, restart loop).
                with pytest.raises(ConfigError, match="jwks_file"):
                    build_registry(cfg)
        started.setdefault(service, []).append(container.name)
    return started, stores


@pytest.mark.parametrize("layout", ["compose", "k8s"])
def test_every_container_starts_with_only_its_own_mounts_and_env(layout: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 request: pytest.FixtureRequest) -> None:
    """Every service, the admin service and the usage recorder included, starts from its own mounts and
    environment, and all of them poll one tenant store: in compose the SQLite file on the shared volume, in
    Kubernetes the PostgreSQL database the Secret names (a pod on a store of its own would never see a change)."""
    database_url = request.getfixturevalue("postgres_url") if layout == "k8s" else None
    started, stores = run_layout(layout, tmp_path, monkeypatch, database_url)
    assert set(started) >= SERVICES, started
    assert len(set(stores.values())) == 1, stores
    [url] = set(stores.values())
    if layout == "compose":
        assert url.startswith("sqlite:///") and "/volumes/admin-data/" in url, url
    else:
        assert url == database_url
    assert {name.split("/")[-1] for name in stores} >= {"authz", "issuer", "log-shipper", "callback-consumer",
                                                       "admin", "usage-recorder"}


def test_k8s_admin_refuses_to_start_on_the_placeholder_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             postgres_url: str) -> None:
    """The base's empty admin-token Secret: the admin service fails closed until an overlay fills it."""
    [admin] = [c for c in k8s_containers() if c.argv[0] == "admin"]
    for mount in admin.mounts:
        mount.files = {name: "" for name in mount.files} if mount.target.startswith("/run/") else mount.files
    with pytest.raises(ConfigError, match="admin token"):
        start(admin, tmp_path, monkeypatch, postgres_url)


def test_k8s_services_refuse_to_start_without_the_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The base's empty DYNASEAL_ADMIN_DATABASE_URL: no pod falls back to a SQLite store of its own."""
    [authz] = [c for c in k8s_containers() if c.argv[0] == "authz"]
    authz.env = {k: v for k, v in authz.env.items() if v != DATABASE_URL_STAND_IN}
    with pytest.raises(ConfigError, match="database_url_env"):
        start(authz, tmp_path, monkeypatch)
