"""The `envoy.service.auth.v3.Authorization` servicer: proto in, decision, proto out."""

from __future__ import annotations

import functools
import logging
import time

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from prometheus_client import Counter

from authz_service.envoy_adapter import to_auth_request, to_check_response
from authz_service.metrics import CHECK_SECONDS, CONTENT_BLOCKED, DECISIONS, FAILURES, REDIS_ERRORS
from dynaseal.policy.authorizer import Authorizer
from dynaseal.policy.decision import fail_closed

log = logging.getLogger("dynaseal.authz")


@functools.lru_cache(maxsize=128)
def _decision_counter(result: str, code: str) -> Counter:
    """The labelled counter child, looked up once per (result, code) instead of on every Check."""
    return DECISIONS.labels(result, code)


@functools.lru_cache(maxsize=16)
def _failure_counter(reason: str) -> Counter:
    return FAILURES.labels(reason)


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Holds the current Authorizer; a config reload swaps it in one assignment."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def Check(self, request: CheckRequest, context: grpc.aio.ServicerContext) -> CheckResponse:
        """Decide one request."""
        started = time.perf_counter()
        auth_request = to_auth_request(request)
        decision = await self.authorizer.decide(auth_request)
        try:
            response = to_check_response(decision)
        except Exception:
            # The decision could not be put into an answer: fail closed, labelled, never a bare gRPC error
            # (Envoy would answer an unlabelled 403/503 and the metric would not say why).
            log.exception("could not build the answer for request_id=%s jti=%s", decision.request_id,
                          decision.jti or "-")
            decision = fail_closed("response_error", decision.jti, decision.request_id)
            response = to_check_response(decision)
        _decision_counter(decision.result, decision.code).inc()  # a local answer is no deny
        if decision.reason:
            _failure_counter(decision.reason).inc()
            if decision.reason.startswith("redis"):
                REDIS_ERRORS.inc()  # one per decision that failed on Redis, not per health flip
        if "content_rule" in decision.metadata:
            CONTENT_BLOCKED.labels(decision.metadata.get("tenant", ""), decision.metadata["content_rule"]).inc()
        if decision.status >= 400:
            log.info("deny", extra={"code": decision.code, "status": decision.status, "jti": decision.jti,
                                    "request_id": decision.request_id, "reason": decision.message})
        CHECK_SECONDS.observe(time.perf_counter() - started)
        return response
