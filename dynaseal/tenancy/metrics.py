"""The metric every service exposes: which config generation it runs."""

from __future__ import annotations

from prometheus_client import Gauge

CONFIG_GENERATION = Gauge("dynaseal_config_generation",
                          "The tenant store's config generation this process runs (0: the file alone)")
