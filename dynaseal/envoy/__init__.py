"""The Envoy config rendered from the core's contracts: the gateway template, its routes, clusters and filters."""
