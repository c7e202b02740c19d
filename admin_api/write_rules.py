"""Rules the admin API adds to what the config file accepts, for tenants and secrets written through it.

A store tenant's id is a path segment of every `/admin/v1/tenants/{id}` route, a Redis key part, a Kafka
message field and a metric label: an id with `/`, spaces, control or look-alike characters would be stored
and then be impossible to address (to disable, rotate or fix) through this API. A seed-format secret is an
HS256 key anyone holding a key signed with it can try to guess offline: a short one is refused.
"""

from __future__ import annotations

import re

from fastapi import HTTPException

# ASCII letters and digits, then also `.`, `_`, `-`: what an id in a URL path needs no escaping for.
STORE_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MIN_SEED_SECRET_CHARS = 16


def check_store_tenant_id(tenant_id: str) -> None:
    """422 unless `tenant_id` is one the admin API can address later."""
    if STORE_TENANT_ID.fullmatch(tenant_id) is None:
        raise HTTPException(422, {"message": "invalid tenant", "problems": [
            "tenant.id: 1-128 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit"]})


def check_seed_secret(value: str, where: str) -> None:
    """422 when a seed-format signing secret is too short to resist guessing (never echoing it)."""
    if len(value) < MIN_SEED_SECRET_CHARS or not value.strip():
        raise HTTPException(422, {"message": "invalid signing secret", "problems": [
            f"{where}: at least {MIN_SEED_SECRET_CHARS} characters"]})
