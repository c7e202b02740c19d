"""Envoy ext_authz gRPC service: a thin adapter around `dynaseal.policy.authorizer`."""
