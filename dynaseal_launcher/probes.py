"""Readiness probes the launcher and tests use: HTTP 200, gRPC health SERVING, Envoy /ready."""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def http_ok(url: str, timeout_s: float = 0.5) -> bool:
    """Whether GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def grpc_serving(target: str, service: str = "", timeout_s: float = 0.5) -> bool:
    """Whether a gRPC server reports SERVING for `service` on grpc.health.v1."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def redis_ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a Redis server answers PING."""
    import redis

    try:
        return bool(redis.Redis(host=host, port=port, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s).ping())
    except redis.RedisError:
        return False
