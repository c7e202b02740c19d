"""The operator's admin API: tenants as data, usage and cost, the DLQ, revocations, and the console."""
