"""Null gRPC ext_authz server on either of the product's transports, answering as `bench.null_http_authz` does.

`python -m bench.null_grpc_authz --port P [--server grpcio|native]`: every Check is allowed with one
header for upstream (`x-dynaseal-authz: ok`), except `authorization: Bearer deny` (403 with a JSON
body). The server is made by `authz_service.transport.new_server`, so `native` is pygrpc-native as
the product serves it and `grpcio` is grpc.aio; both on uvloop, as authz runs.
"""

from __future__ import annotations

import argparse

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.rpc import code_pb2, status_pb2

from authz_service.transport import ServerKind, new_server
from bench.null_http_authz import ALLOW_HEADER, DENY_AUTHORIZATION, DENY_BODY

_OVERWRITE = HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
ALLOW = CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=OkHttpResponse(
    headers=[HeaderValueOption(header=HeaderValue(key=ALLOW_HEADER, value="ok"), append_action=_OVERWRITE)]))
DENY = CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED), denied_response=DeniedHttpResponse(
    status=HttpStatus(code=403),
    headers=[HeaderValueOption(header=HeaderValue(key="content-type", value="application/json"),
                               append_action=_OVERWRITE)],
    body=DENY_BODY.decode()))


# The generated servicer base is untyped (envoy.* has no stubs).
class NullAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Allows every request but the deny token's."""

    async def Check(self, request: CheckRequest, context: grpc.aio.ServicerContext) -> CheckResponse:
        """Read the token header (as any real check must) and answer."""
        authorization = request.attributes.request.http.headers.get("authorization", "")
        return DENY if authorization.encode() == DENY_AUTHORIZATION else ALLOW


async def serve(kind: ServerKind, host: str, port: int) -> None:
    """Serve until killed."""
    server = new_server(kind)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(NullAuthorization(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.null_grpc_authz", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", choices=("grpcio", "native"), default="grpcio")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.server, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
