"""Which Redis a URL names, and a client for it: one server, or a Redis Cluster.

A cluster is named by its scheme: `redis+cluster://[user:password@]host:port[,host:port...]`
(`rediss+cluster://` for TLS). The hosts are seeds: any reachable one gives the slot map, and
the clients follow MOVED/ASK redirections and re-read the map after a failover. Every other URL
is a single server, as redis-py reads it. Services on asyncio (authz, the callback consumer) get their
client from `redis_async.connect` (the pipelined clients where the URL allows); this module's redis-py
clients serve the one-shot commands (the CLI's revocation and status), the issuer and admin services'
few calls, and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import Redis, RedisCluster
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.cluster import ClusterNode

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}

SyncClient = Redis | RedisCluster
AsyncClient = AsyncRedis | AsyncRedisCluster


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


def sync_client(url: str, timeout_s: float = 2.0) -> SyncClient:
    """A blocking client: RedisCluster for a cluster URL, else redis-py's Redis.from_url."""
    cluster = parse_cluster_url(url)
    if cluster is None:
        return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.nodes], username=cluster.username,
                        password=cluster.password, ssl=cluster.tls, socket_timeout=timeout_s,
                        socket_connect_timeout=timeout_s)


def async_client(url: str, timeout_s: float = 2.0, **options: Any) -> AsyncClient:
    """An asyncio client: redis-py's async RedisCluster for a cluster URL, else Redis.from_url."""
    cluster = parse_cluster_url(url)
    if cluster is None:
        return AsyncRedis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **options)
    return AsyncRedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in cluster.nodes],
                             username=cluster.username, password=cluster.password, ssl=cluster.tls,
                             socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **options)
