"""Tenants as data: the tenant store, how it overlays the config file, and the generation services run."""
