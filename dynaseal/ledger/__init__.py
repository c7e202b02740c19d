"""Counters in Redis: admission, settlement, revocation, key names, the Redis clients."""
