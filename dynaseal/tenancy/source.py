"""Where a service gets its config: the file, with the tenant store over it, and when to load it again.

Every service polls `changed()` (about once a second): the config file, the mounted secret files it
names, the store's generation and a rotation's end all count. A load that fails leaves the caller
on its last good config.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from dynaseal.config import ConfigError, DynasealConfig, expand_path, load_config, resolve_config_path
from dynaseal.secrets import use_stored_secrets
from dynaseal.tenancy.metrics import CONFIG_GENERATION
from dynaseal.tenancy.overlay import Tenancy, overlay
from dynaseal.tenancy.store import TenantStore, store_url

POLL_S = 1.0
log = logging.getLogger("dynaseal.config")


def _stat(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime, st.st_size


def watched_files(cfg: DynasealConfig, config_path: Path) -> list[Path]:
    """The config file, JWKS files and every mounted secret file the config names."""
    paths = [config_path]
    for tenant in cfg.tenants:
        if tenant.jwks_file:
            paths.append(expand_path(tenant.jwks_file, cfg))
        paths += [Path(k.secret_file) for k in tenant.keys if k.secret_file]
        if tenant.callback is not None and tenant.callback.secret_file:
            paths.append(Path(tenant.callback.secret_file))
    return paths


class TenancySource:
    """Loads the effective config of one config file and tells when it changed."""

    def __init__(self, config_path: str | os.PathLike[str] | None, data_dir: str | None = None) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self._stores: dict[str, TenantStore] = {}
        self.current: Tenancy | None = None
        self._loaded: Tenancy | None = None
        self._seen: tuple[object, ...] | None = None

    def store(self, cfg: DynasealConfig) -> TenantStore | None:
        """The tenant store this config names (None: no `admin` section, the file alone)."""
        if cfg.admin is None:
            return None
        url = store_url(cfg)
        if url not in self._stores:
            self._stores[url] = TenantStore(url)
        return self._stores[url]

    def load(self) -> Tenancy:
        """Read the file and the store; ConfigError (naming the problems) when either is unusable."""
        cfg = load_config(self.config_path, self.data_dir)
        try:
            store = self.store(cfg)
            tenancy = Tenancy(cfg) if store is None else overlay(cfg, store.snapshot(), time.time())
        except SQLAlchemyError as exc:
            raise ConfigError(f"tenant store unreachable: {type(exc).__name__}") from None
        except OSError as exc:  # its SQLite directory cannot be made (a read-only mount)
            raise ConfigError(f"tenant store unusable: {exc.strerror or exc}: {exc.filename or ''}") from None
        use_stored_secrets(tenancy.secrets)
        if tenancy.quarantined:
            log.error("stored tenants left out: they do not validate with this config; fix or disable them",
                      extra={"problems": sorted(tenancy.quarantined.values())})
        # The generation read with the snapshot: a write after it is seen by the next poll.
        self._loaded, self._seen = tenancy, self._fingerprint(tenancy, tenancy.generation)
        return tenancy

    def accept(self, tenancy: Tenancy) -> None:
        """Record that the service now runs `tenancy` (its generation becomes the metric's value)."""
        self.current = tenancy
        CONFIG_GENERATION.set(tenancy.generation)

    def _fingerprint(self, tenancy: Tenancy, generation: int | None = None) -> tuple[object, ...]:
        cfg = tenancy.cfg
        files = tuple(_stat(p) for p in watched_files(cfg, resolve_config_path(self.config_path)))
        if generation is None:
            store = self.store(cfg)
            generation = store.generation() if store is not None else 0
        due = tenancy.next_change_at is not None and time.time() >= tenancy.next_change_at
        return files, generation, due

    def changed(self) -> bool:
        """Whether a load now would give another config than the last one (cheap: stats and one read)."""
        base = self._loaded
        if base is None or self._seen is None:
            return True
        try:
            return self._fingerprint(base) != self._seen
        except SQLAlchemyError:
            return False  # the store is down: keep running what we have


def follow_generation(source: TenancySource, stop: threading.Event, poll_s: float = POLL_S) -> threading.Thread:
    """For a service that holds no tenant data (the shipper): a daemon thread keeping the generation
    it reports current; a config that does not load leaves the last good one reported."""

    def loop() -> None:
        while not stop.wait(poll_s):
            try:
                if source.changed():
                    source.accept(source.load())
            except ConfigError as exc:
                log.error("config reload rejected; keeping the previous config", extra={"error": str(exc)})
            except Exception:  # the reporter must outlive a bad poll
                log.exception("config watch failed; trying again")

    thread = threading.Thread(target=loop, name="tenancy-watch", daemon=True)
    thread.start()
    return thread
