"""What every request cost, kept for the operator: one row per request id, queried by tenant, key, model and time."""
