"""A grpc.aio Authorization server that parses each CheckRequest and allows it, nothing else.

`python -m bench.null_authz --port P`: the floor of any Python grpc.aio ext_authz on this
machine, measured beside the real service so the framework's share of a Check is visible.
"""

from __future__ import annotations

import argparse

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from google.rpc import code_pb2, status_pb2

_ALLOW = CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


class NullAuthorization(external_auth_pb2_grpc.AuthorizationServicer):
    """Allows every request."""

    async def Check(self, request: CheckRequest, context: grpc.aio.ServicerContext) -> CheckResponse:
        """Read the token header (as any real check must) and allow."""
        _ = request.attributes.request.http.headers.get("authorization")
        return _ALLOW


async def serve(port: int) -> None:
    """Serve until killed."""
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(NullAuthorization(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    """Parse the port and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.null_authz")
    parser.add_argument("--port", type=int, required=True)
    import uvloop

    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
