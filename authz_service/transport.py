"""The gRPC server that carries the servicers: pygrpc-native (HTTP/2 in Rust) or grpc.aio.

Both take the same generated `add_*Servicer_to_server` calls and run the same async handlers on
the event loop; only the transport differs. `authz.server` in the config picks one, so a problem
with the young native server is one line away from the grpcio one.
"""

from __future__ import annotations

from typing import Literal

import grpc

ServerKind = Literal["native", "grpcio"]
# Several authz processes may share the port (the kernel spreads connections between them).
SERVER_OPTIONS = [("grpc.so_reuseport", 1)]


def new_server(kind: ServerKind, io_threads: int = 1) -> grpc.aio.Server:
    """An unstarted grpc.aio-compatible server of this kind (`io_threads`: native only)."""
    if kind == "native":
        # Imported only when chosen: `grpcio` must work even where the native wheel is broken.
        import pygrpc_native.aio

        # The Server class, not pygrpc_native.aio.server(): only it takes io_threads.
        server: grpc.aio.Server = pygrpc_native.aio.Server(options=SERVER_OPTIONS, io_threads=io_threads)
        return server
    if kind == "grpcio":
        return grpc.aio.server(options=SERVER_OPTIONS)
    raise ValueError(f"unknown authz server {kind!r}: expected native or grpcio")
