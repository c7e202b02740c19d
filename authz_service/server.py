"""Run the authz gRPC server: Authorization, Health, reflection, metrics, reload, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, replace
from types import MappingProxyType

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from authz_service.metrics import CONFIG_RELOADS
from authz_service.servicer import AuthorizationServicer
from authz_service.transport import ServerKind, new_server
from dynaseal.config import ConfigError, DynasealConfig
from dynaseal.keys.registry_holder import RegistryHolder
from dynaseal.keys.remote_jwks import RemoteJwks
from dynaseal.ledger.give_back import GiveBack
from dynaseal.ledger.quota import RedisQuota
from dynaseal.policy.authorizer import Authorizer
from dynaseal.runtime.views import AuthzView, Runtime
from dynaseal.tenancy.overlay import Tenancy
from dynaseal.tenancy.source import TenancySource

log = logging.getLogger("dynaseal.authz")
AUTHZ_SERVICE = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DRAIN_SECONDS = 10.0
HEALTH_INTERVAL_S = 1.0
CONFIG_POLL_S = 1.0


@dataclass
class AuthzOptions:
    """Command-line options of the authz service."""

    config_path: str | None
    host: str | None = None
    port: int | None = None
    metrics_port: int | None = None
    server: ServerKind | None = None  # overrides the config's authz.server


def authz_view(cfg: DynasealConfig, remote_jwks: RemoteJwks, *, fetch_new_jwks: bool = True,
               disabled: frozenset[str] = frozenset()) -> AuthzView:
    """authz's view of a loaded config (raises ConfigError): one Runtime per load, nothing resolved twice.

    A disabled tenant is left out: its keys name an unknown tenant (401) from this view on."""
    view = Runtime.from_config(cfg).authz(remote_jwks, fetch_new_jwks=fetch_new_jwks)
    if not disabled:
        return view
    registry = replace(view.registry, tenants=MappingProxyType(
        {tid: t for tid, t in view.registry.tenants.items() if tid not in disabled}))
    return replace(view, registry=registry)


def build_authorizer(view: AuthzView, quota: RedisQuota | None) -> Authorizer:
    """An Authorizer over a view; its registry holder follows the view's remote JWKS store, which pushes
    each new key set into it."""
    return Authorizer(RegistryHolder(view.registry, view.key_cache_size), quota=quota,
                      giver=None if quota is None else GiveBack(quota))


class AuthzServer:
    """The running server and what a reload or shutdown needs to touch."""

    def __init__(self, options: AuthzOptions) -> None:
        self.options = options
        # The file with the tenant store over it; polled for changes (dynaseal.tenancy).
        self.tenancy = TenancySource(options.config_path)
        tenancy = self.tenancy.load()
        self.cfg = tenancy.cfg
        # One store of remote JWKS for the server's life: refreshed keys and the unknown-kid
        # limiter survive reloads.
        self.remote_jwks = RemoteJwks()
        view = authz_view(self.cfg, self.remote_jwks, disabled=tenancy.disabled)
        self.quota = RedisQuota.from_url(view.redis_url, view.redis_timeout_s)
        self.quota.reservation_ttl_ms = int(self.cfg.gateway.reservation_ttl_s * 1000)
        self.servicer = AuthorizationServicer(build_authorizer(view, self.quota))
        self.tenancy.accept(tenancy)
        self.health = HealthServicer()
        self._stopping = asyncio.Event()

    def reload(self) -> None:
        """Load the config again; keep serving the old one if the new one is bad."""
        try:
            self._install(self.tenancy.load())
        except ConfigError as exc:
            self._rejected(exc)

    def _install(self, tenancy: Tenancy) -> None:
        """Serve a loaded config (raises ConfigError, the old one still serving, if its keys do not build)."""
        cfg = tenancy.cfg
        try:
            # No blocking fetch on the event loop: a new jwks_url is fetched by the scheduled refresh.
            view = authz_view(cfg, self.remote_jwks, fetch_new_jwks=False, disabled=tenancy.disabled)
        except ConfigError:
            self._drop_disabled(tenancy.disabled)
            raise
        self.servicer.authorizer = build_authorizer(view, self.quota)
        self.cfg = cfg
        self.tenancy.accept(tenancy)
        CONFIG_RELOADS.labels("ok").inc()
        log.info("config reloaded", extra={"tenants": len(cfg.tenants), "generation": tenancy.generation})

    def _drop_disabled(self, disabled: frozenset[str]) -> None:
        """A config that cannot be served still takes its disabled tenants away (fail closed): the running
        registry without them, and a fresh key cache, until a config that can be served comes."""
        authorizer = self.servicer.authorizer
        running = authorizer.holder.base
        if not disabled & set(running.tenants):
            return
        registry = replace(running, tenants=MappingProxyType(
            {tid: t for tid, t in running.tenants.items() if tid not in disabled}))
        self.servicer.authorizer = Authorizer(RegistryHolder(registry, authorizer.holder.cache_size),
                                              quota=authorizer.quota, giver=authorizer.giver)
        log.warning("tenants disabled while the config cannot be served: refused from now on",
                    extra={"tenants": sorted(disabled & set(running.tenants))})

    def _rejected(self, exc: ConfigError) -> None:
        CONFIG_RELOADS.labels("rejected").inc()
        log.error("config reload rejected; keeping the previous config", extra={"error": str(exc)})

    async def _watch_config(self) -> None:
        """Reload when the config, a JWKS or secret file, or the tenant store's generation changes
        (tenants added, rotated or disabled take effect without a restart)."""
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            if not await asyncio.to_thread(self.tenancy.changed):
                continue
            try:
                # Reading and validating file + store is the slow part (~0.3 s for 1,000 stored tenants):
                # off the event loop, so Checks never wait for it; the keys are built on the loop.
                self._install(await asyncio.to_thread(self.tenancy.load))
            except ConfigError as exc:
                self._rejected(exc)

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
