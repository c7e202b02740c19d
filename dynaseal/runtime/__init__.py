"""The config resolved once: locations, secrets, and one view per service (`dynaseal.runtime.views`)."""

from dynaseal.runtime.locations import Paths, Resolved, kafka_bootstrap, paths_of, redis_url
from dynaseal.secrets import SecretResolver

__all__ = ["Paths", "Resolved", "SecretResolver", "kafka_bootstrap", "paths_of", "redis_url"]
