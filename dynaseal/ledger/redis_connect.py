"""Which Redis a URL names: one server, or a Redis Cluster.

A cluster is named by its scheme: `redis+cluster://[user:password@]host:port[,host:port...]`
(`rediss+cluster://` for TLS). The hosts are seeds: any reachable one gives the slot map, and
the clients follow MOVED/ASK redirections and re-read the map after a failover. Every other URL
is a single server, as redis-py reads it. The clients themselves come from `redis_async.connect`,
the core's one way to Redis (docs/layout.md lists every client kind and who uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A `redis+cluster://` URL taken apart: seed nodes and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def parse_cluster_url(url: str) -> ClusterUrl | None:
    """The cluster a URL names, or None when it names a single server; ValueError if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        return None
    # urlsplit reads one host only: take the credentials off, then split the host list ourselves.
    userinfo, at, hosts = rest.rpartition("@")
    hosts = hosts.split("/", 1)[0].split("?", 1)[0]
    nodes = []
    for part in filter(None, (h.strip() for h in hosts.split(","))):
        parsed = urlsplit(f"//{part}")
        if not parsed.hostname:
            raise ValueError(f"cluster URL has an empty host in {part!r}")
        nodes.append((parsed.hostname, parsed.port or 6379))
    if not nodes:
        raise ValueError("a redis+cluster:// URL needs at least one host:port")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if not colon:  # `redis+cluster://secret@host` is a password alone, as redis-py reads it
            username, password = None, unquote(user)
    return ClusterUrl(tuple(nodes), username, password, CLUSTER_SCHEMES[scheme.lower()])


def is_cluster(url: str) -> bool:
    """Whether the URL names a Redis Cluster."""
    return parse_cluster_url(url) is not None
