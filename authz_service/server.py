"""Run the authz gRPC server: Authorization, Health, reflection, metrics, reload, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from authz_service.metrics import CONFIG_RELOADS
from authz_service.servicer import AuthorizationServicer
from authz_service.transport import ServerKind, new_server
from dynaseal.config import ConfigError, DynasealConfig, expand_path, load_config, resolve_config_path
from dynaseal.keys.registry_holder import RegistryHolder
from dynaseal.keys.remote_jwks import RemoteJwks
from dynaseal.ledger.give_back import GiveBack
from dynaseal.ledger.quota import RedisQuota
from dynaseal.policy.authorizer import Authorizer
from dynaseal.runtime.views import AuthzView, Runtime

log = logging.getLogger("dynaseal.authz")
AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DRAIN_SECONDS = 10.0
HEALTH_INTERVAL_S = 1.0
CONFIG_POLL_S = 1.0


def _stat(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime, st.st_size


@dataclass
class AuthzOptions:
    """Command-line options of the authz service."""

    config_path: str | None
    host: str | None = None
    port: int | None = None
    metrics_port: int | None = None
    server: ServerKind | None = None  # overrides the config's authz.server


def authz_view(cfg: DynasealConfig, remote_jwks: RemoteJwks, *, fetch_new_jwks: bool = True) -> AuthzView:
    """authz's view of a loaded config (raises ConfigError): one Runtime per load, nothing resolved twice."""
    return Runtime.from_config(cfg).authz(remote_jwks, fetch_new_jwks=fetch_new_jwks)


def build_authorizer(view: AuthzView, quota: RedisQuota | None) -> Authorizer:
    """An Authorizer over a view; its registry holder follows the view's remote JWKS store, which pushes
    each new key set into it."""
    return Authorizer(RegistryHolder(view.registry, view.key_cache_size), quota=quota,
                      giver=None if quota is None else GiveBack(quota))


class AuthzServer:
    """The running server and what a reload or shutdown needs to touch."""

    def __init__(self, options: AuthzOptions) -> None:
        self.options = options
        self.cfg = load_config(options.config_path)
        # One store of remote JWKS for the server's life: refreshed keys and the unknown-kid
        # limiter survive reloads.
        self.remote_jwks = RemoteJwks()
        view = authz_view(self.cfg, self.remote_jwks)
        self.quota = RedisQuota.from_url(view.redis_url, view.redis_timeout_s)
        self.quota.reservation_ttl_ms = int(self.cfg.gateway.reservation_ttl_s * 1000)
        self.servicer = AuthorizationServicer(build_authorizer(view, self.quota))
        self.health = HealthServicer()
        self._stopping = asyncio.Event()

    def reload(self) -> None:
        """Load the config again; keep serving the old one if the new one is bad."""
        try:
            cfg = load_config(self.options.config_path)
            # No blocking fetch on the event loop: a new jwks_url is fetched by the scheduled refresh.
            view = authz_view(cfg, self.remote_jwks, fetch_new_jwks=False)
            self.servicer.authorizer = build_authorizer(view, self.quota)
            self.cfg = cfg
            CONFIG_RELOADS.labels("ok").inc()
            log.info("config reloaded", extra={"tenants": len(cfg.tenants)})
        except ConfigError as exc:
            CONFIG_RELOADS.labels("rejected").inc()
            log.error("config reload rejected; keeping the previous config", extra={"error": str(exc)})

    def _watched_files(self) -> dict[Path, tuple[float, int] | None]:
        """The config file and every JWKS file it names, with their (mtime, size)."""
        paths = [resolve_config_path(self.options.config_path)]
        paths += [expand_path(t.jwks_file, self.cfg) for t in self.cfg.tenants if t.jwks_file]
        return {p: _stat(p) for p in paths}

    async def _watch_config(self) -> None:
        """Reload when the config or a JWKS file changes (key rotation needs no restart)."""
        seen = self._watched_files()
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            now = self._watched_files()
            if now != seen:
                self.reload()
                seen = self._watched_files()

    async def _watch_dependencies(self) -> None:
        """Readiness: the Authorization service is SERVING only while Redis answers, so an authz that
        cannot decide takes no traffic. Liveness (service "") stays SERVING: a Redis outage is not a
        reason to restart authz."""
        current = None
        while True:
            ok = await self.quota.ping()
            if ok != current:
                await self.health.set(AUTHZ_SERVICE, SERVING if ok else NOT_SERVING)
                if ok:
                    log.info("redis reachable: SERVING")
                else:
                    log.warning("redis unreachable: NOT_SERVING (requests fail closed with 503)")
                current = ok
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def serve(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then drain."""
        gateway = self.cfg.gateway
        host = self.options.host or gateway.host
        port = self.options.port or gateway.ports.authz
        kind = self.options.server or self.cfg.authz.server
        self.server = new_server(kind, self.cfg.authz.io_threads)
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (AUTHZ_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        self.server.add_insecure_port(f"{host}:{port}")
        start_http_server(self.options.metrics_port or gateway.ports.authz_metrics, addr=host)
        await self.server.start()
        health_task = asyncio.create_task(self._watch_dependencies())
        config_task = asyncio.create_task(self._watch_config())
        jwks_task = asyncio.create_task(self.remote_jwks.run())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        log.info("authz listening", extra={"address": f"{host}:{port}", "server": kind})
        await self._stopping.wait()
        health_task.cancel()
        config_task.cancel()
        jwks_task.cancel()
        # Report NOT_SERVING first so health-checking Envoys move away, then finish in-flight Checks.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(DRAIN_SECONDS)
        log.info("authz stopped")
