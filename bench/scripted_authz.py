"""A gRPC Authorization server whose answer is fixed by its caller, to drive Envoy's side alone.

The real authz decides from the key and Redis; this one answers what it is told, so Envoy's
filters (body amendment, usage stripping, request-id headers, local replies) can be exercised and
measured without either. `ScriptedAuthz(answer)` serves on a free port in a thread of this process;
`answer(check_request) -> CheckResponse` decides. `allow(...)` and `deny(...)` build the two
shapes the real authz returns.

`python -m bench.scripted_authz --port P --body-prefix '"max_tokens":256,' [--strip-usage]`
serves one fixed allow (the Lua cost benchmark runs it as a child process).
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse, DeniedHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

Answer = Callable[[CheckRequest], CheckResponse]
_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def _header(name: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=name, value=value), append_action=_OVERWRITE)


def allow(metadata: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
          remove: tuple[str, ...] = ()) -> CheckResponse:
    """An allow as the real authz sends it: a fresh `request_id` in metadata and as `x-request-id`."""
    meta = {"request_id": str(uuid.uuid4()), **(metadata or {})}
    response = CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
    ok = response.ok_response
    ok.SetInParent()
    for name, value in {"x-request-id": str(meta["request_id"]), **(headers or {})}.items():
        ok.headers.append(_header(name, value))
    ok.headers_to_remove.extend(remove)
    response.dynamic_metadata.update(meta)
    return response


def deny(status: int, body: str, request_id: str | None = None) -> CheckResponse:
    """A refusal with the gateway's `x-dynaseal-request-id` header, as the real authz sends it."""
    headers = [_header("content-type", "application/json"),
               _header("x-dynaseal-request-id", request_id or str(uuid.uuid4()))]
    response = CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
        denied_response=DeniedHttpResponse(status=HttpStatus(code=status),
                                           headers=headers, body=body))
    return response


class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, answer: Answer, seen: list[CheckRequest]) -> None:
        self.answer = answer
        self.seen = seen

    def Check(self, request: CheckRequest, context: grpc.ServicerContext) -> CheckResponse:
        """Record the request and answer as scripted."""
        self.seen.append(request)
        return self.answer(request)


class ScriptedAuthz:
    """A threaded gRPC server on a free loopback port; `answer` may be replaced at any time."""

    def __init__(self, answer: Answer, port: int = 0, workers: int = 4) -> None:
        self.seen: list[CheckRequest] = []
        self.answer = answer
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            _Servicer(lambda check: self.answer(check), self.seen), self.server)
        # Envoy health-checks the authz cluster over gRPC (as it does the real authz).
        health_servicer = health.HealthServicer()
        health_servicer.set("envoy.service.auth.v3.Authorization", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")

    def __enter__(self) -> ScriptedAuthz:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


def main(argv: list[str] | None = None) -> None:
    """Serve one fixed allow until killed."""
    parser = argparse.ArgumentParser(prog="python -m bench.scripted_authz")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-prefix", default=None)
    parser.add_argument("--strip-usage", action="store_true")
    args = parser.parse_args(argv)
    metadata: dict[str, Any] = {}
    if args.body_prefix is not None:
        metadata["body_prefix"] = args.body_prefix
    if args.strip_usage:
        metadata["strip_usage"] = True
    with ScriptedAuthz(lambda _check: allow(metadata), port=args.port, workers=8) as authz:
        authz.server.wait_for_termination()


if __name__ == "__main__":
    main()
