"""The decision: request checks, the authorizer's ordered steps, decisions, the closed set of codes."""
